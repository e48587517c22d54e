//! Each table records its key layout; a table written in one layout is never silently parsed in
//! another, and `migrate_keys` moves stored keys to a new layout.

use persistent_map::sqlite::{migrate_keys, SqliteBackend};
use persistent_map::{PersistentError, PersistentKey, PersistentMap};
use persistent_map_tests::{stored_rows, temp_db};
use serde::{Deserialize, Serialize};

/// How version 1 of an app keyed its sessions.
#[derive(PersistentKey, Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[persistent_key(table = "sessions")]
struct SessionKeyV1 {
    user: String,
    tenant: String,
}

/// Version 2 swapped the fields: every old key still parses, but wrongly.
#[derive(PersistentKey, Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[persistent_key(table = "sessions")]
struct SessionKey {
    tenant: String,
    user: String,
}

fn layouts(path: &std::path::Path) -> Vec<(String, String)> {
    let connection = rusqlite::Connection::open(path).unwrap();
    let mut statement = connection
        .prepare("SELECT table_name, key_layout FROM persistent_map_tables ORDER BY table_name")
        .unwrap();
    let rows = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap();
    rows.collect::<rusqlite::Result<_>>().unwrap()
}

async fn write_v1(path: &std::path::Path) {
    let map: PersistentMap<SessionKeyV1, u32, SqliteBackend> =
        PersistentMap::open(path).await.unwrap();
    let key = |user: &str, tenant: &str| SessionKeyV1 {
        user: user.into(),
        tenant: tenant.into(),
    };
    map.insert_many([(key("ada", "acme"), 1), (key("bob", "acme"), 2)])
        .await
        .unwrap();
}

#[tokio::test]
async fn the_first_typed_open_records_the_layout_and_the_same_type_reopens() {
    let (_dir, path) = temp_db();
    write_v1(&path).await;
    assert_eq!(
        layouts(&path),
        [("sessions".to_string(), SessionKeyV1::KEY_LAYOUT.to_string())]
    );
    assert_eq!(
        SessionKeyV1::KEY_LAYOUT,
        "v1 separator ':' struct {user, tenant}"
    );
    let reopened: PersistentMap<SessionKeyV1, u32, SqliteBackend> =
        PersistentMap::open(&path).await.unwrap();
    assert_eq!(reopened.len(), 2);
}

#[tokio::test]
async fn a_key_type_with_another_layout_is_refused_not_misparsed() {
    let (_dir, path) = temp_db();
    write_v1(&path).await;
    let err = PersistentMap::<SessionKey, u32, SqliteBackend>::open(&path)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PersistentError::IncompatibleKeyLayout { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("\"sessions\""), "{message}");
    assert!(message.contains("struct {user, tenant}"), "{message}");
    assert!(message.contains("struct {tenant, user}"), "{message}");
    assert!(message.contains("migrate_keys"), "{message}");
    // Nothing was changed: the rows and the record are as v1 left them.
    assert_eq!(stored_rows(&path, "sessions")[0].0, "ada:acme");
    assert_eq!(layouts(&path)[0].1, SessionKeyV1::KEY_LAYOUT);
}

#[tokio::test]
async fn migrate_keys_rewrites_every_key_and_records_the_new_layout() {
    let (_dir, path) = temp_db();
    write_v1(&path).await;
    let moved = migrate_keys(&path, |old: SessionKeyV1| SessionKey {
        tenant: old.tenant,
        user: old.user,
    })
    .await
    .unwrap();
    assert_eq!(moved, 2);
    assert_eq!(
        stored_rows(&path, "sessions"),
        [
            ("acme:ada".to_string(), "1".to_string()),
            ("acme:bob".to_string(), "2".to_string())
        ]
    );
    assert_eq!(layouts(&path)[0].1, SessionKey::KEY_LAYOUT);
    let map: PersistentMap<SessionKey, u32, SqliteBackend> =
        PersistentMap::open(&path).await.unwrap();
    let ada = SessionKey {
        tenant: "acme".into(),
        user: "ada".into(),
    };
    assert_eq!(map.get(&ada), Some(1));
}

