//! One step from a path to a map with options, and the options reaching the backend.

use std::time::Duration;

use persistent_map::sqlite::{Durability, SqliteBackend};
use persistent_map::{PersistentError, PersistentMap, SqliteOptions};
use persistent_map_tests::{stored_rows, temp_db};

#[tokio::test]
async fn sqlite_options_open_a_map_in_one_step() -> persistent_map::Result<()> {
    let (_dir, path) = temp_db();
    let options = SqliteOptions::new()
        .table("visits")
        .durability(Durability::Normal)
        .busy_timeout(Duration::from_secs(1));
    let map: PersistentMap<u64, String, SqliteBackend> = options.clone().open(&path).await?;
    assert_eq!(map.backend().table(), "visits");
    assert_eq!(map.backend().durability(), Durability::Normal);
    map.insert(7, "seven".into()).await?;
    drop(map);
    assert_eq!(
        stored_rows(&path, "visits"),
        [("7".to_string(), r#""seven""#.to_string())]
    );

    let reopened: PersistentMap<u64, String, SqliteBackend> =
        PersistentMap::open_with(&path, options).await?;
    assert_eq!(reopened.get(&7), Some("seven".to_string()));
    Ok(())
}

#[tokio::test]
async fn sqlite_options_default_to_the_key_types_table_and_full_durability(
) -> persistent_map::Result<()> {
    let (_dir, path) = temp_db();
    let map: PersistentMap<char, u8, SqliteBackend> = SqliteOptions::new().open(&path).await?;
    assert_eq!(map.backend().table(), "std__char");
    assert_eq!(map.backend().durability(), Durability::Full);
    Ok(())
}

#[tokio::test]
async fn sqlite_options_refuse_a_bad_table_name_with_the_name() {
    let (_dir, path) = temp_db();
    let err = SqliteOptions::new()
        .table("no spaces")
        .open::<u64, String>(&path)
        .await
        .unwrap_err();
    assert!(matches!(err, PersistentError::InvalidTableName { .. }));
    assert!(
        err.to_string()
            .starts_with(r#"invalid table name "no spaces": "#),
        "{err}"
    );
    assert!(!path.exists());
}
