//! Transactions over two tables of one PostgreSQL database: all or nothing in memory and in
//! storage, after an abort, a conflict with another instance, and connections killed
//! mid-commit; maps of two connections, or of PostgreSQL and SQLite, refused.
//!
//! Needs the server named by `PM_TEST_POSTGRES_URL` (see `postgres.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use persistent_map::postgres::PostgresBackend;
use persistent_map::sqlite::SqliteBackend;
use persistent_map::{transaction, PersistentError, PersistentMap};
use persistent_map_tests::temp_db;

mod postgres_common;
use postgres_common::*;

/// A map on `table` through the connection of `url` (maps of one URL share it).
async fn open_at(url: &str, table: &TestTable) -> Map {
    let backend = PostgresBackend::with_table(url, table.name())
        .await
        .unwrap();
    PersistentMap::new(backend).await.unwrap()
}

/// One increment of `key` in both maps, at once.
async fn count_in_both(a: &Map, b: &Map, key: &str) -> persistent_map::Result<()> {
    let bump = |n: Option<&u64>| Some(n.copied().unwrap_or(0) + 1);
    transaction(|tx| {
        tx.update(a, &key.to_string(), bump);
        tx.update(b, &key.to_string(), bump);
        Ok::<_, PersistentError>(())
    })
    .await
}

