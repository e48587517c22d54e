//! Hot keys: a write of a key joins a commit without waiting for the previous write of that key
//! to commit, and still reaches storage and memory in one order; a write computed from a value
//! that then failed to commit is never stored.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use persistent_map::sqlite::{Durability, SqliteBackend};
use persistent_map::{
    BatchOp, Checked, Condition, PersistentError, PersistentMap, Result, StorageBackend,
    WriteOptions,
};
use persistent_map_tests::{stored_rows, temp_db};
use serde::{de::DeserializeOwned, Serialize};

const TASKS: usize = 16;
const UPDATES_PER_TASK: usize = 60;

async fn open(path: &std::path::Path) -> SqliteBackend {
    SqliteBackend::builder(path)
        .durability(Durability::Normal)
        .open()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_of_one_key_share_commits() {
    let (_dir, path) = temp_db();
    let map: PersistentMap<String, u64, _> = PersistentMap::new(open(&path).await).await.unwrap();
    let before = map.backend().stats();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let map = map.clone();
            tokio::spawn(async move {
                for _ in 0..UPDATES_PER_TASK {
                    map.update(&"hot".to_string(), |n| Some(n.copied().unwrap_or(0) + 1))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let total = (TASKS * UPDATES_PER_TASK) as u64;
    assert_eq!(map.get("hot"), Some(total));
    assert_eq!(
        stored_rows(&path, "kv"),
        [("hot".into(), total.to_string())]
    );
    let stats = map.backend().stats();
    let (commits, writes) = (stats.commits - before.commits, stats.writes - before.writes);
    // Waiting for each commit would give one write per commit.
    assert!(
        writes >= 2 * commits,
        "{writes} writes in {commits} commits: a hot key's writes did not share commits"
    );
    // Other processes catch up by the change log: one row per key per commit tells them all
    // they need, however many writes of the key the commit held.
    let logged: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM persistent_map_log WHERE table_name = 'kv' AND key = 'hot'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert!(
        logged as u64 <= commits,
        "{logged} log rows for one key in {commits} commits"
    );
}

/// Wraps a backend and fails every third write handed to it (before it reaches storage), as a
/// backend whose commits sometimes fail would. It hands writes over in order, as the backend
/// under it does.
#[derive(Clone)]
struct FailsEveryThird<B> {
    inner: B,
    calls: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl<K, V, B> StorageBackend<K, V> for FailsEveryThird<B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        self.inner.load_all().await
    }

    async fn save(&self, key: K, value: V) -> Result<()> {
        self.inner.save(key, value).await
    }

    async fn delete(&self, key: &K) -> Result<()> {
        self.inner.delete(key).await
    }

    async fn apply_checked(
        &self,
        conditions: &[Condition<K>],
        ops: &[BatchOp<K, V>],
        options: WriteOptions,
    ) -> Result<Checked<V>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
            return Err(PersistentError::Io(std::io::Error::other(
                "injected: commit failed",
            )));
        }
        self.inner.apply_checked(conditions, ops, options).await
    }

    fn pipelines_writes(&self) -> bool {
        StorageBackend::<K, V>::pipelines_writes(&self.inner)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_keeps_one_order_when_every_third_commit_fails() {
    let (_dir, path) = temp_db();
    let backend = FailsEveryThird {
        inner: open(&path).await,
        calls: Arc::default(),
    };
    let map: PersistentMap<String, u64, _> = PersistentMap::new(backend).await.unwrap();
    let succeeded = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (map, succeeded) = (map.clone(), Arc::clone(&succeeded));
            tokio::spawn(async move {
                for step in 0..UPDATES_PER_TASK {
                    let bumped = map
                        .update(&"counter".to_string(), |n| {
                            Some(n.copied().unwrap_or(0) + 1)
                        })
                        .await;
                    if bumped.is_ok() {
                        succeeded.fetch_add(1, Ordering::SeqCst);
                    }
                    // Plain writes of another hot key, in between.
                    let _ = map
                        .insert("last".to_string(), (task * 1000 + step) as u64)
                        .await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let succeeded = succeeded.load(Ordering::SeqCst) as u64;
    assert!(succeeded > 0 && succeeded < (TASKS * UPDATES_PER_TASK) as u64);
    // Exactly the acknowledged increments are stored: none computed from a failed one.
    assert_eq!(map.get("counter"), Some(succeeded));
    let stored: HashMap<String, String> = stored_rows(&path, "kv").into_iter().collect();
    assert_eq!(stored["counter"], succeeded.to_string());
    // Memory and storage agree on every key.
    assert_eq!(
        map.get("last").map(|n| n.to_string()),
        stored.get("last").cloned()
    );
}
