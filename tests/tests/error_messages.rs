//! Every error a user can meet names what it concerns (the table and the key's text, the path,
//! the name), asserted here on the whole message as a user reads it.

use persistent_map::sqlite::SqliteBackend;
use persistent_map::{PersistentError, PersistentKey, PersistentMap};
use persistent_map_tests::temp_db;

fn sqlite(path: &std::path::Path, sql: &str) {
    rusqlite::Connection::open(path)
        .expect("open the database as a second client")
        .execute_batch(sql)
        .expect("run the SQL");
}

#[tokio::test]
async fn a_value_that_cannot_be_stored_names_the_table_and_the_key() {
    let (_dir, path) = temp_db();
    let map: PersistentMap<u64, f64, SqliteBackend> = PersistentMap::open(&path).await.unwrap();
    let err = map.insert(7, f64::INFINITY).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "table \"std__u64\": value of key \"7\" cannot be stored: inf cannot be stored: JSON has \
         no representation for NaN or infinite floats"
    );
    let err = map.update(&8, |_| Some(f64::NAN)).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("table \"std__u64\": value of key \"8\" cannot be stored: NaN"),
        "{err}"
    );
    assert!(map.is_empty());
}

#[tokio::test]
async fn a_stored_row_that_does_not_load_names_the_table_and_the_key() {
    let (_dir, path) = temp_db();
    sqlite(
        &path,
        "CREATE TABLE std__u64 (key TEXT PRIMARY KEY, value TEXT); \
         INSERT INTO std__u64 VALUES ('x7', '1');",
    );
    let err = PersistentMap::<u64, u32, SqliteBackend>::open(&path)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "table \"std__u64\": stored key \"x7\" does not parse: invalid digit found in string; \
         rewrite the row's key as the map's key type writes it, delete the row, or open the \
         table with the key type that wrote it"
    );

    sqlite(&path, "UPDATE std__u64 SET key = '7', value = '\"seven\"';");
    let err = PersistentMap::<u64, u32, SqliteBackend>::open(&path)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "table \"std__u64\": value of key \"7\" does not deserialize: invalid type: string \
         \"seven\", expected u32 at line 1 column 7"
    );
}

#[tokio::test]
async fn a_table_name_a_file_or_a_layout_that_is_refused_is_named() {
    let (dir, path) = temp_db();
    let err = SqliteBackend::with_table(&path, "bad name")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid table name \"bad name\": "),
        "{err}"
    );

    let not_a_db = dir.path().join("notes.txt");
    std::fs::write(&not_a_db, "my notes").unwrap();
    let err = SqliteBackend::new(&not_a_db).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} is not a SQLite database (its header does not start with \"SQLite format 3\"); \
             the file was left untouched",
            not_a_db.display()
        )
    );

    #[derive(PersistentKey, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
    #[persistent_key(table = "sessions")]
    struct SessionKey {
        tenant: String,
        user: u64,
    }
    #[derive(PersistentKey, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
    #[persistent_key(table = "sessions")]
    struct Swapped {
        user: u64,
        tenant: String,
    }
    drop(SqliteBackend::for_key::<SessionKey>(&path).await.unwrap());
    let err = SqliteBackend::for_key::<Swapped>(&path).await.unwrap_err();
    assert!(matches!(err, PersistentError::IncompatibleKeyLayout { .. }));
    assert_eq!(
        err.to_string(),
        "table \"sessions\" holds keys laid out as `v1 separator ':' struct {tenant, user}`, but \
         the key type opening it is laid out as `v1 separator ':' struct {user, tenant}`; move \
         the stored keys with persistent_map::sqlite::migrate_keys, or open the table with the \
         key type that wrote it"
    );

    sqlite(&path, "CREATE TABLE legacy (id INTEGER);");
    let err = SqliteBackend::with_table(&path, "legacy")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("table \"legacy\" exists but is not a persistent-map table: "),
        "{err}"
    );
}

/// The failing cases of issue 22: `abc` in a `u64` table said only "invalid digit found in
/// string", where `007` already said what to do.
#[tokio::test]
async fn a_stored_key_that_does_not_parse_says_what_to_do() {
    let (_dir, path) = temp_db();
    sqlite(
        &path,
        "CREATE TABLE std__u64 (key TEXT PRIMARY KEY, value TEXT); \
         INSERT INTO std__u64 VALUES ('abc', '1');",
    );
    let err = PersistentMap::<u64, u32, SqliteBackend>::open(&path)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "table \"std__u64\": stored key \"abc\" does not parse: invalid digit found in string; \
         rewrite the row's key as the map's key type writes it, delete the row, or open the \
         table with the key type that wrote it"
    );
    let parse_error = std::error::Error::source(&err).expect("the key type's parse error");
    assert!(
        parse_error.is::<std::num::ParseIntError>(),
        "{parse_error:?}"
    );

    // A text that parses but is not the key's own says its own fix, once.
    sqlite(&path, "UPDATE std__u64 SET key = '007';");
    let err = PersistentMap::<u64, u32, SqliteBackend>::open(&path)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "table \"std__u64\": stored key \"007\" does not parse: it parses as the key whose \
         text is \"7\", so writes of that key would not reach this row; rewrite the row's key \
         as \"7\" or delete the row"
    );
}

/// Issue 22: the NaN error named the table and the key, not the field that held the NaN.
#[tokio::test]
async fn a_value_that_cannot_be_stored_names_the_field_serde_was_writing() {
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Reading {
        sensor: String,
        stats: Stats,
    }
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Stats {
        mean: f64,
        ratio: f64,
    }

    let (_dir, path) = temp_db();
    let map: PersistentMap<String, Reading, SqliteBackend> =
        PersistentMap::open(&path).await.unwrap();
    let reading = Reading {
        sensor: "t1".into(),
        stats: Stats {
            mean: 1.5,
            ratio: f64::NAN,
        },
    };
    let err = map.insert("r1".into(), reading).await.unwrap_err();
    assert!(
        matches!(err, PersistentError::InvalidValue { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "table \"kv\": value of key \"r1\" cannot be stored: field `stats`: field `ratio`: NaN \
         cannot be stored: JSON has no representation for NaN or infinite floats"
    );
    assert!(map.is_empty());
}
