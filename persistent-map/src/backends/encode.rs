//! Encoding values as JSON for storage, refusing what JSON cannot hold.
//!
//! serde_json writes a NaN or infinite float as `null` without complaint. Stored that way, the
//! write would be acknowledged while the row says something else, and a plain `f64` field would
//! then fail to load at all (`null` is not an `f64`), taking the whole map with it. So values
//! are serialized through [`Finite`], which forwards everything to serde_json and turns a
//! non-finite float into an error: the write is refused before it reaches storage.

use std::fmt::Display;

use crate::PersistentError;

use serde::ser::{
    self, Serialize, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant,
    SerializeTuple, SerializeTupleStruct, SerializeTupleVariant, Serializer,
};

/// `value` as JSON text; an error (and nothing stored) if it holds a NaN or infinite float.
pub(crate) fn encode_value<V: Serialize + ?Sized>(value: &V) -> serde_json::Result<String> {
    serde_json::to_string(&Finite(value))
}

/// Whether two stored values are the same: both absent, or the same JSON (the same text, or
/// texts that parse to equal JSON values, so key order and spacing do not matter).
pub(crate) fn same_json(stored: Option<&str>, expected: Option<&str>) -> bool {
    match (stored, expected) {
        (None, None) => true,
        (Some(stored), Some(expected)) => {
            stored == expected || {
                let parse = serde_json::from_str::<serde_json::Value>;
                matches!((parse(stored), parse(expected)), (Ok(a), Ok(b)) if a == b)
            }
        }
        _ => false,
    }
}

/// The JSON text of the `value` stored under `key` (its text) in `table`; a value that cannot
/// be stored is an [`InvalidValue`](PersistentError::InvalidValue) naming the table and the key.
pub(crate) fn encode_stored_value<V: Serialize + ?Sized>(
    table: &str,
    key: &str,
    value: &V,
) -> Result<String, PersistentError> {
    encode_value(value).map_err(|source| PersistentError::InvalidValue {
        table: table.to_owned(),
        key: key.to_owned(),
        source,
    })
}

/// `encode` applied to every item, in order; a large batch is split in two and encoded on two
/// threads at once (this one and a scoped helper), since encoding is all the caller does before
/// the batch goes to storage. The first error wins; a panic in user code is resumed here.
pub(crate) fn encode_all<T, R, E>(
    items: &[T],
    encode: impl Fn(&T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E>
where
    T: Sync,
    R: Send,
    E: Send,
{
    const PARALLEL_FROM: usize = 8192;
    let encode_run = |run: &[T]| run.iter().map(&encode).collect::<Result<Vec<R>, E>>();
    if items.len() < PARALLEL_FROM {
        return encode_run(items);
    }
    let (first, second) = items.split_at(items.len() / 2);
    let mut encoded_first = None;
    let encoded_second = std::thread::scope(|scope| {
        let work = || encoded_first = Some(encode_run(first));
        let helper = crate::tasks::spawn_scoped(scope, "persistent-map-encode", work)?;
        let encoded_second = encode_run(second);
        helper
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Some(encoded_second)
    });
    match (encoded_first, encoded_second) {
        (Some(first), Some(second)) => {
            let mut encoded = first?;
            encoded.extend(second?);
            Ok(encoded)
        }
        // No thread to be had: encode it all here.
        _ => encode_run(items),
    }
}

/// Serializes the wrapped value with every float checked on the way.
struct Finite<'a, T: ?Sized>(&'a T);

impl<T: Serialize + ?Sized> Serialize for Finite<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(Checked(serializer))
    }
}

/// A serializer, or one of its compound serializers, that checks floats and passes the rest on.
struct Checked<S>(S);

fn non_finite<E: ser::Error>(value: impl Display) -> E {
    E::custom(format_args!(
        "{value} cannot be stored: JSON has no representation for NaN or infinite floats"
    ))
}

