//! The PostgreSQL backend reports to `tracing`: a `debug` event with fields per commit, `info`
//! on connecting and reconnecting, a `warn` when the connection is lost (one event for the
//! connection, naming the tables it serves, not one per table); a reconnect that is quick is no
//! error.
//!
//! Alone in its test binary: `tracing` caches per call site whether anyone listens, and with
//! other tests' sessions emitting the same events to no subscriber on other threads at the same
//! time, a test subscriber set for one thread sometimes missed them.

use std::time::Duration;

mod postgres_common;
use persistent_map_tests::{EventLog, SeenEvent};
use postgres_common::*;

/// The events about the whole connection (field `tables`) that name `table`, at `level`, whose
/// message holds `message`.
fn connection_events(
    log: &EventLog,
    table: &str,
    level: tracing::Level,
    message: &str,
) -> Vec<SeenEvent> {
    log.all()
        .into_iter()
        .filter(|event| {
            event.level == level
                && event.fields["message"].contains(message)
                && event
                    .fields
                    .get("tables")
                    .is_some_and(|tables| tables.split(',').any(|name| name == table))
        })
        .collect()
}

// One thread, so that every task of the backend runs where the test's subscriber is the
// default.
#[tokio::test(flavor = "current_thread")]
async fn commits_and_reconnects_are_traced_and_a_quick_reconnect_is_no_error() {
    let log = EventLog::default();
    let _subscriber = tracing::subscriber::set_default(log.clone());
    let table = TestTable::new("traced");
    let name = format!("pm_traced_{}", std::process::id());
    let map = open_named(&table, &name).await;
    // A second table on the same connection.
    let second = TestTable::new("traced_too");
    let _second_map = open_named(&second, &name).await;
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
    let lost = connection_events(
        &log,
        table.name(),
        tracing::Level::WARN,
        "lost the connection",
    );
    assert_eq!(lost.len(), 1, "one event for the connection: {lost:?}");
    assert!(lost[0].fields.contains_key("reason"), "{lost:?}");
    assert!(lost[0].fields["tables"].contains(second.name()), "{lost:?}");
    let back = connection_events(&log, second.name(), tracing::Level::INFO, "reconnected");
    assert_eq!(back.len(), 1, "{back:?}");
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
