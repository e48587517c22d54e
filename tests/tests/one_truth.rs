//! One table, one truth: handles in one process and processes on one SQLite file are one map.
//! Read-modify-writes are atomic across all of them, no acknowledged write is lost to another
//! writer's stale copy, handles see each other's commits at once and processes after a refresh.
//!
//! The other process is this test binary run again as a child, selected by `--exact` and an
//! environment variable naming what it should do.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use persistent_map::sqlite::{Durability, SqliteBackend};
use persistent_map::{Change, PersistentMap, StorageBackend};
use persistent_map_tests::{child_test, stored_rows, temp_db};

type Map = PersistentMap<String, u64, SqliteBackend>;

const CHILD_DB: &str = "PERSISTENT_MAP_ONE_TRUTH_DB";
const CHILD_NAME: &str = "PERSISTENT_MAP_ONE_TRUTH_NAME";
const TASKS: u64 = 8;
const UPDATES_PER_TASK: u64 = 200;
const LEASE_ROUNDS: u64 = 50;
const ROUND_MS: u64 = 10;
const CHILD_START: &str = "PERSISTENT_MAP_ONE_TRUTH_START_MS";

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// A map on `path`'s `kv` without fsyncs: these tests are about atomicity, not power cuts.
async fn open_fast(path: &Path) -> Map {
    let backend = SqliteBackend::builder(path)
        .durability(Durability::Normal)
        .busy_timeout(Duration::from_secs(30))
        .open()
        .await
        .unwrap();
    PersistentMap::new(backend).await.unwrap()
}

