//! The PostgreSQL backend's jobs (feature `postgres`), against the server named by
//! `PM_BENCH_POSTGRES_URL` (else `PM_TEST_POSTGRES_URL`):
//!
//! - `pm-bench run concurrent-insert pg --n N`: 16 tokio tasks inserting `N` distinct keys each
//!   through one `PersistentMap<_, _, PostgresBackend>` (one connection; writes that queue while
//!   a commit runs share the next transaction), each acknowledged after `COMMIT`;
//! - `pm-bench run concurrent-tables pg --n N --tables T`: the same with the keys spread over `T`
//!   maps on `T` tables of the database (one shared connection: a commit serves every table);
//! - `pm-bench run propagation pg ...`: two maps on two backends in this process, separate
//!   instances with a connection each (see `propagation.rs`);
//! - `pm-bench run fleet-update pg --instances N`: N processes, 8 tasks each, `update(+1)` on one
//!   key (see `fleet.rs`).
//!
//! And their raw anchors, tokio-postgres over the same server (`raw-pg`):
//!
//! - `concurrent-insert raw-pg --n N`: 16 tokio tasks inserting the same keys and JSON values
//!   through a deadpool-postgres pool of 16 connections, each one statement
//!   `INSERT ... ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value` (its own transaction);
//! - `propagation raw-pg ...`: the same writes, each an upsert (its own transaction) then a
//!   `NOTIFY` carrying the value, timed from the upsert's answer to a listener on a second
//!   connection receiving the notification;
//! - `fleet-update raw-pg --instances N`: N processes with one connection each, 8 tasks sending
//!   `UPDATE ... SET v = v + 1` (see `fleet.rs`).
//!
//! Both sides connect alike: without TLS (`sslmode=disable` is added to the URL unless it
//! names an `sslmode`), as a raw client with `NoTls` does.
//!
//! Every job works on a table of its own, `pm_bench_<workload>_<pid>` (`..._<pid>_t0` and so on
//! for several), dropped before and after with its rows in the crate's own tables.

/// The environment variables naming the server, in the order they are looked at.
pub(crate) const URL_VARIABLES: [&str; 2] = ["PM_BENCH_POSTGRES_URL", "PM_TEST_POSTGRES_URL"];

/// The URL of the server, and the variable that named it.
pub(crate) fn url() -> Option<(&'static str, String)> {
    URL_VARIABLES.iter().find_map(|&name| {
        std::env::var(name)
            .ok()
            .filter(|url| !url.trim().is_empty())
            .map(|url| (name, url))
    })
}

/// `url` without its password, if it has one in the `postgres://user:password@host` form.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user_info, host)) if user_info.contains(':') => {
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

#[cfg(not(feature = "postgres"))]
pub(crate) fn probe() -> Result<String, String> {
    Err("pm-bench was built without its feature `postgres`".to_owned())
}

#[cfg(not(feature = "postgres"))]
pub(crate) fn run(
    _workload: &str,
    _implementation: &str,
    _options: &crate::workload::Options,
) -> crate::workload::BenchResult {
    Err("pm-bench was built without its feature `postgres` (add `--features postgres`)".into())
}

#[cfg(feature = "postgres")]
pub(crate) use with_backend::{drop_table, probe, run, stats_metrics};

#[cfg(feature = "postgres")]
mod with_backend {
    use std::time::Duration;

    use persistent_map::postgres::tokio_postgres::{self, NoTls};
    use persistent_map::postgres::{PostgresBackend, PostgresStats};
    use persistent_map::PersistentMap;

    use super::{url, URL_VARIABLES};
    use crate::propagation::{self, Plan};
    use crate::workload::{key, per_second, report, BenchResult, Options, Session};

    type Map = PersistentMap<String, Session, PostgresBackend>;

    /// How long the driver's check waits for the server.
    const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

