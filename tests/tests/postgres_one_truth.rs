//! One table, one truth on PostgreSQL: instances (here: separate instances in this process,
//! and another process) are one map. Read-modify-writes are atomic across all of them, a stale
//! expectation is refused, writes report what storage held, and catching up costs what changed
//! and survives being cancelled.
//!
//! Needs the server named by `PM_TEST_POSTGRES_URL`. The other process is this test binary run
//! again as a child, selected by `--exact` and environment variables naming its table and task.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use persistent_map::postgres::PostgresBackend;
use persistent_map::{Change, PersistentError, PersistentKey, PersistentMap};
use serde::{Deserialize, Serialize};

mod postgres_common;
use postgres_common::*;

const TASKS: u64 = 8;
const UPDATES_PER_TASK: u64 = 200;
const CHILD_TABLE: &str = "PERSISTENT_MAP_PG_ONE_TRUTH_TABLE";

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

/// The test server's URL with commits that do not wait for the server's disk: these tests are
/// about atomicity, not power cuts.
fn fast_url() -> String {
    with_parameter(&url(), "options", "-c%20synchronous_commit%3Doff")
}

/// A map of a new instance on `table`, on [`fast_url`].
async fn open_fast(table: &TestTable) -> Map {
    PersistentMap::new(instance_at(&fast_url(), table).await)
        .await
        .unwrap()
}

async fn stored_counter(table: &str) -> Option<u64> {
    read_table::<u64>(&admin().await, table)
        .await
        .get("counter")
        .copied()
}

/// Refreshes `map` until its counter is `total`, for at most a few seconds.
async fn refresh_until_counter(map: &Map, total: u64) {
    let start = Instant::now();
    while map.get("counter") != Some(total) {
        // A bound, not a pace: a child process waits here for its parent's updates too, which
        // on a loaded machine take seconds.
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the counter stayed at {:?}",
            map.get("counter")
        );
        map.refresh().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_updating_one_key_lose_no_update() {
    let table = TestTable::new("one_truth_bump");
    let (a, b) = (open_fast(&table).await, open_fast(&table).await);
    let (first, second) = tokio::join!(bump_concurrently(&a), bump_concurrently(&b));
    let ((), ()) = (first, second);

    let total = 2 * TASKS * UPDATES_PER_TASK;
    assert_eq!(stored_counter(table.name()).await, Some(total));
    for map in [&a, &b] {
        refresh_until_counter(map, total).await;
    }
    let (a, b) = (a.backend().stats(), b.backend().stats());
    eprintln!("two instances bumping one key: {a:?}, {b:?}");
    assert_eq!(
        a.writes + b.writes,
        total,
        "each acknowledged update counted once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_s_concurrent_updates_of_one_key_share_transactions() {
    let table = TestTable::new("one_truth_hot");
    let map = open_fast(&table).await;
    bump_concurrently(&map).await;
    let total = TASKS * UPDATES_PER_TASK;
    assert_eq!(stored_counter(table.name()).await, Some(total));
    let stats = map.backend().stats();
    eprintln!("{TASKS} tasks bumping one key: {stats:?}");
    // Each update is computed from the one handed over before it, so none is refused, and
    // those handed over while a commit runs share the next transaction.
    assert_eq!((stats.writes, stats.conflicts), (total, 0), "{stats:?}");
    assert!(stats.commits * 2 <= total, "{stats:?}");
}

#[test]
#[ignore = "the other process of the tests in this file; they run it"]
fn pg_one_truth_child() {
    let table = std::env::var(CHILD_TABLE).expect("run by a parent test");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let backend = PostgresBackend::with_table(&fast_url(), &table)
            .await
            .unwrap();
        let map: Map = PersistentMap::new(backend).await.unwrap();
        bump_concurrently(&map).await;
        // Once the parent is done too, this process's map catches up with the total.
        refresh_until_counter(&map, 2 * TASKS * UPDATES_PER_TASK).await;
    });
}

