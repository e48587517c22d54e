//! The key format's helpers in `persistent_map::__private`, which the derive's generated code
//! calls, property-tested directly over every separator (any character but the backslash).

use std::borrow::Cow;
use std::fmt;

use persistent_map::__private::{write_fields, write_variant, KeyParser};
use proptest::prelude::*;

/// Fields written the way a derived struct's `Display` writes them.
struct Fields<'a> {
    separator: char,
    fields: &'a [String],
}

impl fmt::Display for Fields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields: Vec<&dyn fmt::Display> = self
            .fields
            .iter()
            .map(|field| field as &dyn fmt::Display)
            .collect();
        write_fields(f, self.separator, &fields)
    }
}

fn separator() -> impl Strategy<Value = char> {
    prop_oneof![Just(':'), Just('/'), Just('é'), Just('a'), any::<char>()]
        .prop_filter("the separator cannot be a backslash", |c| *c != '\\')
}

/// Text made mostly of the characters that matter, sometimes any unicode at all.
fn text() -> impl Strategy<Value = String> {
    let tricky = prop::collection::vec(
        prop_oneof![Just(':'), Just('/'), Just('\\'), Just('é'), Just('a')],
        0..12,
    )
    .prop_map(String::from_iter);
    prop_oneof![3 => tricky, 1 => any::<String>()]
}

fn owned<const N: usize>(fields: [Cow<'_, str>; N]) -> Vec<String> {
    fields.into_iter().map(Cow::into_owned).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn split_fields_inverts_write_fields(
        separator in separator(),
        fields in prop::collection::vec(text(), 3),
    ) {
        let text = Fields { separator, fields: &fields }.to_string();
        let parser = KeyParser::new("Key", separator);
        let parsed = parser.split_fields::<3>(&text);
        prop_assert!(parsed.is_ok(), "{:?}: {:?}", text, parsed.err());
        prop_assert_eq!(owned(parsed.unwrap()), fields);
    }

    #[test]
    fn one_field_is_kept_as_it_is(separator in separator(), field in text()) {
        let text = Fields { separator, fields: std::slice::from_ref(&field) }.to_string();
        prop_assert_eq!(&text, &field);
        let parser = KeyParser::new("Key", separator);
        prop_assert_eq!(owned(parser.split_fields::<1>(&text).unwrap()), vec![field]);
    }

    #[test]
    fn write_fields_inverts_split_fields(separator in separator(), text in text()) {
        let parser = KeyParser::new("Key", separator);
        if let Ok(fields) = parser.split_fields::<2>(&text) {
            let fields = owned(fields);
            prop_assert_eq!(Fields { separator, fields: &fields }.to_string(), text);
        }
    }

    #[test]
    fn split_payload_inverts_write_variant(
        separator in separator(),
        name in "[A-Za-z][A-Za-z0-9_-]{0,8}",
        fields in prop::collection::vec(text(), 0..4),
    ) {
        prop_assume!(!name.contains(separator));
        let displays: Vec<&dyn fmt::Display> =
            fields.iter().map(|field| field as &dyn fmt::Display).collect();
        let mut text = String::new();
        write_variant(&mut text, separator, &name, &displays).unwrap();

        let parser = KeyParser::new("Key", separator);
        prop_assert_eq!(parser.variant_name(&text), name.as_str());
        let parsed = match fields.len() {
            0 => parser.split_payload::<0>(&text).map(owned),
            1 => parser.split_payload::<1>(&text).map(owned),
            2 => parser.split_payload::<2>(&text).map(owned),
            _ => parser.split_payload::<3>(&text).map(owned),
        };
        prop_assert_eq!(parsed.unwrap(), fields);
    }

    #[test]
    fn no_text_makes_a_parser_panic(separator in separator(), text in text()) {
        let parser = KeyParser::new("Key", separator).variant("Variant");
        let _ = parser.split_fields::<0>(&text);
        let _ = parser.split_fields::<2>(&text);
        let _ = parser.split_fields::<7>(&text);
        let _ = parser.split_payload::<0>(&text);
        let _ = parser.split_payload::<1>(&text);
        let _ = parser.split_payload::<4>(&text);
        let _ = parser.variant_name(&text);
        let parsed = text.parse::<u64>().map_err(|error| error.into());
        let _ = parser.parsed_field("field", &text, parsed);
    }
}
