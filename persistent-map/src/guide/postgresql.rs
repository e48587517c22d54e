//! PostgreSQL: one store for many instances of an application (feature `postgres`).
//!
//! With the feature `postgres`, maps live in PostgreSQL, one table per key type (`key TEXT
//! PRIMARY KEY, value JSONB NOT NULL`, the same derived keys as on SQLite), and every instance
//! of the application is one map with the others. Reads still come from each instance's memory;
//! writes are acknowledged after `COMMIT`, and concurrent writes share a transaction.
//!
//! ```toml
//! persistent-map = { version = "0.2", features = ["postgres"] }
//! ```
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn example() -> persistent_map::Result<()> {
//! use persistent_map::{postgres::PostgresBackend, PersistentMap};
//! use std::time::Duration;
//!
//! let url = "postgres://app@db.internal:5432/app";
//! // On machine A
//! let a: PersistentMap<String, u64, PostgresBackend> = PersistentMap::open_postgres(url).await?;
//! let _follow_a = a.refresh_every(Duration::from_secs(10)); // woken at once by NOTIFY
//! // On machine B
//! let b: PersistentMap<String, u64, PostgresBackend> = PersistentMap::open_postgres(url).await?;
//! let _follow_b = b.refresh_every(Duration::from_secs(10));
//!
//! a.insert("visits".into(), 1).await?; // committed when Ok
//! // About half a millisecond later (on loopback): b.get("visits") == Some(1)
//! # Ok(())
//! # }
//! # fn main() {}
//! ```
//!
//! The reference, with what an operator needs to know, is the
//! [`postgres` module's documentation](../../postgres/index.html) (built with the feature:
//! `cargo doc -p persistent-map --features postgres --open` in this repository; docs.rs builds
//! every feature). In short:
//!
//! - **Atomic across instances.** `update`, `get_or_insert_with`, `compare_exchange` and
//!   transactions are conditional writes checked in the transaction that writes, under the
//!   keys' advisory locks (taken by every instance in one order), so 8 tasks × 200
//!   `update(+1)` on two instances end at exactly 3,200; a stale expectation is refused with
//!   what is stored. `insert` and `remove` return what the table held, whoever wrote it.
//! - **Catch-up costs what changed.** Each commit logs the keys it wrote under its table's next
//!   revision (`persistent_map_log`, `persistent_map_revisions`) and sends a `NOTIFY` that wakes
//!   the other instances' `refresh_every` at once; a map keeps its own position in that log and
//!   re-reads just the keys others wrote since, with the log, in one statement. A 5,000-key
//!   batch costs a follower holding 200,000 rows a read of those 5,000 rows (about 0.1-0.2 s in
//!   a debug build, against 1.1-1.3 s to load the table). A refresh that is cancelled loses
//!   nothing, and a reconnection needs no reload. Maps of one process on one table share their
//!   entries.
//! - **Edits by hand** are not in the log: `NOTIFY <table>, 'reload'` makes every instance
//!   reload, and `PostgresBuilder::reconcile_every` (off by default) reloads at the first
//!   refresh once that long has passed since the last full load.
//! - **Connections.** One per server and database per process (per connection string and
//!   timeouts), shared by every map on it, with one `LISTEN` per table: N instances hold N
//!   connections, however many maps each has. A lost connection is re-established in the
//!   background and the maps then catch up from the log; `PostgresBackend::health` tells
//!   connected, reconnecting and down apart. A commit whose answer was lost with the
//!   connection is looked up by transaction id before it is sent again, so it is never applied
//!   twice.
//! - **Timeouts**: every wait is bounded. Connecting: 5 s (`connect_timeout`); a lost connection
//!   coming back: 10 s (`reconnect_timeout`); one commit or read waiting for a server that
//!   stopped answering: 10 s (`operation_timeout`, which also sets the session's `lock_timeout`
//!   to a quarter and `statement_timeout` to 90% of it). A row locked by another program fails
//!   the write of that key, not the others'. A commit left without an answer fails with an
//!   error saying its outcome is unknown. Set them with `PostgresOptions` or
//!   `PostgresBackend::builder`.
//! - **TLS**: rustls, no OpenSSL. The URL's `sslmode` (`disable`, `prefer` (default),
//!   `require`, `verify-ca`, `verify-full`) and `sslrootcert` (a PEM file; else the system's
//!   roots) mean what they mean to libpq; a failed certificate check names the host and the
//!   check.
//! - **Key layouts** are recorded in `persistent_map_tables`, as on SQLite: a key type laid out
//!   differently from the one that wrote the table is refused with
//!   [`IncompatibleKeyLayout`](crate::PersistentError::IncompatibleKeyLayout).
//! - **Expiry** works as on SQLite ([`expiry`](super::expiry)), with a column `expires_at BIGINT`.
//! - **Logging**: `tracing` events (commits, loads and change-log reads at `debug`, connects and
//!   reconnects at `info`, faults at `warn`); the repository's `examples/logging.rs` shows them.
//!
//! On PostgreSQL a hot key's next write waits for the previous one's commit (writes of
//! different keys share commits), where SQLite pipelines them
//! ([`writes`](super::writes#hot-keys)).
//!
//! The PostgreSQL tests need a server, named by an environment variable:
//!
//! ```sh
//! cargo test --workspace                                   # no PostgreSQL needed
//! PM_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo test --workspace --features postgres
//! ```
//!
//! From a crate that depends on persistent-map with the feature `postgres`, `cargo doc -p
//! persistent-map --open` shows these docs (cargo refuses `--features` for a package outside
//! the workspace).
