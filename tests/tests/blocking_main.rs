//! The blocking API from a plain `fn main`, as a command-line tool uses it: no runtime of its
//! own, no `#[tokio::main]` (this test binary has `harness = false`). Then the same map called
//! from inside a runtime, where it must refuse to block rather than panic or deadlock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use persistent_map::blocking::{BlockingRecvError, PersistentMap};
use persistent_map::sqlite::SqliteBackend;
use persistent_map::{Change, PersistentError, SqliteOptions};
use persistent_map_tests::{stored_rows, temp_db};

type Counters = PersistentMap<u64, u32, SqliteBackend>;

fn main() {
    writes_block_until_committed_and_survive_a_reopen();
    every_write_form_works_and_clones_share_the_map();
    inside_a_runtime_blocking_calls_are_refused_and_reads_work();
    ttl_writes_block_until_committed_and_survive_a_reopen();
    the_background_sweep_runs_between_calls();
    inside_a_runtime_ttl_writes_are_refused_and_ttl_reads_work();
    println!("blocking_main: all passed");
}

fn writes_block_until_committed_and_survive_a_reopen() {
    let (_dir, path) = temp_db();
    let map: Counters = PersistentMap::open(&path).expect("open");
    assert_eq!(map.insert(1, 10).expect("insert"), None);
    // Committed when `insert` returned: a second SQLite client sees it at once.
    assert_eq!(
        stored_rows(&path, "std__u64"),
        [("1".to_string(), "10".to_string())]
    );
    drop(map);

    let reopened: Counters = PersistentMap::open(&path).expect("reopen");
    assert_eq!(reopened.get(&1), Some(10));
    assert_eq!(reopened.len(), 1);
}

fn every_write_form_works_and_clones_share_the_map() {
    let (_dir, path) = temp_db();
    let map: Counters = PersistentMap::open(&path).expect("open");
    let mut changes = map.subscribe();

    // `update` takes an FnMut: it may be called more than once, so it only computes.
    let calls = AtomicUsize::new(0);
    let bump = |old: Option<&u32>| {
        calls.fetch_add(1, Ordering::Relaxed);
        Some(old.copied().unwrap_or(0) + 1)
    };
    assert_eq!(map.update(&7, bump).expect("update"), Some(1));
    assert_eq!(map.update(&7, bump).expect("update"), Some(2));
    assert!(calls.load(Ordering::Relaxed) >= 2);
    assert_eq!(
        changes.recv().expect("a change"),
        Change::Inserted { key: 7, value: 1 }
    );

    assert_eq!(map.get_or_insert_with(8, || 80).expect("get_or_insert"), 80);
    assert_eq!(map.get_or_insert_with(8, || 99).expect("get_or_insert"), 80);
    map.insert_many((100..110).map(|key| (key, 1)))
        .expect("insert_many");
    assert_eq!(map.remove_many([100, 101, 555]).expect("remove_many"), 2);
    assert_eq!(map.retain(|key, _| *key < 105).expect("retain"), 5);
    assert_eq!(map.remove(&102).expect("remove"), Some(1));
    map.flush().expect("flush");

    // A clone, used from another thread, is the same map.
    let clone = map.clone();
    std::thread::spawn(move || clone.insert(9, 90).expect("insert from another thread"))
        .join()
        .expect("the writing thread");
    let snapshot = map.snapshot().expect("snapshot");
    assert_eq!(snapshot.len(), 5, "{snapshot:?}");
    assert_eq!(snapshot[&9], 90);
    let mut keys: Vec<u64> = map.keys().collect();
    keys.sort_unstable();
    assert_eq!(keys, [7, 8, 9, 103, 104]);

    // Another process's write is picked up by `refresh`.
    rusqlite::Connection::open(&path)
        .expect("a second client")
        .execute("INSERT INTO std__u64 VALUES ('5', '50')", [])
        .expect("write behind the map's back");
    assert!(map.refresh().expect("refresh"));
    assert_eq!(map.get(&5), Some(50));

    map.clear().expect("clear");
    assert!(map.is_empty());
    assert!(stored_rows(&path, "std__u64").is_empty());
}

