//! The blocking API from a plain `fn main`, as a command-line tool uses it: no runtime of its
//! own, no `#[tokio::main]` (this test binary has `harness = false`). Then the same map called
//! from inside a runtime, where it must refuse to block rather than panic or deadlock.

use std::sync::atomic::{AtomicUsize, Ordering};

use persistent_map::blocking::{BlockingRecvError, PersistentMap};
use persistent_map::sqlite::SqliteBackend;
use persistent_map::{Change, PersistentError};
use persistent_map_tests::{stored_rows, temp_db};

type Counters = PersistentMap<u64, u32, SqliteBackend>;

fn main() {
    writes_block_until_committed_and_survive_a_reopen();
    every_write_form_works_and_clones_share_the_map();
    inside_a_runtime_blocking_calls_are_refused_and_reads_work();
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
        assert!(matches!(
            Counters::open(&path),
            Err(PersistentError::BlockingInAsyncContext { operation: "open" })
        ));
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
