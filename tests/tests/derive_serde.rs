//! `#[persistent_key(serde)]`: a key type with no serde derive of its own is a map key, and
//! serde sees it as its text.

use std::collections::BTreeMap;

use persistent_map::sqlite::SqliteBackend;
use persistent_map::{PersistentKey, PersistentMap};
use persistent_map_tests::{stored_rows, temp_db};

#[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[persistent_key(table = "sessions", serde)]
struct SessionKey {
    tenant: String,
    user: u64,
}

#[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash)]
#[persistent_key(serde, rename_all = "kebab-case")]
enum Resource {
    Root,
    Repo { org: u64, name: String },
}

#[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash)]
#[persistent_key(serde)]
struct Pair<A, B>(A, B);

#[test]
fn serde_sees_the_key_as_its_text() {
    let key = SessionKey {
        tenant: "a:b".into(),
        user: 42,
    };
    assert_eq!(serde_json::to_string(&key).unwrap(), r#""a\\:b:42""#);
    assert_eq!(
        serde_json::from_str::<SessionKey>(r#""a\\:b:42""#).unwrap(),
        key
    );
    let repo = Resource::Repo {
        org: 1,
        name: "x".into(),
    };
    assert_eq!(serde_json::to_string(&repo).unwrap(), r#""repo:1:x""#);
    assert_eq!(
        serde_json::from_str::<Vec<Resource>>(r#"["root","repo:1:x"]"#).unwrap(),
        [Resource::Root, repo]
    );
    assert_eq!(serde_json::to_string(&Pair(1u8, 'c')).unwrap(), r#""1:c""#);
    assert_eq!(
        serde_json::from_str::<Pair<u8, char>>(r#""1:c""#).unwrap(),
        Pair(1, 'c')
    );
    // As a JSON object's key, too: it is a string.
    let by_key = BTreeMap::from([(key.clone(), 1)]);
    assert_eq!(serde_json::to_string(&by_key).unwrap(), r#"{"a\\:b:42":1}"#);
}

#[test]
fn a_text_that_does_not_parse_is_a_serde_error_naming_the_type() {
    let err = serde_json::from_str::<SessionKey>(r#""acme""#).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"cannot parse SessionKey from "acme": expected 2 fields separated by `:`"#
    );
    let err = serde_json::from_str::<SessionKey>("42").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid type: integer `42`, expected a string"),
        "{err}"
    );
}

#[tokio::test]
async fn a_key_without_a_serde_derive_keys_a_sqlite_map() -> persistent_map::Result<()> {
    let (_dir, path) = temp_db();
    let key = SessionKey {
        tenant: "acme".into(),
        user: 42,
    };
    {
        let map: PersistentMap<SessionKey, u32, SqliteBackend> = PersistentMap::open(&path).await?;
        map.insert(key.clone(), 7).await?;
    }
    assert_eq!(
        stored_rows(&path, "sessions"),
        [("acme:42".to_string(), "7".to_string())]
    );
    let reopened: PersistentMap<SessionKey, u32, SqliteBackend> =
        PersistentMap::open(&path).await?;
    assert_eq!(reopened.get(&key), Some(7));
    Ok(())
}
