//! Faults of a fleet on PostgreSQL: an instance whose server (or path to it) stops answering
//! holds no lock past its bound and stalls no one, its health says what a write would meet, and
//! a row locked by another program stalls only the writes of that row.
//!
//! Needs the server named by `PM_TEST_POSTGRES_URL`. Instances are reached through a
//! [`FreezingProxy`] where a test freezes them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use persistent_map::postgres::{tokio_postgres, Health, PostgresBackend};
use persistent_map::{PersistentError, PersistentMap};

mod postgres_common;
use postgres_common::*;

/// The pid of the only session named `application_name`.
async fn pid_of(admin: &tokio_postgres::Client, application_name: &str) -> i32 {
    admin
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .expect("exactly one session of that name")
        .get(0)
}

/// How many advisory locks session `pid` holds (0 once it is gone).
async fn advisory_locks(admin: &tokio_postgres::Client, pid: i32) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND granted",
            &[&pid],
        )
        .await
        .unwrap()
        .get(0)
}

/// What a test of an instance behind a proxy needs: a table named after `test`, the admin
/// client, the proxy, and the `application_name` to give the instance's connection.
async fn behind_a_proxy(test: &str) -> (TestTable, tokio_postgres::Client, FreezingProxy, String) {
    let table = TestTable::new(test);
    let proxy = FreezingProxy::start(server_address()).await;
    let name = format!("pm_{test}_{}", std::process::id());
    (table, admin().await, proxy, name)
}

/// A map on `table` at `url` whose attempts wait at most `operation` for the server.
async fn with_operation_timeout(url: &str, table: &TestTable, operation: Duration) -> Map {
    let backend = PostgresBackend::builder(url)
        .table(table.name())
        .operation_timeout(operation)
        .connect()
        .await
        .unwrap();
    PersistentMap::new(backend).await.unwrap()
}

