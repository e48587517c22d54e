//! The documented text of each key shape, asserted exactly: the text is a file format.

use persistent_map::PersistentKey;

#[derive(PersistentKey, Debug, Clone, PartialEq)]
struct SessionKey {
    tenant: String,
    user: u64,
}

#[derive(PersistentKey, Debug, Clone, PartialEq)]
struct UserId(u64);

#[derive(PersistentKey, Debug, Clone, PartialEq)]
struct Email {
    address: String,
}

#[derive(PersistentKey, Debug, Clone, PartialEq)]
struct Pair(String, String);

#[derive(PersistentKey, Debug, Clone, PartialEq)]
struct Singleton;

#[derive(PersistentKey, Debug, Clone, PartialEq)]
struct EmptyBraces {}

#[derive(PersistentKey, Debug, Clone, PartialEq)]
enum Resource {
    Root,
    Tag(String),
    Repo { org: u64, name: String },
    Pair(String, String),
    Session(SessionKey),
    EmptyBraces {},
    EmptyParens(),
}

#[derive(PersistentKey, Debug, Clone, PartialEq)]
#[persistent_key(rename_all = "kebab-case")]
enum Role {
    Admin,
    Member,
    GuestUser,
    #[persistent_key(rename = "owner!")]
    SuperUser,
}

#[derive(PersistentKey, Debug, Clone, PartialEq)]
#[persistent_key(separator = '/')]
struct FilePath {
    bucket: String,
    name: String,
}

/// The separator written as a string of one character, as `separator = "::"` (an error) tempts.
#[derive(PersistentKey, Debug, Clone, PartialEq)]
#[persistent_key(separator = "|")]
struct Piped(String, u32);

#[derive(PersistentKey, Debug, Clone, PartialEq)]
#[persistent_key(separator = '/')]
enum Route {
    Home,
    Page { section: String, slug: String },
}

/// Asserts that `key` is written as `text` and that `text` parses back to `key`.
fn assert_text<K>(key: K, text: &str)
where
    K: PersistentKey + std::fmt::Debug + PartialEq,
    K::Err: std::fmt::Debug,
{
    assert_eq!(key.to_string(), text);
    assert_eq!(text.parse::<K>().unwrap(), key);
}

#[test]
fn a_struct_joins_its_fields_with_the_separator() {
    assert_text(
        SessionKey {
            tenant: "acme".into(),
            user: 42,
        },
        "acme:42",
    );
}

#[test]
fn a_struct_escapes_the_separator_and_backslash_inside_a_field() {
    assert_text(
        SessionKey {
            tenant: "a:b".into(),
            user: 42,
        },
        r"a\:b:42",
    );
    assert_text(
        SessionKey {
            tenant: r"a\b".into(),
            user: 42,
        },
        r"a\\b:42",
    );
    assert_text(Pair(String::new(), String::new()), ":");
    assert_text(Pair(":".into(), r"\".into()), r"\::\\");
}

#[test]
fn a_newtype_or_one_named_field_is_the_field_text_unchanged() {
    assert_text(UserId(7), "7");
    assert_text(
        Email {
            address: r"a:b\c".into(),
        },
        r"a:b\c",
    );
}

#[test]
fn a_unit_struct_is_the_empty_text() {
    assert_text(Singleton, "");
    assert_text(EmptyBraces {}, "");
    assert!("x".parse::<Singleton>().is_err());
}

#[test]
fn an_enum_writes_the_variant_name_then_its_fields() {
    assert_text(Resource::Root, "Root");
    assert_text(Resource::Tag("a:b".into()), "Tag:a:b");
    assert_text(Resource::Tag(String::new()), "Tag:");
    assert_text(
        Resource::Repo {
            org: 1,
            name: "x".into(),
        },
        "Repo:1:x",
    );
    assert_text(Resource::Pair("a:b".into(), "c".into()), r"Pair:a\:b:c");
    assert_text(Resource::EmptyBraces {}, "EmptyBraces");
    assert_text(Resource::EmptyParens(), "EmptyParens");
}

#[test]
fn a_nested_key_is_written_as_its_own_text() {
    let session = SessionKey {
        tenant: "a:b".into(),
        user: 42,
    };
    assert_text(Resource::Session(session.clone()), r"Session:a\:b:42");
}

#[test]
fn rename_and_rename_all_set_the_variant_texts() {
    assert_text(Role::Admin, "admin");
    assert_text(Role::Member, "member");
    assert_text(Role::GuestUser, "guest-user");
    assert_text(Role::SuperUser, "owner!");
    assert!("Admin".parse::<Role>().is_err());
    assert!("SuperUser".parse::<Role>().is_err());
}

#[test]
fn a_custom_separator_joins_and_is_escaped() {
    assert_text(
        FilePath {
            bucket: "photos".into(),
            name: "2024/cat:1.png".into(),
        },
        r"photos/2024\/cat:1.png",
    );
    assert_text(Route::Home, "Home");
    assert_text(
        Route::Page {
            section: "a:b".into(),
            slug: "c/d".into(),
        },
        r"Page/a:b/c\/d",
    );
    assert_text(Piped("a|b".into(), 7), r"a\|b|7");
}
