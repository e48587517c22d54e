//! What the PostgreSQL test files share: the server, tables of their own, and maps of
//! separate instances on them.

// Each test file uses some of these.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use persistent_map::postgres::tokio_postgres::{self, NoTls};
use persistent_map::postgres::PostgresBackend;
use persistent_map::PersistentMap;
use serde::Serialize;

mod proxy;
// Used by the test files that freeze an instance's path to the server.
#[allow(unused_imports)]
pub(crate) use proxy::FreezingProxy;

pub(crate) const URL_VARIABLE: &str = "PM_TEST_POSTGRES_URL";

/// How long two instances may take to agree after a burst of writes: the announcements should
/// do it in milliseconds, and the background refresh in these tests ticks only once a minute.
pub(crate) const CONVERGENCE_BOUND: Duration = Duration::from_secs(2);

pub(crate) type Map<V = u64> = PersistentMap<String, V, PostgresBackend>;

pub(crate) fn url() -> String {
    std::env::var(URL_VARIABLE).unwrap_or_else(|_| {
        panic!(
            "the PostgreSQL tests need a server: set {URL_VARIABLE}, \
             e.g. postgres://postgres@127.0.0.1:5432/test"
        )
    })
}

/// `url` with one more connection parameter.
pub(crate) fn with_parameter(url: &str, name: &str, value: &str) -> String {
    if url.contains("://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}{name}={value}")
    } else {
        format!("{url} {name}={value}")
    }
}

/// A second client, as `psql` would be, to look at and change the tables behind the maps' back.
pub(crate) async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls)
        .await
        .expect("connect the admin client");
    tokio::spawn(connection);
    client
}

/// Kills, through `admin`, every session whose `application_name` is `application_name`;
/// returns how many there were.
pub(crate) async fn terminate(admin: &tokio_postgres::Client, application_name: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap()
        .get(0)
}

/// A map on `table` whose connection is named `application_name`, so that the test can find
/// it in `pg_stat_activity` (and kill it with [`terminate`]).
pub(crate) async fn open_named(table: &TestTable, application_name: &str) -> Map {
    let url = with_parameter(&url(), "application_name", application_name);
    let backend = PostgresBackend::with_table(&url, table.name())
        .await
        .unwrap();
    PersistentMap::new(backend).await.unwrap()
}

/// A table name for one test, dropped before the test starts and when it ends (even by panic).
pub(crate) struct TestTable(String);

impl TestTable {
    pub(crate) fn new(test: &str) -> Self {
        Self::named(format!("pm_{test}_{}", std::process::id()))
    }

    pub(crate) fn named(name: String) -> Self {
        drop_table(&name);
        Self(name)
    }

    pub(crate) fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for TestTable {
    fn drop(&mut self) {
        drop_table(&self.0);
    }
}

/// Drops `table`, and its rows in the crate's own tables
/// ([`PostgresBuilder::drop_table`](persistent_map::postgres::PostgresBuilder::drop_table)),
/// from a thread of its own, so that it works from `Drop` inside a runtime.
pub(crate) fn drop_table(table: &str) {
    let table = table.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime to drop the table");
        runtime.block_on(async {
            PostgresBackend::builder(&url())
                .table(table)
                .drop_table()
                .await
                .expect("drop the test table");
        });
    })
    .join()
    .expect("the thread dropping the test table");
}

/// Every row of `table`, read by the admin client, with values decoded as `V`.
pub(crate) async fn read_table<V: serde::de::DeserializeOwned>(
    admin: &tokio_postgres::Client,
    table: &str,
) -> HashMap<String, V> {
    admin
        .query(&format!("SELECT key, value::text FROM \"{table}\""), &[])
        .await
        .expect("read the table")
        .iter()
        .map(|row| {
            let value: String = row.get(1);
            (
                row.get(0),
                serde_json::from_str(&value).expect("stored JSON"),
            )
        })
        .collect()
}

pub(crate) fn contents<
    V: Clone + Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
>(
    map: &Map<V>,
) -> HashMap<String, V> {
    map.iter().collect()
}

/// A map of a new instance on `table`: it shares nothing with the other maps of this process
/// (as if it ran on another machine), so it follows them through the change log.
pub(crate) async fn open(table: &TestTable) -> Map {
    PersistentMap::new(instance(table).await)
        .await
        .expect("load the map")
}

/// A backend on `table` that is an instance of its own ([`PostgresBuilder::instance`]).
pub(crate) async fn instance(table: &TestTable) -> PostgresBackend {
    instance_at(&url(), table).await
}

/// As [`instance`], connecting to `url`.
pub(crate) async fn instance_at(url: &str, table: &TestTable) -> PostgresBackend {
    static INSTANCES: AtomicU64 = AtomicU64::new(0);
    let name = INSTANCES.fetch_add(1, Ordering::Relaxed).to_string();
    PostgresBackend::builder(url)
        .table(table.name())
        .instance(name)
        .connect()
        .await
        .expect("connect to the test server")
}

/// Polls `done` every millisecond until it holds or `limit` passes; returns how long it took.
pub(crate) async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if done() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The address of the test server, for a proxy in front of it.
pub(crate) fn server_address() -> SocketAddr {
    use std::net::ToSocketAddrs;
    let config: tokio_postgres::Config = url().parse().unwrap();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => panic!("the proxy tests need a TCP host in {URL_VARIABLE}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    (host.as_str(), port)
        .to_socket_addrs()
        .unwrap()
        .next()
        .expect("the server's address")
}

/// `PM_TEST_POSTGRES_URL`'s user and database at `host` (and `port`, else the URL's), with
/// `parameters` added, as `key=value` pairs.
pub(crate) fn url_at_host(host: &str, port: Option<u16>, parameters: &[(&str, &str)]) -> String {
    let config: tokio_postgres::Config = url().parse().unwrap();
    let port = port.unwrap_or_else(|| config.get_ports().first().copied().unwrap_or(5432));
    let mut url = format!(
        "host={host} port={port} user={} dbname={}",
        config.get_user().unwrap_or("postgres"),
        config.get_dbname().unwrap_or("postgres"),
    );
    if let Some(password) = config.get_password() {
        url.push_str(&format!(" password={}", String::from_utf8_lossy(password)));
    }
    for (name, value) in parameters {
        url.push_str(&format!(" {name}='{value}'"));
    }
    url
}
