//! One step from a URL to a PostgreSQL map with options; the value errors of that backend.
//!
//! Needs the server named by `PM_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`); the tables are named after the test and this
//! process and dropped when the test ends.

use std::time::Duration;

use persistent_map::postgres::tokio_postgres::{self, NoTls};
use persistent_map::postgres::PostgresBackend;
use persistent_map::{PersistentError, PersistentMap, PostgresOptions};

const URL_VARIABLE: &str = "PM_TEST_POSTGRES_URL";

fn url() -> String {
    std::env::var(URL_VARIABLE).unwrap_or_else(|_| {
        panic!(
            "the PostgreSQL tests need a server: set {URL_VARIABLE}, \
             e.g. postgres://postgres@127.0.0.1:5432/test"
        )
    })
}

async fn drop_table(table: &str) {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls)
        .await
        .expect("connect the admin client");
    let connection = tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .await
        .expect("drop the test table");
    drop(client);
    let _ = connection.await;
}

#[tokio::test]
async fn postgres_options_connect_a_map_in_one_step() -> persistent_map::Result<()> {
    let table = format!("pm_options_{}", std::process::id());
    drop_table(&table).await;
    let options = PostgresOptions::new()
        .table(&table)
        .connect_timeout(Duration::from_secs(5))
        .reconnect_timeout(Duration::from_secs(5));
    let map: PersistentMap<u64, f64, PostgresBackend> = options.clone().connect(&url()).await?;
    assert_eq!(map.backend().table(), table);
    map.insert(7, 0.5).await?;

    let err = map.insert(8, f64::NAN).await.unwrap_err();
    assert!(
        matches!(err, PersistentError::InvalidValue { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "table \"{table}\": value of key \"8\" cannot be stored: NaN cannot be stored: JSON \
             has no representation for NaN or infinite floats"
        )
    );
    drop(map);

    let reopened: PersistentMap<u64, f64, PostgresBackend> =
        PersistentMap::open_postgres_with(&url(), options).await?;
    assert_eq!(reopened.get(&7), Some(0.5));
    assert_eq!(reopened.get(&8), None);
    drop(reopened);
    drop_table(&table).await;
    Ok(())
}

#[tokio::test]
async fn postgres_options_name_the_host_they_cannot_reach() {
    let err = PostgresOptions::new()
        .connect_timeout(Duration::from_millis(500))
        .connect::<u64, String>("postgres://postgres@127.0.0.1:1/test")
        .await
        .unwrap_err();
    assert!(matches!(err, PersistentError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("cannot connect to PostgreSQL at 127.0.0.1:1: "),
        "{err}"
    );
}

/// The blocking map's private runtime keeps the PostgreSQL connection and its `LISTEN` going
/// between calls: an instance that only waits still learns of another's writes, from a plain
/// `#[test]` with no runtime of its own.
#[test]
fn a_blocking_postgres_map_keeps_listening_between_calls() -> persistent_map::Result<()> {
    use persistent_map::blocking;

    let table = format!("pm_blocking_{}", std::process::id());
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    setup.block_on(drop_table(&table));

    let options = PostgresOptions::new().table(&table);
    let writer: blocking::PersistentMap<u64, String, PostgresBackend> =
        blocking::PersistentMap::open_postgres_with(&url(), options.clone())?;
    let reader: blocking::PersistentMap<u64, String, PostgresBackend> =
        blocking::PersistentMap::open_postgres_with(&url(), options)?;
    let _follow = reader.refresh_every(Duration::from_secs(60));

    writer.insert(1, "one".into())?;
    std::thread::sleep(Duration::from_millis(300));
    writer.insert(2, "two".into())?;

    // Only the reader's background task, woken by NOTIFY, can bring the writes in.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while reader.len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(reader.get(&1), Some("one".to_string()));
    assert_eq!(reader.get(&2), Some("two".to_string()));

    drop((writer, reader));
    setup.block_on(drop_table(&table));
    Ok(())
}