fn inside_a_runtime_blocking_calls_are_refused_and_reads_work() {
    let (_dir, path) = temp_db();
    let map: Counters = PersistentMap::open(&path).expect("open");
    map.insert(1, 10).expect("insert");
    let mut changes = map.subscribe();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime of the user's");
    runtime.block_on(async {
        let err = map.insert(2, 20).unwrap_err();
        assert!(
            matches!(
                err,
                PersistentError::BlockingInAsyncContext {
                    operation: "insert"
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "persistent_map::blocking::PersistentMap::insert was called inside an async runtime, \
             where it would block the runtime's thread; nothing was done. Use the async \
             PersistentMap there (`.as_async()`), or call it from a thread of your own"
        );
        assert!(matches!(
            map.update(&1, |_| None),
            Err(PersistentError::BlockingInAsyncContext {
                operation: "update"
            })
        ));
        // Each constructor names itself, and points at the async map's constructor rather
        // than at `.as_async()`, which needs a map (issue 22: all said `open`).
        let refused = |result: persistent_map::Result<Counters>, name: &str, instead: &str| {
            let err = result.map(drop).unwrap_err();
            assert!(
                matches!(err, PersistentError::BlockingInAsyncContext { operation } if operation == name),
                "{err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!(
                    "persistent_map::blocking::PersistentMap::{name} was called inside an async \
                     runtime, where it would block the runtime's thread; nothing was done. Open \
                     the async map there instead \
                     (`persistent_map::PersistentMap::{instead}(..).await`), or call it from a \
                     thread of your own"
                )
            );
        };
        refused(Counters::open(&path), "open", "open");
        refused(
            Counters::open_with(&path, SqliteOptions::new()),
            "open_with",
            "open_with",
        );
        refused(
            Counters::open_backend(|| SqliteBackend::builder(&path).open()),
            "open_backend",
            "new",
        );
        assert!(matches!(
            changes.recv(),
            Err(BlockingRecvError::Blocking(
                PersistentError::BlockingInAsyncContext { .. }
            ))
        ));
        // A task of the runtime is inside it too.
        let in_task = map.clone();
        let refused = tokio::spawn(async move { in_task.remove(&1) })
            .await
            .expect("the task");
        assert!(matches!(
            refused,
            Err(PersistentError::BlockingInAsyncContext { .. })
        ));

        // Reads do not block, and the async map is there for async code.
        assert_eq!(map.get(&1), Some(10));
        assert_eq!(
            map.as_async().insert(3, 30).await.expect("async insert"),
            None
        );
    });
    assert_eq!(map.get(&2), None);
    assert_eq!(
        stored_rows(&path, "std__u64"),
        [
            ("1".to_string(), "10".to_string()),
            ("3".to_string(), "30".to_string()),
        ]
    );

    // Dropping the last handle inside a runtime neither panics nor blocks it.
    runtime.block_on(async move { drop(map) });
}

/// Each key's `expires_at` cell as a second SQLite client reads it, sorted by key.
fn stored_deadlines(path: &std::path::Path) -> Vec<(String, Option<i64>)> {
    let connection = rusqlite::Connection::open(path).expect("a second client");
    let mut statement = connection
        .prepare("SELECT key, expires_at FROM std__u64 ORDER BY key")
        .expect("prepare the SELECT");
    let rows = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("run the SELECT");
    rows.collect::<rusqlite::Result<_>>()
        .expect("read the rows")
}

fn ttl_writes_block_until_committed_and_survive_a_reopen() {
    let (_dir, path) = temp_db();
    let map: Counters = PersistentMap::open(&path).expect("open");
    let hour = Duration::from_secs(3600);
    let in_an_hour = SystemTime::now() + hour;

    assert_eq!(
        map.insert_with_ttl(1, 10, hour).expect("insert_with_ttl"),
        None
    );
    let left = map.ttl(&1).expect("a time to live");
    assert!(
        left > hour - Duration::from_secs(60) && left <= hour,
        "{left:?}"
    );
    assert_eq!(
        map.insert_until(2, 20, in_an_hour).expect("insert_until"),
        None
    );
    assert!(map.deadline(&2).expect("a deadline").to_system_time() >= in_an_hour);
    assert_eq!(map.insert(3, 30).expect("insert"), None);
    assert_eq!(map.ttl(&3), None);
    assert!(!map.expire(&9, hour).expect("expire a missing key"));
    assert!(map.expire(&3, hour).expect("expire"));
    assert!(map.ttl(&3).is_some());
    assert!(map.persist(&1).expect("persist"));
    assert_eq!(map.ttl(&1), None);
    assert_eq!(map.get(&1), Some(10));

    // Committed when each call returned: a second client sees the deadlines.
    let stored = stored_deadlines(&path);
    let deadline_of = |key: &str| {
        stored
            .iter()
            .find(|(stored_key, _)| stored_key == key)
            .unwrap_or_else(|| panic!("key {key} is stored: {stored:?}"))
            .1
    };
    assert_eq!(deadline_of("1"), None, "persisted");
    let expected_2 = map.deadline(&2).expect("a deadline").unix_millis();
    assert_eq!(
        deadline_of("2"),
        Some(i64::try_from(expected_2).expect("millis"))
    );
    assert!(deadline_of("3").is_some(), "expired after an hour");

    // Expired at once: absent to reads, then deleted from storage by the sweep.
    assert!(map
        .expire_at(&3, SystemTime::UNIX_EPOCH)
        .expect("expire_at"));
    map.insert_until(4, 40, SystemTime::UNIX_EPOCH)
        .expect("insert_until a past deadline");
    assert_eq!(map.get(&3), None);
    assert_eq!(map.get(&4), None);
    // 2 unless the background sweep came first.
    assert!(map.sweep_expired().expect("sweep_expired") <= 2);
    assert_eq!(map.sweep_expired().expect("sweep again"), 0);
    let keys: Vec<String> = stored_rows(&path, "std__u64")
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(keys, ["1", "2"]);

    // A default time to live belongs to the handle it was set on.
    let timed = map
        .clone()
        .with_default_ttl(hour)
        .expect("with_default_ttl");
    assert_eq!(timed.default_ttl(), Some(hour));
    assert_eq!(map.default_ttl(), None);
    timed.insert(5, 50).expect("insert with the default");
    map.insert(6, 60).expect("insert without");
    assert!(timed.ttl(&5).is_some() && map.ttl(&5).is_some());
    assert_eq!(map.ttl(&6), None);
    drop((map, timed));

    let reopened: Counters = PersistentMap::open(&path).expect("reopen");
    assert_eq!(reopened.len(), 4);
    assert_eq!(reopened.ttl(&1), None);
    assert_eq!(
        reopened
            .deadline(&2)
            .expect("the deadline survived")
            .unix_millis(),
        expected_2
    );
    assert!(reopened.ttl(&5).is_some());
}

/// The map's own runtime sweeps expired rows while the program does something else; polled
/// with a generous bound, since the sweep runs every second.
fn the_background_sweep_runs_between_calls() {
    let (_dir, path) = temp_db();
    let map: Counters = PersistentMap::open(&path).expect("open");
    map.insert(1, 10).expect("insert");
    map.insert_with_ttl(2, 20, Duration::from_millis(1))
        .expect("insert_with_ttl");
    let mut changes = map.subscribe();
    let began = Instant::now();
    while stored_rows(&path, "std__u64").len() > 1 {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "the background sweep never deleted the expired row"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        changes.recv().expect("a change"),
        Change::Expired { key: 2 }
    );
    assert_eq!(map.len(), 1);
}

fn inside_a_runtime_ttl_writes_are_refused_and_ttl_reads_work() {
    let (_dir, path) = temp_db();
    let map: Counters = PersistentMap::open(&path).expect("open");
    let hour = Duration::from_secs(3600);
    map.insert_with_ttl(1, 10, hour).expect("insert_with_ttl");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime of the user's");
    let refused = |result: Result<(), PersistentError>, expected: &str| match result {
        Err(PersistentError::BlockingInAsyncContext { operation }) => {
            assert_eq!(operation, expected);
        }
        other => panic!("{expected} inside a runtime gave {other:?}"),
    };
    runtime.block_on(async {
        refused(
            map.insert_with_ttl(2, 20, hour).map(drop),
            "insert_with_ttl",
        );
        refused(
            map.insert_until(2, 20, SystemTime::now() + hour).map(drop),
            "insert_until",
        );
        refused(map.expire(&1, Duration::ZERO).map(drop), "expire");
        refused(
            map.expire_at(&1, SystemTime::UNIX_EPOCH).map(drop),
            "expire_at",
        );
        refused(map.persist(&1).map(drop), "persist");
        refused(map.sweep_expired().map(drop), "sweep_expired");
        // A task of the runtime is inside it too.
        let in_task = map.clone();
        let from_task = tokio::spawn(async move { in_task.persist(&1).map(drop) })
            .await
            .expect("the task");
        refused(from_task, "persist");

        // What does not block works: memory reads and a new handle's default.
        assert!(map.ttl(&1).is_some());
        assert!(map.deadline(&1).is_some());
        let timed = map
            .clone()
            .with_default_ttl(hour)
            .expect("with_default_ttl");
        assert_eq!(timed.default_ttl(), Some(hour));
        assert!(timed
            .as_async()
            .insert(3, 30)
            .await
            .expect("async insert")
            .is_none());
    });
    // Nothing refused was done.
    assert_eq!(map.get(&2), None);
    assert!(map
        .ttl(&1)
        .is_some_and(|left| left > hour - Duration::from_secs(60)));
    assert!(map.ttl(&3).is_some());
    runtime.block_on(async move { drop(map) });
}