/// `TASKS` tasks, each adding 1 to `counter` `UPDATES_PER_TASK` times through `update`.
async fn bump_concurrently(map: &Map) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let map = map.clone();
            tokio::spawn(async move {
                for _ in 0..UPDATES_PER_TASK {
                    map.update(&"counter".to_string(), |n| {
                        Some(n.copied().unwrap_or(0) + 1)
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
}

/// Like [`bump_concurrently`], through the entry API: modify in place, or insert if absent.
async fn bump_through_entries(map: &Map) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let map = map.clone();
            tokio::spawn(async move {
                for _ in 0..UPDATES_PER_TASK {
                    map.entry("counter".to_string())
                        .and_modify(|n| *n += 1)
                        .or_insert(1)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Tries to take each round's lease; returns the rounds won. Round `r` starts for both
/// processes at `start_ms + r * ROUND_MS` (Unix time), so that they really race.
async fn race_for_leases(map: &Map, me: u64, start_ms: u128) -> BTreeSet<u64> {
    let mut won = BTreeSet::new();
    for round in 0..LEASE_ROUNDS {
        let starts = start_ms + u128::from(round * ROUND_MS);
        let now = unix_ms();
        if starts > now {
            tokio::time::sleep(Duration::from_millis((starts - now) as u64)).await;
        }
        let lease = format!("lease-{round}");
        // The holder's view may be stale (the other process may have taken it): the write is
        // conditional on what storage holds, so a stale view loses instead of overwriting.
        let held = map.get(&lease);
        if held.is_none()
            && map
                .compare_exchange(&lease, None, Some(me))
                .await
                .unwrap()
                .is_ok()
        {
            won.insert(round);
        }
    }
    won
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
#[ignore = "the other process of the tests in this file; they run it"]
fn one_truth_child() {
    let path = std::env::var_os(CHILD_DB).expect("run by a parent test");
    let task = std::env::var(CHILD_NAME).expect("run by a parent test");
    runtime().block_on(async move {
        let map = open_fast(Path::new(&path)).await;
        match task.as_str() {
            "bump" => bump_concurrently(&map).await,
            "entry-bump" => bump_through_entries(&map).await,
            "leases" => {
                let start = std::env::var(CHILD_START).unwrap().parse().unwrap();
                let won = race_for_leases(&map, 2, start).await;
                let won: Vec<String> = won.iter().map(u64::to_string).collect();
                println!("won {}", won.join(","));
            }
            "set-five" => {
                map.insert("k".into(), 5).await.unwrap();
            }
            other => panic!("unknown child task {other}"),
        }
    });
}

fn spawn_child(path: &Path, task: &str) -> Child {
    spawn_child_starting(path, task, 0)
}

fn spawn_child_starting(path: &Path, task: &str, start_ms: u128) -> Child {
    child_test(module_path!(), "one_truth_child")
        .args(["--nocapture"])
        .args(["--test-threads=1", "-q"])
        .env(CHILD_DB, path)
        .env(CHILD_NAME, task)
        .env(CHILD_START, start_ms.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> String {
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the child failed: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

fn stored_counter(path: &Path) -> String {
    let rows = stored_rows(path, "kv");
    rows.into_iter()
        .find(|(key, _)| key == "counter")
        .map(|(_, value)| value)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_in_one_process_are_one_map() {
    let (_dir, path) = temp_db();
    let a = open_fast(&path).await;
    let b = open_fast(&path).await;

    let (first, second) = tokio::join!(bump_concurrently(&a), bump_concurrently(&b));
    let ((), ()) = (first, second);
    let total = 2 * TASKS * UPDATES_PER_TASK;
    assert_eq!(a.get("counter"), Some(total));
    assert_eq!(b.get("counter"), Some(total));
    assert_eq!(stored_counter(&path), total.to_string());

    // Each sees the other's commits at once, with no refresh; a refresh has nothing to add.
    a.insert("from-a".into(), 1).await.unwrap();
    assert_eq!(b.get("from-a"), Some(1));
    assert!(!b.refresh().await.unwrap());
    // ... so `b` cannot overwrite what `a` committed.
    assert_eq!(
        b.get_or_insert_with("from-a".into(), || 99).await.unwrap(),
        1
    );
    assert_eq!(b.insert("from-a".into(), 2).await.unwrap(), Some(1));
    assert_eq!(a.get("from-a"), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_updating_one_key_lose_no_update() {
    let (_dir, path) = temp_db();
    let map = open_fast(&path).await;
    let child = spawn_child(&path, "bump");
    bump_concurrently(&map).await;
    finish(child);

    let total = 2 * TASKS * UPDATES_PER_TASK;
    assert_eq!(stored_counter(&path), total.to_string());
    assert!(map.refresh().await.unwrap());
    assert_eq!(map.get("counter"), Some(total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_modifying_one_entry_lose_no_update() {
    let (_dir, path) = temp_db();
    let map = open_fast(&path).await;
    let child = spawn_child(&path, "entry-bump");
    bump_through_entries(&map).await;
    finish(child);
    let total = 2 * TASKS * UPDATES_PER_TASK;
    assert_eq!(stored_counter(&path), total.to_string());
    map.refresh().await.unwrap();
    assert_eq!(map.get("counter"), Some(total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_if_absent_has_one_winner_per_key_across_handles() {
    let (_dir, path) = temp_db();
    // Maps of two value types do not share entries: their race is decided in storage.
    let numbers = open_fast(&path).await;
    let json: PersistentMap<String, serde_json::Value, SqliteBackend> =
        PersistentMap::open(&path).await.unwrap();
    let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    let numbers_race = {
        let (numbers, keys) = (numbers.clone(), keys.clone());
        tokio::spawn(async move {
            let mut won = BTreeSet::new();
            for key in keys {
                if numbers
                    .entry(key.clone())
                    .or_insert(1)
                    .await
                    .unwrap()
                    .inserted
                {
                    won.insert(key);
                }
            }
            won
        })
    };
    let mut json_won = BTreeSet::new();
    for key in &keys {
        let upserted = json
            .entry(key.clone())
            .or_insert(serde_json::json!(2))
            .await
            .unwrap();
        if upserted.inserted {
            json_won.insert(key.clone());
        } else {
            assert_eq!(
                upserted.value,
                serde_json::json!(1),
                "it reports the winner's value"
            );
        }
    }
    let numbers_won = numbers_race.await.unwrap();
    assert!(numbers_won.is_disjoint(&json_won));
    assert_eq!(numbers_won.len() + json_won.len(), keys.len());
    numbers.refresh().await.unwrap();
    for key in &keys {
        let expected = if json_won.contains(key) { 2 } else { 1 };
        assert_eq!(numbers.get(key), Some(expected), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_racing_for_leases_have_one_winner_each_round() {
    let (_dir, path) = temp_db();
    let map = open_fast(&path).await;
    // Time for the child to start and open the map before the first round.
    let start = unix_ms() + 1500;
    let child = spawn_child_starting(&path, "leases", start);
    let mine = race_for_leases(&map, 1, start).await;
    let output = finish(child);
    let line = output
        .lines()
        .find_map(|line| line.strip_prefix("won "))
        .expect("the child says which rounds it won");
    let theirs: BTreeSet<u64> = line
        .split(',')
        .filter(|round| !round.is_empty())
        .map(|round| round.parse().unwrap())
        .collect();
    assert!(
        mine.is_disjoint(&theirs),
        "both won {:?}",
        mine.intersection(&theirs)
    );
    let all: BTreeSet<u64> = mine.union(&theirs).copied().collect();
    eprintln!(
        "rounds won: this process {}, the other {}",
        mine.len(),
        theirs.len()
    );
    assert_eq!(all, (0..LEASE_ROUNDS).collect(), "a round nobody won");
    // Storage agrees with who thinks they won.
    map.refresh().await.unwrap();
    for round in 0..LEASE_ROUNDS {
        let owner = map.get(&format!("lease-{round}")).unwrap();
        assert_eq!(owner == 1, mine.contains(&round), "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_expectation_is_refused_and_storage_wins() {
    let (_dir, path) = temp_db();
    let map = open_fast(&path).await;
    map.insert("k".into(), 1).await.unwrap();
    finish(spawn_child(&path, "set-five"));

    // No refresh: memory still says 1, storage says 5.
    assert_eq!(map.get("k"), Some(1));
    let refused = map.compare_exchange(&"k".into(), Some(&1), Some(2)).await;
    assert_eq!(refused.unwrap(), Err(Some(5)));
    assert_eq!(map.get("k"), Some(5), "memory took what storage holds");
    assert_eq!(stored_rows(&path, "kv"), [("k".into(), "5".into())]);

    // `update` sees storage's value, not the stale one; `insert` reports it as replaced.
    finish(spawn_child(&path, "set-five"));
    assert_eq!(map.insert("k".into(), 7).await.unwrap(), Some(5));
    assert_eq!(
        map.update(&"k".into(), |n| n.map(|n| n * 10))
            .await
            .unwrap(),
        Some(70)
    );
    assert_eq!(stored_rows(&path, "kv"), [("k".into(), "70".into())]);

    // A key another process stored, unknown to memory: not overwritten by get_or_insert_with.
    finish(spawn_child(&path, "set-five"));
    map.remove(&"k".into()).await.unwrap();
    assert_eq!(map.get("k"), None);
    finish(spawn_child(&path, "set-five"));
    assert_eq!(map.get_or_insert_with("k".into(), || 9).await.unwrap(), 5);
    assert_eq!(stored_rows(&path, "kv"), [("k".into(), "5".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_costs_what_changed_in_its_own_table() {
    let (_dir, path) = temp_db();
    let map = open_fast(&path).await;
    map.insert("mine".into(), 1).await.unwrap();
    let mut changes = map.subscribe();

    // Writes to another table of the file: nothing to re-read.
    let other: PersistentMap<String, u64, _> =
        PersistentMap::new(SqliteBackend::with_table(&path, "other").await.unwrap())
            .await
            .unwrap();
    other
        .insert_many((0..2000).map(|i| (format!("o{i}"), i)))
        .await
        .unwrap();
    assert!(!map.refresh().await.unwrap());

    // Loading through the backend does not move the map's place: the next write by another
    // process is still caught.
    let _: std::collections::HashMap<String, u64> = map.backend().load_all().await.unwrap();
    finish(spawn_child(&path, "set-five"));
    assert!(map.refresh().await.unwrap());
    assert_eq!(map.get("k"), Some(5));
    assert_eq!(
        changes.try_recv().unwrap(),
        Some(Change::Inserted {
            key: "k".into(),
            value: 5
        }),
        "one key re-read, not a reload"
    );
    assert!(!map.refresh().await.unwrap());

    // A program that does not log (here plain rusqlite), after this map's own writes moved the
    // log: the file's data version gives it away, and the map reloads.
    map.insert("mine".into(), 2).await.unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("INSERT INTO kv VALUES ('by-hand', '3')", [])
        .unwrap();
    assert!(map.refresh().await.unwrap());
    assert_eq!(map.get("by-hand"), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_of_other_types_on_one_table_catch_up_by_refresh() {
    let (_dir, path) = temp_db();
    let numbers = open_fast(&path).await;
    let json: PersistentMap<String, serde_json::Value, SqliteBackend> =
        PersistentMap::open(&path).await.unwrap();
    numbers.insert("n".into(), 3).await.unwrap();
    assert_eq!(
        json.get("n"),
        None,
        "another type is another map until it refreshes"
    );
    assert!(json.refresh().await.unwrap());
    assert_eq!(json.get("n"), Some(serde_json::json!(3)));
    // A conditional write from either side is checked against storage.
    let stale = numbers
        .compare_exchange(&"n".into(), Some(&3), Some(4))
        .await
        .unwrap();
    assert_eq!(stale, Ok(Some(3)));
    let refused = json
        .compare_exchange(&"n".into(), Some(&serde_json::json!(3)), None)
        .await
        .unwrap();
    assert_eq!(refused, Err(Some(serde_json::json!(4))));
}

/// A batch of many keys is logged key by key: another process's map re-reads those keys when
/// it refreshes, rather than reloading its whole table (and holding every key's turn meanwhile).
#[tokio::test]
async fn a_large_batch_is_logged_key_by_key() {
    let (_dir, path) = temp_db();
    let follower = SqliteBackend::new(&path).await.unwrap();
    let position = StorageBackend::<String, u64>::change_position(&follower)
        .await
        .unwrap();
    let writer: Map = PersistentMap::open(&path).await.unwrap();
    writer
        .insert_many((0..5000).map(|i| (format!("k{i}"), i)))
        .await
        .unwrap();
    // A follower of another origin (as another process's map would be).
    let (changes, _) = StorageBackend::<String, u64>::changes_since(&follower, position, 0)
        .await
        .unwrap();
    match changes {
        persistent_map::ExternalChanges::Keys(keys) => assert_eq!(keys.len(), 5000),
        other => panic!("expected the 5000 keys, got {other:?}"),
    }
}
