//! The attributes that do not shape the text: `text = "display"` (keep the type's own text),
//! `crate = "..."` (a renamed dependency); and the generated code's hygiene and generic bounds.

use std::fmt;
use std::str::FromStr;

use persistent_map::{KeyParseError, PersistentKey};

/// A key with a text of its own; the derive adds only the table.
#[derive(PersistentKey, Debug, PartialEq)]
#[persistent_key(table = "orders", text = "display")]
struct OrderId(u32);

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "order-{}", self.0)
    }
}

impl FromStr for OrderId {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.trim_start_matches("order-").parse().map(OrderId)
    }
}

/// `text = "display"` on a generic type: a key wherever its own impls apply.
#[derive(PersistentKey, Debug, PartialEq)]
#[persistent_key(text = "display")]
struct Labelled<T>(T);

impl<T: fmt::Display> fmt::Display for Labelled<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "label={}", self.0)
    }
}

impl<T: FromStr> FromStr for Labelled<T> {
    type Err = T::Err;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.trim_start_matches("label=").parse().map(Labelled)
    }
}

/// A union cannot have a derived text, but it can bring its own.
#[derive(PersistentKey, Clone, Copy)]
#[persistent_key(text = "display")]
union Bits {
    int: u32,
    float: f32,
}

impl fmt::Display for Bits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bits")
    }
}

impl FromStr for Bits {
    type Err = std::convert::Infallible;

    fn from_str(_: &str) -> Result<Self, Self::Err> {
        Ok(Bits { int: 0 })
    }
}

/// `text = "derive"` is the default, spelled out.
#[derive(PersistentKey, Debug, PartialEq)]
#[persistent_key(text = "derive")]
struct Explicit(u8, u8);

fn table_of<K: PersistentKey>(_: &K) -> &'static str {
    K::TABLE_NAME
}

#[test]
fn display_text_keeps_the_types_own_display_and_from_str() {
    let order = OrderId(7);
    assert_eq!(table_of(&order), "orders");
    assert_eq!(order.to_string(), "order-7");
    assert_eq!("order-7".parse::<OrderId>().unwrap(), order);
    // The type's own error type, not `KeyParseError`.
    let _: std::num::ParseIntError = "order-x".parse::<OrderId>().unwrap_err();

    assert_eq!(<Labelled<u8>>::TABLE_NAME, "labelled");
    assert_eq!(Labelled(3u8).to_string(), "label=3");
    assert_eq!(table_of(&Labelled(3u8)), "labelled");

    assert_eq!(Bits::TABLE_NAME, "bits");
    assert_eq!(Bits { float: 1.0 }.to_string(), "bits");
}

#[test]
fn derive_text_is_the_default() {
    assert_eq!(Explicit(1, 2).to_string(), "1:2");
    assert_eq!("1:2".parse::<Explicit>().unwrap(), Explicit(1, 2));
}

/// Reaches the runtime through a path of the user's choosing.
mod reexport {
    pub(crate) use persistent_map as renamed;
}

#[derive(PersistentKey, Debug, PartialEq)]
#[persistent_key(crate = "crate::derive_attributes::reexport::renamed")]
struct ThroughReexport {
    a: String,
    b: u8,
}

/// A stand-in runtime that writes fields its own way, to show that the generated code goes
/// through the `crate` path and nowhere else.
mod stand_in {
    pub(crate) mod __private {
        pub(crate) use persistent_map::__private::*;

        pub(crate) fn write_fields(
            out: &mut dyn std::fmt::Write,
            _separator: char,
            fields: &[&dyn std::fmt::Display],
        ) -> std::fmt::Result {
            write!(out, "stand-in with {} fields", fields.len())
        }
    }
}

#[derive(PersistentKey, Debug, PartialEq)]
#[persistent_key(crate = "crate::derive_attributes::stand_in", table = "stand_in")]
struct ThroughStandIn {
    a: String,
    b: u8,
}

