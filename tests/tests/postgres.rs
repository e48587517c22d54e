//! The PostgreSQL backend against a real server, as an application running several instances
//! would use it: coherence between instances, faults, bad input.
//!
//! Needs the server named by `PM_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`). Every test works on tables of its own, named
//! after the test and this process, and drops them when it ends, so the tests run in parallel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use persistent_map::postgres::tokio_postgres;
use persistent_map::postgres::PostgresBackend;
use persistent_map::{Change, PersistentError, PersistentKey, PersistentMap};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

mod postgres_common;
use postgres_common::*;

/// A cheap deterministic sequence, so that each run writes the same mix.
fn scramble(seed: u64) -> u64 {
    seed.wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407)
        >> 33
}

#[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[persistent_key(table = "pm_test_derived_sessions")]
struct SessionKey {
    tenant: String,
    user: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Session {
    name: String,
    visits: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_derived_key_type_keeps_its_own_jsonb_table_across_instances() {
    let table = TestTable::named(SessionKey::TABLE_NAME.to_owned());
    let first: PersistentMap<SessionKey, Session, PostgresBackend> =
        PersistentMap::open_postgres(&url()).await.unwrap();
    assert_eq!(first.backend().table(), "pm_test_derived_sessions");
    let ada = SessionKey {
        tenant: "acme:corp".into(),
        user: 42,
    };
    let session = Session {
        name: "Ada".into(),
        visits: 3,
    };
    first.insert(ada.clone(), session.clone()).await.unwrap();

    // What psql shows: the key's text and the value as JSONB, queryable as such.
    let admin = admin().await;
    let row = admin
        .query_one(
            &format!(
                "SELECT key, value->>'name', pg_typeof(value)::text FROM \"{}\"",
                table.name()
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), r"acme\:corp:42");
    assert_eq!(row.get::<_, String>(1), "Ada");
    assert_eq!(row.get::<_, String>(2), "jsonb");

    // Another instance of the application finds it.
    let second: PersistentMap<SessionKey, Session, PostgresBackend> =
        PersistentMap::open_postgres(&url()).await.unwrap();
    assert_eq!(second.get(&ada), Some(session));

    let others = (0..10).map(|user| {
        let key = SessionKey {
            tenant: "globex".into(),
            user,
        };
        let value = Session {
            name: format!("user {user}"),
            visits: 0,
        };
        (key, value)
    });
    first.insert_many(others).await.unwrap();
    assert_eq!(first.remove(&ada).await.unwrap().map(|s| s.visits), Some(3));
    let stored: HashMap<String, Session> = read_table(&admin, table.name()).await;
    assert_eq!(stored.len(), 10);
    assert_eq!(stored["globex:7"].name, "user 7");
    first.clear().await.unwrap();
    assert!(stored_is_empty(&admin, table.name()).await);
}

async fn stored_is_empty(admin: &tokio_postgres::Client, table: &str) -> bool {
    read_table::<serde_json::Value>(admin, table)
        .await
        .is_empty()
}

/// One instance's share of a burst: concurrent inserts and removes over keys the other
/// instance writes too, and a batch.
async fn burst(map: &Map, instance: u64, round: u64) {
    let mut writers = Vec::new();
    for task in 0..24 {
        let map = map.clone();
        writers.push(tokio::spawn(async move {
            for step in 0..4 {
                let seed = scramble((instance << 40) | (round << 20) | (task << 8) | step);
                let key = format!("key-{}", seed % 48);
                if seed.is_multiple_of(5) {
                    map.remove(&key).await.unwrap();
                } else {
                    map.insert(key, seed).await.unwrap();
                }
            }
        }));
    }
    let batch = (0..8).map(|i| (format!("key-{}", (round * 8 + i) % 48), instance * 1000 + i));
    map.insert_many(batch).await.unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_converge_after_bursts_of_concurrent_writes() {
    let table = TestTable::new("converge");
    let (a, b) = (open(&table).await, open(&table).await);
    // The refreshes tick once a minute: agreeing within the bound is the announcements' doing.
    let _follow_a = a.refresh_every(Duration::from_secs(60));
    let _follow_b = b.refresh_every(Duration::from_secs(60));
    let admin = admin().await;

    let mut times = Vec::new();
    for round in 0..20 {
        tokio::join!(burst(&a, 1, round), burst(&b, 2, round));
        // Timed from the moment the last write of the burst was acknowledged.
        let acknowledged = Instant::now();
        let truth: HashMap<String, u64> = read_table(&admin, table.name()).await;
        let converged = wait_for(CONVERGENCE_BOUND, || {
            contents(&a) == truth && contents(&b) == truth
        })
        .await;
        let Some(_) = converged else {
            panic!(
                "round {round}: no convergence within {CONVERGENCE_BOUND:?}\n\
                 table: {truth:?}\na: {:?}\nb: {:?}",
                contents(&a),
                contents(&b)
            );
        };
        times.push(acknowledged.elapsed());
    }
    times.sort();
    eprintln!(
        "convergence after a burst, over {} bursts: median {:?}, p99 {:?}, max {:?}",
        times.len(),
        times[times.len() / 2],
        times[(times.len() * 99).div_ceil(100) - 1],
        times[times.len() - 1],
    );

    // Concurrent writes shared transactions.
    for map in [&a, &b] {
        let stats = map.backend().stats();
        assert!(stats.commits < stats.writes, "{stats:?}");
    }
}

/// A map of text values on `table`, an instance of its own named `name` with a connection of
/// its own: as another machine's would be.
async fn open_text_instance(table: &TestTable, name: &str) -> Map<String> {
    let url = with_parameter(&url(), "application_name", name);
    let backend = PostgresBackend::builder(&url)
        .table(table.name())
        .instance(name)
        .connect()
        .await
        .unwrap();
    PersistentMap::new(backend).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_applies_the_writes_an_announcement_carried_without_reading_the_log() {
    let table = TestTable::new("carried");
    let writer = open_text_instance(&table, "pm_carried_writer").await;
    let follower = open_text_instance(&table, "pm_carried_follower").await;
    // Once a minute: anything sooner is the announcements' doing. Its first tick is at once.
    let _follow = follower.refresh_every(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = follower.backend().stats().rows_read;

    for i in 0..20 {
        writer
            .insert(format!("k{i}"), format!("v{i}"))
            .await
            .unwrap();
    }
    writer.remove(&"k0".to_string()).await.unwrap();
    let seen = wait_for(CONVERGENCE_BOUND, || {
        follower.len() == 19 && follower.get("k19").as_deref() == Some("v19")
    });
    assert!(seen.await.is_some(), "the follower never caught up");
    assert_eq!(follower.get("k0"), None);
    assert_eq!(
        follower.backend().stats().rows_read,
        before,
        "the follower read the writes from the server instead of applying what it heard"
    );

    // Writes too large for a notification are announced without them: read from the log.
    let large = "x".repeat(10_000);
    writer.insert("large".into(), large.clone()).await.unwrap();
    let seen = wait_for(CONVERGENCE_BOUND, || {
        follower.get("large") == Some(large.clone())
    });
    assert!(seen.await.is_some(), "the large value never arrived");
    assert!(follower.backend().stats().rows_read > before);
    // And the writes after it are carried again.
    writer.insert("after".into(), "1".into()).await.unwrap();
    let seen = wait_for(CONVERGENCE_BOUND, || follower.get("after").is_some());
    assert!(
        seen.await.is_some(),
        "the write after the large one never arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_rereads_only_what_others_wrote() {
    let table = TestTable::new("announce");
    let (a, b) = (open(&table).await, open(&table).await);
    let mut heard = a.subscribe();

    a.insert("mine".into(), 1).await.unwrap();
    assert_eq!(
        heard.recv().await,
        Ok(Change::Inserted {
            key: "mine".into(),
            value: 1
        })
    );
    assert!(!a.refresh().await.unwrap(), "our own writes are not news");

    // Another instance's key: re-read alone, not a reload.
    b.insert("theirs".into(), 2).await.unwrap();
    let refreshed = wait_for_refresh(&a).await;
    assert_eq!(a.get("theirs"), Some(2), "after {refreshed:?}");
    assert_eq!(
        heard.recv().await,
        Ok(Change::Inserted {
            key: "theirs".into(),
            value: 2
        })
    );
    b.remove(&"theirs".to_string()).await.unwrap();
    wait_for_refresh(&a).await;
    assert_eq!(
        heard.recv().await,
        Ok(Change::Removed {
            key: "theirs".into()
        })
    );

    // A key too long for a NOTIFY payload is in the log like any other. (It compresses well,
    // so the primary key's index, which holds about 2700 bytes, takes it.)
    let long_key = "x".repeat(9000);
    b.insert(long_key.clone(), 3).await.unwrap();
    wait_for_refresh(&a).await;
    assert_eq!(
        heard.recv().await,
        Ok(Change::Inserted {
            key: long_key.clone(),
            value: 3
        })
    );

    // An edit by hand is not in the log: its announcement makes every instance reload, from
    // psql too, with the channel's name quoted as the docs say.
    let admin = admin().await;
    let quoted = format!("\"{}\"", table.name());
    admin
        .batch_execute(&format!(
            "UPDATE {quoted} SET value = '5'; NOTIFY {quoted}, 'reload'"
        ))
        .await
        .unwrap();
    wait_for_refresh(&a).await;
    assert_eq!(heard.recv().await, Ok(Change::Reloaded));
    assert_eq!(contents(&a), read_table(&admin, table.name()).await);
    assert!(contents(&a).values().all(|value| *value == 5));
    assert!(!a.refresh().await.unwrap(), "a reload happens once");
}

/// Refreshes `map` until it reports a change; returns how long that took.
async fn wait_for_refresh(map: &Map) -> Duration {
    let start = Instant::now();
    while !map.refresh().await.unwrap() {
        assert!(
            start.elapsed() < CONVERGENCE_BOUND,
            "no announcement arrived"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_acknowledged_writes_and_refused_attempts_apart() {
    let table = TestTable::new("stats");
    let (ours, theirs) = (open(&table).await, open(&table).await);
    theirs.insert("n".into(), 5).await.unwrap();
    // `ours` has not refreshed: its update is computed from nothing and refused, then from 5.
    let bump = |n: Option<&u64>| Some(n.copied().unwrap_or(0) + 1);
    assert_eq!(ours.update(&"n".to_string(), bump).await.unwrap(), Some(6));
    let stats = ours.backend().stats();
    assert_eq!(
        (stats.writes, stats.conflicts, stats.commits),
        (1, 1, 1),
        "{stats:?}"
    );
    let stats = theirs.backend().stats();
    assert_eq!((stats.writes, stats.conflicts, stats.commits), (1, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_transactions_and_a_bad_write_fails_alone() {
    let table = TestTable::new("group_commit");
    let map: Map<String> = PersistentMap::new(
        PostgresBackend::with_table(&url(), table.name())
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let admin = admin().await;

    // A JSON string holding U+0000 is valid JSON that JSONB refuses.
    let bad_value = "nul \u{0} inside".to_string();
    let mut writes = Vec::new();
    for i in 0..200 {
        let map = map.clone();
        let value = if i == 100 {
            bad_value.clone()
        } else {
            format!("v{i}")
        };
        writes.push(tokio::spawn(async move {
            map.insert(format!("k{i}"), value).await
        }));
    }
    for (i, write) in writes.into_iter().enumerate() {
        let result = write.await.unwrap();
        if i == 100 {
            let err = result.unwrap_err();
            assert!(matches!(err, PersistentError::Postgres { .. }), "{err}");
            let message = err.to_string();
            assert!(
                message.contains(table.name()) && message.contains("127.0.0.1"),
                "{message}"
            );
        } else {
            assert_eq!(result.unwrap(), None, "write {i}");
        }
    }
    assert_eq!(
        map.get("k100"),
        None,
        "the refused write left no trace in memory"
    );
    let stats = map.backend().stats();
    assert_eq!(stats.writes, 199);
    assert!(
        stats.commits < 199,
        "concurrent writes shared commits: {stats:?}"
    );
    let stored: HashMap<String, String> = read_table(&admin, table.name()).await;
    assert_eq!(stored.len(), 199);
    assert_eq!(contents(&map), stored);

    // A batch is one transaction: one bad value and none of it is stored.
    let batch = vec![
        ("k0".to_string(), "changed".to_string()),
        ("new".to_string(), "new".to_string()),
        ("k1".to_string(), bad_value),
    ];
    assert!(map.insert_many(batch).await.is_err());
    assert_eq!(map.get("k0").as_deref(), Some("v0"));
    assert_eq!(map.get("new"), None);
    assert_eq!(contents(&map), read_table(&admin, table.name()).await);

    // A key PostgreSQL cannot hold (text with U+0000) is refused the same way.
    let err = map
        .insert("nul\u{0}key".to_string(), "v".to_string())
        .await
        .unwrap_err();
    assert!(matches!(err, PersistentError::Postgres { .. }), "{err}");

    // So is a key too long for the primary key's index (4000 bytes that do not compress).
    let long_key: String = (0..500).map(|i| format!("{:08x}", scramble(i))).collect();
    let err = map.insert(long_key, "v".to_string()).await.unwrap_err();
    assert!(err.to_string().contains("index row"), "{err}");
    assert_eq!(map.len(), 199);
    assert_eq!(contents(&map), read_table(&admin, table.name()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_clear_errors_and_loses_nothing() {
    let url = url();
    for name in ["bad name", "", "1abc", "sqlite_x", &"t".repeat(64)] {
        let err = PostgresBackend::with_table(&url, name).await.unwrap_err();
        assert!(
            matches!(err, PersistentError::InvalidTableName { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
    }

    let err = PostgresBackend::connect("postgres://u:secret@localhost:notaport/test")
        .await
        .unwrap_err();
    assert!(matches!(err, PersistentError::Config { .. }), "{err}");
    assert!(err.to_string().contains("localhost:notaport"), "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
    let err = PostgresBackend::connect(&with_parameter(&url, "sslmode", "sometimes"))
        .await
        .unwrap_err();
    assert!(matches!(err, PersistentError::Config { .. }), "{err}");
    assert!(err.to_string().contains("\"sometimes\""), "{err}");

    let admin = admin().await;

    // A table that is not ours is refused and left as it was.
    let foreign = TestTable::new("foreign");
    admin
        .batch_execute(&format!(
            "CREATE TABLE \"{0}\" (id int PRIMARY KEY, data text); \
             INSERT INTO \"{0}\" VALUES (1, 'precious')",
            foreign.name()
        ))
        .await
        .unwrap();
    let err = PostgresBackend::with_table(&url, foreign.name())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PersistentError::IncompatibleTable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(foreign.name()), "{err}");
    let kept: String = admin
        .query_one(&format!("SELECT data FROM \"{}\"", foreign.name()), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, "precious");

    // Stored rows that no longer parse as the map's types: the error names table and key.
    let table = TestTable::new("bad_rows");
    drop(open(&table).await);
    let quoted = format!("\"{}\"", table.name());
    admin
        .batch_execute(&format!(
            "INSERT INTO {quoted} VALUES ('good', '1'), ('bad', '\"text\"')"
        ))
        .await
        .unwrap();
    let backend = PostgresBackend::with_table(&url, table.name())
        .await
        .unwrap();
    let err = <Map>::new(backend.clone()).await.unwrap_err();
    match &err {
        PersistentError::InvalidStoredValue { table: t, key, .. } => {
            assert_eq!((t.as_str(), key.as_str()), (table.name(), "bad"));
        }
        other => panic!("expected InvalidStoredValue, got {other}"),
    }
    let err = PersistentMap::<u64, u64, _>::new(backend)
        .await
        .unwrap_err();
    match &err {
        PersistentError::InvalidStoredKey { table: t, key, .. } => {
            assert_eq!(t, table.name());
            assert!(key == "good" || key == "bad", "{err}");
        }
        other => panic!("expected InvalidStoredKey, got {other}"),
    }
    let kept: HashMap<String, serde_json::Value> = read_table(&admin, table.name()).await;
    assert_eq!(kept.len(), 2, "nothing stored was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_error_naming_the_host_within_the_timeout() {
    // TEST-NET-1: never routed, so the connection attempt hangs until the timeout (or the
    // network says at once that it is unreachable).
    let start = Instant::now();
    let err = PostgresBackend::builder("postgres://postgres@192.0.2.1:5432/test")
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(err, PersistentError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("192.0.2.1:5432"), "{err}");

    // A server that accepts the connection and never answers: the timeout ends the wait.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let start = Instant::now();
    let err = PostgresBackend::builder(&format!("postgres://postgres@{address}/test"))
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap_err();
    let waited = start.elapsed();
    holding.abort();
    assert!(
        (Duration::from_millis(500)..Duration::from_secs(3)).contains(&waited),
        "{waited:?}"
    );
    assert!(matches!(err, PersistentError::Connect { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&address.to_string()) && message.contains("500ms"),
        "{message}"
    );

    // Nothing listens on port 1: refused at once.
    let start = Instant::now();
    let err = PostgresBackend::connect("postgres://postgres@127.0.0.1:1/test")
        .await
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_connection_is_reconnected_and_no_acknowledged_write_is_lost() {
    let table = TestTable::new("terminated");
    let name = format!("pm_terminated_{}", std::process::id());
    let map = open_named(&table, &name).await;
    let admin = admin().await;

    let writing = Arc::new(AtomicBool::new(true));
    let mut writers = Vec::new();
    for task in 0..8u64 {
        let (map, writing) = (map.clone(), Arc::clone(&writing));
        writers.push(tokio::spawn(async move {
            let mut acknowledged = HashMap::new();
            let mut i = 0;
            while writing.load(Ordering::SeqCst) {
                let key = format!("t{task}-{}", i % 20);
                map.insert(key.clone(), i)
                    .await
                    .expect("retried on a new connection");
                acknowledged.insert(key, i);
                i += 1;
            }
            acknowledged
        }));
    }
    let mut killed = 0;
    while killed < 5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        killed += terminate(&admin, &name).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    writing.store(false, Ordering::SeqCst);
    let mut acknowledged = HashMap::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }

    let stats = map.backend().stats();
    assert!(stats.reconnects >= 1, "{stats:?}");
    let stored: HashMap<String, u64> = read_table(&admin, table.name()).await;
    assert_eq!(
        stored, acknowledged,
        "every acknowledged write is stored, and only those"
    );
    // Every commit whose answer was lost was checked on the new connection rather than sent
    // twice, so memory holds exactly what is stored, and catching up after the reconnections
    // finds nothing but this instance's own writes: no reload.
    assert_eq!(contents(&map), stored);
    assert!(!map.refresh().await.unwrap(), "nothing to catch up with");
}

/// A TCP relay to the server that the test can cut, as a network partition would.
struct Relay {
    address: SocketAddr,
    up: Arc<AtomicBool>,
    cut: broadcast::Sender<()>,
}

impl Relay {
    async fn start(server: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = broadcast::channel(1);
        let (accepting, cuts) = (Arc::clone(&up), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !accepting.load(Ordering::SeqCst) {
                    continue; // dropped: the connection closes at once
                }
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(server).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.recv() => {}
                    }
                });
            }
        });
        Self { address, up, cut }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let _ = self.cut.send(());
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// The test server's URL, through this relay.
    fn url(&self) -> String {
        let config: tokio_postgres::Config = url().parse().unwrap();
        let mut url = format!(
            "host={} port={} user={} dbname={}",
            self.address.ip(),
            self.address.port(),
            config.get_user().unwrap_or("postgres"),
            config.get_dbname().unwrap_or("postgres"),
        );
        if let Some(password) = config.get_password() {
            url.push_str(&format!(" password={}", String::from_utf8_lossy(password)));
        }
        url
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_fails_clearly_then_catches_up_on_what_it_missed() {
    let table = TestTable::new("partition");
    let relay = Relay::start(server_address()).await;
    let cut_off_backend = PostgresBackend::builder(&relay.url())
        .table(table.name())
        .reconnect_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let host = cut_off_backend.host().to_owned();
    let cut_off: Map = PersistentMap::new(cut_off_backend).await.unwrap();
    let other = open(&table).await;
    cut_off.insert("before".into(), 1).await.unwrap();
    other.insert("doomed".into(), 2).await.unwrap();
    wait_for_refresh(&cut_off).await;
    let mut heard = cut_off.subscribe();

    relay.cut();
    // Refreshing while cut off says so, naming the server.
    let start = Instant::now();
    let err = loop {
        match cut_off.refresh().await {
            Err(err) => break err,
            Ok(_) if start.elapsed() < CONVERGENCE_BOUND => {}
            Ok(_) => panic!("the lost connection went unnoticed"),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    assert!(matches!(err, PersistentError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&host), "{err}");

    // A write fails within the reconnect timeout, and leaves no trace.
    let start = Instant::now();
    let err = cut_off.insert("lost".into(), 3).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(err, PersistentError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&host), "{err}");
    assert_eq!(cut_off.get("lost"), None);

    // Meanwhile the rest of the fleet writes; the announcements do not reach the cut-off one.
    other.insert("while-away".into(), 4).await.unwrap();
    other.remove(&"doomed".to_string()).await.unwrap();

    relay.restore();
    let reconnected = wait_for(Duration::from_secs(5), || {
        cut_off.backend().stats().reconnects >= 1
    })
    .await;
    assert!(reconnected.is_some(), "no reconnection");
    // What it missed is in the log: it re-reads those keys, no more.
    assert!(cut_off.refresh().await.unwrap());
    let mut missed = vec![heard.recv().await.unwrap(), heard.recv().await.unwrap()];
    missed.sort_by_key(|change| change.key().cloned());
    assert_eq!(
        missed,
        [
            Change::Removed {
                key: "doomed".into()
            },
            Change::Inserted {
                key: "while-away".into(),
                value: 4
            }
        ]
    );
    assert_eq!(heard.try_recv(), Ok(None));
    let admin = admin().await;
    let stored: HashMap<String, u64> = read_table(&admin, table.name()).await;
    assert_eq!(
        stored,
        HashMap::from([("before".into(), 1), ("while-away".into(), 4)])
    );
    assert_eq!(contents(&cut_off), stored);

    // And it writes and hears again, and is heard.
    cut_off.insert("after".into(), 5).await.unwrap();
    other.insert("heard".into(), 6).await.unwrap();
    let stored: HashMap<String, u64> = read_table(&admin, table.name()).await;
    for map in [&cut_off, &other] {
        refresh_until_equal(map, &stored).await;
    }
}

/// Refreshes `map` until it holds exactly `truth`.
async fn refresh_until_equal(map: &Map, truth: &HashMap<String, u64>) {
    let start = Instant::now();
    while contents(map) != *truth {
        assert!(
            start.elapsed() < CONVERGENCE_BOUND,
            "{:?} never became {truth:?}",
            contents(map)
        );
        map.refresh().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether the session of the connection named `application_name` is encrypted.
async fn session_is_encrypted(admin: &tokio_postgres::Client, application_name: &str) -> bool {
    admin
        .query_one(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = $1",
            &[&application_name],
        )
        .await
        .expect("exactly one session of that name")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_is_honoured_and_a_failed_certificate_check_names_the_host() {
    let table = TestTable::new("tls");
    let admin = admin().await;
    let certificate: String = admin
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    let host = server_address().ip().to_string();
    let name = |mode: &str| format!("pm_tls_{}_{mode}", std::process::id());

    // `require` encrypts (without checking the certificate); `disable` does not.
    for (mode, encrypted) in [("require", true), ("disable", false), ("prefer", true)] {
        let application_name = name(mode);
        let url = url_at_host(
            &host,
            None,
            &[("sslmode", mode), ("application_name", &application_name)],
        );
        let map: Map = PersistentMap::new(
            PostgresBackend::with_table(&url, table.name())
                .await
                .unwrap_or_else(|err| panic!("sslmode={mode}: {err}")),
        )
        .await
        .unwrap();
        map.insert(mode.to_owned(), 1).await.unwrap();
        assert_eq!(
            session_is_encrypted(&admin, &application_name).await,
            encrypted,
            "sslmode={mode}"
        );
    }

    // The server's self-signed certificate names `localhost`: trusting it, `verify-ca` accepts
    // the chain whatever the host, `verify-full` only under a name the certificate gives.
    let trusted = [("sslrootcert", certificate.as_str())];
    for (mode, at) in [("verify-ca", host.as_str()), ("verify-full", "localhost")] {
        let application_name = name(mode);
        let url = url_at_host(
            at,
            None,
            &[
                ("sslmode", mode),
                ("application_name", &application_name),
                trusted[0],
            ],
        );
        let backend = PostgresBackend::with_table(&url, table.name())
            .await
            .unwrap_or_else(|err| panic!("sslmode={mode} at {at}: {err}"));
        assert!(backend.health().is_connected());
        assert!(session_is_encrypted(&admin, &application_name).await);
    }

    let url = url_at_host(&host, None, &[("sslmode", "verify-full"), trusted[0]]);
    let err = PostgresBackend::with_table(&url, table.name())
        .await
        .unwrap_err();
    assert!(matches!(err, PersistentError::Connect { .. }), "{err}");
    let message = err.to_string();
    for part in ["host name check", "verify-full", &host, &certificate] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }

    // Without `sslrootcert` the roots are the system's store, not libpq's
    // `~/.postgresql/root.crt`: a host whose store holds the server's self-signed certificate
    // (Debian's snakeoil one, on the host that runs the server) passes `verify-full`.
    let system_store = std::fs::read_dir("/etc/ssl/certs")
        .map(|entries| {
            let served = std::fs::read(&certificate).unwrap_or_default();
            entries
                .flatten()
                .any(|entry| std::fs::read(entry.path()).is_ok_and(|pem| pem == served))
        })
        .unwrap_or(false);
    let url = url_at_host("localhost", None, &[("sslmode", "verify-full")]);
    let checked = PostgresBackend::with_table(&url, table.name()).await;
    assert_eq!(
        checked.is_ok(),
        system_store,
        "verify-full without sslrootcert, the server's certificate in the system store: \
         {system_store}: {checked:?}"
    );

    // Trusting only the public certificate authorities (Debian's bundle), the self-signed
    // certificate fails the chain check.
    let public_roots = "/etc/ssl/certs/ca-certificates.crt";
    let url = url_at_host(
        "localhost",
        None,
        &[("sslmode", "verify-ca"), ("sslrootcert", public_roots)],
    );
    let err = PostgresBackend::with_table(&url, table.name())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("certificate chain check") && message.contains("localhost"),
        "{message}"
    );
}

/// How many sessions the server has with `application_name`.
async fn connections_named(admin: &tokio_postgres::Client, application_name: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_maps_on_twenty_tables_share_one_connection() {
    let name = format!("pm_shared_{}", std::process::id());
    let shared_url = with_parameter(&url(), "application_name", &name);
    let tables: Vec<TestTable> = (0..20)
        .map(|i| TestTable::new(&format!("shared_{i}")))
        .collect();
    let mut maps: Vec<Map> = Vec::new();
    for table in &tables {
        let backend = PostgresBackend::with_table(&shared_url, table.name())
            .await
            .unwrap();
        maps.push(PersistentMap::new(backend).await.unwrap());
    }
    let admin = admin().await;
    assert_eq!(connections_named(&admin, &name).await, 1);

    // 16 tasks write the 20 tables at once: commit groups span tables.
    let writers: Vec<_> = (0..16u64)
        .map(|task| {
            let maps = maps.clone();
            tokio::spawn(async move {
                for (i, map) in maps.iter().enumerate() {
                    map.insert(format!("t{task}"), i as u64).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(connections_named(&admin, &name).await <= 2);
    for (i, (map, table)) in maps.iter().zip(&tables).enumerate() {
        let stored: HashMap<String, u64> = read_table(&admin, table.name()).await;
        assert_eq!(stored.len(), 16);
        assert!(stored.values().all(|value| *value == i as u64));
        assert_eq!(contents(map), stored);
    }
    // A map on the shared connection hears another connection's commits to its table: the
    // connection listens on every table's channel and hands each notification to its table.
    let follow = maps[7].refresh_every(Duration::from_secs(60));
    let other = open(&tables[7]).await;
    other.insert("late".into(), 77).await.unwrap();
    let heard = wait_for(CONVERGENCE_BOUND, || maps[7].get("late") == Some(77)).await;
    assert!(
        heard.is_some(),
        "the shared connection never delivered the notification"
    );
    assert_eq!(maps[6].get("late"), None);

    // The connection closes with the last map on it.
    drop(follow);
    drop(maps);
    let start = Instant::now();
    while connections_named(&admin, &name).await > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the connection outlived its maps"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
