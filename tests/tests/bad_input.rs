//! Bad input gets a clear error naming what was wrong, never a panic, and nothing stored is lost.

use std::fmt;
use std::str::FromStr;

use persistent_map::sqlite::SqliteBackend;
use persistent_map::{PersistentError, PersistentKey, PersistentMap};
use persistent_map_tests::{stored_rows, temp_db};

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
struct OrderId(u32);

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for OrderId {
    type Err = std::num::ParseIntError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse().map(OrderId)
    }
}

impl PersistentKey for OrderId {
    const TABLE_NAME: &'static str = "orders";
}

type Orders = PersistentMap<OrderId, Vec<String>, SqliteBackend>;

#[tokio::test]
async fn a_directory_that_does_not_exist_is_named() {
    let (dir, _) = temp_db();
    let path = dir.path().join("missing").join("app.db");
    let err = SqliteBackend::new(&path).await.unwrap_err();
    assert!(matches!(err, PersistentError::Open { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("missing"), "{message}");
    // The cause in the operating system's words, and what to do.
    assert!(message.contains("No such file or directory"), "{message}");
    assert!(message.contains("create the directory first"), "{message}");
    assert!(std::error::Error::source(&err).is_some());
    assert!(!path.exists());
}

#[tokio::test]
async fn a_directory_is_not_a_database_file() {
    let (dir, _) = temp_db();
    let err = SqliteBackend::new(dir.path()).await.unwrap_err();
    assert!(matches!(err, PersistentError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("directory"), "{err}");
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_and_left_byte_for_byte() {
    let (dir, path) = temp_db();
    let notes: Vec<u8> = b"my notes, not a database\n"
        .iter()
        .copied()
        .chain((0..=255u8).cycle().take(10_000))
        .collect();
    std::fs::write(&path, &notes).unwrap();

    let err = Orders::open(&path).await.unwrap_err();
    assert!(
        matches!(err, PersistentError::NotADatabase { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("not a SQLite database"), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), notes);
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["test.db"], "no -wal or -shm file was created");

    // A file too short to hold a header is refused the same way.
    std::fs::write(&path, b"SQLite").unwrap();
    let err = Orders::open(&path).await.unwrap_err();
    assert!(
        matches!(err, PersistentError::NotADatabase { .. }),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"SQLite");
}

#[tokio::test]
async fn a_damaged_database_is_an_error_not_a_panic() {
    let (_dir, path) = temp_db();
    let mut damaged = b"SQLite format 3\0".to_vec();
    damaged.extend(std::iter::repeat_n(0xA5u8, 8192));
    std::fs::write(&path, &damaged).unwrap();

    let err = Orders::open(&path).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert_eq!(std::fs::read(&path).unwrap(), damaged);
}

/// The names in `path`'s directory, sorted.
fn files_beside(path: &std::path::Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    names.sort();
    names
}

/// A database of persistent-map 0.1.3 (a rollback journal, a table `kv`) whose pages from the
/// eighth on were overwritten: the open refuses it before changing anything, rather than first
/// switching it to WAL and creating the crate's tables in it.
#[tokio::test]
async fn a_damaged_database_is_refused_and_left_byte_for_byte() {
    let (_dir, path) = temp_db();
    {
        let mut connection = rusqlite::Connection::open(&path).unwrap();
        let transaction = connection.transaction().unwrap();
        transaction
            .execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT)", [])
            .unwrap();
        let value = format!("\"{}\"", "x".repeat(60));
        for key in 0..2000 {
            transaction
                .execute("INSERT INTO kv VALUES (?1, ?2)", (key.to_string(), &value))
                .unwrap();
        }
        transaction.commit().unwrap();
    }
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 16 * 4096, "the file has pages to damage");
    bytes[7 * 4096..].fill(0xA5);
    std::fs::write(&path, &bytes).unwrap();

    let err = PersistentMap::<String, String, SqliteBackend>::open(&path)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, PersistentError::Open { .. }), "{err:?}");
    assert!(message.contains("damaged"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file was changed");
    assert_eq!(files_beside(&path), ["test.db"], "no -wal or -shm was left");
}

#[tokio::test]
async fn a_stored_key_that_no_longer_parses_names_table_and_key_and_is_kept() {
    let (_dir, path) = temp_db();
    {
        let orders = Orders::open(&path).await.unwrap();
        orders.insert(OrderId(1), vec!["tea".into()]).await.unwrap();
    }
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("INSERT INTO orders VALUES ('order-two', '[\"milk\"]')", [])
        .unwrap();

    let err = Orders::open(&path).await.unwrap_err();
    assert!(
        matches!(err, PersistentError::InvalidStoredKey { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("\"orders\""), "{message}");
    assert!(message.contains("\"order-two\""), "{message}");
    assert!(message.contains("invalid digit"), "{message}");
    assert_eq!(
        stored_rows(&path, "orders").len(),
        2,
        "nothing stored was lost"
    );

    // The same rows load under a key type that does parse them.
    let as_text: PersistentMap<String, Vec<String>, _> =
        PersistentMap::new(SqliteBackend::with_table(&path, "orders").await.unwrap())
            .await
            .unwrap();
    assert_eq!(as_text.get("order-two"), Some(vec!["milk".to_string()]));
}

#[tokio::test]
async fn a_stored_value_that_no_longer_deserializes_names_the_key() {
    let (_dir, path) = temp_db();
    drop(Orders::open(&path).await.unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO orders VALUES ('3', '{\"was\": \"a map\"}')",
            [],
        )
        .unwrap();

    let err = Orders::open(&path).await.unwrap_err();
    assert!(
        matches!(err, PersistentError::InvalidStoredValue { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("\"orders\"") && message.contains("\"3\""),
        "{message}"
    );
    assert_eq!(stored_rows(&path, "orders").len(), 1);
}

#[tokio::test]
async fn a_key_or_value_that_is_not_text_is_named() {
    let (_dir, path) = temp_db();
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .execute_batch(
            "CREATE TABLE blobs (key TEXT PRIMARY KEY, value TEXT);
             INSERT INTO blobs VALUES (X'FF00', '1');",
        )
        .unwrap();
    let load = |table: &'static str| {
        let path = path.clone();
        async move {
            PersistentMap::<String, u32, _>::new(SqliteBackend::with_table(&path, table).await?)
                .await
        }
    };
    let err = load("blobs").await.unwrap_err();
    assert!(
        matches!(err, PersistentError::InvalidStoredKey { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("blob"), "{err}");

    connection
        .execute_batch(
            "CREATE TABLE nulls (key TEXT PRIMARY KEY, value TEXT);
             INSERT INTO nulls VALUES ('k', NULL);",
        )
        .unwrap();
    let err = load("nulls").await.unwrap_err();
    assert!(
        matches!(err, PersistentError::InvalidStoredValue { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("\"k\"") && err.to_string().contains("NULL"),
        "{err}"
    );
}

#[tokio::test]
async fn an_invalid_table_name_is_refused_before_the_file_is_touched() {
    let (_dir, path) = temp_db();
    for name in [
        "",
        "1st",
        "has space",
        "semi;colon",
        "quote\"d",
        "sqlite_master",
        "SQLITE_x",
    ] {
        let err = SqliteBackend::with_table(&path, name).await.unwrap_err();
        assert!(
            matches!(err, PersistentError::InvalidTableName { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
    }
    assert!(!path.exists());
}

#[tokio::test]
async fn a_table_of_another_shape_is_refused_and_kept() {
    let (_dir, path) = temp_db();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE legacy (id INTEGER PRIMARY KEY, data TEXT);
             INSERT INTO legacy (data) VALUES ('precious');",
        )
        .unwrap();
    let err = SqliteBackend::with_table(&path, "legacy")
        .await
        .unwrap_err();
    assert!(
        matches!(err, PersistentError::IncompatibleTable { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("\"legacy\"") && message.contains("\"id\""),
        "{message}"
    );
    let data: String = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT data FROM legacy", [], |row| row.get(0))
        .unwrap();
    assert_eq!(data, "precious");
}

#[tokio::test]
async fn a_value_that_cannot_be_serialized_is_an_error_and_changes_nothing() {
    use std::collections::HashMap;
    let (_dir, path) = temp_db();
    // JSON object keys must be strings: a map keyed by tuples does not serialize.
    let map: PersistentMap<String, HashMap<(u8, u8), u8>, SqliteBackend> =
        PersistentMap::open(&path).await.unwrap();
    let err = map
        .insert("k".into(), HashMap::from([((1, 2), 3)]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PersistentError::InvalidValue { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        r#"table "kv": value of key "k" cannot be stored: key must be a string"#
    );
    assert!(map.is_empty());
    assert!(stored_rows(&path, "kv").is_empty());
}

/// A key type whose parsing panics on one text, as a buggy hand-written `FromStr` might.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
struct Fragile(String);

impl fmt::Display for Fragile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Fragile {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        assert_ne!(text, "boom", "Fragile cannot parse boom");
        Ok(Fragile(text.to_owned()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_panics_while_loading_panics_in_the_caller_and_the_file_stays_usable() {
    let (_dir, path) = temp_db();
    // Keeps the file's writer thread alive across the panicking load.
    let keeper: PersistentMap<String, u32, SqliteBackend> =
        PersistentMap::open(&path).await.unwrap();
    let fragile = SqliteBackend::with_table(&path, "fragile").await.unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("INSERT INTO fragile VALUES ('boom', '1')", [])
        .unwrap();

    let load = tokio::spawn(PersistentMap::<Fragile, u32, _>::new(fragile)).await;
    let panic = load.expect_err("the load panics").into_panic();
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("Fragile cannot parse boom"), "{message}");

    // The writer thread that ran the decoding survived: the file still takes writes.
    keeper.insert("after".into(), 2).await.unwrap();
    assert_eq!(
        stored_rows(&path, "kv"),
        [("after".to_string(), "2".to_string())]
    );
    assert_eq!(stored_rows(&path, "fragile").len(), 1);
}

#[tokio::test]
async fn a_float_json_cannot_hold_is_refused_not_stored_as_null() {
    let (_dir, path) = temp_db();
    let map: PersistentMap<String, Option<f64>, SqliteBackend> =
        PersistentMap::open(&path).await.unwrap();
    map.insert("ratio".into(), Some(0.5)).await.unwrap();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let err = map.insert("ratio".into(), Some(bad)).await.unwrap_err();
        assert!(
            matches!(err, PersistentError::InvalidValue { .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "table \"kv\": value of key \"ratio\" cannot be stored: {bad} cannot be stored: \
                 JSON has no representation for NaN or infinite floats"
            )
        );
    }
    let err = map
        .insert_many([
            ("a".to_string(), Some(1.0)),
            ("b".to_string(), Some(f64::NAN)),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, PersistentError::InvalidValue { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(r#"table "kv": value of key "b" cannot be stored: NaN cannot be stored"#),
        "{err}"
    );
    assert_eq!(map.get("ratio"), Some(Some(0.5)));
    assert_eq!(map.len(), 1);
    assert_eq!(
        stored_rows(&path, "kv"),
        [("ratio".to_string(), "0.5".to_string())]
    );
    drop(map);
    let reopened: PersistentMap<String, Option<f64>, SqliteBackend> =
        PersistentMap::open(&path).await.unwrap();
    assert_eq!(reopened.get("ratio"), Some(Some(0.5)));
}

#[tokio::test]
async fn a_stored_text_that_is_not_the_keys_own_is_refused_not_aliased() {
    let (_dir, path) = temp_db();
    drop(Orders::open(&path).await.unwrap());
    // `007` parses as the number 7, whose own text is `7`: a map holding 7 would write the row
    // `7` and leave `007` behind (a remove that says it removed, an insert that breaks the next
    // open). The row is refused instead, naming the table and the text.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("INSERT INTO orders VALUES ('007', '[\"tea\"]')", [])
        .unwrap();
    let err = Orders::open(&path).await.unwrap_err();
    assert!(
        matches!(&err, PersistentError::InvalidStoredKey { table, key, .. } if table == "orders" && key == "007"),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("\"orders\"") && message.contains("\"007\"") && message.contains("\"7\""),
        "{message}"
    );
    assert_eq!(stored_rows(&path, "orders").len(), 1, "nothing was changed");

    // Two texts of one key (`1` and `01`): the one that is not the key's own is named.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "DELETE FROM orders;
             INSERT INTO orders VALUES ('1', '[\"tea\"]');
             INSERT INTO orders VALUES ('01', '[\"milk\"]');",
        )
        .unwrap();
    let err = Orders::open(&path).await.unwrap_err();
    assert!(
        matches!(&err, PersistentError::InvalidStoredKey { key, .. } if key == "01"),
        "{err:?}"
    );
    assert_eq!(stored_rows(&path, "orders").len(), 2, "nothing was changed");

    // A map that loaded before the other text appeared refuses to reload, and stays as it was.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM orders WHERE key = '01'", [])
        .unwrap();
    let orders = Orders::open(&path).await.unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("INSERT INTO orders VALUES ('001', '[\"cake\"]')", [])
        .unwrap();
    let err = orders.refresh().await.unwrap_err();
    assert!(
        matches!(&err, PersistentError::InvalidStoredKey { key, .. } if key == "001"),
        "{err:?}"
    );
    assert_eq!(orders.get(&OrderId(1)), Some(vec!["tea".to_string()]));
}

/// A custom backend that hands the map two entries of one key, as a hand-written backend whose
/// store holds two spellings of one key might.
struct Repeating;

#[async_trait::async_trait]
impl persistent_map::StorageBackend<u64, String> for Repeating {
    async fn load_all(&self) -> persistent_map::Result<std::collections::HashMap<u64, String>> {
        Ok(std::collections::HashMap::new())
    }

    async fn load_each(
        &self,
        sink: &mut (dyn FnMut(u64, String) + Send),
    ) -> persistent_map::Result<()> {
        sink(1, "first".into());
        sink(1, "second".into());
        Ok(())
    }

    async fn save(&self, _: u64, _: String) -> persistent_map::Result<()> {
        Ok(())
    }

    async fn delete(&self, _: &u64) -> persistent_map::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_custom_backend_loading_one_key_twice_is_an_error_not_a_silent_pick() {
    let err = PersistentMap::<u64, String, _>::new(Repeating)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PersistentError::AmbiguousStoredKey { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("same key 1"), "{err}");
}
