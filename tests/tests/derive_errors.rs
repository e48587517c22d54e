//! What a derived key's `FromStr` says when the text is wrong: a `KeyParseError` that names the
//! type, the variant and field where it applies, the offending text and what was expected.

use std::error::Error;
use std::num::ParseIntError;

use persistent_map::{KeyParseError, PersistentKey};

#[derive(PersistentKey, Debug, PartialEq)]
struct SessionKey {
    tenant: String,
    user: u64,
}

#[derive(PersistentKey, Debug, PartialEq)]
struct Point(i32, i32);

#[derive(PersistentKey, Debug, PartialEq)]
struct Singleton;

#[derive(PersistentKey, Debug, PartialEq)]
enum Role {
    Admin,
    Member,
    #[persistent_key(rename = "guest-user")]
    Guest,
}

#[derive(PersistentKey, Debug, PartialEq)]
enum Resource {
    Root,
    Tag(String),
    Repo { org: u64, name: String },
    Session(SessionKey),
}

#[derive(PersistentKey, Debug, PartialEq)]
struct Outer {
    session: SessionKey,
    role: Role,
}

fn parse_error<K: PersistentKey<Err = KeyParseError> + std::fmt::Debug>(
    text: &str,
) -> KeyParseError {
    text.parse::<K>().expect_err(text)
}

#[test]
fn is_a_thread_safe_static_error() {
    fn assert_error<E: Error + Send + Sync + 'static>() {}
    assert_error::<KeyParseError>();

    fn boxed(text: &str) -> Result<SessionKey, Box<dyn Error + Send + Sync>> {
        Ok(text.parse::<SessionKey>()?)
    }
    assert!(boxed("acme").is_err());
}

#[test]
fn a_field_that_does_not_parse_is_named_with_its_error_as_source() {
    let err = parse_error::<SessionKey>("acme:x");
    assert_eq!(err.type_name(), "SessionKey");
    assert_eq!(err.variant(), None);
    assert_eq!(err.field(), Some("user"));
    assert_eq!(err.text(), "x");
    assert_eq!(err.expected(), "a valid `u64`");
    assert_eq!(
        err.to_string(),
        r#"cannot parse SessionKey field `user` from "x": expected a valid `u64`"#
    );
    let source = err.source().expect("the field's own error");
    assert!(source.is::<ParseIntError>());
}

#[test]
fn a_tuple_field_is_named_by_its_index() {
    let err = parse_error::<Point>("1:y");
    assert_eq!(err.field(), Some("1"));
    assert_eq!(err.text(), "y");
    assert_eq!(err.expected(), "a valid `i32`");
}

#[test]
fn the_text_of_an_escaped_field_is_shown_unescaped() {
    let err = parse_error::<Point>(r"1\:2:3");
    assert_eq!(err.field(), Some("0"));
    assert_eq!(err.text(), "1:2");
}

#[test]
fn a_wrong_field_count_says_how_many_were_expected() {
    for text in ["acme", "acme:42:extra", ""] {
        let err = parse_error::<SessionKey>(text);
        assert_eq!(err.type_name(), "SessionKey");
        assert_eq!(err.field(), None);
        assert_eq!(err.text(), text);
        assert_eq!(err.expected(), "2 fields separated by `:`");
        assert_eq!(
            err.to_string(),
            format!("cannot parse SessionKey from {text:?}: expected 2 fields separated by `:`")
        );
        assert!(err.source().is_none());
    }
}

#[test]
fn a_unit_struct_expects_the_empty_text() {
    let err = parse_error::<Singleton>("x");
    assert_eq!(err.text(), "x");
    assert_eq!(err.expected(), "the empty text");
}

