//! `parse(to_string(k)) == k` for every key, `to_string(parse(s)) == s` for every text that
//! parses, and no text makes `from_str` panic: for each key shape, nested, generic and with a
//! custom separator, over field texts full of separators, backslashes, empty strings and
//! unicode.

use std::fmt::Debug;

use persistent_map::PersistentKey;
use proptest::prelude::*;

#[derive(PersistentKey, Debug, Clone, PartialEq)]
struct Named {
    first: String,
    second: String,
    third: String,
}

#[derive(PersistentKey, Debug, Clone, PartialEq)]
struct Tuple(String, String);

#[derive(PersistentKey, Debug, Clone, PartialEq)]
struct Newtype(String);

#[derive(PersistentKey, Debug, Clone, PartialEq)]
struct OneNamed {
    only: String,
}

#[derive(PersistentKey, Debug, Clone, PartialEq)]
struct Unit;

/// A multi-field key whose fields are themselves multi-field keys.
#[derive(PersistentKey, Debug, Clone, PartialEq)]
struct Nested {
    named: Named,
    tail: String,
    tuple: Tuple,
}

#[derive(PersistentKey, Debug, Clone, PartialEq)]
enum Mixed {
    Unit,
    Tag(String),
    Pair(String, String),
    Struct { left: String, right: String },
    Key(Named),
    Inside { nested: Nested, tail: String },
    Empty {},
}

#[derive(PersistentKey, Debug, Clone, PartialEq)]
struct Generic<A, B> {
    left: A,
    right: B,
}

#[derive(PersistentKey, Debug, Clone, PartialEq)]
enum GenericEnum<T> {
    Nothing,
    One(T),
    Two(T, T),
}

#[derive(PersistentKey, Debug, Clone, PartialEq)]
#[persistent_key(separator = '/')]
struct Slashed {
    left: String,
    colon: Named,
}

#[derive(PersistentKey, Debug, Clone, PartialEq)]
#[persistent_key(separator = 'é')]
enum Accented {
    Plain,
    Fields { left: String, right: Slashed },
}

/// Fields of other types than `String`: their round trip holds, their text need not be
/// canonical (`+7` parses as `7`).
#[derive(PersistentKey, Debug, Clone, PartialEq)]
struct Scalars {
    number: i64,
    letter: char,
    flag: bool,
    unsigned: u8,
}

/// Text made mostly of the characters that matter, sometimes any unicode at all.
fn text() -> impl Strategy<Value = String> {
    let tricky = prop::collection::vec(
        prop_oneof![
            Just(':'),
            Just('/'),
            Just('\\'),
            Just('é'),
            Just('a'),
            any::<char>(),
        ],
        0..10,
    )
    .prop_map(String::from_iter);
    prop_oneof![3 => tricky, 1 => any::<String>()]
}

fn named() -> impl Strategy<Value = Named> {
    (text(), text(), text()).prop_map(|(first, second, third)| Named {
        first,
        second,
        third,
    })
}

fn tuple() -> impl Strategy<Value = Tuple> {
    (text(), text()).prop_map(|(left, right)| Tuple(left, right))
}

fn nested() -> impl Strategy<Value = Nested> {
    (named(), text(), tuple()).prop_map(|(named, tail, tuple)| Nested { named, tail, tuple })
}

fn mixed() -> impl Strategy<Value = Mixed> {
    prop_oneof![
        Just(Mixed::Unit),
        text().prop_map(Mixed::Tag),
        (text(), text()).prop_map(|(left, right)| Mixed::Pair(left, right)),
        (text(), text()).prop_map(|(left, right)| Mixed::Struct { left, right }),
        named().prop_map(Mixed::Key),
        (nested(), text()).prop_map(|(nested, tail)| Mixed::Inside { nested, tail }),
        Just(Mixed::Empty {}),
    ]
}

fn slashed() -> impl Strategy<Value = Slashed> {
    (text(), named()).prop_map(|(left, colon)| Slashed { left, colon })
}

fn accented() -> impl Strategy<Value = Accented> {
    prop_oneof![
        Just(Accented::Plain),
        (text(), slashed()).prop_map(|(left, right)| Accented::Fields { left, right }),
    ]
}

fn generic_enum() -> impl Strategy<Value = GenericEnum<Named>> {
    prop_oneof![
        Just(GenericEnum::Nothing),
        named().prop_map(GenericEnum::One),
        (named(), named()).prop_map(|(first, second)| GenericEnum::Two(first, second)),
    ]
}

/// `key` survives its own text.
fn assert_round_trip<K>(key: &K) -> Result<(), TestCaseError>
where
    K: PersistentKey + Debug + PartialEq,
    K::Err: Debug,
{
    let text = key.to_string();
    match text.parse::<K>() {
        Ok(parsed) => prop_assert_eq!(&parsed, key, "text {:?}", text),
        Err(err) => prop_assert!(false, "{:?} did not parse: {:?}", text, err),
    }
    Ok(())
}

