//! Entries with a time to live on PostgreSQL: every instance (here: separate instances in this
//! process, and another process) sees the same expiry, exact to every read, whatever its map
//! has heard; sweeps are logged like deletes; and tables made before expiry existed gain the
//! column in place.
//!
//! Needs the server named by `PM_TEST_POSTGRES_URL`. The other process is this test binary run
//! again as a child, selected by `--exact` and environment variables naming its table and the
//! parent's deadline.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use persistent_map::postgres::tokio_postgres;
use persistent_map::{
    transaction, Change, ExternalChanges, PersistentError, PersistentMap, StorageBackend,
};

mod postgres_common;
use postgres_common::*;

const CHILD_TABLE: &str = "PERSISTENT_MAP_PG_EXPIRY_TABLE";
const CHILD_DEADLINE: &str = "PERSISTENT_MAP_PG_EXPIRY_DEADLINE";

/// How long a test waits for something that should take milliseconds.
const GENEROUS: Duration = Duration::from_secs(10);

/// A whole millisecond `ttl` from now, as deadlines are stored.
fn whole_ms_after(ttl: Duration) -> SystemTime {
    let millis = (SystemTime::now() + ttl)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap())
}

fn past() -> SystemTime {
    SystemTime::now() - Duration::from_secs(60)
}

