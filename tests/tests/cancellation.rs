//! Memory equals storage whatever the map's futures meet: a backend call that fails, or one
//! that stalls while the caller gives up and drops the future, at every backend call a script
//! of writes, read-modify-writes and refreshes makes, one call at a time.
//!
//! After each run the stalls are released, the map's writes still in flight finish, and one
//! refresh must then bring memory to exactly what the file holds: a refresh that was dropped or
//! failed part-way must not have lost the other writer's changes, and no write may have reached
//! only one of memory and storage.

use std::future::Future;
use std::time::Duration;

use persistent_map::sqlite::{Durability, SqliteBackend};
use persistent_map::PersistentMap;
use persistent_map_tests::{stored_rows, temp_db, Fault, Faulty};

type Watched = PersistentMap<String, u64, Faulty<SqliteBackend>>;
type Plain = PersistentMap<String, u64, SqliteBackend>;

/// How long a step may take before the test drops its future. Short: a step dropped for being
/// slow rather than stalled is one more cancellation, which the invariants must survive too.
const PATIENCE: Duration = Duration::from_millis(20);

/// Runs `step`, dropping it if it takes longer than [`PATIENCE`]; its error is expected when a
/// fault was injected and ignored here (what matters is what memory and storage hold after).
async fn attempt<T>(step: impl Future<Output = persistent_map::Result<T>>) {
    let _ = tokio::time::timeout(PATIENCE, step).await;
}

/// The script: `map` is the one whose backend misbehaves, `other` a second map on the same
/// table (another writer, as another process would be).
async fn script(map: &Watched, other: &Plain) {
    let key = |name: &str| name.to_string();
    let bump = |n: Option<&u64>| Some(n.copied().unwrap_or(0) + 1);
    attempt(map.insert(key("a"), 1)).await;
    other.insert(key("b"), 2).await.unwrap();
    attempt(map.refresh()).await;
    attempt(map.update(&key("a"), bump)).await;
    attempt(map.compare_exchange(&key("a"), Some(&2), Some(5))).await;
    attempt(map.get_or_insert_with(key("c"), || 3)).await;
    other.insert(key("a"), 7).await.unwrap();
    attempt(map.update(&key("a"), bump)).await;
    attempt(map.insert_many([(key("d"), 4), (key("e"), 5)])).await;
    attempt(map.remove(&key("b"))).await;
    other.remove(&key("c")).await.unwrap();
    other.insert(key("f"), 6).await.unwrap();
    attempt(map.refresh()).await;
    attempt(map.retain(|key, _| key != "d")).await;
    other.insert(key("g"), 8).await.unwrap();
    attempt(map.refresh()).await;
    attempt(map.clear()).await;
    other.insert(key("h"), 9).await.unwrap();
    attempt(map.refresh()).await;
}

/// Opens the two maps on a fresh file, runs the script with `fault` at backend call `at` (or
/// none), then checks memory against storage. Returns how many backend calls the script made.
async fn run(fault: Option<(usize, Fault)>) -> usize {
    let (_dir, path) = temp_db();
    let backend = SqliteBackend::builder(&path)
        .durability(Durability::Normal)
        .open()
        .await
        .unwrap();
    let faulty = Faulty::new(backend);
    let map: Watched = PersistentMap::new(faulty.clone()).await.unwrap();
    let other: Plain = PersistentMap::open(&path).await.unwrap();
    if let Some((at, fault)) = fault {
        faulty.fault_at(at, fault);
    }
    script(&map, &other).await;
    let calls = faulty.calls();

    faulty.release();
    // Waits for every write still in flight (they hold their keys' turns).
    drop(map.snapshot().await);
    map.refresh()
        .await
        .unwrap_or_else(|error| panic!("{fault:?}: the refresh after the faults failed: {error}"));
    let mut in_memory: Vec<(String, String)> = map
        .iter()
        .map(|(key, value)| (key, value.to_string()))
        .collect();
    in_memory.sort();
    assert_eq!(
        in_memory,
        stored_rows(&path, "kv"),
        "{fault:?}: memory and storage differ"
    );
    other.refresh().await.unwrap();
    let mut others: Vec<(String, u64)> = other.iter().collect();
    others.sort();
    let mut ours: Vec<(String, u64)> = map.iter().collect();
    ours.sort();
    assert_eq!(ours, others, "{fault:?}: the two maps differ");
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_equals_storage_whichever_backend_call_fails_or_stalls() {
    let calls = run(None).await;
    assert!(calls >= 15, "the script reaches storage {calls} times");
    for at in 0..calls {
        for fault in [Fault::Fail, Fault::Stall] {
            run(Some((at, fault))).await;
        }
    }
}
