//! The PostgreSQL backend reports to `tracing`: a `debug` event with fields per commit, `info`
//! on connecting and reconnecting, a `warn` when the connection is lost; a reconnect that is
//! quick is no error.
//!
//! Alone in its test binary: `tracing` caches per call site whether anyone listens, and with
//! other tests' sessions emitting the same events to no subscriber on other threads at the same
//! time, a test subscriber set for one thread sometimes missed them.

use std::time::Duration;

mod postgres_common;
use persistent_map_tests::EventLog;
use postgres_common::*;

// One thread, so that every task of the backend runs where the test's subscriber is the
// default.
#[tokio::test(flavor = "current_thread")]
async fn commits_and_reconnects_are_traced_and_a_quick_reconnect_is_no_error() {
    let log = EventLog::default();
    let _subscriber = tracing::subscriber::set_default(log.clone());
    let table = TestTable::new("traced");
    let name = format!("pm_traced_{}", std::process::id());
    let map = open_named(&table, &name).await;
    assert!(log
        .has(table.name(), tracing::Level::INFO, "connected")
        .is_some());
    let refresher = map.refresh_every(Duration::from_secs(60));

    map.insert("a".into(), 1).await.unwrap();
    let commit = log
        .has(table.name(), tracing::Level::DEBUG, "commit")
        .expect("a commit event");
    assert_eq!(commit.fields["requests"], "1");
    assert_eq!(commit.fields["rows"], "1");
    assert!(commit.fields.contains_key("elapsed"), "{commit:?}");

    let loads = |log: &EventLog| {
        let events = log.of_table(table.name());
        events
            .iter()
            .filter(|event| event.fields["message"] == "load")
            .count()
    };
    let log_reads = |log: &EventLog| {
        let events = log.of_table(table.name());
        events
            .iter()
            .filter(|event| event.fields["message"] == "read the change log")
            .count()
    };
    let reads_before = log_reads(&log);
    let loads_before = loads(&log);
    assert_eq!(terminate(&admin().await, &name).await, 1);
    let reconnected = wait_for(Duration::from_secs(5), || {
        map.backend().stats().reconnects >= 1
    })
    .await;
    assert!(reconnected.is_some(), "no reconnection");
    let lost = log
        .has(table.name(), tracing::Level::WARN, "lost the connection")
        .expect("a warning about the lost connection");
    assert!(lost.fields.contains_key("reason"), "{lost:?}");
    assert!(log
        .has(table.name(), tracing::Level::INFO, "reconnected")
        .is_some());
    assert!(map.backend().health().is_connected());

    // The background refresh catches up from the change log after the reconnection, without
    // a reload, and reports no error.
    let caught_up = wait_for(Duration::from_secs(5), || log_reads(&log) > reads_before).await;
    assert!(caught_up.is_some(), "no catching up after the reconnection");
    assert_eq!(loads(&log), loads_before, "a reconnection costs no reload");
    assert!(
        refresher.take_error().is_none(),
        "a reconnect within the reconnect timeout is no error"
    );
    map.insert("b".into(), 2).await.unwrap();
}
