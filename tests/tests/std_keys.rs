//! Maps keyed by std types open in one line, each in its own table of one file, and reopen.

use persistent_map::sqlite::SqliteBackend;
use persistent_map::PersistentMap;
use persistent_map_tests::{stored_rows, temp_db};

#[tokio::test]
async fn std_keys_open_in_their_own_tables_and_reopen() -> persistent_map::Result<()> {
    let (_dir, path) = temp_db();
    {
        let by_id: PersistentMap<u64, String, SqliteBackend> = PersistentMap::open(&path).await?;
        let by_offset: PersistentMap<i32, String, SqliteBackend> =
            PersistentMap::open(&path).await?;
        let by_letter: PersistentMap<char, u32, SqliteBackend> = PersistentMap::open(&path).await?;
        by_id.insert(u64::MAX, "max".into()).await?;
        by_id.insert(7, "seven".into()).await?;
        by_offset.insert(-3, "minus three".into()).await?;
        by_letter.insert('é', 1).await?;
        by_letter.insert(':', 2).await?;
    }

    assert_eq!(
        stored_rows(&path, "std__u64"),
        [
            ("18446744073709551615".to_string(), r#""max""#.to_string()),
            ("7".to_string(), r#""seven""#.to_string()),
        ]
    );
    assert_eq!(
        stored_rows(&path, "std__i32"),
        [("-3".to_string(), r#""minus three""#.to_string())]
    );
    assert_eq!(
        stored_rows(&path, "std__char"),
        [
            (":".to_string(), "2".to_string()),
            ("é".to_string(), "1".to_string()),
        ]
    );

    let by_id: PersistentMap<u64, String, SqliteBackend> = PersistentMap::open(&path).await?;
    let by_offset: PersistentMap<i32, String, SqliteBackend> = PersistentMap::open(&path).await?;
    let by_letter: PersistentMap<char, u32, SqliteBackend> = PersistentMap::open(&path).await?;
    assert_eq!(by_id.len(), 2);
    assert_eq!(by_id.get(&u64::MAX), Some("max".to_string()));
    assert_eq!(by_id.get(&7), Some("seven".to_string()));
    assert_eq!(by_offset.get(&-3), Some("minus three".to_string()));
    assert_eq!(by_letter.get(&'é'), Some(1));
    assert_eq!(by_letter.get(&':'), Some(2));
    Ok(())
}

/// A derived newtype over `u64` writes the same text, so it reads a `u64` map's table as it is.
#[tokio::test]
async fn a_derived_newtype_reads_a_std_table() -> persistent_map::Result<()> {
    #[derive(
        persistent_map::PersistentKey,
        Debug,
        Clone,
        PartialEq,
        Eq,
        Hash,
        serde::Serialize,
        serde::Deserialize,
    )]
    #[persistent_key(table = "std__u64")]
    struct UserId(u64);

    let (_dir, path) = temp_db();
    let by_id: PersistentMap<u64, String, SqliteBackend> = PersistentMap::open(&path).await?;
    by_id.insert(42, "ada".into()).await?;
    drop(by_id);

    let users: PersistentMap<UserId, String, SqliteBackend> = PersistentMap::open(&path).await?;
    assert_eq!(users.get(&UserId(42)), Some("ada".to_string()));
    Ok(())
}