#[tokio::test]
async fn a_migration_that_merges_two_keys_changes_nothing() {
    let (_dir, path) = temp_db();
    write_v1(&path).await;
    let err = migrate_keys(&path, |old: SessionKeyV1| SessionKey {
        tenant: old.tenant,
        user: "everyone".into(),
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, PersistentError::DuplicateKey { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("acme:everyone"), "{err}");
    assert_eq!(stored_rows(&path, "sessions").len(), 2);
    assert_eq!(stored_rows(&path, "sessions")[0].0, "ada:acme");
    assert_eq!(layouts(&path)[0].1, SessionKeyV1::KEY_LAYOUT);
}

#[tokio::test]
async fn keys_without_a_layout_are_not_recorded_or_checked() {
    let (_dir, path) = temp_db();
    let map: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path).await.unwrap();
    map.insert("a".into(), 1).await.unwrap();
    // An untyped open of a typed table is allowed too: String keys read any text as it is.
    write_v1(&path).await;
    let untyped = PersistentMap::<String, u32, _>::new(
        SqliteBackend::with_table(&path, "sessions").await.unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(untyped.get("ada:acme"), Some(1));
    assert_eq!(
        layouts(&path),
        [("sessions".to_string(), SessionKeyV1::KEY_LAYOUT.to_string())]
    );
}

/// A key of another table, to make the file's layout table exist.
#[derive(PersistentKey, Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct OtherKey(u32);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_a_layout_waits_for_another_process_writing_the_file() {
    let (_dir, path) = temp_db();
    // The layout table exists, and `sessions` exists with no layout recorded (as a table written
    // before layouts were recorded would).
    drop(
        PersistentMap::<OtherKey, u32, SqliteBackend>::open(&path)
            .await
            .unwrap(),
    );
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE sessions (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)")
        .unwrap();

    // Another process writes for 300 ms, well within the default 5 s busy timeout.
    let holder = {
        let path = path.clone();
        std::thread::spawn(move || {
            let connection = rusqlite::Connection::open(&path).unwrap();
            connection.execute_batch("BEGIN IMMEDIATE").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            connection.execute_batch("COMMIT").unwrap();
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let map = PersistentMap::<SessionKey, u32, SqliteBackend>::open(&path).await;
    holder.join().unwrap();
    assert!(map.is_ok(), "{:?}", map.err());
    assert!(layouts(&path).contains(&("sessions".to_string(), SessionKey::KEY_LAYOUT.to_string())));
}

#[tokio::test]
async fn migrating_keys_while_a_map_is_open_on_the_table_is_refused() {
    let (_dir, path) = temp_db();
    write_v1(&path).await;
    let open: PersistentMap<SessionKeyV1, u32, SqliteBackend> =
        PersistentMap::open(&path).await.unwrap();
    let migrate = |path| {
        migrate_keys(path, |old: SessionKeyV1| SessionKey {
            tenant: old.tenant,
            user: old.user,
        })
    };
    let err = migrate(&path).await.unwrap_err();
    assert!(
        matches!(&err, PersistentError::TableInUse { table, .. } if table == "sessions"),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"sessions\""), "{err}");
    // Nothing moved: the open map goes on writing the layout the table holds.
    assert_eq!(layouts(&path)[0].1, SessionKeyV1::KEY_LAYOUT);
    open.insert(
        SessionKeyV1 {
            user: "cy".into(),
            tenant: "acme".into(),
        },
        3,
    )
    .await
    .unwrap();
    drop(open);
    assert_eq!(migrate(&path).await.unwrap(), 3);
}

#[tokio::test]
async fn a_map_refuses_to_write_a_layout_another_process_migrated_away_from() {
    let (_dir, path) = temp_db();
    write_v1(&path).await;
    let open: PersistentMap<SessionKeyV1, u32, SqliteBackend> =
        PersistentMap::open(&path).await.unwrap();
    // Another process migrates the table (here its commit, made by a connection of its own).
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE persistent_map_tables SET key_layout = ?1 WHERE table_name = 'sessions'",
            [SessionKey::KEY_LAYOUT],
        )
        .unwrap();
    let before = stored_rows(&path, "sessions");
    let key = SessionKeyV1 {
        user: "dan".into(),
        tenant: "acme".into(),
    };
    let err = open.insert(key.clone(), 4).await.unwrap_err();
    assert!(
        matches!(&err, PersistentError::IncompatibleKeyLayout { table, .. } if table == "sessions"),
        "{err:?}"
    );
    assert_eq!(open.get(&key), None, "memory unchanged");
    assert_eq!(stored_rows(&path, "sessions"), before, "nothing written");
}
