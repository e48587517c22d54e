//! DESIGN.md's invariants 1, 2, 4, 5 and 7, each shown under the conditions that would break it.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use persistent_map::in_memory::InMemoryBackend;
use persistent_map::sqlite::SqliteBackend;
use persistent_map::{PersistentError, PersistentMap, StorageBackend};
use persistent_map_tests::{stored_rows, temp_db, Refusing};

/// Holds SQLite's write lock on `path` from another connection until dropped, so the map's
/// writer thread stalls inside its next commit.
struct ExternalWriteLock(rusqlite::Connection);

impl ExternalWriteLock {
    fn take(path: &Path) -> Self {
        let connection = rusqlite::Connection::open(path).unwrap();
        connection.execute_batch("BEGIN IMMEDIATE").unwrap();
        Self(connection)
    }

    fn release(self) {
        self.0.execute_batch("COMMIT").unwrap();
    }
}

fn snapshot<B>(map: &PersistentMap<String, u64, B>, keys: &[String]) -> BTreeMap<String, u64>
where
    B: StorageBackend<String, u64> + Send + Sync + 'static,
{
    keys.iter()
        .filter_map(|key| map.get(key).map(|value| (key.clone(), value)))
        .collect()
}

/// 16 tasks race inserts and removes on 4 keys; afterwards memory must equal a fresh load.
async fn hammer_hot_keys<B>(map: &PersistentMap<String, u64, B>, round: u64) -> Vec<String>
where
    B: StorageBackend<String, u64> + Send + Sync + 'static,
{
    let keys: Vec<String> = (0..4).map(|k| format!("hot-{k}")).collect();
    let mut tasks = Vec::new();
    for task in 0..16u64 {
        let map = map.clone();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            for step in 0..60u64 {
                let key = &keys[((task + step * 7) % 4) as usize];
                if (task + step) % 5 == 0 {
                    map.remove(key).await.unwrap();
                } else {
                    map.insert(key.clone(), round * 1_000_000 + task * 1_000 + step)
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_equals_disk_after_racing_writers_on_hot_keys_sqlite() {
    let (_dir, path) = temp_db();
    let map: PersistentMap<String, u64, SqliteBackend> = PersistentMap::open(&path).await.unwrap();
    for round in 0..4 {
        let keys = hammer_hot_keys(&map, round).await;
        let reopened: PersistentMap<String, u64, SqliteBackend> =
            PersistentMap::open(&path).await.unwrap();
        assert_eq!(
            snapshot(&map, &keys),
            snapshot(&reopened, &keys),
            "round {round}"
        );
        assert_eq!(map.len(), reopened.len(), "round {round}");
        let on_disk: BTreeMap<String, u64> = stored_rows(&path, "kv")
            .into_iter()
            .map(|(key, value)| (key, value.parse().unwrap()))
            .collect();
        assert_eq!(snapshot(&map, &keys), on_disk, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_equals_storage_after_racing_writers_on_hot_keys_in_memory() {
    let backend = InMemoryBackend::new();
    let map: PersistentMap<String, u64, _> = PersistentMap::new(backend.clone()).await.unwrap();
    for round in 0..4 {
        let keys = hammer_hot_keys(&map, round).await;
        let stored: std::collections::HashMap<String, u64> = backend.load_all().await.unwrap();
        assert_eq!(
            snapshot(&map, &keys),
            stored.into_iter().collect::<BTreeMap<_, _>>(),
            "round {round}"
        );
    }
}

#[tokio::test]
async fn a_refused_write_reaches_the_caller_and_leaves_memory_unchanged() {
    let (_dir, path) = temp_db();
    let backend = Refusing::new(SqliteBackend::new(&path).await.unwrap());
    let map: PersistentMap<String, u64, _> = PersistentMap::new(backend.clone()).await.unwrap();
    map.insert("kept".into(), 1).await.unwrap();

    backend.refuse(true);
    let fresh = map.insert("fresh".into(), 2).await.unwrap_err();
    assert!(matches!(fresh, PersistentError::Io(_)), "{fresh}");
    assert!(fresh.to_string().contains("disk is full"), "{fresh}");
    assert!(!map.contains_key("fresh"));

    map.insert("kept".into(), 3).await.unwrap_err();
    assert_eq!(map.get("kept"), Some(1));

    map.remove(&"kept".to_string()).await.unwrap_err();
    assert_eq!(map.get("kept"), Some(1));
    assert_eq!(map.len(), 1);

    backend.refuse(false);
    let reopened: PersistentMap<String, u64, SqliteBackend> =
        PersistentMap::open(&path).await.unwrap();
    assert_eq!(
        snapshot(&reopened, &["kept".into(), "fresh".into()]),
        snapshot(&map, &["kept".into(), "fresh".into()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_failing_inside_a_shared_commit_fails_alone() {
    let (_dir, path) = temp_db();
    let good: PersistentMap<String, u64, _> =
        PersistentMap::new(SqliteBackend::with_table(&path, "good").await.unwrap())
            .await
            .unwrap();
    let doomed: PersistentMap<String, u64, _> =
        PersistentMap::new(SqliteBackend::with_table(&path, "doomed").await.unwrap())
            .await
            .unwrap();
    // Another client drops `doomed`'s table: its writes will fail from now on.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("DROP TABLE doomed")
        .unwrap();

    // Stall the writer so that every write below queues up and lands in one group.
    let lock = ExternalWriteLock::take(&path);
    let mut writes = Vec::new();
    for i in 0..40u64 {
        let (good, doomed) = (good.clone(), doomed.clone());
        writes.push(tokio::spawn(async move {
            if i % 2 == 0 {
                (true, good.insert(format!("k{i}"), i).await.is_ok())
            } else {
                (false, doomed.insert(format!("k{i}"), i).await.is_ok())
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let commits_before = good.backend().stats().commits;
    lock.release();

    for write in writes {
        let (to_good, succeeded) = write.await.unwrap();
        assert_eq!(succeeded, to_good);
    }
    assert_eq!(good.len(), 20);
    assert!(doomed.is_empty());
    assert_eq!(stored_rows(&path, "good").len(), 20);
    // 20 good writes took at most 21 commits: the retry after the failed group commits each
    // request alone, but nothing is committed twice and nothing failed with the bad ones.
    assert!(good.backend().stats().commits - commits_before <= 21);
}

#[tokio::test(flavor = "current_thread")]
async fn reads_never_wait_for_a_stalled_write_and_sqlite_stays_off_the_runtime() {
    let (_dir, path) = temp_db();
    let map: PersistentMap<String, u64, SqliteBackend> = PersistentMap::open(&path).await.unwrap();
    map.insert("a".into(), 1).await.unwrap();
    map.insert("b".into(), 2).await.unwrap();

    let lock = ExternalWriteLock::take(&path);
    let writer = {
        let map = map.clone();
        tokio::spawn(async move { map.insert("a".into(), 10).await })
    };
    // On this single-threaded runtime, the timer below fires only if the stalled commit is not
    // blocking the runtime's one thread.
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        !writer.is_finished(),
        "the write should still wait for the lock"
    );
    assert_eq!(map.get("a"), Some(1), "a write in flight is not visible");
    assert_eq!(map.get("b"), Some(2));
    assert!(map.contains_key("a"));

    lock.release();
    assert_eq!(writer.await.unwrap().unwrap(), Some(1));
    assert_eq!(map.get("a"), Some(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_commits() {
    let (_dir, path) = temp_db();
    let map: PersistentMap<String, u64, SqliteBackend> = PersistentMap::open(&path).await.unwrap();
    let lock = ExternalWriteLock::take(&path);
    let writes: Vec<_> = (0..64u64)
        .map(|i| {
            let map = map.clone();
            tokio::spawn(async move { map.insert(format!("key-{i}"), i).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.release();
    for write in writes {
        write.await.unwrap().unwrap();
    }
    let stats = map.backend().stats();
    assert_eq!(stats.writes, 64);
    // The first write stalls on the lock alone; the others queued behind it share the next
    // commit, except the few whose keys share a lock stripe with a queued key and so wait their
    // turn (64 keys over 1024 stripes: about two). One commit per write would be 64.
    assert!(
        stats.commits <= 8,
        "64 writes took {} commits",
        stats.commits
    );
    assert_eq!(stored_rows(&path, "kv").len(), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_maps_on_one_file_write_concurrently_without_lock_errors() {
    let (_dir, path) = temp_db();
    let mut maps = Vec::new();
    for table in ["orders", "users", "sessions", "events"] {
        let backend = SqliteBackend::with_table(&path, table).await.unwrap();
        maps.push(PersistentMap::<String, u64, _>::new(backend).await.unwrap());
    }
    let mut tasks = Vec::new();
    for (m, map) in maps.iter().enumerate() {
        for task in 0..8u64 {
            let map = map.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25u64 {
                    map.insert(format!("{m}-{task}-{i}"), i).await?;
                }
                Ok::<_, PersistentError>(())
            }));
        }
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    for table in ["orders", "users", "sessions", "events"] {
        assert_eq!(stored_rows(&path, table).len(), 8 * 25, "{table}");
        let reopened = PersistentMap::<String, u64, _>::new(
            SqliteBackend::with_table(&path, table).await.unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(reopened.len(), 8 * 25);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_insert_future_still_lands_in_memory_and_on_disk_together() {
    let (_dir, path) = temp_db();
    let map: PersistentMap<String, u64, SqliteBackend> = PersistentMap::open(&path).await.unwrap();
    let lock = ExternalWriteLock::take(&path);
    // The caller gives up while the write is queued behind the lock.
    let gave_up = tokio::time::timeout(Duration::from_millis(100), map.insert("k".into(), 1)).await;
    assert!(gave_up.is_err());
    lock.release();
    map.flush().await.unwrap();
    // The write's own task applies it to memory after the commit.
    assert_eq!(eventually_holds(&map, "k").await, Some(1));
    assert_eq!(
        stored_rows(&path, "kv"),
        vec![("k".to_string(), "1".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_load_holds_up_no_write_to_the_file() {
    let (_dir, path) = temp_db();
    let big_backend = SqliteBackend::with_table(&path, "big").await.unwrap();
    let big: PersistentMap<String, u64, _> = PersistentMap::new(big_backend.clone()).await.unwrap();
    big.insert_many((0..10_000u64).map(|i| (format!("k{i:05}"), i)))
        .await
        .unwrap();
    let progress: PersistentMap<String, u64, _> =
        PersistentMap::new(SqliteBackend::with_table(&path, "progress").await.unwrap())
            .await
            .unwrap();

    // A loader that stops taking rows for a second after the first (as a load that sits
    // unpolled in a `select!` would): the rows in flight fill up and the scan waits for it.
    let loader = tokio::spawn(async move {
        let mut loaded = 0u64;
        let mut first = true;
        StorageBackend::<String, u64>::load_each(&big_backend, &mut |_, _| {
            if std::mem::take(&mut first) {
                std::thread::sleep(Duration::from_secs(1));
            }
            loaded += 1;
        })
        .await
        .map(|()| loaded)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let write = tokio::time::timeout(
        Duration::from_millis(500),
        progress.insert("done".into(), 1),
    );
    assert!(
        write.await.is_ok(),
        "a write to another table waited for the slow load"
    );
    assert_eq!(loader.await.unwrap().unwrap(), 10_000);
    assert_eq!(progress.get("done"), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_another_process_keeps_locked_fails_a_group_once_not_once_per_write() {
    let (_dir, path) = temp_db();
    let backend = SqliteBackend::builder(&path)
        .busy_timeout(Duration::from_millis(200))
        .open()
        .await
        .unwrap();
    let map: PersistentMap<String, u64, _> = PersistentMap::new(backend).await.unwrap();
    let lock = ExternalWriteLock::take(&path);

    // The first write waits out the busy timeout alone; the 16 queued behind it form a group
    // whose transaction cannot start either: they all fail together, one timeout later.
    let started = std::time::Instant::now();
    let mut writes = Vec::new();
    for i in 0..17u64 {
        let map = map.clone();
        writes.push(tokio::spawn(
            async move { map.insert(format!("k{i}"), i).await },
        ));
        if i == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for write in writes {
        let err = write.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("locked"), "{err}");
    }
    // One at a time, each failing after its own 200 ms, they would take over 3 s.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(map.is_empty());
    lock.release();
    map.insert("after".into(), 1).await.unwrap();
}

/// Waits until `map` holds `key` (a write finished in the background), up to five seconds.
async fn eventually_holds(
    map: &PersistentMap<String, u64, SqliteBackend>,
    key: &str,
) -> Option<u64> {
    for _ in 0..500 {
        if let Some(value) = map.get(key) {
            return Some(value);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_abandoned_outside_tokio_still_reaches_memory() {
    let (_dir, path) = temp_db();
    let map: PersistentMap<String, u64, SqliteBackend> = PersistentMap::open(&path).await.unwrap();
    let lock = ExternalWriteLock::take(&path);
    let abandoned = map.clone();
    // A plain thread (another executor, a sync callback) starts a write, then gives up on it.
    std::thread::spawn(move || {
        struct NoWake;
        impl std::task::Wake for NoWake {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        let waker = std::task::Waker::from(std::sync::Arc::new(NoWake));
        let mut write = Box::pin(abandoned.insert("k".into(), 1));
        let polled = write
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker));
        assert!(polled.is_pending());
    })
    .join()
    .unwrap();
    lock.release();
    assert_eq!(eventually_holds(&map, "k").await, Some(1));
    assert_eq!(
        stored_rows(&path, "kv"),
        vec![("k".to_string(), "1".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_in_flight_when_its_runtime_shuts_down_still_reaches_memory() {
    let (_dir, path) = temp_db();
    let map: PersistentMap<String, u64, SqliteBackend> = PersistentMap::open(&path).await.unwrap();
    let lock = ExternalWriteLock::take(&path);
    let doomed = map.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move { doomed.insert("k".into(), 1).await });
        std::thread::sleep(Duration::from_millis(100));
        runtime.shutdown_background();
    })
    .join()
    .unwrap();
    lock.release();
    assert_eq!(eventually_holds(&map, "k").await, Some(1));
    assert_eq!(
        stored_rows(&path, "kv"),
        vec![("k".to_string(), "1".to_string())]
    );
}