/// An error from inside the field `key` of a struct, naming the field (a field inside a
/// field is named by each in turn, outermost first).
fn in_field<E: ser::Error>(key: &str, error: E) -> E {
    E::custom(format_args!("field `{key}`: {error}"))
}

macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $method(self $(, $arg: $ty)*) -> Result<Self::Ok, Self::Error> {
                self.0.$method($($arg),*)
            }
        )*
    };
}

impl<S: Serializer> Serializer for Checked<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Checked<S::SerializeSeq>;
    type SerializeTuple = Checked<S::SerializeTuple>;
    type SerializeTupleStruct = Checked<S::SerializeTupleStruct>;
    type SerializeTupleVariant = Checked<S::SerializeTupleVariant>;
    type SerializeMap = Checked<S::SerializeMap>;
    type SerializeStruct = Checked<S::SerializeStruct>;
    type SerializeStructVariant = Checked<S::SerializeStructVariant>;

    forward! {
        serialize_bool(v: bool);
        serialize_i8(v: i8);
        serialize_i16(v: i16);
        serialize_i32(v: i32);
        serialize_i64(v: i64);
        serialize_i128(v: i128);
        serialize_u8(v: u8);
        serialize_u16(v: u16);
        serialize_u32(v: u32);
        serialize_u64(v: u64);
        serialize_u128(v: u128);
        serialize_char(v: char);
        serialize_str(v: &str);
        serialize_bytes(v: &[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(name: &'static str);
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
    }

    fn serialize_f32(self, v: f32) -> Result<S::Ok, S::Error> {
        match v.is_finite() {
            true => self.0.serialize_f32(v),
            false => Err(non_finite(v)),
        }
    }

    fn serialize_f64(self, v: f64) -> Result<S::Ok, S::Error> {
        match v.is_finite() {
            true => self.0.serialize_f64(v),
            false => Err(non_finite(v)),
        }
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.0.serialize_some(&Finite(value))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_newtype_struct(name, &Finite(value))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0
            .serialize_newtype_variant(name, index, variant, &Finite(value))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        self.0.serialize_seq(len).map(Checked)
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        self.0.serialize_tuple(len).map(Checked)
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        self.0.serialize_tuple_struct(name, len).map(Checked)
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        self.0
            .serialize_tuple_variant(name, index, variant, len)
            .map(Checked)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        self.0.serialize_map(len).map(Checked)
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        self.0.serialize_struct(name, len).map(Checked)
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        self.0
            .serialize_struct_variant(name, index, variant, len)
            .map(Checked)
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! checked_compound {
    ($($trait:ident: $($method:ident),*;)*) => {
        $(
            impl<C: $trait> $trait for Checked<C> {
                type Ok = C::Ok;
                type Error = C::Error;

                $(
                    fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
                        self.0.$method(&Finite(value))
                    }
                )*

                fn end(self) -> Result<C::Ok, C::Error> {
                    self.0.end()
                }
            }
        )*
    };
}

checked_compound! {
    SerializeSeq: serialize_element;
    SerializeTuple: serialize_element;
    SerializeTupleStruct: serialize_field;
    SerializeTupleVariant: serialize_field;
    SerializeMap: serialize_key, serialize_value;
}

macro_rules! checked_struct {
    ($($trait:ident;)*) => {
        $(
            impl<C: $trait> $trait for Checked<C> {
                type Ok = C::Ok;
                type Error = C::Error;

                fn serialize_field<T: Serialize + ?Sized>(
                    &mut self,
                    key: &'static str,
                    value: &T,
                ) -> Result<(), C::Error> {
                    self.0
                        .serialize_field(key, &Finite(value))
                        .map_err(|error| in_field(key, error))
                }

                fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
                    self.0.skip_field(key)
                }

                fn end(self) -> Result<C::Ok, C::Error> {
                    self.0.end()
                }
            }
        )*
    };
}

checked_struct! {
    SerializeStruct;
    SerializeStructVariant;
}

/// Whether the stored JSON `stored` (`None`: nothing stored) satisfies a condition expecting
/// `expected`: the same JSON, or the same once `canonical` has decoded it as the value type and
/// encoded it again, so that an old row's spelling (a field it lacks that the type defaults, an
/// unknown field, another key order, `1.0` for `1`) never refuses a write of what it means.
pub(crate) fn condition_holds(
    stored: Option<&str>,
    expected: Option<&str>,
    canonical: fn(&str) -> Option<String>,
) -> bool {
    if same_json(stored, expected) {
        return true;
    }
    match (stored, expected) {
        (Some(stored), Some(_)) => {
            canonical(stored).is_some_and(|canonical| same_json(Some(&canonical), expected))
        }
        _ => false,
    }
}

/// `json` as the value type `V` writes what it decodes to (`None`: it does not decode).
pub(crate) fn canonical_json<V: Serialize + serde::de::DeserializeOwned>(
    json: &str,
) -> Option<String> {
    let value: V = serde_json::from_str(json).ok()?;
    encode_value(&value).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Serialize;

    use super::encode_value;

    #[derive(Serialize)]
    struct Reading {
        sensor: String,
        value: f64,
        history: Vec<Option<f32>>,
        tags: BTreeMap<String, (u8, f64)>,
        unit: Unit,
    }

    #[derive(Serialize)]
    enum Unit {
        Celsius,
        Scaled(f64),
        Range { low: f64, high: f64 },
    }

    fn reading(value: f64, unit: Unit) -> Reading {
        Reading {
            sensor: "t1".into(),
            value,
            history: vec![Some(1.5), None],
            tags: BTreeMap::from([("a".into(), (1, 2.5))]),
            unit,
        }
    }

    #[test]
    fn encode_all_keeps_the_order_and_reports_an_error_from_either_half() {
        let numbers: Vec<f64> = (0..20_000).map(f64::from).collect();
        let encoded = super::encode_all(&numbers, encode_value).unwrap();
        assert_eq!(encoded.len(), numbers.len());
        assert!(encoded
            .iter()
            .zip(&numbers)
            .all(|(text, n)| *text == n.to_string() + ".0"));
        for bad_at in [3, 15_000] {
            let mut bad = numbers.clone();
            bad[bad_at] = f64::NAN;
            assert!(super::encode_all(&bad, encode_value).is_err());
        }
    }

    #[test]
    fn finite_values_encode_exactly_as_serde_json_does() {
        for value in [
            reading(21.5, Unit::Celsius),
            reading(-0.0, Unit::Scaled(1e300)),
            reading(
                f64::MAX,
                Unit::Range {
                    low: -1.0,
                    high: 1.0,
                },
            ),
        ] {
            assert_eq!(
                encode_value(&value).unwrap(),
                serde_json::to_string(&value).unwrap()
            );
        }
        assert_eq!(encode_value("text").unwrap(), "\"text\"");
        assert_eq!(encode_value(&u128::MAX).unwrap(), u128::MAX.to_string());
    }

    #[test]
    fn a_non_finite_float_anywhere_is_refused() {
        let refused = [
            encode_value(&f64::NAN),
            encode_value(&f32::INFINITY),
            encode_value(&Some(f64::NEG_INFINITY)),
            encode_value(&vec![1.0, f64::NAN]),
            encode_value(&reading(f64::NAN, Unit::Celsius)),
            encode_value(&reading(1.0, Unit::Scaled(f64::INFINITY))),
            encode_value(&reading(
                1.0,
                Unit::Range {
                    low: 0.0,
                    high: f64::NAN,
                },
            )),
            encode_value(&BTreeMap::from([("k", (1u8, f64::INFINITY))])),
        ];
        for result in refused {
            let err = result.expect_err("a non-finite float must be refused");
            assert!(
                err.to_string().contains("no representation for NaN"),
                "{err}"
            );
        }
    }
}