fn spawn_child(table: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "pg_one_truth_child", "--nocapture"])
        .args(["--test-threads=1", "-q"])
        .env(CHILD_TABLE, table)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_updating_one_key_lose_no_update() {
    let table = TestTable::new("one_truth_processes");
    let map = open_fast(&table).await;
    let child = spawn_child(table.name());
    bump_concurrently(&map).await;
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the child failed: {output:?}");

    let total = 2 * TASKS * UPDATES_PER_TASK;
    assert_eq!(stored_counter(table.name()).await, Some(total));
    refresh_until_counter(&map, total).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_expectation_is_refused_and_writes_report_what_storage_held() {
    let table = TestTable::new("one_truth_stale");
    let (a, b) = (open(&table).await, open(&table).await);
    let key = "lease".to_string();

    assert_eq!(a.insert(key.clone(), 1).await.unwrap(), None);
    b.refresh().await.unwrap();
    assert_eq!(b.get(&key), Some(1));
    // `a` moves on; `b` has not heard of it and expects the old value.
    assert_eq!(a.insert(key.clone(), 2).await.unwrap(), Some(1));
    let refused = b.compare_exchange(&key, Some(&1), Some(10)).await.unwrap();
    assert_eq!(refused, Err(Some(2)), "what storage holds comes back");
    assert_eq!(b.get(&key), Some(2), "and memory takes it");
    assert_eq!(
        b.compare_exchange(&key, Some(&2), Some(3)).await.unwrap(),
        Ok(Some(2))
    );

    // `insert` and `remove` return what storage held, although `a` never saw it.
    assert_eq!(a.get(&key), Some(2));
    assert_eq!(a.insert(key.clone(), 4).await.unwrap(), Some(3));
    assert_eq!(b.remove(&key).await.unwrap(), Some(4));
    assert_eq!(a.remove(&key).await.unwrap(), None);

    // `get_or_insert_with` keeps another instance's value.
    b.insert("id".into(), 7).await.unwrap();
    assert_eq!(a.get_or_insert_with("id".into(), || 99).await.unwrap(), 7);
    assert_eq!(
        read_table::<u64>(&admin().await, table.name()).await["id"],
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_of_one_process_on_one_table_share_their_entries() {
    let table = TestTable::new("one_truth_shared");
    let url = url();
    let backend = || PostgresBackend::with_table(&url, table.name());
    let a: Map = PersistentMap::new(backend().await.unwrap()).await.unwrap();
    let b: Map = PersistentMap::new(backend().await.unwrap()).await.unwrap();
    a.insert("from-a".into(), 1).await.unwrap();
    assert_eq!(b.get("from-a"), Some(1), "at once, with no refresh");
    assert!(!b.refresh().await.unwrap());
    assert_eq!(b.insert("from-a".into(), 2).await.unwrap(), Some(1));
    assert_eq!(a.get("from-a"), Some(2));
}

/// A deployment key as version 1 wrote it, and the same key with its fields swapped.
#[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Deployment {
    name: String,
    env: String,
}

#[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct SwappedDeployment {
    env: String,
    name: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_type_laid_out_differently_is_refused_instead_of_misreading_keys() {
    let table = TestTable::new("one_truth_layout");
    let backend = PostgresBackend::builder(&url())
        .key::<Deployment>()
        .table(table.name())
        .connect()
        .await
        .unwrap();
    let map: PersistentMap<Deployment, u32, _> = PersistentMap::new(backend).await.unwrap();
    let prod = Deployment {
        name: "prod".into(),
        env: "beta".into(),
    };
    map.insert(prod.clone(), 1).await.unwrap();

    let swapped = PostgresBackend::builder(&url())
        .key::<SwappedDeployment>()
        .table(table.name())
        .connect()
        .await;
    match swapped {
        Err(PersistentError::IncompatibleKeyLayout {
            table: refused,
            stored,
            expected,
        }) => {
            assert_eq!(refused, table.name());
            assert_eq!(stored, Deployment::KEY_LAYOUT);
            assert_eq!(expected, SwappedDeployment::KEY_LAYOUT);
        }
        other => panic!("the swapped key type was not refused: {other:?}"),
    }

    // The same layout opens, and reads the key as it was written.
    let again = PostgresBackend::builder(&url())
        .key::<Deployment>()
        .table(table.name())
        .instance("again")
        .connect()
        .await
        .unwrap();
    let again: PersistentMap<Deployment, u32, _> = PersistentMap::new(again).await.unwrap();
    assert_eq!(again.get(&prod), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_refresh_loses_nothing() {
    let table = TestTable::new("one_truth_cancel");
    let (a, b) = (open(&table).await, open(&table).await);
    b.insert("k1".into(), 1).await.unwrap();
    b.insert("k2".into(), 1).await.unwrap();

    // An update of `k2` on `a` whose closure is slow holds `k2`'s turn...
    let slow = {
        let a = a.clone();
        tokio::spawn(async move {
            a.update(&"k2".to_string(), |n| {
                std::thread::sleep(Duration::from_millis(150));
                Some(n.copied().unwrap_or(0) + 1)
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    // ... so a refresh that read the log and must re-read `k1` and `k2` waits, and is given up.
    let given_up = tokio::time::timeout(Duration::from_millis(50), a.refresh()).await;
    assert!(given_up.is_err(), "the refresh did not wait: {given_up:?}");
    // So is a background refresh, dropped while it waits.
    let refresher = a.refresh_every(Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(refresher);

    // The update saw `b`'s value (it ran again on a conflict) and added to it.
    assert_eq!(slow.await.unwrap().unwrap(), Some(2));
    // What the cancelled refreshes had read is read again.
    assert_eq!(a.get("k1"), None);
    assert!(a.refresh().await.unwrap());
    assert_eq!(a.get("k1"), Some(1));
    assert_eq!(a.get("k2"), Some(2));
    assert_eq!(contents(&a), read_table(&admin().await, table.name()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_batch_costs_a_follower_its_keys_not_a_reload() {
    const STORED: u64 = 200_000;
    const BATCH: u64 = 5_000;
    let table = TestTable::new("one_truth_batch");
    let writer = open(&table).await;
    let admin = admin().await;
    admin
        .batch_execute(&format!(
            "INSERT INTO \"{}\" SELECT 'k' || g, to_jsonb(g) FROM generate_series(1, {STORED}) g",
            table.name()
        ))
        .await
        .unwrap();
    let start = Instant::now();
    let follower = open(&table).await;
    let full_load = start.elapsed();
    assert_eq!(follower.len(), STORED as usize);
    let read_before = follower.backend().stats().rows_read;
    assert_eq!(read_before, STORED);
    let mut heard = follower.subscribe();

    // Half of the batch overwrites stored keys, half adds new ones.
    let batch = (0..BATCH).map(|i| (format!("k{}", STORED - BATCH / 2 + 1 + i), i));
    writer.insert_many(batch).await.unwrap();
    let start = Instant::now();
    assert!(follower.refresh().await.unwrap());
    let catch_up = start.elapsed();
    println!(
        "a follower holding {STORED} rows caught up with a {BATCH}-key batch in {catch_up:?}; \
         loading the table took {full_load:?}"
    );
    let reread = follower.backend().stats().rows_read - read_before;
    assert_eq!(reread, BATCH, "only the batch's keys are re-read");
    assert!(
        !matches!(heard.try_recv(), Ok(Some(Change::Reloaded))),
        "no reload"
    );
    assert_eq!(follower.len(), (STORED + BATCH / 2) as usize);
    assert_eq!(follower.get(&format!("k{STORED}")), Some(BATCH / 2 - 1));
    assert!(!follower.refresh().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_pruned_log_reloads() {
    let table = TestTable::new("one_truth_pruned");
    let (a, b) = (open(&table).await, open(&table).await);
    let mut heard = b.subscribe();
    a.insert("k".into(), 1).await.unwrap();
    // As if the log's rows of that revision had been pruned before `b` read them.
    admin()
        .await
        .execute(
            "UPDATE persistent_map_revisions SET pruned = rev WHERE table_name = $1",
            &[&table.name()],
        )
        .await
        .unwrap();
    assert!(b.refresh().await.unwrap());
    assert_eq!(heard.recv().await, Ok(Change::Reloaded));
    assert_eq!(b.get("k"), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_picks_up_an_unannounced_edit_when_it_is_due() {
    let table = TestTable::new("one_truth_reconcile");
    let backend = PostgresBackend::builder(&url())
        .table(table.name())
        .reconcile_every(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    let map: Map = PersistentMap::new(backend).await.unwrap();
    let start = Instant::now();
    admin()
        .await
        .batch_execute(&format!(
            "INSERT INTO \"{}\" VALUES ('by-hand', '5')",
            table.name()
        ))
        .await
        .unwrap();
    // Not logged, not announced: unseen until the reconcile is due...
    assert!(!map.refresh().await.unwrap());
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(map.get("by-hand"), None);
    // ... and then a refresh reloads.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(map.refresh().await.unwrap());
    assert_eq!(map.get("by-hand"), Some(5));
    assert!(
        !map.refresh().await.unwrap(),
        "the next one is a second away"
    );
    let everything: HashMap<String, u64> = contents(&map);
    assert_eq!(everything.len(), 1);
}

/// A TCP proxy to the server that can lose the answer to a commit: once armed, it passes
/// everything on until the server answers a `COMMIT` (so the transaction has committed), then
/// drops that answer and closes both connections, so the client never hears that its commit
/// happened. While held, it refuses new connections (accepts and closes them at once), as a
/// server still out of reach would.
///
/// How it tells the commit's answer apart: it reads the server's side as PostgreSQL messages,
/// each a type byte and a 4-byte length that counts itself, framed from the first byte when the
/// connection is plain (the proxy's URL says `sslmode=disable`; through TLS it would see only
/// ciphertext). The answer to a `COMMIT` that committed is a CommandComplete message (`C`) whose
/// tag is `COMMIT` (a `COMMIT` of a failed transaction answers `ROLLBACK`). The client's side
/// is not parsed: the backend sends `COMMIT` as a Bind and Execute of a statement it prepared
/// once, which do not carry the SQL text.
struct CommitAnswerDropper {
    address: std::net::SocketAddr,
    armed: Arc<AtomicBool>,
    held: Arc<AtomicBool>,
    dropped: Arc<tokio::sync::Notify>,
}

impl CommitAnswerDropper {
    async fn start(server: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self {
            address: listener.local_addr().unwrap(),
            armed: Arc::new(AtomicBool::new(false)),
            held: Arc::new(AtomicBool::new(false)),
            dropped: Arc::new(tokio::sync::Notify::new()),
        };
        let (armed, held, dropped) = (
            Arc::clone(&proxy.armed),
            Arc::clone(&proxy.held),
            Arc::clone(&proxy.dropped),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if held.load(Ordering::SeqCst) {
                    continue; // dropped: the connection closes at once
                }
                let Ok(server) = tokio::net::TcpStream::connect(server).await else {
                    return;
                };
                let (armed, dropped) = (Arc::clone(&armed), Arc::clone(&dropped));
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
                        _ = pass_answers(&mut server_read, &mut client_write, &armed, &dropped) => {}
                    }
                    // Every half is dropped here: both connections close.
                });
            }
        });
        proxy
    }

    /// The URL of the test server through this proxy, without TLS, so that the proxy can read
    /// the server's messages.
    fn url(&self) -> String {
        url_at_host(
            &self.address.ip().to_string(),
            Some(self.address.port()),
            &[("sslmode", "disable")],
        )
    }

    /// Loses the answer to the next `COMMIT` that commits, and refuses new connections until
    /// [`release`](Self::release).
    fn arm(&self) {
        self.held.store(true, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Waits until an answer was lost (for a few seconds at most).
    async fn answer_dropped(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.dropped.notified())
            .await
            .expect("no commit's answer came through the proxy");
    }

    fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
    }
}

/// Passes the server's messages to the client, whole, until it passes the answer to a commit
/// while `armed`: then it disarms, tells `dropped`, and returns without passing that answer or
/// anything after it.
async fn pass_answers(
    server: &mut tokio::net::tcp::OwnedReadHalf,
    client: &mut tokio::net::tcp::OwnedWriteHalf,
    armed: &AtomicBool,
    dropped: &tokio::sync::Notify,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0; 16 * 1024];
    loop {
        let read = server.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&chunk[..read]);
        let mut whole = 0;
        while let Some(length) = message_length(&pending[whole..]) {
            let message = &pending[whole..whole + length];
            let commit_answer = message[0] == b'C' && &message[5..] == b"COMMIT\0";
            if commit_answer
                && armed
                    .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                client.write_all(&pending[..whole]).await?;
                dropped.notify_one();
                return Ok(());
            }
            whole += length;
        }
        client.write_all(&pending[..whole]).await?;
        pending.drain(..whole);
    }
}

/// The length of the server message at the start of `bytes`, if all of it is there.
fn message_length(bytes: &[u8]) -> Option<usize> {
    let header: [u8; 4] = bytes.get(1..5)?.try_into().ok()?;
    let length = 1 + u32::from_be_bytes(header) as usize;
    (bytes.len() >= length).then_some(length)
}

/// The module docs of the backend ("Faults"): a commit whose answer is lost with the connection
/// is looked up by its transaction id on the new connection; if it committed, the write is
/// acknowledged with what that transaction decided, and never sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_acknowledged_once_and_never_sent_again() {
    let table = TestTable::new("lost_answer");
    let proxy = CommitAnswerDropper::start(server_address()).await;
    let proxied: Map = PersistentMap::new(instance_at(&proxy.url(), &table).await)
        .await
        .unwrap();
    let other = open(&table).await;
    proxied.insert("counter".into(), 0).await.unwrap();
    proxied.insert("contested".into(), 1).await.unwrap();
    assert!(other.refresh().await.unwrap());
    let admin = admin().await;

    // An update whose commit's answer is lost: applied once, acknowledged once. (Sent again, its
    // condition "counter holds 0" would fail and the update would run again on 1: 2.)
    proxy.arm();
    let runs = Arc::new(AtomicU64::new(0));
    let bump = {
        let (proxied, runs) = (proxied.clone(), Arc::clone(&runs));
        tokio::spawn(async move {
            proxied
                .update(&"counter".to_string(), |n| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Some(n.copied().unwrap_or(0) + 1)
                })
                .await
        })
    };
    proxy.answer_dropped().await;
    assert_eq!(stored_counter(table.name()).await, Some(1), "it committed");
    assert!(!bump.is_finished(), "the writer has not heard yet");
    proxy.release();
    assert_eq!(bump.await.unwrap().unwrap(), Some(1));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the update ran once");
    assert_eq!(stored_counter(table.name()).await, Some(1));
    assert_eq!(proxied.get("counter"), Some(1));

    // An insert whose answer is lost, and meanwhile another instance's newer write of the same
    // key, acknowledged: the lost commit is not put back over it.
    proxy.arm();
    let lost = {
        let proxied = proxied.clone();
        tokio::spawn(async move { proxied.insert("contested".into(), 2).await })
    };
    proxy.answer_dropped().await;
    assert_eq!(other.insert("contested".into(), 3).await.unwrap(), Some(2));
    proxy.release();
    assert_eq!(
        lost.await.unwrap().unwrap(),
        Some(1),
        "acknowledged with what its transaction replaced"
    );
    let stored: HashMap<String, u64> = read_table(&admin, table.name()).await;
    assert_eq!(
        stored,
        HashMap::from([("counter".into(), 1), ("contested".into(), 3)])
    );
    assert!(
        proxied.backend().stats().reconnects >= 2,
        "each answer was lost with its connection"
    );

    // Both instances catch up to what is stored.
    assert!(proxied.refresh().await.unwrap());
    other.refresh().await.unwrap();
    assert_eq!(contents(&proxied), stored);
    assert_eq!(contents(&other), stored);
}

/// A `CachedMap` on PostgreSQL: a key memory does not hold is read from the server; a write by
/// another instance is never served stale from the cache once a refresh has run; a
/// read-modify-write is checked in storage against the other instance's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_map_on_postgres_reads_misses_from_the_server_and_is_never_stale_after_a_refresh()
{
    use persistent_map::{CacheCapacity, CacheLookup, CachedMap};
    type Cached = CachedMap<String, u64, PostgresBackend>;

    let table = TestTable::new("cached");
    let writer: Map = PersistentMap::new(instance(&table).await).await.unwrap();
    writer
        .insert_many((0..50).map(|i| (format!("k{i}"), i)))
        .await
        .unwrap();
    let cached: Cached = CachedMap::new(instance(&table).await, CacheCapacity::entries(10))
        .await
        .unwrap();
    assert_eq!(
        cached.cached("k3"),
        CacheLookup::NotCached,
        "opening reads no row"
    );
    for i in 0..50 {
        assert_eq!(cached.get(format!("k{i}").as_str()).await.unwrap(), Some(i));
    }
    assert_eq!(cached.get("absent").await.unwrap(), None);
    assert!(cached.cache_stats().storage_reads >= 50);

    // Another instance writes keys the cache holds and keys it does not.
    for i in 40..50 {
        writer.insert(format!("k{i}"), 1000 + i).await.unwrap();
    }
    writer.remove(&"k0".to_string()).await.unwrap();
    cached.refresh().await.unwrap();
    for i in 40..50 {
        assert_eq!(
            cached.get(format!("k{i}").as_str()).await.unwrap(),
            Some(1000 + i)
        );
    }
    assert_eq!(cached.get("k0").await.unwrap(), None);

    // Updates from both instances on one key: none is lost.
    let bumps = |map: Cached| async move {
        for _ in 0..50 {
            map.update(&"k1".to_string(), |v| v.map(|v| v + 1))
                .await
                .unwrap();
        }
    };
    let other = async {
        for _ in 0..50 {
            writer
                .update(&"k1".to_string(), |v| v.map(|v| v + 1))
                .await
                .unwrap();
        }
    };
    tokio::join!(bumps(cached.clone()), other);
    let stored = read_table::<u64>(&admin().await, table.name()).await;
    assert_eq!(stored.get("k1"), Some(&101));
    cached.refresh().await.unwrap();
    assert_eq!(cached.get("k1").await.unwrap(), Some(101));
}