    /// The server's URL, without TLS unless it names an `sslmode` (see the module docs).
    fn url_or_error() -> BenchResult<String> {
        let (_, url) = url()
            .ok_or_else(|| format!("set {} to the server's URL", URL_VARIABLES.join(" or ")))?;
        if url.contains("sslmode") {
            return Ok(url);
        }
        Ok(match url.contains("://") {
            true if url.contains('?') => format!("{url}&sslmode=disable"),
            true => format!("{url}?sslmode=disable"),
            false => format!("{url} sslmode=disable"),
        })
    }

    /// Whether the PostgreSQL rows can run: a description of the server, or why not.
    pub(crate) fn probe() -> Result<String, String> {
        let Some((variable, url)) = url() else {
            return Err(format!(
                "neither {} nor {} is set",
                URL_VARIABLES[0], URL_VARIABLES[1]
            ));
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| error.to_string())?;
        runtime.block_on(async {
            let mut config: tokio_postgres::Config = url
                .parse()
                .map_err(|error| format!("{variable} does not parse: {error}"))?;
            config.connect_timeout(PROBE_TIMEOUT);
            let server = super::redacted(&url);
            let (client, connection) = tokio::time::timeout(PROBE_TIMEOUT, config.connect(NoTls))
                .await
                .map_err(|_| format!("no answer from {server} within {PROBE_TIMEOUT:?}"))?
                .map_err(|error| format!("cannot connect to {server}: {}", chain(&error)))?;
            tokio::spawn(connection);
            let show = |name: &'static str| {
                let client = &client;
                async move {
                    match client.query_one(&format!("SHOW {name}"), &[]).await {
                        Ok(row) => row.get::<_, String>(0),
                        Err(_) => "?".to_owned(),
                    }
                }
            };
            let version = show("server_version").await;
            let mut settings = Vec::new();
            for name in ["synchronous_commit", "fsync", "wal_sync_method"] {
                settings.push(format!("{name}={}", show(name).await));
            }
            Ok(format!(
                "PostgreSQL {version} at {server} ({})",
                settings.join(", ")
            ))
        })
    }

    /// An error and its sources, `: `-separated.
    fn chain(error: &dyn std::error::Error) -> String {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text = format!("{text}: {cause}");
            source = cause.source();
        }
        text
    }

    pub(crate) fn run(workload: &str, implementation: &str, options: &Options) -> BenchResult {
        let url = url_or_error()?;
        if workload.starts_with("fleet-") {
            return crate::fleet::run(workload, implementation, &url, options);
        }
        let raw = match implementation {
            "pg" => false,
            "raw-pg" => true,
            other => return Err(format!("no PostgreSQL implementation `{other}`").into()),
        };
        let table = format!(
            "pm_bench_{}_{}",
            workload.replace('-', "_"),
            std::process::id()
        );
        let tables = match workload {
            "concurrent-tables" => crate::ours::table_names(options)?
                .iter()
                .map(|name| format!("{table}_{name}"))
                .collect(),
            _ => vec![table],
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        drop_tables(&runtime, &url, &tables)?;
        let outcome = match (workload, raw) {
            ("concurrent-insert", false) => concurrent(&runtime, &url, &tables, options),
            ("concurrent-tables", false) => concurrent(&runtime, &url, &tables, options),
            ("propagation", false) => propagation(&runtime, &url, &tables[0], options),
            ("concurrent-insert", true) => {
                crate::pg_raw::concurrent(&runtime, &url, &tables[0], options)
            }
            ("propagation", true) => {
                crate::pg_raw::propagation(&runtime, &url, &tables[0], options)
            }
            (other, _) => {
                Err(format!("no PostgreSQL workload `{other}` for `{implementation}`").into())
            }
        };
        let dropped = drop_tables(&runtime, &url, &tables);
        outcome.and(dropped)
    }

    fn drop_tables(runtime: &tokio::runtime::Runtime, url: &str, tables: &[String]) -> BenchResult {
        runtime.block_on(async {
            for table in tables {
                drop_table(url, table).await?;
            }
            Ok(())
        })
    }

    /// Drops `table`, and its rows in the crate's own tables.
    pub(crate) async fn drop_table(url: &str, table: &str) -> BenchResult {
        PostgresBackend::builder(url)
            .table(table)
            .drop_table()
            .await?;
        Ok(())
    }

    /// The backend's counts, as metrics.
    pub(crate) fn stats_metrics(stats: PostgresStats) -> [(&'static str, f64); 4] {
        [
            ("commits", stats.commits as f64),
            ("writes", stats.writes as f64),
            ("conflicts", stats.conflicts as f64),
            ("reconnects", stats.reconnects as f64),
        ]
    }

    /// A map of instance `instance` on `table`, with a connection of its own (named after it):
    /// maps of one process on one table share their entries unless they are different
    /// instances, so the propagation job's two maps are, and each hears the other's `NOTIFY`
    /// as an instance in another process would.
    async fn open(url: &str, table: &str, instance: &str) -> BenchResult<Map> {
        let named = match url.contains("://") {
            true => format!("{url}&application_name=pm_bench_{instance}"),
            false => format!("{url} application_name=pm_bench_{instance}"),
        };
        let backend = PostgresBackend::builder(&named)
            .table(table)
            .instance(instance)
            .connect()
            .await?;
        Ok(PersistentMap::new(backend).await?)
    }

    /// As `ours.rs`'s `concurrent` and `concurrent_tables`: [`TASKS`](crate::workload::TASKS)
    /// tasks, `--n` distinct keys each, one at a time, spread over a map per table of `tables`
    /// (the maps share the process's connection).
    fn concurrent(
        runtime: &tokio::runtime::Runtime,
        url: &str,
        tables: &[String],
        options: &Options,
    ) -> BenchResult {
        let per_task = options.number("n")?;
        runtime.block_on(async {
            let mut maps = Vec::new();
            for table in tables {
                maps.push(open(url, table, "writer").await?);
            }
            let (done, began) =
                crate::ours::run_writers(&maps, per_task, |_, index| key(index), options).await?;
            let ops_per_sec = per_second(done, began.elapsed());
            let mut metrics = vec![("ops_per_sec", ops_per_sec), ("ops", done as f64)];
            // One table: its commits are the connection's. Several: a commit counts for every
            // table it served, so per-table counts do not add up to the connection's.
            if let [map] = &maps[..] {
                metrics.extend(stats_metrics(map.backend().stats()));
            }
            report(&metrics)
        })
    }

    /// Two instances in this process; see `propagation.rs`.
    fn propagation(
        runtime: &tokio::runtime::Runtime,
        url: &str,
        table: &str,
        options: &Options,
    ) -> BenchResult {
        let plan = Plan::from_options(options)?;
        let (writer, follower) = runtime.block_on(async {
            let writer = open(url, table, "writer").await?;
            writer.insert_many(plan.initial()).await?;
            let follower = open(url, table, "follower").await?;
            if follower.len() as u64 != plan.entries {
                return Err(format!(
                    "the follower loaded {} entries, not {}",
                    follower.len(),
                    plan.entries
                )
                .into());
            }
            BenchResult::Ok((writer, follower))
        })?;
        let mut changes = follower.subscribe();
        let (_follow_writer, _follow_follower) = runtime.block_on(async {
            (
                writer.refresh_every(plan.interval),
                follower.refresh_every(plan.interval),
            )
        });
        let (stamps, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let watcher = runtime.spawn(async move {
            for i in 0..plan.writes {
                let (key, value) = propagation::write(i, &plan);
                let stamp = propagation::visible(&follower, &mut changes, &key, &value).await;
                if stamps.send((i, stamp)).is_err() {
                    break;
                }
            }
        });
        let times = propagation::write_one_at_a_time(runtime, &writer, &plan, |i| {
            match runtime.block_on(seen.recv()) {
                Some((index, stamp)) if index == i => stamp,
                Some((index, _)) => {
                    Err(format!("write {index} was seen while {i} was awaited").into())
                }
                None => Err("the follower stopped".into()),
            }
        });
        watcher.abort();
        propagation::report_times(times?, options)
    }
}
