//! Beyond the seed: batches, clear and retain, atomic read-modify-write, iteration, the change
//! stream, and catching up with another process.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use persistent_map::in_memory::InMemoryBackend;
use persistent_map::sqlite::{Durability, SqliteBackend};
use persistent_map::{
    Change, PersistentError, PersistentMap, RecvError, Result, StorageBackend, CHANGE_BUFFER,
};
use persistent_map_tests::{stored_rows, temp_db, Refusing};
use serde::{de::DeserializeOwned, Serialize};

type SqliteMap = PersistentMap<String, u64, SqliteBackend>;

/// A backend with only the seed's three methods, so batches use the default, non-atomic
/// `apply_batch`. It numbers the writes it is given from 0 and refuses those `accepts` rejects.
#[derive(Clone)]
struct Flaky {
    store: InMemoryBackend,
    turns: Arc<AtomicUsize>,
    accepts: fn(usize) -> bool,
}

impl Flaky {
    fn new(store: InMemoryBackend, accepts: fn(usize) -> bool) -> Self {
        Self {
            store,
            turns: Arc::new(AtomicUsize::new(0)),
            accepts,
        }
    }

    fn take_turn(&self) -> Result<()> {
        let turn = self.turns.fetch_add(1, Ordering::SeqCst);
        if (self.accepts)(turn) {
            Ok(())
        } else {
            Err(PersistentError::Backend(
                format!("write {turn} refused").into(),
            ))
        }
    }
}

#[async_trait::async_trait]
impl<K, V> StorageBackend<K, V> for Flaky
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        self.store.load_all().await
    }
    async fn save(&self, key: K, value: V) -> Result<()> {
        self.take_turn()?;
        self.store.save(key, value).await
    }
    async fn delete(&self, key: &K) -> Result<()> {
        self.take_turn()?;
        StorageBackend::<K, V>::delete(&self.store, key).await
    }
}

/// A store holding `a = 1` and `b = 2`.
async fn seeded_store() -> InMemoryBackend {
    let store = InMemoryBackend::new();
    let seed: PersistentMap<String, u64, _> = PersistentMap::new(store.clone()).await.unwrap();
    seed.insert_many([("a".to_string(), 1), ("b".to_string(), 2)])
        .await
        .unwrap();
    store
}

async fn stored<K, V>(backend: &InMemoryBackend) -> HashMap<K, V>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    backend.load_all().await.unwrap()
}

#[tokio::test]
async fn insert_many_is_one_transaction_and_remove_many_counts() {
    let (_dir, path) = temp_db();
    let map: SqliteMap = PersistentMap::open(&path).await.unwrap();
    let before = map.backend().stats().commits;
    map.insert_many((0..5_000u64).map(|i| (format!("key-{i:06}"), i)))
        .await
        .unwrap();
    assert_eq!(map.backend().stats().commits - before, 1);
    assert_eq!(map.len(), 5_000);
    // The batch was big enough for the map to reserve room first: every key is still found.
    assert!((0..5_000u64).all(|i| map.get(&format!("key-{i:06}")) == Some(i)));
    assert_eq!(stored_rows(&path, "kv").len(), 5_000);

    let removed = map
        .remove_many(["key-000000", "key-000001", "not-there"].map(String::from))
        .await
        .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(stored_rows(&path, "kv").len(), 4_998);

    // A key given twice keeps its last value, in memory and on disk.
    map.insert_many([("dup".to_string(), 1), ("dup".to_string(), 2)])
        .await
        .unwrap();
    assert_eq!(map.get("dup"), Some(2));
    let reopened: SqliteMap = PersistentMap::open(&path).await.unwrap();
    assert_eq!(reopened.get("dup"), Some(2));
    assert_eq!(reopened.len(), 4_999);
}