/// The error of a transaction body that aborts with a message.
#[derive(Debug)]
struct AbortError(&'static str);

impl From<PersistentError> for AbortError {
    fn from(_: PersistentError) -> Self {
        AbortError("the commit failed")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_over_two_tables_commits_all_or_nothing() {
    let (orders, stock) = (TestTable::new("tx_orders"), TestTable::new("tx_stock"));
    let url = url();
    let (orders_map, stock_map) = (open_at(&url, &orders).await, open_at(&url, &stock).await);
    stock_map.insert("tea".into(), 3).await.unwrap();
    let admin = admin().await;

    transaction(|tx| {
        let left = tx.get(&stock_map, &"tea".to_string()).unwrap_or(0);
        tx.insert(&stock_map, "tea".to_string(), left - 1);
        tx.insert(&orders_map, "order-1".to_string(), 1);
        Ok::<_, PersistentError>(())
    })
    .await
    .unwrap();
    let stored_orders: HashMap<String, u64> = read_table(&admin, orders.name()).await;
    let stored_stock: HashMap<String, u64> = read_table(&admin, stock.name()).await;
    assert_eq!(stored_orders, HashMap::from([("order-1".into(), 1)]));
    assert_eq!(stored_stock, HashMap::from([("tea".into(), 2)]));
    assert_eq!(
        (contents(&orders_map), contents(&stock_map)),
        (stored_orders.clone(), stored_stock.clone())
    );

    // Both writes in one commit, logged for each table: another instance hears of both.
    let (other_orders, other_stock) = (open(&orders).await, open(&stock).await);
    assert_eq!(
        (contents(&other_orders), contents(&other_stock)),
        (stored_orders.clone(), stored_stock.clone())
    );

    // An abort after writing to both maps changes nothing in either, in memory or storage.
    let aborted: Result<(), AbortError> = transaction(|tx| {
        tx.insert(&stock_map, "tea".to_string(), 0);
        tx.insert(&orders_map, "order-2".to_string(), 2);
        Err(AbortError("out of cups"))
    })
    .await;
    assert_eq!(aborted.unwrap_err().0, "out of cups");
    assert_eq!(
        (contents(&orders_map), contents(&stock_map)),
        (stored_orders.clone(), stored_stock.clone())
    );
    assert_eq!(
        read_table::<u64>(&admin, orders.name()).await,
        stored_orders
    );
    assert_eq!(read_table::<u64>(&admin, stock.name()).await, stored_stock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_of_another_instance_before_the_commit_makes_the_body_run_again_on_it() {
    let (hits, total) = (TestTable::new("tx_hits"), TestTable::new("tx_total"));
    let url = url();
    let (hits_map, total_map) = (open_at(&url, &hits).await, open_at(&url, &total).await);
    count_in_both(&hits_map, &total_map, "all").await.unwrap();
    let other_total = open(&total).await;
    let admin = admin().await;

    let runs = AtomicUsize::new(0);
    transaction(|tx| {
        let seen = tx.get(&total_map, &"all".to_string()).unwrap_or(0);
        if runs.fetch_add(1, Ordering::SeqCst) == 0 {
            // Another instance writes the total between this run's read and its commit.
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(other_total.insert("all".into(), 41))
                    .unwrap()
            });
        }
        tx.insert(&total_map, "all".to_string(), seen + 1);
        tx.update(&hits_map, &"all".to_string(), |n| n.map(|n| n + 1));
        Ok::<_, PersistentError>(())
    })
    .await
    .unwrap();

    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the conflict made it run again"
    );
    assert_eq!(total_map.get("all"), Some(42), "built on what storage held");
    let stored_total: HashMap<String, u64> = read_table(&admin, total.name()).await;
    let stored_hits: HashMap<String, u64> = read_table(&admin, hits.name()).await;
    assert_eq!(stored_total, HashMap::from([("all".into(), 42)]));
    // The refused first run wrote nothing in the other table either: one increment, not two.
    assert_eq!(stored_hits, HashMap::from([("all".into(), 2)]));
    assert_eq!(contents(&hits_map), stored_hits);
}

/// A map on `table` through the connection of `url`, whose work waits only briefly for a
/// killed connection to come back: some commits are retried on the new connection (asking the
/// server first whether the lost one committed), others fail, their outcome unknown.
async fn open_killed(url: &str, table: &TestTable) -> Map {
    let backend = PostgresBackend::builder(url)
        .table(table.name())
        .reconnect_timeout(Duration::from_millis(RECONNECT_MS))
        .connect()
        .await
        .unwrap();
    PersistentMap::new(backend).await.unwrap()
}

const RECONNECT_MS: u64 = 20;

/// What one writer did: transactions acknowledged, and transactions that failed (whose commit
/// may or may not have happened).
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    acknowledged: u64,
    failed: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_over_two_tables_are_all_or_nothing_when_the_connection_is_killed_mid_commit()
{
    let (a, b) = (TestTable::new("tx_killed_a"), TestTable::new("tx_killed_b"));
    let name = format!("pm_tx_killed_{}", std::process::id());
    let url = with_parameter(&url(), "application_name", &name);
    let (a_map, b_map) = (open_killed(&url, &a).await, open_killed(&url, &b).await);
    let admin = admin().await;

    let writing = Arc::new(AtomicBool::new(true));
    let committed = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for task in 0..8 {
        let (a_map, b_map) = (a_map.clone(), b_map.clone());
        let (writing, committed) = (Arc::clone(&writing), Arc::clone(&committed));
        writers.push(tokio::spawn(async move {
            let key = format!("task-{task}");
            let mut tally = Tally::default();
            while writing.load(Ordering::SeqCst) {
                match count_in_both(&a_map, &b_map, &key).await {
                    Ok(()) => {
                        tally.acknowledged += 1;
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        eprintln!("{key}: {error}");
                        tally.failed += 1;
                    }
                }
            }
            (key, tally)
        }));
    }
    // Kill the connection every 50 ms, while thousands of transactions stream.
    let (mut killed, mut rounds) = (0, 0);
    while killed < 10 || committed.load(Ordering::Relaxed) < 2_000 {
        rounds += 1;
        assert!(
            rounds < 1_200,
            "in 60 s: {killed} kills, {committed:?} transactions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        killed += terminate(&admin, &name).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    writing.store(false, Ordering::SeqCst);
    let mut tallies = HashMap::new();
    for writer in writers {
        let (key, tally) = tokio::time::timeout(Duration::from_secs(60), writer)
            .await
            .expect("every writer stops")
            .unwrap();
        tallies.insert(key, tally);
    }
    // The kills hit the sessions the transactions ran on: killed connections were replaced
    // while the writers still ran. (A kill that lands on a connection still being opened fails
    // that attempt and costs no reconnect of its own, which on a loaded machine is one kill in
    // ten or so; hence not one reconnect per kill.)
    let reconnects = a_map.backend().stats().reconnects;
    assert!(
        reconnects * 2 >= killed.unsigned_abs(),
        "{reconnects} reconnects for {killed} kills"
    );

    // Fresh maps, of instances of their own, load what storage holds.
    let (fresh_a, fresh_b) = (open(&a).await, open(&b).await);
    let (stored_a, stored_b) = (contents(&fresh_a), contents(&fresh_b));
    assert_eq!(
        stored_a, stored_b,
        "every transaction is in both tables or in neither"
    );
    let total: u64 = tallies.values().map(|tally| tally.acknowledged).sum();
    assert!(total > 0, "{tallies:?}");
    for (key, tally) in &tallies {
        let stored = stored_a.get(key).copied().unwrap_or(0);
        assert!(
            stored >= tally.acknowledged,
            "{key}: an acknowledged transaction is missing ({stored} stored, {tally:?})"
        );
        assert!(
            stored <= tally.acknowledged + tally.failed,
            "{key}: a transaction was committed twice ({stored} stored, {tally:?})"
        );
    }
    // The maps that wrote agree with storage once they catch up.
    a_map.refresh().await.unwrap();
    b_map.refresh().await.unwrap();
    assert_eq!((contents(&a_map), contents(&b_map)), (stored_a, stored_b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_of_two_connections_or_of_postgres_and_sqlite_in_one_transaction_are_refused() {
    let (here, there) = (
        TestTable::new("tx_refused_here"),
        TestTable::new("tx_refused_there"),
    );
    let url = url();
    let here_map = open_at(&url, &here).await;
    // Another connection string: another connection (as another database or server would be).
    let elsewhere = with_parameter(&url, "application_name", "pm_tx_elsewhere");
    let there_map = open_at(&elsewhere, &there).await;
    let (_dir, path) = temp_db();
    let file_map: PersistentMap<String, u64, SqliteBackend> =
        PersistentMap::new(SqliteBackend::with_table(&path, "t").await.unwrap())
            .await
            .unwrap();
    let admin = admin().await;

    let err = transaction(|tx| {
        tx.insert(&here_map, "a".to_string(), 1);
        tx.insert(&there_map, "a".to_string(), 1);
        Ok::<_, PersistentError>(())
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, PersistentError::MixedStorage { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("PostgreSQL database postgres://"),
        "{err}"
    );

    let err = transaction(|tx| {
        tx.insert(&here_map, "a".to_string(), 1);
        tx.insert(&file_map, "a".to_string(), 1);
        Ok::<_, PersistentError>(())
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, PersistentError::MixedStorage { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("PostgreSQL database"), "{message}");
    assert!(message.contains(&*path.to_string_lossy()), "{message}");

    assert!(here_map.is_empty() && there_map.is_empty() && file_map.is_empty());
    assert!(read_table::<u64>(&admin, here.name()).await.is_empty());
    assert!(read_table::<u64>(&admin, there.name()).await.is_empty());
    assert!(persistent_map_tests::stored_rows(&path, "t").is_empty());
}
