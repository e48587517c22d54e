//! `TABLE_NAME`: the type's name in snake_case (a run of capitals is one word), or the `table`
//! attribute; either way a name the backends accept.

use persistent_map::{validate_table_name, PersistentKey};

#[derive(PersistentKey)]
struct SessionKey {
    tenant: String,
    user: u64,
}

#[derive(PersistentKey)]
struct HTTPRequestKey(String);

#[derive(PersistentKey)]
struct HttpRequestKey(String);

#[derive(PersistentKey)]
struct UserID(u64);

#[derive(PersistentKey)]
struct V2Key(u64);

#[derive(PersistentKey)]
struct Key2(u64);

#[derive(PersistentKey)]
struct IO;

#[allow(non_camel_case_types)]
#[derive(PersistentKey)]
struct legacy_key(u64);

#[derive(PersistentKey)]
struct r#Type(u64);

#[derive(PersistentKey)]
enum Role {
    Admin,
}

#[derive(PersistentKey)]
struct Generic<T>(T);

#[derive(PersistentKey)]
#[persistent_key(table = "sessions")]
struct Named {
    tenant: String,
    user: u64,
}

#[derive(PersistentKey)]
#[persistent_key(table = "_Mixed_Case_2")]
enum Tagged {
    One,
}

#[test]
fn the_default_is_the_type_name_in_snake_case() {
    assert_eq!(SessionKey::TABLE_NAME, "session_key");
    assert_eq!(HTTPRequestKey::TABLE_NAME, "http_request_key");
    assert_eq!(HttpRequestKey::TABLE_NAME, "http_request_key");
    assert_eq!(UserID::TABLE_NAME, "user_id");
    assert_eq!(V2Key::TABLE_NAME, "v2_key");
    assert_eq!(Key2::TABLE_NAME, "key2");
    assert_eq!(IO::TABLE_NAME, "io");
    assert_eq!(legacy_key::TABLE_NAME, "legacy_key");
    assert_eq!(r#Type::TABLE_NAME, "type");
    assert_eq!(Role::TABLE_NAME, "role");
    assert_eq!(<Generic<u8>>::TABLE_NAME, "generic");
    assert_eq!(<Generic<String>>::TABLE_NAME, "generic");
}

#[test]
fn the_attribute_names_the_table_as_written() {
    assert_eq!(Named::TABLE_NAME, "sessions");
    assert_eq!(Tagged::TABLE_NAME, "_Mixed_Case_2");
}

#[test]
fn every_derived_name_is_one_the_backends_accept() {
    for name in [
        SessionKey::TABLE_NAME,
        HTTPRequestKey::TABLE_NAME,
        UserID::TABLE_NAME,
        V2Key::TABLE_NAME,
        IO::TABLE_NAME,
        legacy_key::TABLE_NAME,
        r#Type::TABLE_NAME,
        Named::TABLE_NAME,
        Tagged::TABLE_NAME,
    ] {
        assert!(validate_table_name(name).is_ok(), "{name}");
    }
}