#[tokio::test]
async fn a_refused_batch_changes_nothing_in_memory_or_on_disk() {
    let (_dir, path) = temp_db();
    let backend = Refusing::new(SqliteBackend::new(&path).await.unwrap());
    let map: PersistentMap<String, u64, _> = PersistentMap::new(backend.clone()).await.unwrap();
    map.insert_many([("a".to_string(), 1), ("b".to_string(), 2)])
        .await
        .unwrap();

    backend.refuse(true);
    map.insert_many([("a".to_string(), 10), ("c".to_string(), 3)])
        .await
        .unwrap_err();
    map.remove_many(["a".to_string(), "b".to_string()])
        .await
        .unwrap_err();
    map.retain(|_, _| false).await.unwrap_err();
    map.clear().await.unwrap_err();
    assert_eq!(
        map.snapshot().await,
        HashMap::from([("a".into(), 1), ("b".into(), 2)])
    );
    assert_eq!(
        stored_rows(&path, "kv"),
        [("a".into(), "1".into()), ("b".into(), "2".into())]
    );
}

#[tokio::test]
async fn a_batch_failing_in_sqlite_rolls_back_whole() {
    let (_dir, path) = temp_db();
    let map: SqliteMap = PersistentMap::open(&path).await.unwrap();
    map.insert("kept".into(), 1).await.unwrap();
    // A trigger makes the 3rd row of the batch fail inside SQLite, after two rows went in.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER no_poison BEFORE INSERT ON kv WHEN NEW.key = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poison is not allowed'); END;",
        )
        .unwrap();
    let err = map
        .insert_many(["x", "y", "poison", "z"].map(|k| (k.to_string(), 2)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("poison is not allowed"), "{err}");
    assert_eq!(map.keys().collect::<Vec<_>>(), ["kept"]);
    assert_eq!(stored_rows(&path, "kv"), [("kept".into(), "1".into())]);
}