/// If `text` parses, writing the key gives `text` back. Returns whether it parsed.
fn assert_canonical<K>(text: &str) -> Result<bool, TestCaseError>
where
    K: PersistentKey + Debug,
{
    match text.parse::<K>() {
        Ok(key) => {
            prop_assert_eq!(key.to_string(), text, "parsed as {:?}", key);
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

/// Feeds `text` to the parser of every key type: none may panic, and whatever parses (into a
/// type whose fields are all `String`s) must be written back unchanged.
fn check_every_parser(text: &str) -> Result<(), TestCaseError> {
    assert_canonical::<Named>(text)?;
    assert_canonical::<Tuple>(text)?;
    assert_canonical::<Newtype>(text)?;
    assert_canonical::<OneNamed>(text)?;
    assert_canonical::<Unit>(text)?;
    assert_canonical::<Nested>(text)?;
    assert_canonical::<Mixed>(text)?;
    assert_canonical::<Generic<String, Named>>(text)?;
    assert_canonical::<GenericEnum<Named>>(text)?;
    assert_canonical::<Slashed>(text)?;
    assert_canonical::<Accented>(text)?;
    // Not canonical (`+1` parses as `1`), but it must not panic either.
    let _ = text.parse::<Scalars>();
    let _ = text.parse::<Generic<u32, i8>>();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn named_struct_round_trips(key in named()) {
        assert_round_trip(&key)?;
    }

    #[test]
    fn tuple_struct_round_trips(key in tuple()) {
        assert_round_trip(&key)?;
    }

    #[test]
    fn newtype_and_one_named_field_round_trip(field in text()) {
        assert_round_trip(&Newtype(field.clone()))?;
        assert_round_trip(&OneNamed { only: field })?;
    }

    #[test]
    fn nested_struct_round_trips(key in nested()) {
        assert_round_trip(&key)?;
    }

    #[test]
    fn enum_round_trips(key in mixed()) {
        assert_round_trip(&key)?;
    }

    #[test]
    fn generic_keys_round_trip(
        left in text(),
        right in named(),
        number in any::<u32>(),
        signed in any::<i8>(),
        key in generic_enum(),
    ) {
        assert_round_trip(&Generic { left, right })?;
        assert_round_trip(&Generic { left: number, right: signed })?;
        assert_round_trip(&Generic { left: Newtype(number.to_string()), right: Unit })?;
        assert_round_trip(&key)?;
    }

    #[test]
    fn custom_separators_round_trip(slashed in slashed(), accented in accented()) {
        assert_round_trip(&slashed)?;
        assert_round_trip(&accented)?;
    }

    #[test]
    fn scalar_fields_round_trip(
        number in any::<i64>(),
        letter in any::<char>(),
        flag in any::<bool>(),
        unsigned in any::<u8>(),
    ) {
        assert_round_trip(&Scalars { number, letter, flag, unsigned })?;
    }

    #[test]
    fn arbitrary_text_never_panics_and_what_parses_is_canonical(text in text()) {
        check_every_parser(&text)?;
    }

    #[test]
    fn arbitrary_variant_text_never_panics_and_what_parses_is_canonical(
        name in prop::sample::select(vec!["Unit", "Tag", "Pair", "Struct", "Key", "Inside", "Empty", "Nothing", "One", "Two", "Plain", "Fields", "Other"]),
        separator in prop::sample::select(vec!["", ":", "é", "/"]),
        payload in text(),
    ) {
        check_every_parser(&format!("{name}{separator}{payload}"))?;
    }
}

/// Every text of up to `max_len` tokens from `alphabet`.
fn all_texts(alphabet: &[&str], max_len: u32) -> Vec<String> {
    let mut texts = vec![String::new()];
    let mut last = vec![String::new()];
    for _ in 0..max_len {
        last = last
            .iter()
            .flat_map(|prefix| alphabet.iter().map(move |token| format!("{prefix}{token}")))
            .collect();
        texts.extend(last.iter().cloned());
    }
    texts
}

/// Counts the texts that parse as `K`, checking each is written back unchanged.
fn count_canonical<K: PersistentKey + Debug>(texts: &[String]) -> usize {
    texts
        .iter()
        .filter(|text| assert_canonical::<K>(text).expect("the text is canonical"))
        .count()
}

/// The short texts, all of them rather than a sample: the escapes' corner cases live there.
#[test]
fn every_short_text_that_parses_is_canonical() {
    let texts = all_texts(&["a", ":", "\\", "é", "/"], 6);
    assert!(count_canonical::<Named>(&texts) > 1000);
    assert!(count_canonical::<Tuple>(&texts) > 1000);
    assert_eq!(count_canonical::<Newtype>(&texts), texts.len());
    assert_eq!(count_canonical::<Unit>(&texts), 1);
    // A nested field needs escaped separators, so these tokens come whole.
    let nested_texts = all_texts(&[r"\:", ":", "a", r"\\", "\\"], 7);
    assert!(count_canonical::<Nested>(&nested_texts) > 50);
    assert!(count_canonical::<Slashed>(&texts) > 100);

    let variant_texts = all_texts(&["Tag", "Pair", "Unit", "Key", "Empty", ":", "\\", "a"], 4);
    assert!(count_canonical::<Mixed>(&variant_texts) > 50);
    let generic_texts = all_texts(&["One", "Two", "Nothing", ":", "\\", "a"], 5);
    assert!(count_canonical::<GenericEnum<Named>>(&generic_texts) > 10);
}