/// Waits until `proxy` froze (on the commit it was armed for), then checks that session `pid`
/// holds advisory locks, as the test needs; returns when it froze and how many locks.
async fn frozen_holding_locks(
    proxy: &FreezingProxy,
    admin: &tokio_postgres::Client,
    pid: i32,
) -> (Instant, i64) {
    let frozen_at = loop {
        if proxy.is_frozen() {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let held = advisory_locks(admin, pid).await;
    assert!(held > 0, "the frozen session held no lock: nothing tested");
    (frozen_at, held)
}

/// Tasks bumping keys of a map in a loop until `stop`, counting what was acknowledged.
struct Bumpers {
    acknowledged: Arc<AtomicU64>,
    /// Failures whose message says the outcome is unknown: those may have committed.
    unknown: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Bumpers {
    fn start(map: &Map, keys: &[&str], stop: &Arc<AtomicBool>) -> Self {
        let (acknowledged, unknown) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tasks = keys
            .iter()
            .map(|key| {
                let (map, key, stop) = (map.clone(), (*key).to_owned(), Arc::clone(stop));
                let (acknowledged, unknown) = (Arc::clone(&acknowledged), Arc::clone(&unknown));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match map
                            .update(&key, |n| Some(n.copied().unwrap_or(0) + 1))
                            .await
                        {
                            Ok(_) => {
                                acknowledged.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(err) => {
                                if err.to_string().contains("unknown") {
                                    unknown.fetch_add(1, Ordering::Relaxed);
                                }
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            acknowledged,
            unknown,
            tasks,
        }
    }

    fn count(&self) -> u64 {
        self.acknowledged.load(Ordering::Relaxed)
    }

    async fn join(self) -> (u64, u64) {
        let counts = (self.acknowledged, self.unknown);
        for task in self.tasks {
            task.await.unwrap();
        }
        (
            counts.0.load(Ordering::Relaxed),
            counts.1.load(Ordering::Relaxed),
        )
    }
}

/// Acknowledged bumps per second of `bumpers` over `window`.
async fn rate(bumpers: &[Bumpers], window: Duration) -> f64 {
    let count = || bumpers.iter().map(Bumpers::count).sum::<u64>();
    let before = count();
    tokio::time::sleep(window).await;
    (count() - before) as f64 / window.as_secs_f64()
}

const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];

/// The start of the writes a commit's announcement carries (JSON, where every other parameter
/// is sent in binary), sent in its second round trip only: a proxy that freezes on it holds the
/// commit while the server holds the transaction's locks.
const SECOND_TRIP: &[u8] = b"[[\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_instance_holds_no_lock_past_its_bound_and_stalls_no_one() {
    const BOUND: Duration = Duration::from_secs(2);
    let (table, admin, proxy, name) = behind_a_proxy("frozen").await;
    let frozen_url = proxy.url(&[("sslmode", "disable"), ("application_name", &name)]);
    let builder = |url: &str, instance: &str| {
        PostgresBackend::builder(url)
            .table(table.name())
            .instance(instance)
            .operation_timeout(BOUND)
            .connect_timeout(Duration::from_millis(500))
            .reconnect_timeout(BOUND)
    };
    let frozen: Map = PersistentMap::new(builder(&frozen_url, "a").connect().await.unwrap())
        .await
        .unwrap();
    let mut others: Vec<Map> = Vec::new();
    for instance in ["b", "c"] {
        let backend = builder(&url(), instance).connect().await.unwrap();
        others.push(PersistentMap::new(backend).await.unwrap());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let frozen_bumpers = Bumpers::start(&frozen, &KEYS, &stop);
    let other_bumpers: Vec<Bumpers> = others
        .iter()
        .map(|map| Bumpers::start(map, &KEYS, &stop))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rate(&other_bumpers, Duration::from_secs(1)).await;

    // Freeze while the instance's server session holds its locks, its commit held back.
    let pid = pid_of(&admin, &name).await;
    proxy.freeze_when_sent(SECOND_TRIP, false);
    let (frozen_at, held) = frozen_holding_locks(&proxy, &admin, pid).await;

    let (mut released, mut stalled, mut down) = (None, None, None);
    while released.is_none() || down.is_none() {
        let now = frozen_at.elapsed();
        assert!(now < BOUND * 3, "released {released:?}, down {down:?}");
        if released.is_none() && advisory_locks(&admin, pid).await == 0 {
            released = Some(now);
        }
        match frozen.backend().health() {
            Health::Stalled { .. } if stalled.is_none() => stalled = Some(now),
            Health::Down { .. } if down.is_none() => down = Some(now),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (released, down) = (released.unwrap(), down.unwrap());
    eprintln!(
        "{held} locks; released after {released:?}; stalled after {stalled:?}, down after {down:?}"
    );
    assert!(released <= BOUND + Duration::from_secs(1), "{released:?}");
    let stalled = stalled.expect("the health said stalled before down");
    assert!(
        stalled >= BOUND / 2 - Duration::from_millis(100),
        "{stalled:?}"
    );
    assert!(down <= BOUND + Duration::from_millis(300), "{down:?}");

    // Down: new work fails at once, and is never done later.
    let start = Instant::now();
    let err = frozen.insert("while-down".into(), 1).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(err, PersistentError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("down"), "{err}");

    // The others are back to at least half their rate within the bound plus a second.
    let back_by = BOUND + Duration::from_secs(1);
    tokio::time::sleep(back_by.saturating_sub(frozen_at.elapsed())).await;
    let after = rate(&other_bumpers, Duration::from_secs(1)).await;
    eprintln!("the other instances: {before:.0}/s before the freeze, {after:.0}/s after");
    assert!(after >= before / 2.0, "{after:.0}/s against {before:.0}/s");

    proxy.thaw();
    let healthy = wait_for(Duration::from_secs(5), || {
        frozen.backend().health().is_connected()
    })
    .await;
    assert!(healthy.is_some(), "{:?}", frozen.backend().health());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acknowledged, mut unknown) = frozen_bumpers.join().await;
    for bumpers in other_bumpers {
        let (ok, lost) = bumpers.join().await;
        acknowledged += ok;
        unknown += lost;
    }
    // Every acknowledged bump is stored once; of those whose outcome was unknown, none or some.
    let stored: HashMap<String, u64> = read_table(&admin, table.name()).await;
    let total: u64 = stored.values().sum();
    assert!(
        (acknowledged..=acknowledged + unknown).contains(&total),
        "stored {total}, acknowledged {acknowledged}, unknown {unknown}"
    );
    assert!(!stored.contains_key("while-down"));
    assert_eq!(frozen.get("while-down"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_session_is_ended_from_a_new_connection_when_the_operation_times_out() {
    const BOUND: Duration = Duration::from_secs(2);
    let (table, admin, proxy, name) = behind_a_proxy("stuck").await;
    // The server would never end the session itself: the URL turns its timeout off.
    let url = proxy.url(&[
        ("sslmode", "disable"),
        ("application_name", &name),
        ("options", "-c idle_in_transaction_session_timeout=0"),
    ]);
    let map = with_operation_timeout(&url, &table, BOUND).await;
    map.insert("k".into(), 1).await.unwrap();
    let pid = pid_of(&admin, &name).await;

    // The old connection stays frozen; new ones pass, as a dead NAT entry would have it.
    proxy.freeze_when_sent(SECOND_TRIP, true);
    let writing = tokio::spawn({
        let map = map.clone();
        async move { map.insert("k".into(), 2).await }
    });
    let (frozen_at, held) = frozen_holding_locks(&proxy, &admin, pid).await;
    let released = loop {
        if advisory_locks(&admin, pid).await == 0 {
            break frozen_at.elapsed();
        }
        assert!(
            frozen_at.elapsed() < BOUND * 3,
            "the stuck session kept its locks"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("{held} locks held while frozen; released after {released:?}");
    // Not before the operation timeout (the server's own timeout is off), and soon after it.
    assert!(
        released >= BOUND - Duration::from_millis(200),
        "{released:?}"
    );
    assert!(released <= BOUND + Duration::from_secs(1), "{released:?}");
    let err = writing.await.unwrap().unwrap_err();
    assert!(matches!(err, PersistentError::Connect { .. }), "{err}");
    let state: Option<String> = admin
        .query_opt("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .unwrap()
        .map(|row| row.get(0));
    assert_eq!(state, None, "the stuck session was ended");
    proxy.thaw();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_fails_a_write_within_the_operation_timeout() {
    const BOUND: Duration = Duration::from_millis(500);
    let table = TestTable::new("unanswered");
    let proxy = FreezingProxy::start(server_address()).await;
    let url = url_at_host(
        &proxy.address.ip().to_string(),
        Some(proxy.address.port()),
        &[],
    );
    let backend = PostgresBackend::builder(&url)
        .table(table.name())
        .operation_timeout(BOUND)
        .connect_timeout(BOUND)
        .reconnect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let map: Map = PersistentMap::new(backend).await.unwrap();
    map.insert("before".into(), 1).await.unwrap();

    proxy.freeze();
    let start = Instant::now();
    let err = map.insert("frozen".into(), 2).await.unwrap_err();
    let waited = start.elapsed();
    eprintln!("a write to a frozen server failed after {waited:?} (bound {BOUND:?})");
    assert!((BOUND..BOUND * 3).contains(&waited), "{waited:?}");
    assert!(matches!(err, PersistentError::Connect { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("operation timeout of 500ms") && message.contains("not committed"),
        "{message}"
    );
    assert_eq!(map.get("frozen"), None, "memory is unchanged");
    assert!(!map.backend().health().is_connected());

    proxy.thaw();
    let start = Instant::now();
    loop {
        match map.insert("after".into(), 3).await {
            Ok(_) => break,
            Err(err) if start.elapsed() < Duration::from_secs(5) => {
                eprintln!("{err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("writes did not work again: {err}"),
        }
    }
    assert!(map.backend().health().is_connected());
    let stored: HashMap<String, u64> = read_table(&admin().await, table.name()).await;
    assert_eq!(
        stored,
        HashMap::from([("before".into(), 1), ("after".into(), 3)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_locked_elsewhere_fails_its_write_in_time_naming_it_and_other_keys_commit() {
    const BOUND: Duration = Duration::from_secs(1);
    let table = TestTable::new("row_lock");
    let map = with_operation_timeout(&url(), &table, BOUND).await;
    map.insert("locked".into(), 1).await.unwrap();

    let mut locker = admin().await;
    let lock = locker.transaction().await.unwrap();
    lock.execute(
        &format!(
            "SELECT 1 FROM \"{}\" WHERE key = 'locked' FOR UPDATE",
            table.name()
        ),
        &[],
    )
    .await
    .unwrap();

    let start = Instant::now();
    let blocked = tokio::spawn({
        let map = map.clone();
        async move { map.insert("locked".into(), 2).await }
    });
    let mut others = Vec::new();
    for i in 0..8u64 {
        let map = map.clone();
        others.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 20)).await;
            map.insert(format!("free-{i}"), i).await
        }));
    }
    for other in others {
        other.await.unwrap().expect("a key nobody locked commits");
    }
    let others_done = start.elapsed();
    let err = blocked.await.unwrap().unwrap_err();
    let blocked_done = start.elapsed();
    eprintln!(
        "other keys done after {others_done:?}, the locked key failed after {blocked_done:?}"
    );
    assert!(others_done < BOUND, "{others_done:?}");
    assert!(blocked_done < BOUND, "{blocked_done:?}");
    let message = err.to_string();
    for part in ["lock timeout", "\"locked\"", table.name(), "not committed"] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    assert_eq!(map.get("locked"), Some(1), "memory is unchanged");

    lock.rollback().await.unwrap();
    map.insert("locked".into(), 3).await.unwrap();
    let stored: HashMap<String, u64> = read_table(&locker, table.name()).await;
    assert_eq!(stored.len(), 9);
    assert_eq!(stored["locked"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_locked_by_another_program_for_ten_seconds_leave_the_other_keys_flowing() {
    const LOCKED: [&str; 3] = ["hot-0", "hot-1", "hot-2"];
    const HELD: Duration = Duration::from_secs(10);
    let table = TestTable::new("row_locks");
    let map = open(&table).await;
    for key in LOCKED {
        map.insert(key.into(), 0).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let free = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for task in 0..11u64 {
        let (map, stop, free, refused) = (
            map.clone(),
            Arc::clone(&stop),
            Arc::clone(&free),
            Arc::clone(&refused),
        );
        writers.push(tokio::spawn(async move {
            let key = match LOCKED.get(task as usize) {
                Some(key) => (*key).to_owned(),
                None => format!("free-{task}"),
            };
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match map.insert(key.clone(), i).await {
                    Ok(_) if key.starts_with("free") => {
                        free.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(err) => {
                        let message = err.to_string();
                        assert!(
                            message.contains("lock timeout") && message.contains(&key),
                            "{message}"
                        );
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let free_rate = |window: Duration| {
        let free = Arc::clone(&free);
        async move {
            let before = free.load(Ordering::Relaxed);
            tokio::time::sleep(window).await;
            (free.load(Ordering::Relaxed) - before) as f64 / window.as_secs_f64()
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let unlocked = free_rate(Duration::from_secs(2)).await;

    // Another program (as psql would) locks three rows for ten seconds.
    let mut locker = admin().await;
    let lock = locker.transaction().await.unwrap();
    let locked_rows = lock
        .execute(
            &format!(
                "SELECT 1 FROM \"{}\" WHERE key = ANY($1) FOR UPDATE",
                table.name()
            ),
            &[&LOCKED.as_slice()],
        )
        .await
        .unwrap();
    assert_eq!(locked_rows, 3);
    let during = free_rate(HELD).await;
    lock.rollback().await.unwrap();
    let after = free_rate(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let refused = refused.load(Ordering::Relaxed);
    eprintln!(
        "writes of free keys: {unlocked:.0}/s unlocked, {during:.0}/s while 3 rows were \
         locked, {after:.0}/s after; {refused} writes of the locked rows refused"
    );
    assert!(
        during >= unlocked / 2.0,
        "{during:.0}/s against {unlocked:.0}/s"
    );
    assert!(refused > 0, "the locked rows' writes waited and failed");
    // The locked rows are written again once free.
    for key in LOCKED {
        map.insert(key.into(), 1).await.unwrap();
    }
}
