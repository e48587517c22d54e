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
//! // Under a millisecond later (on loopback): b.get("visits") == Some(1)
//! # Ok(())
//! # }
//! # fn main() {}
//! ```
//!
//! The reference, with everything an operator needs, is the [`postgres` module's
//! documentation](../../postgres/index.html) (built with the feature: `cargo doc -p
//! persistent-map --features postgres --open` in this repository; docs.rs builds every
//! feature). From a crate that depends on persistent-map with the feature `postgres`, `cargo
//! doc -p persistent-map --open` shows it (cargo refuses `--features` for a package outside the
//! workspace). What follows is the summary.
//!
//! # One map across instances
//!
//! - **Atomic across instances.** `update`, `get_or_insert_with`, `compare_exchange` and
//!   transactions are conditional writes checked in the transaction that writes, under the
//!   keys' advisory locks (taken by every instance in one order), so 8 tasks × 200
//!   `update(+1)` on two instances end at exactly 3,200; a stale expectation is refused with
//!   what is stored. `insert` and `remove` return what the table held, whoever wrote it.
//! - **Hot keys.** Writes go to the connection's queue as they are made and are committed in
//!   queue order, so a key's next write is handed over before the previous one commits, as on
//!   SQLite ([`writes`](super::writes#hot-keys)): an instance's concurrent updates of one key
//!   are chained and share one transaction and one lock acquisition. An instance whose
//!   updates conflict with another's keeps the key's lock for a moment; once the updates it
//!   had sent are answered, the ones that conflicted are computed again from what is stored
//!   and sent together, to commit in that transaction under that lock. Under heavy contention
//!   (3 processes × 8 tasks on one key in the bench) that costs 1.3-1.4 conflicts per update
//!   (5 runs at 9787c79), and makes 0.86-1.21x of raw SQL's increments (a median of 0.94x
//!   over 8 runs on one 2-core host, 1.21x over 5 on another; about 2,400-5,300/s).
//! - **Catch-up costs what changed.** Each commit logs the keys it wrote under its table's next
//!   revision (`persistent_map_log`, `persistent_map_revisions`) and sends a `NOTIFY` carrying
//!   what it wrote (when that is under 7,900 bytes), which wakes the other instances'
//!   `refresh_every` at once. A map keeps its own position in that log; woken by announcements
//!   that cover every revision after it, it applies what they carried without a round trip.
//!   In the bench, on loopback, the other instance's `get` returned the value before the
//!   writer's `insert` had returned in most writes (median -0.02 ms from the acknowledgement,
//!   p99 0.09 ms), where a plain upsert-then-`NOTIFY` loop takes 0.15 ms (p99 0.32 ms).
//!   Otherwise (an announcement missed or too large, an explicit `refresh`, which must see
//!   every acknowledged write) the map re-reads just the keys others wrote since, with the log,
//!   in one statement. A 5,000-key batch costs a follower holding 200,000 rows a read of those 5,000
//!   rows (about 0.1-0.2 s in a debug build, against 1.1-1.3 s to load the table). A refresh
//!   that is cancelled loses nothing, and a reconnection needs no reload. Maps of one process
//!   on one table share their entries.
//! - **Edits by hand** are not in the log: `NOTIFY <table>, 'reload'` makes every instance
//!   reload, and `PostgresBuilder::reconcile_every` (off by default) reloads at the first
//!   refresh once that long has passed since the last full load.
//! - **Key layouts** are recorded in `persistent_map_tables`, as on SQLite: a key type laid out
//!   differently from the one that wrote the table is refused with
//!   [`IncompatibleKeyLayout`](crate::PersistentError::IncompatibleKeyLayout).
//! - **Expiry** works as on SQLite ([`expiry`](super::expiry)), with a column `expires_at BIGINT`.
//!
//! # Connections and health
//!
//! One connection per server and database per process (per connection string and timeouts),
//! shared by every map on it, with one `LISTEN` per table: N instances hold N connections,
//! however many maps each has. A lost connection is re-established in the background and the
//! maps then catch up from the log. `PostgresBackend::health()` says what a write would meet
//! now:
//!
//! - **connected**;
//! - **stalled**: the work in flight has had no answer for half the operation timeout, and new
//!   work waits behind it;
//! - **reconnecting**: work waits for the new connection, up to the reconnect timeout;
//! - **down**: new work fails at once with `PersistentError::Connect` and is never done later,
//!   while the backend keeps reconnecting in the background.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn example() -> persistent_map::Result<()> {
//! use persistent_map::postgres::{Health, PostgresBackend};
//!
//! let backend = PostgresBackend::connect("postgres://app@db.internal:5432/app").await?;
//! match backend.health() {
//!     Health::Connected => {}
//!     Health::Down { since, reason, .. } => eprintln!("down for {since:?}: {reason}"),
//!     other => eprintln!("degraded: {other:?}"),
//! }
//! # Ok(())
//! # }
//! # fn main() {}
//! ```
//!
//! # Faults
//!
//! - **Timeouts**: every wait is bounded. Connecting: 5 s (`connect_timeout`); a lost
//!   connection coming back: 10 s (`reconnect_timeout`, counted from the loss); one commit or
//!   read waiting for a server that stopped answering: 10 s (`operation_timeout`, which also
//!   sets the session's `lock_timeout` to a quarter, `statement_timeout` to 90%,
//!   `idle_in_transaction_session_timeout` to half of it, and keepalives on both ends). Set
//!   them with `PostgresOptions` or `PostgresBackend::builder`.
//! - **No instance stalls the others.** A session whose work timed out is ended from a new
//!   connection (`pg_terminate_backend`), and the server ends one that went silent
//!   mid-transaction itself, so a frozen instance's locks are free within about the operation
//!   timeout (tested with a freezing TCP proxy: released after 1.0 s with a 2 s timeout).
//! - **A locked row holds up only its key.** A row locked by another program (`SELECT ... FOR
//!   UPDATE`) holds up only its key's writes: they wait apart and fail after a quarter of the
//!   operation timeout naming the key, while the other keys' writes go on (tested: 629
//!   writes/s with three rows locked for 10 s, 641/s without).
//! - **Never applied twice.** A commit whose answer was lost with the connection is looked up
//!   by transaction id before it is sent again. A commit left without an answer fails with an
//!   error saying its outcome is unknown; the map keeps the old value, and the next refresh
//!   reloads the table, which shows the outcome.
//! - **TLS**: rustls, no OpenSSL. The URL's `sslmode` (`disable`, `prefer` (default),
//!   `require`, `verify-ca`, `verify-full`) and `sslrootcert` (a PEM file; else the system's
//!   roots) mean what they mean to libpq; a failed certificate check names the host and the
//!   check.
//! - **Logging**: `tracing` events (commits, loads and change-log reads at `debug`; every change
//!   of health at `warn`/`info`, once per connection with its tables and reason; a key locked
//!   by another program; what became of a commit whose answer was lost); the repository's
//!   `examples/logging.rs` shows them.
//!
//! # Operating it
//!
//! The module docs' "Operating it" has the details; in short:
//!
//! - **Privileges**: `CONNECT`, and `CREATE` on the schema on first use (it creates the map's
//!   table and the crate's own tables); without `CREATE`, tables made beforehand with `SELECT,
//!   INSERT, UPDATE, DELETE` on them and on the crate's tables. Adding `expires_at` (first time
//!   to live) takes the table's ownership: add it beforehand for such roles.
//! - **Schema**: unqualified names on the role's `search_path`; pick one in the URL, the same
//!   for every instance: `?options=-c%20search_path%3Dmaps`.
//! - **Objects**: per map, its table (and `expires_at` with the index
//!   `persistent_map_expiry_<table>` once it stores a time to live); per database,
//!   `persistent_map_revisions`, `persistent_map_log` (index `persistent_map_log_by_table`) and
//!   `persistent_map_tables`; a `LISTEN` channel per table.
//! - **Advisory locks**: transaction-scoped, in the classes 28781-28783 (`0x706d`-`0x706f`),
//!   movable with `PostgresBuilder::advisory_lock_classes` if the application takes two-key
//!   advisory locks of its own there. Every instance on the same tables must use the same
//!   classes, or their read-modify-writes are not atomic against each other.
//! - **The log's growth**: one row per key per commit, the newest 16,384 revisions of each
//!   table kept (pruned by the commits themselves): about 16,384 × (keys per commit) rows per
//!   table.
//! - **Dropping a map**: `PostgresBackend::builder(url).table("t").drop_table().await?` drops
//!   the table and its rows in the crate's tables in one transaction, and returns whether the
//!   table existed. Stop its instances first: their next write to it fails.
//! - **Poolers**: connect directly or in session mode; PgBouncer's transaction mode loses the
//!   `NOTIFY`s, leaks the session settings and (before 1.21) breaks prepared statements.
//! - **TLS roots**: without `sslrootcert`, the system's store (not libpq's
//!   `~/.postgresql/root.crt`): a certificate the system trusts passes `verify-full`, as a
//!   Debian host's snakeoil certificate does for `localhost`. `sslmode=allow` is accepted and
//!   means `prefer`.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn example() -> persistent_map::Result<()> {
//! use persistent_map::postgres::PostgresBackend;
//!
//! let url = "postgres://app@db.internal:5432/app";
//! let existed = PostgresBackend::builder(url).table("old_sessions").drop_table().await?;
//! # let _ = existed;
//! # Ok(())
//! # }
//! # fn main() {}
//! ```
//!
//! # The tests
//!
//! The PostgreSQL tests need a server, named by an environment variable:
//!
//! ```sh
//! cargo test --workspace                                   # no PostgreSQL needed
//! PM_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo test --workspace --features postgres
//! ```