#[test]
fn crate_names_the_path_to_the_runtime() {
    let key = ThroughReexport {
        a: "x:y".into(),
        b: 1,
    };
    assert_eq!(key.to_string(), r"x\:y:1");
    assert_eq!(r"x\:y:1".parse::<ThroughReexport>().unwrap(), key);

    let key = ThroughStandIn {
        a: "x".into(),
        b: 1,
    };
    assert_eq!(key.to_string(), "stand-in with 2 fields");
    assert_eq!(ThroughStandIn::TABLE_NAME, "stand_in");
}

/// Names the generated code must not be confused by: the user's own `Result`, `Ok`, `Option`,
/// `Display`, `FromStr`, `core` and `persistent_map` items, and fields named like its locals.
mod shadowing {
    #![allow(dead_code, non_camel_case_types)]

    use ::persistent_map::PersistentKey;

    type Result<T> = std::result::Result<T, ()>;
    struct Ok;
    struct Err;
    enum Option {
        Some,
    }
    trait Display {}
    trait FromStr {}
    mod core {}
    mod persistent_map {}
    struct __private;

    #[derive(PersistentKey, Debug, PartialEq)]
    pub(super) struct Locals {
        pub(super) __text: String,
        pub(super) __parser: String,
        pub(super) __formatter: String,
        pub(super) __field1: String,
        pub(super) __field0: u8,
        pub(super) f: String,
    }

    #[derive(PersistentKey, Debug, PartialEq)]
    pub(super) enum Variants {
        Ok,
        Err(String),
        Some { __field0: String, __text: u8 },
    }
}

#[test]
fn generated_code_is_hygienic() {
    use shadowing::{Locals, Variants};

    let key = Locals {
        __text: "t".into(),
        __parser: "p".into(),
        __formatter: "f".into(),
        __field1: "one".into(),
        __field0: 0,
        f: ":".into(),
    };
    assert_eq!(key.to_string(), r"t:p:f:one:0:\:");
    assert_eq!(key.to_string().parse::<Locals>().unwrap(), key);

    for key in [
        Variants::Ok,
        Variants::Err("e".into()),
        Variants::Some {
            __field0: "s".into(),
            __text: 1,
        },
    ] {
        assert_eq!(key.to_string().parse::<Variants>().unwrap(), key);
    }
}

/// A generic key is a key exactly when its fields' types are: the derive bounds the field
/// types that mention a parameter, and keeps the type's own bounds and const parameters.
#[derive(PersistentKey, Debug, PartialEq)]
struct Wrapper<T>(T);

#[derive(PersistentKey, Debug, PartialEq)]
struct Shaped<T, const N: usize>
where
    T: Copy,
{
    value: T,
    name: String,
}

/// A field type of the user's own, with a hand-written text.
#[derive(Debug, PartialEq, Clone, Copy)]
struct Digit(u8);

impl fmt::Display for Digit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Digit {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse().map(Digit)
    }
}

#[derive(PersistentKey, Debug, PartialEq)]
struct Pair<A, B> {
    left: A,
    right: B,
}

#[test]
fn generic_keys_get_the_bounds_their_fields_need() {
    fn assert_key<K: PersistentKey<Err = KeyParseError>>() {}
    assert_key::<Wrapper<u8>>();
    assert_key::<Pair<Digit, Wrapper<String>>>();
    assert_key::<Pair<Pair<u8, u8>, Wrapper<Pair<char, bool>>>>();

    let pair = Pair {
        left: Digit(4),
        right: Wrapper(Pair {
            left: 'a',
            right: true,
        }),
    };
    assert_eq!(pair.to_string(), r"4:a\:true");
    assert_eq!(
        pair.to_string()
            .parse::<Pair<Digit, Wrapper<Pair<char, bool>>>>()
            .unwrap(),
        pair
    );

    let shaped = Shaped::<Digit, 3> {
        value: Digit(9),
        name: "n".into(),
    };
    assert_eq!(shaped.to_string(), "9:n");
    assert_eq!("9:n".parse::<Shaped<Digit, 3>>().unwrap(), shaped);
    assert_eq!(<Shaped<u8, 1>>::TABLE_NAME, "shaped");
}