#[test]
fn a_backslash_must_start_an_escape() {
    for (text, at) in [(r"a\b:42", 1), (r"acme:42\", 7)] {
        let err = parse_error::<SessionKey>(text);
        assert_eq!(err.text(), text);
        assert_eq!(
            err.expected(),
            format!(r"`\\` or `\:` at byte {at}, where a backslash starts an escape")
        );
    }
}

#[test]
fn an_unknown_variant_lists_the_variant_texts() {
    let err = parse_error::<Role>("Owner");
    assert_eq!(err.type_name(), "Role");
    assert_eq!(err.variant(), None);
    assert_eq!(err.text(), "Owner");
    assert_eq!(err.expected(), "one of Admin, Member, guest-user");
    assert_eq!(
        err.to_string(),
        r#"cannot parse Role from "Owner": expected one of Admin, Member, guest-user"#
    );
    assert!(parse_error::<Role>("Guest")
        .expected()
        .contains("guest-user"));
}

#[test]
fn a_unit_variant_takes_nothing_after_its_name() {
    let err = parse_error::<Role>("Admin:x");
    assert_eq!(err.variant(), Some("Admin"));
    assert_eq!(err.text(), "Admin:x");
    assert_eq!(err.expected(), "nothing after `Admin`");
    assert_eq!(
        err.to_string(),
        r#"cannot parse Role::Admin from "Admin:x": expected nothing after `Admin`"#
    );
    let err = parse_error::<Role>("guest-user:");
    assert_eq!(err.variant(), Some("Guest"));
    assert_eq!(err.expected(), "nothing after `guest-user`");
}

#[test]
fn a_variant_with_fields_needs_them() {
    let err = parse_error::<Resource>("Tag");
    assert_eq!(err.variant(), Some("Tag"));
    assert_eq!(err.expected(), "`Tag:` followed by 1 field");

    let err = parse_error::<Resource>("Repo");
    assert_eq!(
        err.expected(),
        "`Repo:` followed by 2 fields separated by `:`"
    );

    let err = parse_error::<Resource>("Repo:1");
    assert_eq!(err.variant(), Some("Repo"));
    assert_eq!(err.text(), "1");
    assert_eq!(err.expected(), "2 fields separated by `:`");
}

#[test]
fn a_variant_field_is_named_with_its_variant() {
    let err = parse_error::<Resource>("Repo:x:name");
    assert_eq!(err.type_name(), "Resource");
    assert_eq!(err.variant(), Some("Repo"));
    assert_eq!(err.field(), Some("org"));
    assert_eq!(err.text(), "x");
    assert_eq!(
        err.to_string(),
        r#"cannot parse Resource::Repo field `org` from "x": expected a valid `u64`"#
    );
    assert!(err.source().unwrap().is::<ParseIntError>());
}

#[test]
fn a_nested_key_error_is_the_source_of_the_outer_one() {
    let err = parse_error::<Resource>("Session:acme:x");
    assert_eq!(err.variant(), Some("Session"));
    assert_eq!(err.field(), Some("0"));
    assert_eq!(err.text(), "acme:x");
    assert!(err.expected().contains("SessionKey"), "{err}");

    let inner = err
        .source()
        .and_then(|source| source.downcast_ref::<KeyParseError>())
        .expect("the nested key's error");
    assert_eq!(inner.type_name(), "SessionKey");
    assert_eq!(inner.field(), Some("user"));
    assert_eq!(inner.text(), "x");
    assert!(inner.source().unwrap().is::<ParseIntError>());

    let err = parse_error::<Outer>(r"acme\:42:Owner");
    assert_eq!(err.field(), Some("role"));
    let inner = err
        .source()
        .unwrap()
        .downcast_ref::<KeyParseError>()
        .unwrap();
    assert_eq!(inner.expected(), "one of Admin, Member, guest-user");
}

#[test]
fn a_stored_key_that_no_longer_parses_shows_its_whole_chain() {
    let err: Box<dyn Error + Send + Sync> = Box::new(parse_error::<Outer>(r"acme\:x:Admin"));
    let mut chain = Vec::new();
    let mut next: Option<&(dyn Error + 'static)> = Some(err.as_ref());
    while let Some(error) = next {
        chain.push(error.to_string());
        next = error.source();
    }
    // The type is named by its path: this module's, in whichever test binary holds it.
    let outer = format!(
        r#"cannot parse Outer field `session` from "acme:x": expected a valid `{}::SessionKey`"#,
        module_path!()
    );
    assert_eq!(
        chain,
        [
            outer.as_str(),
            r#"cannot parse SessionKey field `user` from "x": expected a valid `u64`"#,
            "invalid digit found in string",
        ]
    );
}
