//! What a map writes is what a reopened map, and any other SQLite client, reads back.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use persistent_map::sqlite::SqliteBackend;
use persistent_map::{PersistentKey, PersistentMap};
use persistent_map_tests::{stored_rows, temp_db};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    visits: u32,
}

fn profile(name: &str, visits: u32) -> Profile {
    Profile {
        name: name.to_string(),
        visits,
    }
}

/// A key type with hand-written text and table, as a user without the derive would write it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
struct UserId(u64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user-{}", self.0)
    }
}

impl FromStr for UserId {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.strip_prefix("user-")
            .unwrap_or(text)
            .parse()
            .map(UserId)
    }
}

impl PersistentKey for UserId {
    const TABLE_NAME: &'static str = "users";
}

fn contents<K, V, B>(map: &PersistentMap<K, V, B>, keys: &[K]) -> BTreeMap<String, V>
where
    K: Eq
        + std::hash::Hash
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
        + fmt::Display,
    V: Clone + Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    B: persistent_map::StorageBackend<K, V> + Send + Sync + 'static,
{
    keys.iter()
        .filter_map(|key| map.get(key).map(|value| (key.to_string(), value)))
        .collect()
}

#[tokio::test]
async fn string_keys_survive_insert_overwrite_remove_and_reopen() {
    let (_dir, path) = temp_db();
    let keys: Vec<String> = ["ada", "bob", "cy"].iter().map(|k| k.to_string()).collect();
    {
        let map: PersistentMap<String, Profile, SqliteBackend> =
            PersistentMap::open(&path).await.unwrap();
        assert_eq!(
            map.insert(keys[0].clone(), profile("Ada", 1))
                .await
                .unwrap(),
            None
        );
        map.insert(keys[1].clone(), profile("Bob", 1))
            .await
            .unwrap();
        map.insert(keys[2].clone(), profile("Cy", 1)).await.unwrap();
        assert_eq!(
            map.insert(keys[1].clone(), profile("Bob", 2))
                .await
                .unwrap(),
            Some(profile("Bob", 1))
        );
        assert_eq!(map.remove(&keys[2]).await.unwrap(), Some(profile("Cy", 1)));
        assert_eq!(map.backend().table(), "kv");
    }

    let reopened: PersistentMap<String, Profile, SqliteBackend> =
        PersistentMap::open(&path).await.unwrap();
    assert_eq!(reopened.len(), 2);
    assert_eq!(
        contents(&reopened, &keys),
        BTreeMap::from([
            ("ada".to_string(), profile("Ada", 1)),
            ("bob".to_string(), profile("Bob", 2)),
        ])
    );
    assert_eq!(
        stored_rows(&path, "kv"),
        vec![
            (
                "ada".to_string(),
                r#"{"name":"Ada","visits":1}"#.to_string()
            ),
            (
                "bob".to_string(),
                r#"{"name":"Bob","visits":2}"#.to_string()
            ),
        ]
    );
}

#[tokio::test]
async fn typed_keys_live_in_their_own_table_beside_kv() {
    let (_dir, path) = temp_db();
    {
        let users: PersistentMap<UserId, Profile, SqliteBackend> =
            PersistentMap::open(&path).await.unwrap();
        let notes: PersistentMap<String, String, SqliteBackend> =
            PersistentMap::open(&path).await.unwrap();
        users.insert(UserId(7), profile("Ada", 1)).await.unwrap();
        users.insert(UserId(8), profile("Bob", 1)).await.unwrap();
        users.insert(UserId(7), profile("Ada", 5)).await.unwrap();
        users.remove(&UserId(8)).await.unwrap();
        notes.insert("motd".into(), "hello".into()).await.unwrap();
        assert_eq!(users.backend().table(), "users");
    }

    let users: PersistentMap<UserId, Profile, SqliteBackend> =
        PersistentMap::open(&path).await.unwrap();
    let notes: PersistentMap<String, String, SqliteBackend> =
        PersistentMap::open(&path).await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users.get(&UserId(7)), Some(profile("Ada", 5)));
    assert_eq!(notes.get("motd"), Some("hello".to_string()));
    assert_eq!(
        stored_rows(&path, "users"),
        vec![(
            "user-7".to_string(),
            r#"{"name":"Ada","visits":5}"#.to_string()
        )]
    );
    assert_eq!(
        stored_rows(&path, "kv"),
        vec![("motd".to_string(), r#""hello""#.to_string())]
    );
}

#[tokio::test]
async fn a_table_written_by_another_client_loads_as_it_would_have_been_written() {
    let (_dir, path) = temp_db();
    let connection = rusqlite::Connection::open(&path).unwrap();
    // The exact schema persistent-map 0.1.3 created, with its redundant index.
    connection
        .execute_batch(
            "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE INDEX kv_key_idx ON kv (key);
             INSERT INTO kv VALUES ('ada', '{\"name\":\"Ada\",\"visits\":3}');",
        )
        .unwrap();
    drop(connection);

    let map: PersistentMap<String, Profile, _> =
        PersistentMap::new(SqliteBackend::new(path.as_path()).await.unwrap())
            .await
            .unwrap();
    assert_eq!(map.get("ada"), Some(profile("Ada", 3)));
    map.insert("bob".into(), profile("Bob", 1)).await.unwrap();
    assert_eq!(stored_rows(&path, "kv").len(), 2);
}

#[tokio::test]
async fn every_path_spelling_opens_the_same_file() {
    let (dir, path) = temp_db();
    let as_str: &str = path.to_str().unwrap();
    let as_path: &Path = path.as_path();
    let as_path_buf: &PathBuf = &path;
    let dotted = dir.path().join(".").join("test.db");

    let a = SqliteBackend::new(as_str).await.unwrap();
    let b = SqliteBackend::with_table(as_path, "b").await.unwrap();
    let c = SqliteBackend::for_key::<UserId>(as_path_buf).await.unwrap();
    let d = SqliteBackend::with_table(dotted, "d").await.unwrap();
    let e = SqliteBackend::builder(path.clone())
        .table("e")
        .open()
        .await
        .unwrap();
    // One file, one writer: every backend reports the first opener's path.
    for backend in [&b, &c, &d, &e] {
        assert_eq!(backend.path(), a.path());
    }
    assert_eq!(
        [a.table(), b.table(), c.table(), d.table(), e.table()],
        ["kv", "b", "users", "d", "e"]
    );
}

#[tokio::test]
async fn load_replaces_memory_with_what_is_stored() {
    let (_dir, path) = temp_db();
    let map: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path).await.unwrap();
    map.insert("kept".into(), 1).await.unwrap();
    map.insert("deleted-elsewhere".into(), 2).await.unwrap();

    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch(
            "DELETE FROM kv WHERE key = 'deleted-elsewhere';
             INSERT INTO kv VALUES ('added-elsewhere', '3');
             UPDATE kv SET value = '10' WHERE key = 'kept';",
        )
        .unwrap();

    map.load().await.unwrap();
    assert_eq!(map.len(), 2);
    assert_eq!(map.get("kept"), Some(10));
    assert_eq!(map.get("added-elsewhere"), Some(3));
    assert_eq!(map.get("deleted-elsewhere"), None);
}
