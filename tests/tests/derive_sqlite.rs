//! Derived keys on disk: each key type in its own table of one file, its text in the `key`
//! column exactly as documented, read back by a reopened map.

use std::error::Error;

use persistent_map::sqlite::SqliteBackend;
use persistent_map::{KeyParseError, PersistentError, PersistentKey, PersistentMap};
use persistent_map_tests::{stored_rows, temp_db};
use serde::{Deserialize, Serialize};

#[derive(PersistentKey, Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[persistent_key(table = "sessions")]
struct SessionKey {
    tenant: String,
    user: u64,
}

#[derive(PersistentKey, Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum Resource {
    Root,
    Repo { org: u64, name: String },
}

fn session(tenant: &str, user: u64) -> SessionKey {
    SessionKey {
        tenant: tenant.into(),
        user,
    }
}

#[tokio::test]
async fn each_key_type_keeps_its_text_in_its_own_table() -> persistent_map::Result<()> {
    let (_dir, path) = temp_db();
    {
        let sessions: PersistentMap<SessionKey, u32, SqliteBackend> =
            PersistentMap::open(&path).await?;
        let resources: PersistentMap<Resource, String, SqliteBackend> =
            PersistentMap::open(&path).await?;
        sessions.insert(session("acme", 42), 1).await?;
        sessions.insert(session(r"a:b\c", 7), 2).await?;
        resources.insert(Resource::Root, "root".into()).await?;
        let repo = Resource::Repo {
            org: 1,
            name: "x:y".into(),
        };
        resources.insert(repo, "repo".into()).await?;
    }

    assert_eq!(
        stored_rows(&path, "sessions"),
        [
            (r"a\:b\\c:7".to_string(), "2".to_string()),
            ("acme:42".to_string(), "1".to_string()),
        ]
    );
    assert_eq!(
        stored_rows(&path, "resource"),
        [
            (r"Repo:1:x\:y".to_string(), "\"repo\"".to_string()),
            ("Root".to_string(), "\"root\"".to_string()),
        ]
    );

    let sessions: PersistentMap<SessionKey, u32, SqliteBackend> =
        PersistentMap::open(&path).await?;
    assert_eq!(sessions.get(&session(r"a:b\c", 7)), Some(2));
    assert_eq!(sessions.get(&session("acme", 42)), Some(1));
    Ok(())
}

#[tokio::test]
async fn a_stored_key_that_no_longer_parses_is_reported_with_its_key_parse_error() {
    let (_dir, path) = temp_db();
    {
        let sessions: PersistentMap<SessionKey, u32, SqliteBackend> =
            PersistentMap::open(&path).await.unwrap();
        sessions.insert(session("acme", 42), 1).await.unwrap();
    }
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .execute(
            "INSERT INTO sessions (key, value) VALUES ('acme:forty-two', '2')",
            [],
        )
        .unwrap();
    drop(connection);

    let err = PersistentMap::<SessionKey, u32, SqliteBackend>::open(&path)
        .await
        .expect_err("the bad row is reported");
    assert!(
        matches!(&err, PersistentError::InvalidStoredKey { table, key, .. }
            if table == "sessions" && key == "acme:forty-two"),
        "{err}"
    );
    let parse_error = err
        .source()
        .and_then(|source| source.downcast_ref::<KeyParseError>())
        .expect("the key's parse error is the source");
    assert_eq!(parse_error.field(), Some("user"));
    assert_eq!(parse_error.text(), "forty-two");
    assert_eq!(stored_rows(&path, "sessions").len(), 2, "nothing was lost");
}