#[tokio::test]
async fn a_non_atomic_backend_failing_mid_batch_is_undone_by_the_map() {
    let store = seeded_store().await;
    let before = stored::<String, u64>(&store).await;
    // Writes 0 and 1 (`a`, `c`) are stored, write 2 (`d`) is refused; the undo is accepted.
    let map = PersistentMap::new(Flaky::new(store.clone(), |turn| turn != 2))
        .await
        .unwrap();
    let err = map
        .insert_many(["a", "c", "d"].map(|k| (k.to_string(), 9)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("write 2 refused"), "{err}");
    assert_eq!(stored::<String, u64>(&store).await, before);
    assert_eq!(map.snapshot().await, before);
}

#[tokio::test]
async fn when_the_undo_fails_too_memory_still_equals_storage() {
    let store = seeded_store().await;
    // Writes 0 and 1 are stored; everything after, the undo included, is refused.
    let map = PersistentMap::new(Flaky::new(store.clone(), |turn| turn < 2))
        .await
        .unwrap();
    let err = map
        .insert_many(["a", "c", "d"].map(|k| (k.to_string(), 9)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PersistentError::PartialBatch { applied: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("after 2 of its writes"), "{err}");
    let stored = stored::<String, u64>(&store).await;
    assert_eq!(map.snapshot().await, stored);
    assert_eq!(
        (map.get("a"), map.get("c"), map.get("d")),
        (Some(9), Some(9), None)
    );
}

#[tokio::test]
async fn clear_and_retain_reach_the_table() {
    let (_dir, path) = temp_db();
    let map: SqliteMap = PersistentMap::open(&path).await.unwrap();
    map.insert_many((0..100u64).map(|i| (format!("k{i:03}"), i)))
        .await
        .unwrap();

    let before = map.backend().stats().commits;
    assert_eq!(map.retain(|_, value| value % 10 == 0).await.unwrap(), 90);
    assert_eq!(
        map.backend().stats().commits - before,
        1,
        "retain is one transaction"
    );
    assert_eq!(map.len(), 10);
    assert_eq!(stored_rows(&path, "kv").len(), 10);
    assert_eq!(map.retain(|_, _| true).await.unwrap(), 0);

    map.clear().await.unwrap();
    assert!(map.is_empty());
    assert!(stored_rows(&path, "kv").is_empty());
    let reopened: SqliteMap = PersistentMap::open(&path).await.unwrap();
    assert!(reopened.is_empty());
}

async fn count_to_16000<B>(map: &PersistentMap<String, u64, B>)
where
    B: StorageBackend<String, u64> + Send + Sync + 'static,
{
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let map = map.clone();
            tokio::spawn(async move {
                for _ in 0..1_000 {
                    map.update(&"counter".to_string(), |old| {
                        Some(old.copied().unwrap_or(0) + 1)
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(map.get("counter"), Some(16_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_tasks_incrementing_one_counter_lose_no_update() {
    let backend = InMemoryBackend::new();
    let map = PersistentMap::new(backend.clone()).await.unwrap();
    count_to_16000(&map).await;
    assert_eq!(stored::<String, u64>(&backend).await["counter"], 16_000);

    let (_dir, path) = temp_db();
    // Every update is its own commit of one hot key; skip the fsync to keep the test short.
    let backend = SqliteBackend::builder(&path)
        .durability(Durability::Normal)
        .open()
        .await
        .unwrap();
    let map = PersistentMap::new(backend).await.unwrap();
    count_to_16000(&map).await;
    assert_eq!(
        stored_rows(&path, "kv"),
        [("counter".into(), "16000".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_or_insert_with_makes_the_value_once() {
    let map: PersistentMap<String, usize, _> =
        PersistentMap::new(InMemoryBackend::new()).await.unwrap();
    let made = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let (map, made) = (map.clone(), made.clone());
            tokio::spawn(async move {
                map.get_or_insert_with("id".into(), || {
                    made.fetch_add(1, Ordering::SeqCst);
                    task
                })
                .await
                .unwrap()
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for task in tasks {
        seen.insert(task.await.unwrap());
    }
    assert_eq!(made.load(Ordering::SeqCst), 1);
    assert_eq!(seen.len(), 1, "every caller got the one value stored");
    assert_eq!(map.get("id"), seen.into_iter().next());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn iteration_while_others_write_never_deadlocks_and_snapshots_are_consistent() {
    let map: PersistentMap<String, u64, _> =
        PersistentMap::new(InMemoryBackend::new()).await.unwrap();
    map.insert_many((0..200u64).map(|i| (format!("stable-{i}"), i)))
        .await
        .unwrap();
    // Writers move pairs together: `left-i` and `right-i` always hold the same value.
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let map = map.clone();
            tokio::spawn(async move {
                for round in 0..200u64 {
                    let i = (w * 7 + round) % 50;
                    map.insert_many([(format!("left-{i}"), round), (format!("right-{i}"), round)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let check = async {
        for _ in 0..50 {
            let entries: Vec<(String, u64)> = map.iter().collect();
            let keys: HashSet<&String> = entries.iter().map(|(k, _)| k).collect();
            assert_eq!(keys.len(), entries.len(), "a key appeared twice");
            assert!((0..200).all(|i| keys.contains(&format!("stable-{i}"))));
            assert!(map.keys().filter(|k| k.starts_with("stable-")).count() == 200);
            assert!(map.values().count() >= 200);

            let snapshot = map.snapshot().await;
            for i in 0..50 {
                assert_eq!(
                    snapshot.get(&format!("left-{i}")),
                    snapshot.get(&format!("right-{i}")),
                    "a snapshot split a batch"
                );
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), check)
        .await
        .expect("iterating while writing deadlocked");
    for writer in writers {
        writer.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_hear_committed_changes_in_commit_order_per_key() {
    let (_dir, path) = temp_db();
    let map: SqliteMap = PersistentMap::open(&path).await.unwrap();
    let mut changes = map.subscribe();
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let map = map.clone();
            tokio::spawn(async move {
                for step in 1..=50u64 {
                    map.insert(format!("w{w}"), step).await.unwrap();
                }
                map.remove(&format!("w{w}")).await.unwrap();
            })
        })
        .collect();

    let mut last: HashMap<String, u64> = HashMap::new();
    let mut removed = 0;
    while removed < 4 {
        match changes.recv().await.unwrap() {
            Change::Inserted { key, value } => {
                // Heard only after commit: the row is on disk already.
                let on_disk = stored_rows(&path, "kv")
                    .into_iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.parse::<u64>().unwrap());
                assert!(on_disk.is_none_or(|v| v >= value), "heard before commit");
                let previous = last.insert(key.clone(), value).unwrap_or(0);
                assert_eq!(value, previous + 1, "{key} out of order");
            }
            Change::Removed { key } => {
                assert_eq!(last[&key], 50);
                removed += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }
    map.insert_many([("a".to_string(), 1)]).await.unwrap();
    map.clear().await.unwrap();
    map.load().await.unwrap();
    assert!(matches!(changes.recv().await, Ok(Change::Inserted { .. })));
    assert_eq!(changes.recv().await, Ok(Change::Cleared));
    assert_eq!(changes.recv().await, Ok(Change::Reloaded));
    drop(map);
    assert_eq!(changes.recv().await, Err(RecvError::Closed));
}

#[tokio::test]
async fn a_slow_subscriber_is_told_it_lagged_and_never_blocks_writers() {
    let map: PersistentMap<u64, u64, _> = PersistentMap::new(InMemoryBackend::new()).await.unwrap();
    let mut slow = map.subscribe();
    let writes = CHANGE_BUFFER as u64 * 2;
    tokio::time::timeout(Duration::from_secs(30), async {
        for i in 0..writes {
            map.insert(i, i).await.unwrap();
        }
    })
    .await
    .expect("writers were blocked by a subscriber");
    assert_eq!(
        slow.recv().await,
        Err(RecvError::Lagged(writes - CHANGE_BUFFER as u64))
    );
    assert_eq!(
        slow.recv().await,
        Ok(Change::Inserted {
            key: writes - CHANGE_BUFFER as u64,
            value: writes - CHANGE_BUFFER as u64
        })
    );
}

/// A seed-only backend whose deletes fail after the first, and whose loads fail while
/// `loads_fail` is on: a clear that stops part-way, then a reload that fails too.
#[derive(Clone)]
struct Crumbling {
    store: InMemoryBackend,
    deletes: Arc<AtomicUsize>,
    loads_fail: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait::async_trait]
impl StorageBackend<String, u64> for Crumbling {
    async fn load_all(&self) -> Result<HashMap<String, u64>> {
        if self.loads_fail.load(Ordering::SeqCst) {
            return Err(PersistentError::Backend("the store cannot be read".into()));
        }
        self.store.load_all().await
    }
    async fn save(&self, key: String, value: u64) -> Result<()> {
        self.store.save(key, value).await
    }
    async fn delete(&self, key: &String) -> Result<()> {
        if self.deletes.fetch_add(1, Ordering::SeqCst) >= 1 {
            self.loads_fail.store(true, Ordering::SeqCst);
            return Err(PersistentError::Backend("delete refused".into()));
        }
        StorageBackend::<String, u64>::delete(&self.store, key).await
    }
}

#[tokio::test]
async fn a_clear_that_stops_part_way_reports_why_and_memory_catches_up() {
    let store = seeded_store().await;
    let backend = Crumbling {
        store: store.clone(),
        deletes: Arc::default(),
        loads_fail: Arc::default(),
    };
    let map: PersistentMap<String, u64, _> = PersistentMap::new(backend.clone()).await.unwrap();
    let err = map.clear().await.unwrap_err();
    // The error that stopped the clear, not the reload's that followed it.
    assert!(
        matches!(&err, PersistentError::PartialBatch { applied: 1, source } if source.to_string() == "delete refused"),
        "{err:?}"
    );
    // The store can be read again: the next refresh reloads, and memory equals storage.
    backend.loads_fail.store(false, Ordering::SeqCst);
    assert!(map.refresh().await.unwrap());
    let left: HashMap<String, u64> = stored(&store).await;
    assert_eq!(left.len(), 1);
    assert_eq!(map.snapshot().await, left);
}
