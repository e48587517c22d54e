//! The SQLite backend and the map report to `tracing`: an `info` event when a file opens, a
//! `debug` event with fields per commit group and per load, and a `warn` when a refresh has to
//! reload the whole table; the writer thread reports to the subscriber of whoever opened the
//! file. Without a subscriber nothing is printed (there is nothing to test there).

use persistent_map::sqlite::SqliteBackend;
use persistent_map::PersistentMap;
use persistent_map_tests::{temp_db, EventLog};

#[tokio::test(flavor = "current_thread")]
async fn opens_commits_loads_and_forced_reloads_are_traced() {
    let log = EventLog::default();
    let _subscriber = tracing::subscriber::set_default(log.clone());
    let (_dir, path) = temp_db();
    let map: PersistentMap<String, u64, SqliteBackend> = PersistentMap::open(&path).await.unwrap();
    map.insert("a".into(), 1).await.unwrap();
    map.insert_many([("b".to_string(), 2), ("c".to_string(), 3)])
        .await
        .unwrap();
    // A program that does not log writes the file: the next refresh reloads the whole table.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("INSERT INTO kv VALUES ('by-hand', '4')", [])
        .unwrap();
    assert!(map.refresh().await.unwrap());

    let events = log.all();
    let find = |level: tracing::Level, message: &str| {
        events
            .iter()
            .find(|event| event.level == level && event.fields["message"].contains(message))
            .unwrap_or_else(|| panic!("no {level} event {message:?} in {events:#?}"))
            .clone()
    };
    let opened = find(tracing::Level::INFO, "opened SQLite database");
    assert!(opened.fields["path"].ends_with("test.db"), "{opened:?}");
    let commit = find(tracing::Level::DEBUG, "SQLite commit");
    assert_eq!(commit.fields["requests"], "1");
    assert_eq!(commit.fields["failed"], "0");
    assert!(commit.fields["tables"].contains("kv"), "{commit:?}");
    assert!(commit.fields.contains_key("elapsed"));
    let loaded = find(tracing::Level::DEBUG, "loaded a map");
    assert_eq!(loaded.fields["entries"], "0");
    let reload = find(tracing::Level::WARN, "reloads the whole table");
    assert_eq!(reload.fields["entries"], "3");
    let reloaded = find(tracing::Level::DEBUG, "reloaded a map");
    assert_eq!(reloaded.fields["entries"], "4");
}