fn unix_ms(time: SystemTime) -> i64 {
    i64::try_from(time.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// The `expires_at` of `key`'s row: `None` if there is no row, `Some(None)` for a row that
/// never expires.
async fn stored_deadline(
    admin: &tokio_postgres::Client,
    table: &str,
    key: &str,
) -> Option<Option<i64>> {
    admin
        .query_opt(
            &format!("SELECT expires_at FROM \"{table}\" WHERE key = $1"),
            &[&key],
        )
        .await
        .expect("read a row's deadline")
        .map(|row| row.get(0))
}

async fn has_expiry_column(admin: &tokio_postgres::Client, table: &str) -> bool {
    admin
        .query_one(
            "SELECT count(*) FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attname = 'expires_at' AND NOT attisdropped",
            &[&format!("\"{table}\"")],
        )
        .await
        .expect("read the table's columns")
        .get::<_, i64>(0)
        == 1
}

/// Creates `table` as the backend did before expiry (two columns), with `rows`.
async fn create_two_column_table(
    admin: &tokio_postgres::Client,
    table: &str,
    rows: &[(&str, u64)],
) {
    admin
        .batch_execute(&format!(
            "CREATE TABLE \"{table}\" (key TEXT PRIMARY KEY, value JSONB NOT NULL)"
        ))
        .await
        .expect("create the old table");
    for (key, value) in rows {
        admin
            .execute(
                &format!("INSERT INTO \"{table}\" (key, value) VALUES ($1, $2::text::jsonb)"),
                &[key, &value.to_string()],
            )
            .await
            .expect("insert an old row");
    }
}

/// A map of a new instance on `table` with a connection of its own (backends of one process
/// share a connection per connection string, and with it the statements prepared for a
/// table's columns): as another machine's would be.
async fn open_elsewhere(table: &TestTable, name: &str) -> Map {
    let url = with_parameter(&url(), "application_name", &format!("pm_expiry_{name}"));
    PersistentMap::new(instance_at(&url, table).await)
        .await
        .expect("load the map")
}

/// Refreshes `map` until `done` holds, for at most [`GENEROUS`].
async fn refresh_until(map: &Map, what: &str, mut done: impl FnMut(&Map) -> bool) {
    let start = std::time::Instant::now();
    while !done(map) {
        assert!(start.elapsed() < GENEROUS, "{what}: never happened");
        map.refresh().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_with_a_ttl_expires_in_every_instance_and_a_reopen_does_not_load_it() {
    let table = TestTable::new("expiry_both");
    let (a, b) = (open(&table).await, open_elsewhere(&table, "b").await);
    let deadline = whole_ms_after(Duration::from_secs(2));
    a.insert_until("short".into(), 1, deadline).await.unwrap();
    a.insert_with_ttl("long".into(), 2, Duration::from_secs(600))
        .await
        .unwrap();

    b.refresh().await.unwrap();
    // B holds A's deadline, not one of its own making.
    let seen = b.get("short");
    assert!(
        seen == Some(1) || SystemTime::now() >= deadline,
        "B must see the entry before its deadline"
    );
    assert_eq!(
        b.deadline("short").map(|d| d.to_system_time()),
        Some(deadline)
    );
    assert_eq!(b.deadline("long"), a.deadline("long"));
    let admin = admin().await;
    assert_eq!(
        stored_deadline(&admin, table.name(), "short").await,
        Some(Some(unix_ms(deadline)))
    );

    let expired = wait_for(GENEROUS, || {
        a.get("short").is_none() && b.get("short").is_none()
    });
    assert!(expired.await.is_some(), "the entry never expired");
    assert!(
        SystemTime::now() >= deadline,
        "absent only from the deadline on"
    );
    for map in [&a, &b] {
        assert!(!map.contains_key("short"));
        assert_eq!(map.len(), 1);
        assert_eq!(map.get("long"), Some(2));
    }

    // The row may still be there (or a background sweep took it): a reopen does not load it.
    let reopened = open(&table).await;
    assert_eq!(reopened.get("short"), None);
    assert_eq!(reopened.len(), 1);
    assert!(a.sweep_expired().await.unwrap() <= 1);
    assert_eq!(stored_deadline(&admin, table.name(), "short").await, None);
    assert!(stored_deadline(&admin, table.name(), "long")
        .await
        .unwrap()
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_expired_in_storage_is_not_loaded_and_a_sweep_deletes_it() {
    let table = TestTable::new("expiry_reopen");
    let a = open(&table).await;
    a.insert_with_ttl("live".into(), 1, Duration::from_secs(600))
        .await
        .unwrap();
    // Expired before anyone opens the table again, as if the instances had been down.
    let admin = admin().await;
    admin
        .execute(
            &format!(
                "INSERT INTO \"{}\" (key, value, expires_at) VALUES ('gone', '7', $1)",
                table.name()
            ),
            &[&unix_ms(past())],
        )
        .await
        .unwrap();
    drop(a);

    let b = open(&table).await;
    assert_eq!(b.get("gone"), None);
    assert_eq!(b.len(), 1);
    assert_eq!(
        b.backend().stats().rows_read,
        1,
        "the expired row is not even read"
    );
    assert_eq!(b.sweep_expired().await.unwrap(), 1);
    assert_eq!(stored_deadline(&admin, table.name(), "gone").await, None);
    assert!(stored_deadline(&admin, table.name(), "live")
        .await
        .is_some());
    assert_eq!(b.sweep_expired().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_and_clearing_a_ttl_reach_the_other_instance() {
    let table = TestTable::new("expiry_persist");
    let (a, b) = (open(&table).await, open_elsewhere(&table, "b").await);
    let admin = admin().await;
    a.insert("k".into(), 1).await.unwrap();
    b.refresh().await.unwrap();
    assert_eq!((b.get("k"), b.ttl("k")), (Some(1), None));

    assert!(a
        .expire(&"k".into(), Duration::from_secs(600))
        .await
        .unwrap());
    refresh_until(&b, "B hears the new TTL", |b| b.ttl("k").is_some()).await;
    assert_eq!(b.deadline("k"), a.deadline("k"));
    let stored = stored_deadline(&admin, table.name(), "k").await.unwrap();
    assert_eq!(
        stored,
        a.deadline("k")
            .map(|d| i64::try_from(d.unix_millis()).unwrap())
    );

    // B clears it; A hears that.
    assert!(b.persist(&"k".into()).await.unwrap());
    refresh_until(&a, "A hears the TTL cleared", |a| a.ttl("k").is_none()).await;
    assert_eq!(a.get("k"), Some(1));
    assert_eq!(stored_deadline(&admin, table.name(), "k").await, Some(None));

    // A save without a TTL clears the one the key had (as Redis's SET does).
    a.insert_with_ttl("s".into(), 1, Duration::from_secs(600))
        .await
        .unwrap();
    assert!(stored_deadline(&admin, table.name(), "s")
        .await
        .unwrap()
        .is_some());
    b.insert("s".into(), 2).await.unwrap();
    assert_eq!(stored_deadline(&admin, table.name(), "s").await, Some(None));
    refresh_until(&a, "A hears the plain save", |a| a.get("s") == Some(2)).await;
    assert_eq!(a.ttl("s"), None);

    // `expire` on a key whose entry expired is refused: nothing to give a TTL to.
    a.insert_until("old".into(), 1, past()).await.unwrap();
    assert!(!b
        .expire(&"old".into(), Duration::from_secs(60))
        .await
        .unwrap());
    assert!(!b.persist(&"old".into()).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_modify_writes_on_another_instance_treat_an_expired_key_as_absent() {
    let table = TestTable::new("expiry_conditions");
    let (a, b) = (open(&table).await, open_elsewhere(&table, "b").await);
    let admin = admin().await;
    let key = "k".to_string();

    // B holds 5 and has not heard that A made it expire: storage decides, and says absent.
    a.insert(key.clone(), 5).await.unwrap();
    b.refresh().await.unwrap();
    assert!(a.expire_at(&key, past()).await.unwrap());
    assert_eq!(b.get(&key), Some(5), "B has not refreshed");
    let refused = b.compare_exchange(&key, Some(&5), Some(6)).await.unwrap();
    assert_eq!(
        refused,
        Err(None),
        "the expired value is not there to exchange"
    );
    assert_eq!(b.get(&key), None, "and B's memory takes the absence");

    // `update` runs again on what storage holds: `None`.
    a.insert(key.clone(), 5).await.unwrap();
    b.refresh().await.unwrap();
    assert!(a.expire_at(&key, past()).await.unwrap());
    let mut seen = Vec::new();
    let updated = b
        .update(&key, |value| {
            seen.push(value.copied());
            Some(value.map_or(100, |value| value + 1))
        })
        .await
        .unwrap();
    assert_eq!(
        seen.last(),
        Some(&None),
        "the last run saw the key absent: {seen:?}"
    );
    assert_eq!(updated, Some(100));
    assert_eq!(read_table::<u64>(&admin, table.name()).await[&key], 100);
    assert_eq!(
        stored_deadline(&admin, table.name(), &key).await,
        Some(None)
    );

    // Expecting absence succeeds over an expired row B never heard of; `insert` reports no
    // previous value; `get_or_insert_with` inserts.
    a.insert_until("e".into(), 1, past()).await.unwrap();
    assert_eq!(
        b.compare_exchange(&"e".into(), None, Some(2))
            .await
            .unwrap(),
        Ok(None)
    );
    a.insert_until("p".into(), 1, past()).await.unwrap();
    assert_eq!(b.insert("p".into(), 3).await.unwrap(), None);
    a.insert_until("g".into(), 1, past()).await.unwrap();
    assert_eq!(b.get_or_insert_with("g".into(), || 4).await.unwrap(), 4);
    assert_eq!(b.remove(&"g".into()).await.unwrap(), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_on_one_instance_reaches_the_others_as_removals() {
    let table = TestTable::new("expiry_sweep_seen");
    let a = open(&table).await;
    // B is a bare backend, so that no background sweep of its own can take the rows first.
    let b = instance(&table).await;
    let b_map = open_elsewhere(&table, "b").await;
    let deadline = whole_ms_after(Duration::from_millis(300));
    for key in ["x", "y"] {
        a.insert_until(key.into(), 1, deadline).await.unwrap();
    }
    a.insert("kept".into(), 2).await.unwrap();
    let loaded = StorageBackend::<String, u64>::load_keys_expiring(&b, &["x".into()])
        .await
        .unwrap();
    assert_eq!(loaded["x"].1.map(|d| d.to_system_time()), Some(deadline));
    b_map.refresh().await.unwrap();
    let mut b_changes = b_map.subscribe();
    let position = StorageBackend::<String, u64>::change_position(&b)
        .await
        .unwrap();

    assert!(wait_for(GENEROUS, || a.get("x").is_none()).await.is_some());
    // The background sweep may come first; one way or the other, both rows go.
    let _ = a.sweep_expired().await.unwrap();
    for key in ["x", "y"] {
        assert_eq!(
            stored_deadline(&admin().await, table.name(), key).await,
            None
        );
    }

    let (changes, _) = StorageBackend::<String, u64>::changes_since(&b, position, 0)
        .await
        .unwrap();
    // Read together with what the keys hold now: nothing.
    let ExternalChanges::Entries(mut entries) = changes else {
        panic!("a sweep is logged key by key, like deletes: {changes:?}");
    };
    entries.sort();
    assert_eq!(entries, [("x".into(), None), ("y".into(), None)]);
    let now = StorageBackend::<String, u64>::load_keys(&b, &["x".into(), "y".into()])
        .await
        .unwrap();
    assert!(now.is_empty());

    // A map there drops them and tells its subscribers (whichever sweep it heard of first).
    let mut heard = Vec::new();
    while heard.len() < 2 {
        b_map.refresh().await.unwrap();
        match tokio::time::timeout(Duration::from_millis(50), b_changes.recv()).await {
            Ok(change) => heard.push(change.unwrap()),
            Err(_) => continue,
        }
    }
    heard.sort_by_key(|change| change.key().cloned());
    assert_eq!(
        heard,
        [
            Change::Expired { key: "x".into() },
            Change::Expired { key: "y".into() }
        ]
    );
    assert_eq!(b_map.get("kept"), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_made_before_expiry_gains_the_column_in_place_on_its_first_ttl_write() {
    let table = TestTable::new("expiry_old_table");
    let admin = admin().await;
    create_two_column_table(&admin, table.name(), &[("a", 1), ("b", 2)]).await;
    // All attach to the two-column table, each on a connection of its own: their statements
    // know no deadline yet.
    let (a, b) = (open(&table).await, open_elsewhere(&table, "b").await);
    let stale = open_elsewhere(&table, "stale").await;
    assert_eq!(contents(&a).len(), 2);
    a.insert("plain".into(), 3).await.unwrap();
    assert!(
        !has_expiry_column(&admin, table.name()).await,
        "writes without a TTL leave the table as it was"
    );

    a.insert_with_ttl("c".into(), 4, Duration::from_secs(600))
        .await
        .unwrap();
    assert!(has_expiry_column(&admin, table.name()).await);
    let index = admin
        .query_one(
            "SELECT indexdef FROM pg_indexes WHERE tablename = $1 AND indexdef LIKE '%expires_at%'",
            &[&table.name()],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    assert!(index.contains("WHERE (expires_at IS NOT NULL)"), "{index}");
    for key in ["a", "b", "plain"] {
        assert_eq!(stored_deadline(&admin, table.name(), key).await, Some(None));
    }
    assert!(stored_deadline(&admin, table.name(), "c")
        .await
        .unwrap()
        .is_some());
    // `psql` still reads it as before.
    assert_eq!(read_table::<u64>(&admin, table.name()).await.len(), 4);

    // B, prepared for two columns, reads the new one's deadline.
    refresh_until(&b, "B hears the TTL write", |b| b.get("c") == Some(4)).await;
    assert_eq!(b.deadline("c"), a.deadline("c"));
    // B's plain save of a key with a deadline clears it (no stale statement keeps it).
    b.insert("c".into(), 5).await.unwrap();
    assert_eq!(stored_deadline(&admin, table.name(), "c").await, Some(None));

    // An instance that has read nothing since checks its conditions against the new layout:
    // the old row A made expire is absent to it.
    assert!(a.expire_at(&"a".into(), past()).await.unwrap());
    assert_eq!(
        stale
            .compare_exchange(&"a".into(), Some(&1), Some(9))
            .await
            .unwrap(),
        Err(None)
    );

    // A reopen loads the old rows and the new one, with its deadline.
    a.insert_with_ttl("d".into(), 6, Duration::from_secs(600))
        .await
        .unwrap();
    let reopened = open(&table).await;
    assert_eq!(reopened.get("b"), Some(2));
    assert_eq!(reopened.get("a"), None);
    assert_eq!(reopened.deadline("d"), a.deadline("d"));
    assert_eq!(reopened.len(), 4); // b, plain, c, d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_giving_an_old_table_the_column_at_once_all_succeed() {
    let table = TestTable::new("expiry_race");
    let admin = admin().await;
    create_two_column_table(&admin, table.name(), &[("old", 1)]).await;
    let mut maps = Vec::new();
    for i in 0..4 {
        maps.push(open_elsewhere(&table, &format!("racer{i}")).await);
    }
    let writes: Vec<_> = maps
        .iter()
        .enumerate()
        .map(|(i, map)| {
            let map = map.clone();
            tokio::spawn(async move {
                map.insert_with_ttl(format!("k{i}"), i as u64, Duration::from_secs(600))
                    .await
            })
        })
        .collect();
    for write in writes {
        write.await.unwrap().unwrap();
    }
    assert!(has_expiry_column(&admin, table.name()).await);
    for i in 0..4 {
        let key = format!("k{i}");
        assert!(stored_deadline(&admin, table.name(), &key)
            .await
            .unwrap()
            .is_some());
    }
    let reopened = open(&table).await;
    assert_eq!(reopened.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_store_their_default_ttl_and_read_an_expired_key_as_absent() {
    let (sessions, counts) = (
        TestTable::new("expiry_tx_sessions"),
        TestTable::new("expiry_tx_counts"),
    );
    let admin = admin().await;
    let sessions_map = open(&sessions).await;
    let sessions_ttl = sessions_map
        .clone()
        .with_default_ttl(Duration::from_secs(600))
        .unwrap();
    let counts_map = open(&counts).await;
    let key = "user-1".to_string();

    // One transaction over two tables: the write through the TTL handle gets its deadline,
    // the other none.
    transaction(|tx| {
        tx.insert(&sessions_ttl, key.clone(), 1);
        tx.update(&counts_map, &key, |n| Some(n.copied().unwrap_or(0) + 1));
        Ok::<_, PersistentError>(())
    })
    .await
    .unwrap();
    let stored = stored_deadline(&admin, sessions.name(), &key)
        .await
        .unwrap();
    assert_eq!(
        stored,
        sessions_map
            .deadline(&key)
            .map(|d| i64::try_from(d.unix_millis()).unwrap())
    );
    assert!(stored.is_some());
    assert!(!has_expiry_column(&admin, counts.name()).await);
    let other = open_elsewhere(&sessions, "tx_other").await;
    assert_eq!(other.deadline(&key), sessions_map.deadline(&key));

    // Another instance makes it expire; this one, not told, runs its body again on `None`.
    assert!(other.expire_at(&key, past()).await.unwrap());
    assert_eq!(sessions_map.get(&key), Some(1), "not refreshed");
    let mut seen = Vec::new();
    transaction(|tx| {
        seen.push(tx.get(&sessions_map, &key));
        tx.update(&sessions_map, &key, |n| Some(n.map_or(10, |n| n + 1)));
        Ok::<_, PersistentError>(())
    })
    .await
    .unwrap();
    assert_eq!(seen.last(), Some(&None), "{seen:?}");
    assert_eq!(read_table::<u64>(&admin, sessions.name()).await[&key], 10);
    assert_eq!(
        stored_deadline(&admin, sessions.name(), &key).await,
        Some(None)
    );
}

#[test]
#[ignore = "the other process of `two_processes_see_the_same_expiry`"]
fn pg_expiry_child() {
    let table = std::env::var(CHILD_TABLE).expect("run by a parent test");
    let deadline_ms: u64 = std::env::var(CHILD_DEADLINE).unwrap().parse().unwrap();
    let deadline = UNIX_EPOCH + Duration::from_millis(deadline_ms);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let backend = persistent_map::postgres::PostgresBackend::with_table(&url(), &table)
            .await
            .unwrap();
        let map: Map = PersistentMap::new(backend).await.unwrap();
        // The parent's deadline, read from the row, rules here too; the expired row is absent.
        assert_eq!(
            map.deadline("shared").map(|d| d.to_system_time()),
            Some(deadline)
        );
        assert_eq!(map.get("gone"), None);
        // And this process's TTL reaches the parent.
        map.insert_with_ttl("from-child".into(), 3, Duration::from_secs(600))
            .await
            .unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_see_the_same_expiry() {
    let table = TestTable::new("expiry_processes");
    let map = open(&table).await;
    let deadline = whole_ms_after(Duration::from_secs(600));
    map.insert_until("shared".into(), 1, deadline)
        .await
        .unwrap();
    map.insert_until("gone".into(), 2, past()).await.unwrap();
    let deadline_ms = deadline.duration_since(UNIX_EPOCH).unwrap().as_millis();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "pg_expiry_child",
            "--nocapture",
            "-q",
        ])
        .args(["--test-threads=1"])
        .env(CHILD_TABLE, table.name())
        .env(CHILD_DEADLINE, deadline_ms.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    refresh_until(&map, "the child's write arrives", |map| {
        map.get("from-child") == Some(3)
    })
    .await;
    let left = map
        .ttl("from-child")
        .expect("the child's TTL came with the value");
    assert!(left > Duration::from_secs(500), "{left:?}");
}
