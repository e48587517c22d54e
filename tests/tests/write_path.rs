//! One write path: every write is one checked transaction, settled into memory one way. Each
//! test here is a defect found where earlier copies of that path differed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use persistent_map::in_memory::InMemoryBackend;
use persistent_map::sqlite::SqliteBackend;
use persistent_map::{
    transaction, BatchOp, Change, Checked, Condition, PersistentError, PersistentMap, Result,
    StorageBackend, Stored, WriteOptions,
};
use persistent_map_tests::{stored_rows, temp_db};
use serde::{Deserialize, Serialize};

/// A value type that gained a field: rows written before it lack `note`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Account {
    balance: i64,
    #[serde(default)]
    note: String,
}

type Accounts = PersistentMap<String, Account, SqliteBackend>;

/// Writes `rows` into the table `kv` as another program would, spelled as given.
fn write_raw(path: &Path, rows: &[(&str, &str)]) {
    let connection = rusqlite::Connection::open(path).unwrap();
    for (key, json) in rows {
        connection
            .execute(
                "INSERT INTO kv (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json),
            )
            .unwrap();
    }
}

/// Rows spelled otherwise than `Account` writes them: a missing defaulted field, an unknown
/// field, another key order.
const OLD_ROWS: [(&str, &str); 3] = [
    ("missing", r#"{"balance":100}"#),
    ("unknown", r#"{"balance":100,"note":"","legacy":true}"#),
    ("reordered", r#"{"note":"","balance":100}"#),
];

#[tokio::test]
async fn a_transaction_on_an_old_rows_spelling_commits_at_once() {
    let (_dir, path) = temp_db();
    drop(Accounts::open(&path).await.unwrap());
    write_raw(&path, &OLD_ROWS);
    let accounts = Accounts::open(&path).await.unwrap();
    for (key, _) in OLD_ROWS {
        let commits = accounts.backend().stats().commits;
        let runs = AtomicUsize::new(0);
        let key = key.to_string();
        transaction(|tx| {
            runs.fetch_add(1, Ordering::SeqCst);
            tx.update(&accounts, &key, |account| {
                account.map(|account| Account {
                    balance: account.balance - 30,
                    ..account.clone()
                })
            });
            Ok::<_, PersistentError>(())
        })
        .await
        .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{key}: the body ran once");
        assert_eq!(accounts.backend().stats().commits, commits + 1, "{key}");
        assert_eq!(accounts.get(&key).unwrap().balance, 70);
    }
}

#[tokio::test]
async fn a_compare_exchange_loop_on_an_old_rows_spelling_succeeds_first_time() {
    let (_dir, path) = temp_db();
    drop(Accounts::open(&path).await.unwrap());
    write_raw(&path, &OLD_ROWS);
    let accounts = Accounts::open(&path).await.unwrap();
    for (key, _) in OLD_ROWS {
        let key = key.to_string();
        let commits = accounts.backend().stats().commits;
        let mut seen = accounts.get(&key);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let next = Account {
                balance: seen.as_ref().map_or(0, |a| a.balance) + 1,
                note: "bumped".into(),
            };
            match accounts
                .compare_exchange(&key, seen.as_ref(), Some(next))
                .await
                .unwrap()
            {
                Ok(_) => break,
                Err(actual) => seen = actual,
            }
            assert!(attempts < 10, "{key}: the loop does not end");
        }
        assert_eq!(attempts, 1, "{key}");
        assert_eq!(accounts.backend().stats().commits, commits + 1, "{key}");
    }
}

#[tokio::test]
async fn an_update_on_an_old_rows_spelling_commits_once() {
    let (_dir, path) = temp_db();
    drop(Accounts::open(&path).await.unwrap());
    write_raw(&path, &OLD_ROWS[..1]);
    let accounts = Accounts::open(&path).await.unwrap();
    let commits = accounts.backend().stats().commits;
    let key = "missing".to_string();
    let bumped = accounts
        .update(&key, |a| {
            a.map(|a| Account {
                balance: a.balance + 1,
                ..a.clone()
            })
        })
        .await
        .unwrap();
    assert_eq!(bumped.unwrap().balance, 101);
    assert_eq!(accounts.backend().stats().commits, commits + 1);
}

/// Storage committed 100 (another program), then the map's own pipelined writes 2, 3 and 4
/// behind an update that conflicted with the 100. Memory and subscribers take the values in
/// that order: the conflict settles from its own read, not from a re-read after 2, 3 and 4
/// had committed.
#[tokio::test]
async fn a_pipelined_updates_conflict_never_takes_memory_backwards() {
    let (_dir, path) = temp_db();
    let map: PersistentMap<String, u64, SqliteBackend> = PersistentMap::open(&path).await.unwrap();
    let key = "k".to_string();
    map.insert(key.clone(), 1).await.unwrap();
    let mut changes = map.subscribe();
    write_raw(&path, &[("k", "100")]);

    let (updated, two, three, four) = tokio::join!(
        map.update(&key, |n| n.map(|n| n + 1)),
        map.insert(key.clone(), 2),
        map.insert(key.clone(), 3),
        map.insert(key.clone(), 4),
    );
    for inserted in [two, three, four] {
        inserted.unwrap();
    }
    let updated = updated.unwrap().expect("the update stores a value");
    let mut heard = Vec::new();
    while let Ok(Some(change)) = changes.try_recv() {
        match change {
            Change::Inserted { value, .. } => heard.push(value),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Storage's commit order: 100, then the inserts in the order they were handed over, with
    // the update's retry somewhere after the 100, built on what came just before it.
    let at = heard.iter().position(|&value| value == updated).unwrap();
    assert_eq!(heard[at - 1] + 1, updated, "{heard:?}");
    let mut others = heard.clone();
    others.remove(at);
    assert_eq!(
        others,
        [100, 2, 3, 4],
        "in storage's commit order: {heard:?}"
    );
    let last = *heard.last().unwrap();
    assert_eq!(map.get(&key), Some(last));
    assert_eq!(
        stored_rows(&path, "kv"),
        [("k".to_string(), last.to_string())]
    );
}

/// Each write of a transaction carries the time to live of the handle it went through,
/// whichever handle touched the map first.
#[tokio::test]
async fn each_write_of_a_transaction_keeps_its_own_handles_time_to_live() {
    let (_dir, path) = temp_db();
    let plain: PersistentMap<String, u64, SqliteBackend> =
        PersistentMap::open(&path).await.unwrap();
    let cached = plain
        .clone()
        .with_default_ttl(Duration::from_secs(60))
        .unwrap();
    transaction(|tx| {
        tx.insert(&cached, "cached-first".into(), 1);
        tx.insert(&plain, "plain-second".into(), 2);
        Ok::<_, PersistentError>(())
    })
    .await
    .unwrap();
    transaction(|tx| {
        tx.insert(&plain, "plain-first".into(), 3);
        tx.insert(&cached, "cached-second".into(), 4);
        Ok::<_, PersistentError>(())
    })
    .await
    .unwrap();
    let deadlines = stored_deadlines(&path);
    for key in ["cached-first", "cached-second"] {
        assert!(plain.ttl(key).is_some(), "{key} in memory");
        assert!(deadlines[key].is_some(), "{key} in storage");
    }
    for key in ["plain-first", "plain-second"] {
        assert_eq!(plain.ttl(key), None, "{key} in memory");
        assert_eq!(deadlines[key], None, "{key} in storage");
    }
}

fn stored_deadlines(path: &Path) -> HashMap<String, Option<i64>> {
    let connection = rusqlite::Connection::open(path).unwrap();
    let mut select = connection
        .prepare("SELECT key, expires_at FROM kv")
        .unwrap();
    let rows = select
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap();
    rows.collect::<rusqlite::Result<_>>().unwrap()
}

/// A change of the deadline alone is announced as such, and `persist` on an entry that never
/// expires writes nothing and says so.
#[tokio::test]
async fn deadline_changes_are_their_own_change_and_a_no_op_persist_writes_nothing() {
    let (_dir, path) = temp_db();
    let map: PersistentMap<String, u64, SqliteBackend> = PersistentMap::open(&path).await.unwrap();
    let key = "k".to_string();
    map.insert(key.clone(), 1).await.unwrap();
    let mut changes = map.subscribe();
    let commits = map.backend().stats().commits;
    assert!(!map.persist(&key).await.unwrap(), "it never expired");
    assert_eq!(
        map.backend().stats().commits,
        commits,
        "nothing was written"
    );
    assert!(map.expire(&key, Duration::from_secs(60)).await.unwrap());
    match changes.recv().await.unwrap() {
        Change::DeadlineChanged {
            key: changed,
            deadline,
        } => {
            assert_eq!(changed, key);
            assert!(deadline.is_some());
        }
        other => panic!("expected a deadline change, got {other:?}"),
    }
    assert!(map.persist(&key).await.unwrap());
    assert_eq!(
        changes.recv().await.unwrap(),
        Change::DeadlineChanged {
            key: key.clone(),
            deadline: None
        }
    );
    assert_eq!(map.get(&key), Some(1));
    assert_eq!(changes.try_recv(), Ok(None));
}

/// The background sweep belongs to the map, not to the runtime of the handle that started it:
/// a map used from a runtime that has since ended still has its expired rows swept.
#[test]
fn the_sweep_outlives_the_runtime_that_started_it() {
    let (_dir, path) = temp_db();
    let first = tokio::runtime::Runtime::new().unwrap();
    let map: PersistentMap<String, u64, SqliteBackend> = first.block_on(async {
        let map = PersistentMap::open(&path).await.unwrap();
        let ttl = Duration::from_millis(200);
        for i in 0..101 {
            map.insert_with_ttl(format!("k{i}"), i, ttl).await.unwrap();
        }
        map
    });
    drop(first);
    let swept = wait_for(Duration::from_secs(10), || {
        stored_rows(&path, "kv").is_empty()
    });
    assert!(swept, "the expired rows were never swept");
    drop(map);
}

/// Expired rows left by an earlier run are swept when a map opens on them, without a call.
#[tokio::test]
async fn reopening_a_table_with_expired_rows_sweeps_them() {
    let (_dir, path) = temp_db();
    {
        let map: PersistentMap<String, u64, SqliteBackend> =
            PersistentMap::open(&path).await.unwrap();
        for i in 0..50 {
            let deadline = std::time::SystemTime::now() + Duration::from_millis(50);
            map.insert_until(format!("k{i}"), i, deadline)
                .await
                .unwrap();
        }
        map.insert("kept".into(), 7).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let map: PersistentMap<String, u64, SqliteBackend> = PersistentMap::open(&path).await.unwrap();
    assert_eq!(map.len(), 1);
    let swept = wait_for(Duration::from_secs(10), || {
        stored_rows(&path, "kv").len() == 1
    });
    assert!(
        swept,
        "the expired rows stayed: {:?}",
        stored_rows(&path, "kv")
    );
}

/// Polls `done` until it holds or `limit` passes; whether it held.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let began = Instant::now();
    while began.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// A deadline cell another program filled with text is no deadline, as loads read it: the key
/// stays writable.
#[tokio::test]
async fn a_text_deadline_cell_leaves_its_key_writable() {
    let (_dir, path) = temp_db();
    let map: PersistentMap<String, u64, SqliteBackend> = PersistentMap::open(&path).await.unwrap();
    map.insert_with_ttl("other".into(), 0, Duration::from_secs(60))
        .await
        .unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("INSERT INTO kv VALUES ('k', '1', 'soon')", [])
        .unwrap();
    map.refresh().await.unwrap();
    assert_eq!(map.get("k"), Some(1));
    assert_eq!(
        map.update(&"k".into(), |n| n.map(|n| n + 1)).await.unwrap(),
        Some(2)
    );
    assert_eq!(map.insert("k".into(), 3).await.unwrap(), Some(2));
}

/// A custom backend that answers every write with a conflict: with the value it makes up
/// (always another), or with nothing for a write without conditions.
#[derive(Default)]
struct AlwaysConflicting {
    answers: AtomicUsize,
}

#[async_trait::async_trait]
impl StorageBackend<String, u64> for AlwaysConflicting {
    async fn load_all(&self) -> Result<HashMap<String, u64>> {
        Ok(HashMap::new())
    }

    async fn save(&self, _: String, _: u64) -> Result<()> {
        Ok(())
    }

    async fn delete(&self, _: &String) -> Result<()> {
        Ok(())
    }

    async fn apply_checked(
        &self,
        conditions: &[Condition<String>],
        _: &[BatchOp<String, u64>],
        _: WriteOptions,
    ) -> Result<Checked<u64>> {
        let value = self.answers.fetch_add(1, Ordering::SeqCst) as u64;
        let current = conditions
            .iter()
            .map(|_| {
                Some(Stored {
                    value,
                    json: value.to_string(),
                })
            })
            .collect();
        Ok(Checked::Conflict { current })
    }

    fn storage_id(&self) -> Option<String> {
        Some(format!("always-conflicting {:p}", self))
    }
}

#[tokio::test]
async fn a_read_modify_write_that_keeps_conflicting_gives_up_naming_the_key() {
    let map = PersistentMap::new(AlwaysConflicting::default())
        .await
        .unwrap();
    let err = map
        .update(&"hot".to_string(), |n| Some(n.copied().unwrap_or(0) + 1))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            err,
            PersistentError::KeepsChanging {
                attempts: 1_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(message.contains("\"hot\""), "{message}");
    assert!(message.contains("always-conflicting"), "{message}");
    assert_eq!(map.backend().answers.load(Ordering::SeqCst), 1_000);
}

/// A transaction whose reads another writer changes at every run gives up too.
#[tokio::test]
async fn a_transaction_that_keeps_conflicting_gives_up_naming_the_key() {
    let backend = InMemoryBackend::new();
    let map: PersistentMap<String, u64, _> = PersistentMap::new(backend.clone()).await.unwrap();
    let runs = AtomicUsize::new(0);
    let err = transaction(|tx| {
        let n = tx.get(&map, &"hot".to_string()).unwrap_or(0);
        let run = runs.fetch_add(1, Ordering::SeqCst) as u64;
        // Another writer of the store changes what this run read before it commits.
        let writer = backend.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(writer.save("hot".to_string(), 1000 + run))
        })
        .join()
        .unwrap()
        .unwrap();
        tx.insert(&map, "hot".to_string(), n + 1);
        Ok::<_, PersistentError>(())
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            PersistentError::KeepsChanging {
                attempts: 1_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"hot\""), "{err}");
    assert_eq!(runs.load(Ordering::SeqCst), 1_000);
}

#[tokio::test]
async fn a_conflict_answered_to_a_write_without_conditions_is_an_error() {
    let map = PersistentMap::new(AlwaysConflicting::default())
        .await
        .unwrap();
    let err = map.insert("k".to_string(), 1).await.unwrap_err();
    assert!(err.to_string().contains("always-conflicting"), "{err}");
    assert_eq!(map.get("k"), None, "memory was left as it was");
}

/// An in-memory store whose full loads read it, then wait at a gate before handing the rows
/// over: a reload's scan, held open for as long as a test needs.
#[derive(Default)]
struct GatedLoads {
    store: InMemoryBackend,
    hold: std::sync::atomic::AtomicBool,
    scanned: tokio::sync::Notify,
    gate: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl StorageBackend<String, u64> for GatedLoads {
    async fn load_all(&self) -> Result<HashMap<String, u64>> {
        let read = StorageBackend::<String, u64>::load_all(&self.store).await;
        // Only the first load waits: the reload then reads the keys written meanwhile, which
        // the default `load_keys` does with another full load.
        if self.hold.swap(false, Ordering::SeqCst) {
            self.scanned.notify_one();
            self.gate.notified().await;
        }
        read
    }

    async fn save(&self, key: String, value: u64) -> Result<()> {
        self.store.save(key, value).await
    }

    async fn delete(&self, key: &String) -> Result<()> {
        StorageBackend::<String, u64>::delete(&self.store, key).await
    }

    async fn apply_checked(
        &self,
        conditions: &[Condition<String>],
        ops: &[BatchOp<String, u64>],
        options: WriteOptions,
    ) -> Result<Checked<u64>> {
        self.store.apply_checked(conditions, ops, options).await
    }
}

/// A reload reads storage without holding the keys' turns: writes go on meanwhile, and the
/// keys they wrote keep what they wrote.
#[tokio::test]
async fn writes_go_on_while_a_reload_scans() {
    let map = PersistentMap::new(GatedLoads::default()).await.unwrap();
    map.insert("k".to_string(), 1).await.unwrap();
    map.backend().hold.store(true, Ordering::SeqCst);
    let reload = tokio::spawn({
        let map = map.clone();
        async move { map.load().await }
    });
    map.backend().scanned.notified().await; // the scan has read k = 1
    let patience = Duration::from_secs(5);
    let written = tokio::time::timeout(patience, map.insert("k".to_string(), 2)).await;
    assert!(written.is_ok(), "a write waited for the reload's scan");
    tokio::time::timeout(patience, map.insert("new".to_string(), 3))
        .await
        .unwrap()
        .unwrap();
    map.backend().gate.notify_one();
    reload.await.unwrap().unwrap();
    assert_eq!(
        map.get("k"),
        Some(2),
        "the scan's older read did not go over the write"
    );
    assert_eq!(map.get("new"), Some(3));
    let stored = StorageBackend::<String, u64>::load_all(&map.backend().store)
        .await
        .unwrap();
    assert_eq!(stored, map.iter().collect::<HashMap<_, _>>());
}
