//! The PostgreSQL backend: one shared store for the instances of an application running on
//! several machines, each keeping its in-memory map true to it.
//!
//! ```no_run
//! use persistent_map::{PersistentKey, PersistentMap, postgres::PostgresBackend};
//! use std::time::Duration;
//!
//! #[derive(PersistentKey, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
//! #[persistent_key(table = "sessions")]
//! struct SessionKey {
//!     tenant: String,
//!     user: u64,
//! }
//!
//! # persistent_map::__private::run_example(Box::pin(async {
//! let url = "postgres://app@db.internal:5432/app";
//! let sessions: PersistentMap<SessionKey, String, PostgresBackend> =
//!     PersistentMap::open_postgres(url).await?;
//! // Catch up with the other instances as soon as they commit; the 10 s tick only retries a
//! // refresh that failed (see "Coherence" for what is picked up when).
//! let _follow = sessions.refresh_every(Duration::from_secs(10));
//!
//! let key = SessionKey { tenant: "acme".into(), user: 42 };
//! sessions.insert(key.clone(), "token".into()).await?; // committed when this returns Ok
//! assert_eq!(sessions.get(&key), Some("token".to_string())); // from memory
//! # Ok(()) }));
//! ```
//!
//! # Storage
//!
//! Each map lives in one table, by default its key type's
//! ([`PersistentKey::TABLE_NAME`](crate::PersistentKey::TABLE_NAME)), created if missing:
//! `key TEXT PRIMARY KEY` holding the key's `Display` text and `value JSONB NOT NULL` holding
//! the value as JSON, so `psql` shows (and can query) the data (and, once the map has stored
//! an entry with a time to live, `expires_at`: see "Expiry"). Table names follow
//! [`validate_table_name`](crate::validate_table_name), are at most 63 bytes (PostgreSQL's
//! limit) and are quoted, so they keep their case. An existing table without those columns is
//! refused with [`PersistentError::IncompatibleTable`] before anything is written.
//!
//! The primary key's index holds keys of up to about 2700 bytes (after compression): a longer
//! key is refused with [`PersistentError::Postgres`] and nothing is written. A value can be as
//! large as JSONB allows (255 MB); JSONB refuses the character U+0000 in strings, so a value
//! holding it is refused the same way.
//!
//! # Expiry
//!
//! Entries with a time to live ([`insert_with_ttl`](crate::PersistentMap::insert_with_ttl)
//! and the rest of the map's expiry methods) work as on SQLite. A row's deadline is stored in
//! a nullable column `expires_at BIGINT`: Unix milliseconds (`NULL`: never), so
//! `SELECT key, value, to_timestamp(expires_at / 1000.0) FROM sessions` shows it. A table gains
//! the column in place, with a partial index over the rows that have a deadline
//! (`persistent_map_expiry_<table>`), just before the first commit that saves a value with a
//! time to live to it (`ALTER TABLE ... ADD COLUMN IF NOT EXISTS`, in a short transaction of
//! its own holding the table's advisory lock exclusively, so instances adding it at once take
//! turns); a table that never sees one keeps its two columns. A save replaces the deadline as
//! it replaces the value: a save without a time to live clears it (Redis's `SET`).
//!
//! Adding the column is instant, but building the index reads the whole table while the
//! `ALTER`'s lock keeps every other read and write of the table waiting, and must finish
//! within the statement timeout (see [`PostgresBuilder::operation_timeout`]), else the write
//! fails and nothing changes. For a large table, add both beforehand, as the backend would
//! (it finds them by name):
//!
//! ```sql
//! ALTER TABLE sessions ADD COLUMN IF NOT EXISTS expires_at BIGINT;
//! CREATE INDEX CONCURRENTLY IF NOT EXISTS persistent_map_expiry_sessions
//!     ON sessions (expires_at) WHERE expires_at IS NOT NULL;
//! ```
//!
//! The clock: a deadline is a point on the wall clock of the instance that wrote it, and every
//! read compares it with the reading instance's own wall clock (sent with the query, not the
//! server's `now()`): a row whose deadline is at or before that instant is absent to loads,
//! to the re-reads of a refresh, and to the conditions and previous values of writes, so
//! [`update`](crate::PersistentMap::update) sees `None` and a
//! [`compare_exchange`](crate::PersistentMap::compare_exchange) expecting `None` succeeds,
//! whether or not the row was swept yet. Instances whose clocks disagree disagree on expiry by
//! as much: one whose clock runs ahead sees entries expire early, one behind late, and a
//! sweep deletes what the sweeping instance's clock says has expired. Keep hosts on NTP.
//!
//! Each connection prepares a table's statements for the columns it found, and checks them
//! again under the table's locks in every commit and every read (a read locks the table
//! `IN ACCESS SHARE MODE` for that); when another instance has given the table the column
//! meanwhile, the statements are prepared again and the work is redone, so no instance reads
//! an expired row as live or leaves a deadline behind a plain save.
//!
//! A sweep ([`PersistentMap::sweep_expired`](crate::PersistentMap::sweep_expired), and the
//! map's background sweep) finds up to 256 expired rows by the partial index, then deletes
//! those that are still expired under their keys' advisory locks in one commit, shared with
//! other writes as any write's is, and logs and announces them as deletes: the other
//! instances drop those keys at their next refresh, and their subscribers hear
//! [`Change::Expired`](crate::Change::Expired) for entries that had expired.
//!
//! # Writes
//!
//! A write is acknowledged once its transaction has committed, so it is as durable as the
//! server makes commits (`synchronous_commit`, on by default: flushed to the server's disk).
//! Writes that arrive while a commit is running are committed together in the next
//! transaction (group commit), with one multi-row upsert. A batch
//! ([`PersistentMap::insert_many`](crate::PersistentMap::insert_many) and friends) is one
//! transaction: all of it or nothing.
//!
//! Every transaction first takes advisory locks in one global order: the table's lock in shared
//! mode, then one lock per key it checks or writes, in ascending order (a clear, or a
//! transaction of more than 256 keys, takes the table's lock in exclusive mode instead). So
//! transactions of this crate, in every instance, wait for each other on the keys they share
//! but never in a cycle. A transaction that PostgreSQL still aborts for a deadlock or a
//! serialization failure (with some other writer) is retried.
//!
//! # What holds across instances
//!
//! Every map on one table, in any instance, is one map (the crate's invariant "one table, one
//! truth"):
//!
//! - Read-modify-writes are atomic across all instances.
//!   [`update`](crate::PersistentMap::update),
//!   [`get_or_insert_with`](crate::PersistentMap::get_or_insert_with) and
//!   [`compare_exchange`](crate::PersistentMap::compare_exchange) state the value they read
//!   as a condition; the transaction reads the stored values under the keys' advisory locks
//!   and writes only if the conditions hold. Within a group commit the requests are decided in
//!   order, each seeing those before it, so two updates of one key in one group both apply. A
//!   request whose condition fails writes nothing, gets what is stored, and `update` runs its
//!   closure again on that.
//! - [`insert`](crate::PersistentMap::insert) and [`remove`](crate::PersistentMap::remove)
//!   return the value the table held just before them, whoever wrote it.
//! - A [`transaction`](crate::transaction) over maps of several tables of one database
//!   (backends opened with the same connection string and timeouts, which share the process's
//!   connection) is one request of that connection: its keys' advisory locks are taken with
//!   those of the other writes of its group, in the one global order; the conditions of all its
//!   tables are checked under them; then the writes, log rows and revision bumps of every table
//!   are committed, or, if a condition fails, nothing is, and the body runs again on what is
//!   stored. A commit whose connection is lost is retried as any write is (asking first whether
//!   the lost attempt committed), so a transaction is wholly there or wholly absent. Maps of
//!   two connections in one transaction are refused with [`PersistentError::MixedStorage`].
//! - Maps of one process on the same server, database and table (and key and value types)
//!   share their entries: each sees the others' writes at once. Maps of other instances see
//!   them at their next [refresh](crate::PersistentMap::refresh) (at once with
//!   [`refresh_every`](crate::PersistentMap::refresh_every), see below).
//! - A key type's layout ([`PersistentKey::KEY_LAYOUT`](crate::PersistentKey::KEY_LAYOUT)) is
//!   recorded in `persistent_map_tables` by the first typed open
//!   ([`PostgresBackend::for_key`], [`PostgresBuilder::key`]); a key type laid out differently
//!   is refused with [`PersistentError::IncompatibleKeyLayout`].
//!
//! # Coherence across instances
//!
//! Every transaction logs the keys it wrote in `persistent_map_log` under its table's next
//! revision (`persistent_map_revisions`, bumped as the transaction's last statement: its row
//! lock makes a table's commits take revisions in commit order), with the id of the map that
//! wrote them; a clear, or a transaction of more than 65,536 keys, logs one `NULL` key,
//! "anything". A map keeps its own position (the revision it has applied) and a refresh
//! reads the log after it, leaving out its own writes, together with what the table holds
//! under the keys others wrote, in one statement (one round trip, one snapshot): it re-reads
//! just those keys, so a batch of 5,000 keys costs every other instance a read of those 5,000
//! rows, not of the table. (If a write of the map's own to one of those keys finished while
//! the statement ran, the map reads those keys once more before applying them, so that it
//! never puts an older value over its own newer one.) The position is replaced only once what was read is applied, so a refresh that is
//! cancelled (a `timeout`, a dropped [`RefreshTask`](crate::RefreshTask)) or fails loses
//! nothing: the next one reads the same changes. The log keeps the rows of each table's last
//! 16,384 revisions (older ones are pruned in bounded batches by later commits); a map further
//! behind, or whose position is unknown, reloads the table. The crate creates these three
//! tables itself; do not edit them, except to delete the rows of a table you dropped for good
//! (`DELETE FROM persistent_map_log WHERE table_name = '...'`, and likewise in
//! `persistent_map_revisions` and `persistent_map_tables`). A table created anew under an old
//! name starts with its old log and layout forgotten.
//!
//! The transaction also sends `NOTIFY` on the channel named like the table, to wake the other
//! instances: every backend `LISTEN`s on its table's channel, and
//! [`refresh_every`](crate::PersistentMap::refresh_every) refreshes as soon as a notification
//! arrives (the interval only retries a refresh that failed). The payload is `c<revision>`,
//! followed, when they fit in a notification (under 7,900 bytes of keys and values), by
//! `:` and what the transaction wrote, as JSON: `[[key, value JSON text or null for a delete,
//! deadline in Unix ms or null, id of the map that wrote it], ...]`. A map woken by a run of
//! such announcements that starts just after its position applies them without a round trip
//! (PostgreSQL delivers a table's notifications in commit order, that is in revision order);
//! otherwise, and on an explicit [`refresh`](crate::PersistentMap::refresh) (which must see
//! every write acknowledged before it, heard or not), it reads the log. So a notification
//! missed (while disconnected), or too large to carry the writes, only costs that read. A
//! payload of `changed` (what earlier versions of 0.2 sent) is read as "logged: read the
//! log"; any other payload means "something that was not logged changed": every instance
//! reloads the table at its next refresh. After editing a table by hand, `NOTIFY sessions, 'reload'` brings every
//! instance up to date. `NOTIFY` folds an unquoted name to lower case, so a table with
//! capitals needs the name in double quotes, `NOTIFY "MyTable", 'reload'` (or
//! `SELECT pg_notify('MyTable', 'reload')`, which takes the name as written).
//!
//! Exactly this is picked up, and when:
//!
//! - writes of other instances of this crate: at the first refresh after they commit (at once
//!   with `refresh_every`), re-reading the keys they wrote; after a reconnection too, from the
//!   log (no reload), unless the map fell more than 16,384 revisions behind;
//! - everything (a full reload): after a clear or a transaction of more than 65,536 keys,
//!   after a payload other than `changed` or `c<revision>`, when the map's position was pruned from the log,
//!   and after a commit of this instance whose outcome is unknown (see "Faults");
//! - rows that other programs change without `NOTIFY` (a hand `UPDATE`): never by the log.
//!   With [`PostgresBuilder::reconcile_every`] set, the first refresh once that long has
//!   passed since the map last loaded everything reloads the table (so with `refresh_every`
//!   ticking every `t`, within `interval + t`); otherwise only at a full reload for one of
//!   the reasons above, or [`load`](crate::PersistentMap::load).
//!
//! Instances of older versions of this crate do not log their writes; their `k:<key>`
//! announcements count as unlogged changes (a reload), and they read `changed` as a reload.
//!
//! # Faults
//!
//! Every wait is bounded, and no server session of an instance holds a lock past the work it
//! did:
//!
//! - An unreachable server is a [`PersistentError::Connect`] naming the host, after the
//!   connect timeout at most ([`PostgresBuilder::connect_timeout`], the URL's
//!   `connect_timeout`, else 5 seconds).
//! - A server that keeps the connection open but stops answering (or a path that goes dead
//!   without closing) fails the work in hand with [`PersistentError::Connect`] after the
//!   operation timeout ([`PostgresBuilder::operation_timeout`], 10 seconds by default). The
//!   connection is then dropped, its server session ended from a new connection
//!   (`pg_terminate_backend`, which needs the same role or `pg_signal_backend`), and a new
//!   connection is made in the background. Where that new connection cannot reach the server
//!   either, the server ends the session itself: every session sets
//!   `idle_in_transaction_session_timeout` to half the operation timeout (the crate's
//!   transactions never idle, but one whose instance froze between its two round trips
//!   would). Either way a stuck instance's advisory and row locks are free within about the
//!   operation timeout, and the other instances, which wait for them at most `lock_timeout`
//!   (a quarter of it), are back to full speed; measured in `tests/postgres_faults.rs`:
//!   released after 1.0 s with a 2 s operation timeout, 2.0 s when the server's timeout is
//!   turned off and the new connection ends it.
//! - A row that another program keeps locked (`SELECT ... FOR UPDATE` in `psql`) holds up
//!   only the writes of its key. Each commit first locks the rows it will write without
//!   waiting (`FOR UPDATE SKIP LOCKED`); a request that writes a row locked elsewhere (and any
//!   later request sharing a key with it, so that a key's writes keep their order) is left out
//!   and tried again with the next groups, every 20 ms at least, while the other keys' writes
//!   commit. After a quarter of the operation timeout it fails with
//!   [`PersistentError::Backend`], naming the table, the key and the host ("lock timeout",
//!   not committed), and the key is logged at `warn` when first found locked. Measured in
//!   `tests/postgres_faults.rs`: with three rows locked for 10 s, 11 writers committed the
//!   other keys at 629 writes/s against 641/s unlocked. (A row that another program inserted
//!   and has not committed yet cannot be seen: its key's write waits up to `lock_timeout`,
//!   and its group is then retried one request at a time.)
//! - The same timeout sets the session's `lock_timeout` (a quarter of it), `statement_timeout`
//!   (90%), `idle_in_transaction_session_timeout` (half) and TCP keepalives on both ends (after
//!   the operation timeout of silence, then every quarter of it, three probes), unless the
//!   URL's `options` (`options=-c idle_in_transaction_session_timeout=0`) or keepalive
//!   parameters set them, and the client's TCP user timeout.
//! - When the connection breaks (the server restarts, `pg_terminate_backend`, the network), the
//!   backend reconnects at once, then with growing pauses of up to a second. Work in hand is
//!   retried on the new connection until the reconnect timeout
//!   ([`PostgresBuilder::reconnect_timeout`], 10 seconds by default) counted from the loss,
//!   then fails with [`PersistentError::Connect`].
//! - [`PostgresBackend::health`] says what work sent now would meet: connected; stalled (the
//!   work in flight has had no answer for half the operation timeout: new work waits behind
//!   it); reconnecting (work waits); or down, once the server stopped answering for the
//!   operation timeout or the connection has been gone for the reconnect timeout. While it is
//!   down, new work fails at once with [`PersistentError::Connect`] and is never done later;
//!   the backend keeps reconnecting in the background.
//! - A refresh while the backend reconnects finds nothing to do (a quick reconnect is not an
//!   error, for [`RefreshTask::take_error`](crate::RefreshTask::take_error) either); once it is
//!   down, refreshes return [`PersistentError::Connect`]. Once reconnected, the next refresh
//!   reads what it missed from the log.
//!
//! A write whose commit was sent but not answered has an unknown outcome:
//!
//! - If the answer is lost with the connection, the backend asks the server on the new
//!   connection whether that transaction (by its id, `txid_status`) committed (ending the old
//!   session first if the server still runs it, which settles it). If it did, the
//!   write is acknowledged with what that transaction decided; if not, the write is tried
//!   again, its conditions checked anew. So a write is never applied twice, and a retry never
//!   puts an older value back over a newer write that another instance had acknowledged.
//! - If no answer comes within the operation timeout, or the reconnect timeout passes, the
//!   write fails with [`PersistentError::Connect`], whose message says that the outcome is
//!   unknown (a write that failed before its commit was sent says that it was not
//!   committed). The map keeps the key's old value in memory, as for every failed write, and
//!   every map of this backend reloads the table at its next refresh, which shows the
//!   outcome.
//!
//! # Connections
//!
//! A process holds one connection per connection string (and set of timeouts): every backend
//! opened with the same URL and timeouts shares it, whatever its table, as the SQLite backends
//! of one file share one writer. The connection `LISTEN`s on each of their tables' channels,
//! its commit groups carry the writes of every table on it, and a reconnection serves them all
//! again. So N instances hold N connections, however many maps each has (20 maps on 20 tables:
//! one connection), and the connection closes when the last backend on it is dropped. URLs that
//! differ (another `application_name`, another user) or backends built with other timeouts get
//! connections of their own. The connections' work runs on a thread the crate starts, with a
//! runtime of its own, so that a connection outlives the runtime that happened to open it.
//!
//! # TLS
//!
//! Connections use TLS (rustls; no OpenSSL needed) as the URL's `sslmode` says, with libpq's
//! meanings: `disable` (plain), `prefer` (the default: TLS if the server offers it),
//! `require` (TLS, any certificate), `verify-ca` (the certificate chain must lead to a trusted
//! root) and `verify-full` (and the certificate must name the host connected to). `allow` is
//! accepted and means `prefer` here (libpq tries without TLS first; tokio-postgres cannot).
//! The trusted roots are those of the PEM file `sslrootcert`, else **the system's store**
//! (`/etc/ssl/certs` on Debian), not libpq's `~/.postgresql/root.crt`: a certificate the
//! system trusts passes `verify-full` without `sslrootcert`, as a Debian host's own
//! self-signed "snakeoil" certificate does for `localhost` on that host. Name the server's CA
//! with `sslrootcert` to trust it alone. As with libpq, a `sslrootcert` makes `prefer` and
//! `require` check the chain too. A certificate that fails a check is a
//! [`PersistentError::Connect`] that names the host and the check; an unknown `sslmode` or an
//! unreadable `sslrootcert` is a [`PersistentError::Config`].
//!
//! ```no_run
//! # persistent_map::__private::run_example(Box::pin(async {
//! let url = "postgres://app@db.internal/app?sslmode=verify-full&sslrootcert=/etc/app/db-ca.pem";
//! let backend = persistent_map::postgres::PostgresBackend::connect(url).await?;
//! # let _ = backend;
//! # Ok(()) }));
//! ```
//!
//! # Operating it
//!
//! What the backend needs and leaves on a server, for the people who run it:
//!
//! - **Privileges.** `CONNECT` on the database. On first use, `CREATE` on the schema the
//!   tables go to: the first open of a table creates it, and the first open on a database the
//!   crate's own three tables. A role without `CREATE` can use tables made for it beforehand
//!   (by an open under a role that has it, or by hand with the definitions below), with
//!   `SELECT, INSERT, UPDATE, DELETE` on them and on the crate's three tables; giving a table
//!   the column `expires_at` (its first write with a time to live) takes its ownership, so add
//!   the column and its index beforehand for such a role (see "Expiry"). Ending a stuck
//!   session of its own (`pg_terminate_backend`) and the session settings need nothing more;
//!   `LISTEN`, `NOTIFY` and advisory locks need no privilege.
//! - **Schema.** Names are not schema-qualified: tables are created in, and looked up on, the
//!   role's `search_path` (by default `"$user", public`: the schema named after the role if
//!   there is one, else `public`). To choose, set it in the URL, the same for every instance:
//!   `postgres://app@db/app?options=-c%20search_path%3Dmaps`.
//! - **Objects created.** Per map: its table (`key TEXT PRIMARY KEY, value JSONB NOT NULL`,
//!   plus `expires_at BIGINT` and the partial index `persistent_map_expiry_<table>` once it
//!   stores a time to live). Per database: `persistent_map_revisions (table_name TEXT PRIMARY
//!   KEY, rev BIGINT, pruned BIGINT)`, `persistent_map_log (table_name TEXT, rev BIGINT, key
//!   TEXT, origin BIGINT)` with the index `persistent_map_log_by_table (table_name, rev)`, and
//!   `persistent_map_tables (table_name TEXT PRIMARY KEY, key_layout TEXT)`. Nothing else
//!   persists: each connection `LISTEN`s on a channel per table (named like it), sets its
//!   session limits (see "Faults"), and takes transaction-scoped advisory locks in three
//!   classes, 28781 to 28783 by default (0x706d to 0x706f, `"pm"`): move them with
//!   [`PostgresBuilder::advisory_lock_classes`] if the application takes two-key advisory
//!   locks in those classes, the same in every instance.
//! - **The log's growth.** Every commit adds a row to `persistent_map_log` per key it wrote
//!   (one for a clear or more than 65,536 keys). Each table keeps the rows of its newest
//!   16,384 revisions: every 256th commit of an instance deletes up to 10,000 older rows of
//!   each table it writes. So a table whose commits carry k keys on average settles near
//!   16,384 x k log rows (12 keys per commit: about 197,000 rows), whatever its write rate;
//!   autovacuum reclaims what was deleted.
//! - **Dropping a map for good.** [`PostgresBuilder::drop_table`] drops its table (and index)
//!   and deletes its rows in the crate's three tables, in one transaction; by hand:
//!   `DROP TABLE sessions; DELETE FROM persistent_map_log WHERE table_name = 'sessions';`
//!   and likewise in `persistent_map_revisions` and `persistent_map_tables`. Stop the
//!   instances using it first.
//! - **Connection poolers.** Connect directly, or through a pooler in session mode: each
//!   process holds one long-lived connection that `LISTEN`s, sets session parameters and
//!   keeps prepared statements. In PgBouncer's transaction (or statement) mode notifications
//!   are lost (other instances' writes are then picked up only by a refresh made for another
//!   reason), the session settings leak to other clients, and (before PgBouncer 1.21)
//!   prepared statements break. The backend needs no pool: one connection per process
//!   carries all its maps.
//!
//! # Logging
//!
//! The backend reports through [`tracing`](https://docs.rs/tracing) (with no subscriber
//! installed, that costs next to nothing). Events about a table's work carry the field
//! `table`: at `debug` each commit (`requests`, `rows`, `cleared`, `conflicts`, `elapsed`),
//! each load (`rows`, `elapsed`; `keys` for a load of some keys) and each read of the change
//! log (`since`, `rev`, `keys`, the `rows` of values read with them, `elapsed`); at `info` a
//! backend connecting, a table gaining the column `expires_at`, and a commit whose answer was
//! lost found committed (`txid`); at `warn` slow commits (over a second), retries, a commit
//! whose answer was lost found not committed (it is tried again), operation timeouts and
//! forced reloads.
//!
//! Events about the connection are one per connection, whatever the number of tables on it,
//! with the fields `host` and `tables` (the tables it serves, comma-separated): every change
//! of [`health`](PostgresBackend::health), with its `reason`, at `warn` (stalled, lost and
//! reconnecting, down) or `info` (answering or reconnected again); each failed reconnect
//! attempt at `warn`; and whether the server session of a connection that stopped answering
//! was ended, at `info` (`pid`), or could not be (`warn`). The example `logging` shows them
//! with a subscriber.

mod admin;
mod commit;
mod connect;
mod decode;
mod expiry;
mod link;
mod log;
mod notify;
mod registry;
mod session;
mod tls;
mod transaction;

use crate::{MapKey, MapValue};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, oneshot};

pub(crate) use self::connect::describe_error;
use self::connect::{TableSql, Target};
use self::log::{LogRead, Logged, Position};
use self::notify::Changes;
use self::registry::SessionHandle;
use self::session::{Attached, Command, Counters, Outcome, RawOp, Scanned, Timeouts, Write};
pub(crate) use self::transaction::{TransactionPart, TransactionSession};
use crate::map::{Answer, Op};
use crate::{
    BatchOp, ChangePosition, Checked, Condition, Deadline, ExternalChanges, PersistentError,
    PersistentKey, Result, StorageBackend, WriteOptions,
};

/// The tokio-postgres this backend is built on, whose error
/// [`PersistentError::Postgres`] carries.
pub use tokio_postgres;

/// How long work waits for a lost connection to come back, unless told otherwise.
const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one attempt at some work waits for the server, unless told otherwise.
const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`StorageBackend`] that stores a map in one table of a PostgreSQL database, shared by every
/// instance of the application, with read-modify-writes atomic across all of them, and keeps
/// this instance's map coherent with the others through a change log and `LISTEN`/`NOTIFY`
/// (see the [module docs](self)).
///
/// Open one with [`connect`](Self::connect) (table `kv`), [`with_table`](Self::with_table),
/// [`for_key`](Self::for_key) (the key type's own table), or [`builder`](Self::builder) for
/// timeouts. The backends of one process opened with the same connection string and timeouts
/// share one connection (see [the module docs](self#connections)); clones share everything.
/// Maps of one process on the same table share their entries (see
/// [`PostgresBuilder::instance`] to keep them apart).
///
/// ```no_run
/// use persistent_map::{postgres::PostgresBackend, PersistentMap};
///
/// # persistent_map::__private::run_example(Box::pin(async {
/// let url = "postgres://postgres@127.0.0.1:5432/test";
/// let users = PersistentMap::<u64, String, _>::new(PostgresBackend::with_table(url, "users").await?).await?;
/// users.insert(1, "ada".to_string()).await?;
/// assert_eq!(users.backend().table(), "users");
/// # Ok(()) }));
/// ```
#[derive(Clone)]
pub struct PostgresBackend {
    shared: Arc<Shared>,
}

/// What the clones of a backend share. The session (the connection) is shared with the other
/// backends of the process on the same server; dropping the last of them stops it.
struct Shared {
    session: Arc<SessionHandle>,
    /// This backend's table, news and counts, as the session knows them.
    attached: Arc<Attached>,
    /// The server and the database (`postgres://host:port/database`), as errors name them.
    database: String,
    /// The server, database and table, for [`StorageBackend::storage_id`].
    storage_id: String,
    /// When the backend was made: positions record reload times relative to it.
    created: Instant,
    /// Reload everything at a refresh once the last full load is this old.
    reconcile_every: Option<Duration>,
}

impl PostgresBackend {
    /// Connects to the database at `url` and uses (creating it if missing) the table `kv`.
    ///
    /// `url` is a `postgres://user:password@host:port/database?options` URL or libpq's
    /// `key=value` form.
    ///
    /// ```no_run
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let backend = persistent_map::postgres::PostgresBackend::connect(
    ///     "postgres://postgres@127.0.0.1:5432/test",
    /// )
    /// .await?;
    /// assert_eq!(backend.table(), "kv");
    /// # Ok(()) }));
    /// ```
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder(url).connect().await
    }

    /// Connects to the database at `url` and uses (creating it if missing) the table `table`,
    /// which must be `[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes, and not start with `sqlite_`.
    ///
    /// ```no_run
    /// use persistent_map::{postgres::PostgresBackend, PersistentError};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let url = "postgres://postgres@127.0.0.1:5432/test";
    /// let backend = PostgresBackend::with_table(url, "sessions").await?;
    /// assert_eq!(backend.table(), "sessions");
    ///
    /// let err = PostgresBackend::with_table(url, "bad name").await.unwrap_err();
    /// assert!(matches!(err, PersistentError::InvalidTableName { .. }));
    /// # Ok(()) }));
    /// ```
    pub async fn with_table(url: &str, table: &str) -> Result<Self> {
        Self::builder(url).table(table).connect().await
    }

    /// Connects to the database at `url` and uses the table of the key type `K`,
    /// [`K::TABLE_NAME`](PersistentKey::TABLE_NAME).
    ///
    /// ```no_run
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let url = "postgres://postgres@127.0.0.1:5432/test";
    /// let backend = persistent_map::postgres::PostgresBackend::for_key::<String>(url).await?;
    /// assert_eq!(backend.table(), "kv");
    /// # Ok(()) }));
    /// ```
    pub async fn for_key<K: PersistentKey>(url: &str) -> Result<Self> {
        Self::builder(url).key::<K>().connect().await
    }

    /// Starts configuring a backend on the database at `url`: table `kv`, the URL's connect
    /// timeout (else 5 seconds), a 10 second reconnect timeout, until told otherwise.
    ///
    /// ```no_run
    /// use persistent_map::postgres::PostgresBackend;
    /// use std::time::Duration;
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let backend = PostgresBackend::builder("postgres://postgres@127.0.0.1:5432/test")
    ///     .table("events")
    ///     .connect_timeout(Duration::from_secs(2))
    ///     .reconnect_timeout(Duration::from_secs(30))
    ///     .connect()
    ///     .await?;
    /// # let _ = backend;
    /// # Ok(()) }));
    /// ```
    pub fn builder(url: &str) -> PostgresBuilder {
        PostgresBuilder {
            url: url.to_owned(),
            table: "kv".to_owned(),
            connect_timeout: None,
            reconnect_timeout: DEFAULT_RECONNECT_TIMEOUT,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            layout: "",
            reconcile_every: None,
            instance: None,
            lock_class: connect::DEFAULT_LOCK_CLASS,
        }
    }

    /// The table this backend stores its map in.
    ///
    /// ```no_run
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let url = "postgres://postgres@127.0.0.1:5432/test";
    /// let backend = persistent_map::postgres::PostgresBackend::with_table(url, "t").await?;
    /// assert_eq!(backend.table(), "t");
    /// # Ok(()) }));
    /// ```
    pub fn table(&self) -> &str {
        &self.shared.attached.target.table
    }

    /// The server as `host:port` (comma-separated if the URL names several), as errors name it.
    ///
    /// ```no_run
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let url = "postgres://postgres@127.0.0.1/test";
    /// let backend = persistent_map::postgres::PostgresBackend::connect(url).await?;
    /// assert_eq!(backend.host(), "127.0.0.1:5432");
    /// # Ok(()) }));
    /// ```
    pub fn host(&self) -> &str {
        &self.shared.attached.target.host
    }

    /// What this backend has done so far.
    ///
    /// `writes / commits` is how many acknowledged writes one transaction served on average:
    /// above 1 when concurrent writers share commits. `reconnects` counts connections lost and
    /// re-established. `rows_read` counts the rows read by loads and by the re-reads of keys
    /// that others changed.
    ///
    /// ```no_run
    /// use persistent_map::{postgres::PostgresBackend, PersistentMap};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let url = "postgres://postgres@127.0.0.1:5432/test";
    /// let map: PersistentMap<String, u32, PostgresBackend> = PersistentMap::open_postgres(url).await?;
    /// map.insert("a".to_string(), 1).await?;
    /// let stats = map.backend().stats();
    /// assert_eq!((stats.commits, stats.writes), (1, 1));
    /// # Ok(()) }));
    /// ```
    pub fn stats(&self) -> PostgresStats {
        let counters = &self.shared.attached.counters;
        PostgresStats {
            commits: counters.commits.load(Ordering::Relaxed),
            writes: counters.writes.load(Ordering::Relaxed),
            conflicts: counters.conflicts.load(Ordering::Relaxed),
            reconnects: counters.reconnects.load(Ordering::Relaxed),
            rows_read: counters.rows_read.load(Ordering::Relaxed),
        }
    }

    /// What work sent now would meet: for health checks and alerts (see [`Health`]). While the
    /// connection is stalled or reconnecting, work waits; once it is down (the server stopped
    /// answering for the operation timeout, or the connection has been gone for the reconnect
    /// timeout), new work fails at once with [`PersistentError::Connect`] and is never done
    /// later, while the backend keeps trying to reconnect in the background. Every change of
    /// health is logged once per connection (see "Logging" in the [module docs](self)).
    ///
    /// ```no_run
    /// use persistent_map::postgres::{Health, PostgresBackend};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let backend = PostgresBackend::connect("postgres://postgres@127.0.0.1:5432/test").await?;
    /// match backend.health() {
    ///     Health::Connected => {}
    ///     Health::Stalled { since, reason, .. } => eprintln!("stalled for {since:?}: {reason}"),
    ///     Health::Reconnecting { since, reason, .. } => eprintln!("reconnecting for {since:?}: {reason}"),
    ///     Health::Down { since, reason, .. } => eprintln!("down for {since:?}: {reason}"),
    ///     _ => {}
    /// }
    /// # Ok(()) }));
    /// ```
    pub fn health(&self) -> Health {
        self.shared.session.link.health()
    }

    /// Commits `write`, to this backend's table alone.
    async fn write(&self, write: Write) -> Result<Outcome> {
        let (done, committed) = oneshot::channel();
        self.send(Command::Write {
            parts: vec![(self.table_ref(), write)],
            done,
        })?;
        committed.await.map_err(|_| self.stopped())?
    }

    /// Commits one map's `write` (by the map with id `origin`) alone, as the backend's own
    /// methods do; what storage did with it.
    async fn commit_write<K, V>(
        &self,
        write: crate::map::Write<K, V>,
        origin: u64,
    ) -> Result<Answer>
    where
        K: ToString + Sync,
        V: Serialize + DeserializeOwned + Sync,
    {
        let write = transaction::write_part(self.table(), &write, origin)?;
        let answers = transaction::answers(self.write(write).await?);
        Ok(answers
            .into_iter()
            .next()
            .expect("the session answers each part of a write"))
    }

    /// Asks the session something and waits for the answer.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
    ) -> Result<T> {
        let (done, answered) = oneshot::channel();
        self.send(command(done))?;
        answered.await.map_err(|_| self.stopped())?
    }

    /// Tenths of a second since the backend was made, as positions record them (good for
    /// 13 years).
    fn clock(&self) -> u32 {
        let tenths = self.shared.created.elapsed().as_millis() / 100;
        u32::try_from(tenths).unwrap_or(u32::MAX)
    }

    /// The changes `logged` (read from the log, or heard) as a map takes them, with `next`, the
    /// position they bring it to.
    fn decode_logged<K, V>(
        &self,
        logged: Logged,
        next: Position,
    ) -> Result<(ExternalChanges<K, V>, Option<ChangePosition>)>
    where
        K: MapKey + ToString + FromStr,
        <K as FromStr>::Err: std::error::Error + Send + Sync + 'static,
        V: MapValue,
    {
        let logged = match logged {
            Logged::Unknown => return Ok((ExternalChanges::Unknown, None)),
            Logged::Entries(logged) if logged.is_empty() => {
                return Ok((ExternalChanges::None, Some(next.to_change_position())))
            }
            Logged::Entries(logged) => logged,
        };
        let mut entries = Vec::with_capacity(logged.len());
        for (text, row) in logged {
            // A key this type cannot parse was not written by a map of this type: reload,
            // which reports the row that does not parse.
            let Ok(key) = decode::decode_key(self.table(), &text) else {
                return Ok((ExternalChanges::Unknown, None));
            };
            let stored = match row {
                Some(row) => {
                    let (_, value, deadline) = decode::decode_row::<K, V>(self.table(), row)?;
                    Some((value, deadline))
                }
                None => None,
            };
            entries.push((key, stored));
        }
        Ok((
            ExternalChanges::Entries(entries),
            Some(next.to_change_position()),
        ))
    }

    /// Whether a map whose last full load is recorded in `position` is due for a reconcile.
    fn reconcile_due(&self, position: Position) -> bool {
        self.shared.reconcile_every.is_some_and(|every| {
            let every = u32::try_from((every.as_millis() / 100).max(1)).unwrap_or(u32::MAX);
            self.clock().saturating_sub(position.reloaded_at) >= every
        })
    }

    /// Sends `command` to the session, unless the connection is down: then the work fails at
    /// once (and is never done later).
    fn send(&self, command: Command) -> Result<()> {
        (self.shared.session).send(&self.shared.attached.target, command, || self.stopped())
    }

    /// This backend, as the session's commands name it.
    fn table_ref(&self) -> Arc<Attached> {
        Arc::clone(&self.shared.attached)
    }

    /// The session task is gone, which only a panic in it can cause.
    fn stopped(&self) -> PersistentError {
        let target = &self.shared.attached.target;
        PersistentError::Backend(
            format!(
                "the PostgreSQL session for table {:?} at {} has stopped; the work was not done",
                target.table, target.host
            )
            .into(),
        )
    }

    async fn load_rows<K, V>(
        &self,
        sink: &mut (dyn FnMut(K, V, Option<Deadline>) + Send),
    ) -> Result<()>
    where
        K: FromStr + ToString,
        <K as FromStr>::Err: std::error::Error + Send + Sync + 'static,
        V: DeserializeOwned,
    {
        // Two chunks in flight: the session reads the next while this task decodes one.
        let (rows, mut scanned) = mpsc::channel(2);
        self.send(Command::Load {
            table: self.table_ref(),
            rows,
        })?;
        let table = self.table();
        while let Some(message) = scanned.recv().await {
            match message {
                Scanned::Rows(chunk) => {
                    for row in chunk {
                        let (key, value, deadline) = decode::decode_row(table, row)?;
                        sink(key, value, deadline);
                    }
                }
                Scanned::Failed(error) => return Err(error),
                Scanned::Finished => return Ok(()),
            }
        }
        Err(self.stopped())
    }
}

impl fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("host", &self.host())
            .field("table", &self.table())
            .finish_non_exhaustive()
    }
}

/// Counts from a backend, returned by [`PostgresBackend::stats`].
///
/// ```
/// let stats = persistent_map::postgres::PostgresStats::default();
/// assert_eq!(stats.commits, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PostgresStats {
    /// Transactions committed that carried at least one of this backend's acknowledged writes
    /// (a transaction of the shared connection may carry other backends' too).
    pub commits: u64,
    /// Write requests (a single insert or remove, one batch, one attempt of a
    /// read-modify-write whose condition held) committed and acknowledged.
    pub writes: u64,
    /// Attempts of read-modify-writes (and conditional writes) that wrote nothing because their
    /// condition no longer held when checked under the key's lock: `update` then runs its
    /// closure again. `conflicts / writes` is how often a write was computed from a stale value.
    pub conflicts: u64,
    /// Connections lost and re-established.
    pub reconnects: u64,
    /// Rows read to load the table or to re-read the keys others changed: what catching up
    /// has cost.
    pub rows_read: u64,
}

/// The state of a backend's connection, returned by [`PostgresBackend::health`].
///
/// ```
/// use persistent_map::postgres::Health;
/// use std::time::Duration;
///
/// let health = Health::Reconnecting { since: Duration::from_millis(40), reason: "closed".into() };
/// assert!(!health.is_connected());
/// assert!(!health.is_down());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// The connection is up and listening for the other instances' announcements, and the
    /// work in flight (if any) has been sent less than half the operation timeout ago.
    Connected,
    /// The connection is up, but the work in flight has had no answer for `since`, at least
    /// half the operation timeout: new work waits behind it. If no answer comes within the
    /// operation timeout, that work fails and the backend is [down](Health::Down).
    Stalled {
        /// How long the work in flight has waited for an answer.
        since: Duration,
        /// What is waiting.
        reason: String,
    },
    /// The connection was lost `since` ago, less than the reconnect timeout: the backend is
    /// reconnecting, and work waits for it, until the reconnect timeout after the loss.
    Reconnecting {
        /// How long the connection has been gone.
        since: Duration,
        /// Why it was lost, or why the last attempt to reconnect failed.
        reason: String,
    },
    /// The connection has been gone for longer than the reconnect timeout, or the server
    /// stopped answering (work got no answer within the operation timeout): new work fails at
    /// once with [`PersistentError::Connect`] until a reconnect attempt (made in the
    /// background, with pauses of up to a second) succeeds.
    Down {
        /// How long the connection has been gone.
        since: Duration,
        /// Why it was lost, or why the last attempt to reconnect failed.
        reason: String,
    },
}

impl Health {
    /// Whether the connection is up and answering ([`Health::Connected`]).
    ///
    /// ```
    /// use persistent_map::postgres::Health;
    /// use std::time::Duration;
    ///
    /// assert!(Health::Connected.is_connected());
    /// let stalled = Health::Stalled { since: Duration::from_secs(6), reason: "no answer".into() };
    /// assert!(!stalled.is_connected() && !stalled.is_down());
    /// ```
    pub fn is_connected(&self) -> bool {
        matches!(self, Health::Connected)
    }

    /// Whether the backend is down: new work fails at once.
    ///
    /// ```
    /// use persistent_map::postgres::Health;
    /// let down = Health::Down { since: std::time::Duration::from_secs(30), reason: "refused".into() };
    /// assert!(down.is_down());
    /// ```
    pub fn is_down(&self) -> bool {
        matches!(self, Health::Down { .. })
    }
}

/// Options for a [`PostgresBackend`]; made by [`PostgresBackend::builder`].
#[derive(Clone)]
#[must_use = "a builder does nothing until `.connect().await`"]
pub struct PostgresBuilder {
    url: String,
    table: String,
    connect_timeout: Option<Duration>,
    reconnect_timeout: Duration,
    operation_timeout: Duration,
    layout: &'static str,
    reconcile_every: Option<Duration>,
    instance: Option<String>,
    lock_class: i32,
}

impl fmt::Debug for PostgresBuilder {
    /// Leaves the URL out: it may hold a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBuilder")
            .field("table", &self.table)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_timeout", &self.reconnect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("layout", &self.layout)
            .field("reconcile_every", &self.reconcile_every)
            .field("instance", &self.instance)
            .field("lock_class", &self.lock_class)
            .finish_non_exhaustive()
    }
}

impl PostgresBuilder {
    /// The table to store the map in (default `kv`).
    ///
    /// ```no_run
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let backend = persistent_map::postgres::PostgresBackend::builder("postgres://postgres@127.0.0.1/test")
    ///     .table("orders")
    ///     .connect()
    ///     .await?;
    /// assert_eq!(backend.table(), "orders");
    /// # Ok(()) }));
    /// ```
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Stores keys of type `K`: the table [`K::TABLE_NAME`](PersistentKey::TABLE_NAME), and
    /// `K`'s [key layout](PersistentKey::KEY_LAYOUT) recorded in `persistent_map_tables` by the
    /// first open and checked by every later one. A key type laid out differently from the one
    /// that wrote the table (its fields swapped, say) is refused with
    /// [`PersistentError::IncompatibleKeyLayout`] instead of misreading every key.
    ///
    /// ```no_run
    /// use persistent_map::{postgres::PostgresBackend, PersistentKey};
    ///
    /// #[derive(PersistentKey, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
    /// #[persistent_key(table = "deployments")]
    /// struct Deployment { name: String, env: String }
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let backend = PostgresBackend::builder("postgres://postgres@127.0.0.1/test")
    ///     .key::<Deployment>()
    ///     .connect()
    ///     .await?;
    /// assert_eq!(backend.table(), "deployments");
    /// # Ok(()) }));
    /// ```
    pub fn key<K: PersistentKey>(mut self) -> Self {
        self.table = K::TABLE_NAME.to_owned();
        self.layout = K::KEY_LAYOUT;
        self
    }

    /// Makes every refresh that comes at least `interval` after the map last loaded everything
    /// reload everything (to a tenth of a second; off by default).
    ///
    /// Writes of this crate are always caught up with from the change log, at a cost of what
    /// they changed. This picks up what nobody logged: rows that other programs change without
    /// `NOTIFY` (a hand `UPDATE`). With [`refresh_every`](crate::PersistentMap::refresh_every)
    /// ticking every `t`, such an edit shows within `interval + t`. Each reconcile reads the
    /// whole table, so choose `interval` by the table's size.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let backend = persistent_map::postgres::PostgresBackend::builder("postgres://postgres@127.0.0.1/test")
    ///     .reconcile_every(Duration::from_secs(300))
    ///     .connect()
    ///     .await?;
    /// # let _ = backend;
    /// # Ok(()) }));
    /// ```
    pub fn reconcile_every(mut self, interval: Duration) -> Self {
        self.reconcile_every = Some(interval);
        self
    }

    /// Makes the maps on this backend a separate instance within the process, as if it ran on
    /// another machine: they do not share entries with the maps of other instances on the same
    /// table, and follow them through the change log and refreshes. Without it (the default),
    /// every map of the process on one table shares one set of entries.
    ///
    /// Meant for tests and for simulating a fleet in one process.
    ///
    /// ```no_run
    /// use persistent_map::{postgres::PostgresBackend, PersistentMap};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let url = "postgres://postgres@127.0.0.1/test";
    /// let backend = |name: &str| PostgresBackend::builder(url).table("fleet").instance(name).connect();
    /// let a: PersistentMap<String, u32, _> = PersistentMap::new(backend("a").await?).await?;
    /// let b: PersistentMap<String, u32, _> = PersistentMap::new(backend("b").await?).await?;
    /// a.insert("k".into(), 1).await?;
    /// assert_eq!(b.get("k"), None); // another instance: it hears of it at its refresh
    /// b.refresh().await?;
    /// assert_eq!(b.get("k"), Some(1));
    /// # Ok(()) }));
    /// ```
    pub fn instance(mut self, name: impl Into<String>) -> Self {
        self.instance = Some(name.into());
        self
    }

    /// How long one connection attempt may take, setup included, before it fails with
    /// [`PersistentError::Connect`] (default: the URL's `connect_timeout`, else 5 seconds).
    ///
    /// ```no_run
    /// use persistent_map::{postgres::PostgresBackend, PersistentError};
    /// use std::time::Duration;
    ///
    /// # fn main() {
    /// # let main: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> = Box::pin(async {
    /// let err = PostgresBackend::builder("postgres://postgres@192.0.2.1:5432/test")
    ///     .connect_timeout(Duration::from_millis(500))
    ///     .connect()
    ///     .await
    ///     .unwrap_err();
    /// assert!(matches!(err, PersistentError::Connect { .. }));
    /// assert!(err.to_string().contains("192.0.2.1:5432"));
    /// # });
    /// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(main)
    /// # }
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// How long work waits for a lost connection to come back before it fails with
    /// [`PersistentError::Connect`] (default 10 seconds).
    ///
    /// ```no_run
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let backend = persistent_map::postgres::PostgresBackend::builder("postgres://postgres@127.0.0.1/test")
    ///     .reconnect_timeout(std::time::Duration::from_secs(60))
    ///     .connect()
    ///     .await?;
    /// # let _ = backend;
    /// # Ok(()) }));
    /// ```
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
        self
    }

    /// How long one attempt at a commit or a read may wait for the server's answers before it
    /// fails with [`PersistentError::Connect`] (default 10 seconds). This bounds the wait on a
    /// server that keeps the connection open but stops answering; the connection is then
    /// dropped and re-established in the background.
    ///
    /// It also sets the server-side limits of each session, unless the connection string's
    /// `options` set them (`options=-c idle_in_transaction_session_timeout=0`, say):
    /// `lock_timeout` to a quarter of it (a write that waits that long for a key's lock
    /// fails), `statement_timeout` to 90% of it (so a load of a table that takes longer to
    /// read than that fails: raise this timeout for such tables),
    /// `idle_in_transaction_session_timeout` to half of it (the server ends a session of this
    /// instance that stopped talking in the middle of a transaction, freeing its locks), and
    /// TCP keepalives on both ends (a probe after this long of silence, then every quarter of
    /// it, three unanswered: gone) unless the URL sets `keepalives_idle`; and the client's TCP
    /// user timeout to all of it. Work unanswered for half of it makes
    /// [`health`](PostgresBackend::health) report [`Health::Stalled`].
    ///
    /// A commit that got no answer may have committed or not: the error says which, if it
    /// knows, or that the outcome is unknown. Its server session is then ended from a new
    /// connection (`pg_terminate_backend`), so that its locks are freed at once. See the
    /// [module docs](self#faults).
    ///
    /// ```no_run
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let backend = persistent_map::postgres::PostgresBackend::builder("postgres://postgres@127.0.0.1/test")
    ///     .operation_timeout(std::time::Duration::from_secs(2))
    ///     .connect()
    ///     .await?;
    /// # let _ = backend;
    /// # Ok(()) }));
    /// ```
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The classes of the crate's advisory locks: `first` (taken while a table is created),
    /// `first + 1` (a table's lock) and `first + 2` (a key's lock), the first key of
    /// PostgreSQL's two-key advisory locks (`pg_advisory_xact_lock(class, id)`). The default,
    /// 28781 (0x706d, `"pm"`), takes 28781 to 28783; pick another if the application takes
    /// two-key advisory locks of its own in those classes, which would otherwise wait for the
    /// crate's (and the crate's for them).
    ///
    /// Every instance writing the same tables must use the same classes: instances with
    /// different ones do not see each other's locks, and their read-modify-writes are then not
    /// atomic against each other. Backends with other classes get connections of their own.
    ///
    /// ```no_run
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let backend = persistent_map::postgres::PostgresBackend::builder("postgres://postgres@127.0.0.1/test")
    ///     .advisory_lock_classes(0x4d50) // 19792, 19793, 19794
    ///     .connect()
    ///     .await?;
    /// # let _ = backend;
    /// # Ok(()) }));
    /// ```
    pub fn advisory_lock_classes(mut self, first: i32) -> Self {
        self.lock_class = first;
        self
    }

    /// Drops the table of this builder and forgets it in the crate's own tables (its rows in
    /// `persistent_map_log`, `persistent_map_revisions` and `persistent_map_tables`), in one
    /// transaction that first waits for the table's commits in flight (it takes the table's
    /// advisory lock exclusively), then announces a reload on the table's channel. Returns
    /// whether the table existed. Stop the instances that use the table first: their next
    /// write to it fails. A table created anew under the name starts empty, with no history.
    ///
    /// Uses a connection of its own, with this builder's connection string, timeouts and
    /// [advisory lock classes](Self::advisory_lock_classes).
    ///
    /// ```no_run
    /// use persistent_map::postgres::PostgresBackend;
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let url = "postgres://postgres@127.0.0.1:5432/test";
    /// let existed = PostgresBackend::builder(url).table("old_sessions").drop_table().await?;
    /// println!("dropped: {existed}");
    /// # Ok(()) }));
    /// ```
    pub async fn drop_table(self) -> Result<bool> {
        connect::validate_table(&self.table)?;
        let endpoint = self.endpoint()?;
        admin::drop_table(&endpoint, &self.table).await
    }

    /// How to connect, as this builder says.
    fn endpoint(&self) -> Result<connect::Endpoint> {
        let mut endpoint =
            connect::parse_config(&self.url, self.connect_timeout, self.operation_timeout)?;
        endpoint.lock_classes = connect::LockClasses::starting_at(self.lock_class);
        Ok(endpoint)
    }

    /// Connects (or joins the process's connection to that server, see
    /// [the module docs](self#connections)), creates the table if it is missing (and the
    /// crate's own tables: the change log, the key layouts), records or checks the key layout,
    /// and starts listening for the other instances' changes.
    ///
    /// Fails, writing nothing, if the table name is invalid, the connection string cannot be
    /// used ([`PersistentError::Config`]), the server cannot be reached within the connect
    /// timeout or its certificate fails a check that `sslmode` asks for
    /// ([`PersistentError::Connect`], naming the host and the check), or the table exists
    /// without the `key` and `value` columns ([`PersistentError::IncompatibleTable`]) or was
    /// written with another key layout ([`PersistentError::IncompatibleKeyLayout`]).
    ///
    /// ```no_run
    /// use persistent_map::{postgres::PostgresBackend, PersistentError};
    ///
    /// # fn main() {
    /// # let main: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> = Box::pin(async {
    /// let err = PostgresBackend::builder("postgres://postgres@127.0.0.1:1/test")
    ///     .connect()
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    /// # });
    /// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(main)
    /// # }
    /// ```
    pub async fn connect(self) -> Result<PostgresBackend> {
        connect::validate_table(&self.table)?;
        let endpoint = self.endpoint()?;
        let database = endpoint
            .config
            .get_dbname()
            .or(endpoint.config.get_user())
            .unwrap_or_default();
        let database = format!("postgres://{}/{database}", endpoint.host);
        let mut storage_id = format!("{database}/{}", self.table);
        if let Some(instance) = &self.instance {
            storage_id = format!("{storage_id}#{instance}");
        }
        let target = Arc::new(Target {
            host: endpoint.host.clone(),
            table: self.table.clone(),
        });
        let timeouts = Timeouts {
            reconnect: self.reconnect_timeout,
            operation: self.operation_timeout,
        };
        let session = registry::session(&self.url, timeouts, endpoint, &target).await?;
        let attached = Arc::new(Attached {
            sql: Arc::new(TableSql::new(&self.table, self.layout)),
            target,
            changes: Arc::new(Changes::default()),
            counters: Arc::new(Counters::default()),
        });
        let (done, attaching) = oneshot::channel();
        let table = Arc::clone(&attached);
        let stopped = || PersistentError::Backend("the PostgreSQL session has stopped".into());
        session.send(&attached.target, Command::Attach { table, done }, stopped)?;
        attaching.await.map_err(|_| stopped())??;
        Ok(PostgresBackend {
            shared: Arc::new(Shared {
                session,
                attached,
                database,
                storage_id,
                created: Instant::now(),
                reconcile_every: self.reconcile_every,
            }),
        })
    }
}

#[async_trait::async_trait]
impl<K, V> StorageBackend<K, V> for PostgresBackend
where
    K: MapKey + ToString + FromStr,
    <K as FromStr>::Err: std::error::Error + Send + Sync + 'static,
    V: MapValue,
{
    async fn load_all(&self) -> Result<HashMap<K, V>, PersistentError> {
        let mut entries = HashMap::new();
        self.load_each(&mut |key, value| {
            entries.insert(key, value);
        })
        .await?;
        Ok(entries)
    }

    /// Returns once the row is committed.
    async fn save(&self, key: K, value: V) -> Result<(), PersistentError> {
        let save = Op::Save {
            key,
            value,
            deadline: None,
        };
        self.commit_write(crate::map::Write::new(Vec::new(), vec![save]), 0)
            .await
            .map(drop)
    }

    /// Returns once the delete is committed.
    async fn delete(&self, key: &K) -> Result<(), PersistentError> {
        let delete = Op::Delete(key.clone());
        self.commit_write(crate::map::Write::<K, V>::new(Vec::new(), vec![delete]), 0)
            .await
            .map(drop)
    }

    /// Returns once every write sent before it is committed.
    async fn flush(&self) -> Result<(), PersistentError> {
        let (done, flushed) = oneshot::channel();
        self.send(Command::Flush { done })?;
        flushed.await.map_err(|_| self.stopped())
    }

    /// Commits all of `ops` in one transaction: all or nothing.
    async fn apply_batch(&self, ops: &[BatchOp<K, V>]) -> Result<(), PersistentError> {
        if ops.is_empty() {
            return Ok(());
        }
        let write = crate::map::Write::from_batch(&[], ops, WriteOptions::new());
        self.commit_write(write, 0).await.map(drop)
    }

    /// Streams the live rows from the server in chunks, decoding one while the next arrives.
    async fn load_each(&self, sink: &mut (dyn FnMut(K, V) + Send)) -> Result<(), PersistentError> {
        self.load_rows(&mut |key, value, _| sink(key, value)).await
    }

    /// One `DELETE` in one transaction, logged as "anything changed".
    async fn clear(&self) -> Result<(), PersistentError> {
        let clear = crate::map::Write::<K, V>::new(Vec::new(), vec![Op::Clear]);
        self.commit_write(clear, 0).await.map(drop)
    }

    async fn load_keys(&self, keys: &[K]) -> Result<HashMap<K, V>, PersistentError> {
        Ok(self
            .load_keys_expiring(keys)
            .await?
            .into_iter()
            .map(|(key, (value, _))| (key, value))
            .collect())
    }

    /// Checks the conditions and applies the writes in one transaction that holds the advisory
    /// locks of every key involved (the locks every writer of this crate takes, in every
    /// instance), reading the stored values under those locks: atomic against every instance.
    /// A write shares its transaction with others (group commit); each is decided in order,
    /// seeing the ones before it, and one whose conditions fail writes nothing.
    async fn apply_checked(
        &self,
        conditions: &[Condition<K>],
        ops: &[BatchOp<K, V>],
        options: WriteOptions,
    ) -> Result<Checked<V>, PersistentError> {
        let write = crate::map::Write::from_batch(conditions, ops, options);
        let answer = self.commit_write(write, options.origin_id()).await?;
        answer.into_checked(self.table(), conditions)
    }

    fn __transaction_target(&self) -> Option<crate::__private::TransactionTarget<K, V>> {
        Some(self.target())
    }

    /// Writes go to the session's queue as their futures are first polled, and it commits
    /// them in queue order: a group's requests are decided in order, each seeing those before
    /// it, and a request left to wait for a row locked elsewhere holds back the later ones of
    /// its keys. So the next update of a hot key is handed over before the previous one
    /// commits, and an instance's concurrent updates of one key share one transaction and one
    /// lock acquisition.
    fn pipelines_writes(&self) -> bool {
        true
    }

    /// The server, the database and the table: maps of one process on the same table share
    /// their entries.
    fn storage_id(&self) -> Option<String> {
        Some(self.shared.storage_id.clone())
    }

    /// The table's revision in the change log.
    async fn change_position(&self) -> Result<Option<ChangePosition>, PersistentError> {
        let epoch = self.shared.attached.changes.epoch();
        let rev = self
            .ask(|done| Command::Revision {
                table: self.table_ref(),
                done,
            })
            .await?;
        let position = Position {
            rev,
            epoch,
            reloaded_at: self.clock(),
        };
        Ok(Some(position.to_change_position()))
    }

    /// The keys that other maps logged after `since`, with what the table holds under them,
    /// read in one statement (see the [module docs](self#coherence-across-instances)).
    /// [`ExternalChanges::Unknown`] when the log cannot say: `since` older than the pruned
    /// log, a clear or a commit of very many keys, an announcement of an unlogged change, a
    /// commit whose outcome is unknown, or a reconcile that is due. While the backend
    /// [reconnects](Health::Reconnecting), [`ExternalChanges::None`] with `since` unchanged
    /// (the log is read once it is back); once it is [down](Health::Down),
    /// [`PersistentError::Connect`].
    async fn changes_since(
        &self,
        since: Option<ChangePosition>,
        origin: u64,
    ) -> Result<(ExternalChanges<K, V>, Option<ChangePosition>), PersistentError> {
        let Some(since) = since else {
            return Ok((ExternalChanges::Unknown, None));
        };
        match self.health() {
            Health::Reconnecting { .. } => return Ok((ExternalChanges::None, Some(since))),
            Health::Down { since, reason } => {
                return Err(self.shared.attached.target.connect_error(format!(
                    "the connection was lost {since:?} ago ({reason}) and is not back; still \
                     reconnecting, the map will catch up from the change log then"
                )))
            }
            Health::Connected | Health::Stalled { .. } => {}
        }
        let position = Position::from_change_position(since);
        let epoch = self.shared.attached.changes.epoch();
        if position.epoch != epoch || self.reconcile_due(position) {
            return Ok((ExternalChanges::Unknown, None));
        }
        let read: LogRead = self
            .ask(|done| Command::ReadLog {
                table: self.table_ref(),
                since: position.rev,
                origin: origin as i64,
                done,
            })
            .await?;
        let next = Position {
            rev: read.rev,
            ..position
        };
        self.decode_logged(read.since(position.rev), next)
    }

    /// What the announcements heard since `since` carried, when they cover every revision after
    /// it (see `notify.rs`), decoded as [`changes_since`](Self::changes_since) would have read
    /// them from the log; `None` otherwise, or while the connection is not up.
    fn changes_heard(
        &self,
        since: Option<ChangePosition>,
        origin: u64,
    ) -> Option<(ExternalChanges<K, V>, Option<ChangePosition>)> {
        if !matches!(self.health(), Health::Connected | Health::Stalled { .. }) {
            return None;
        }
        let position = Position::from_change_position(since?);
        let epoch = self.shared.attached.changes.epoch();
        if position.epoch != epoch || self.reconcile_due(position) {
            return None;
        }
        let changes = &self.shared.attached.changes;
        let (rev, logged) =
            changes.announced_since(position.rev, origin as i64, expiry::now_sql())?;
        let next = Position { rev, ..position };
        self.decode_logged(logged, next).ok()
    }

    /// Resolves when another instance's announcement arrives, or the connection is lost or
    /// re-established.
    async fn external_change_signal(&self) {
        self.shared.attached.changes.signalled().await;
    }

    /// Deadlines live in the column `expires_at` (Unix milliseconds, `NULL`: never), which a
    /// table gains with its first write that has a time to live (see the
    /// [module docs](self#expiry)).
    fn supports_expiry(&self) -> bool {
        true
    }

    /// Rows whose deadline has passed on this instance's clock are not loaded.
    async fn load_each_expiring(
        &self,
        sink: &mut (dyn FnMut(K, V, Option<Deadline>) + Send),
    ) -> Result<(), PersistentError> {
        self.load_rows(sink).await
    }

    async fn load_keys_expiring(
        &self,
        keys: &[K],
    ) -> Result<HashMap<K, (V, Option<Deadline>)>, PersistentError> {
        let texts = keys.iter().map(ToString::to_string).collect();
        let rows = self
            .ask(|done| Command::LoadKeys {
                table: self.table_ref(),
                keys: texts,
                done,
            })
            .await?;
        rows.into_iter()
            .map(|row| {
                let (key, value, deadline) = decode::decode_row(self.table(), row)?;
                Ok((key, (value, deadline)))
            })
            .collect()
    }

    /// Finds up to `limit` (at most 256, so that the commit locks keys, not the table) expired
    /// rows by the partial index on `expires_at`, then deletes those still expired under their
    /// keys' advisory locks in one commit, shared with other writes, which logs and announces
    /// them as it does any delete: the other instances drop the keys at their next refresh.
    async fn sweep_expired(&self, limit: usize, origin: u64) -> Result<Vec<K>, PersistentError> {
        let limit = limit.min(commit::MAX_KEY_LOCKS);
        let candidates = self
            .ask(|done| Command::ExpiredKeys {
                table: self.table_ref(),
                limit: i64::try_from(limit).unwrap_or(i64::MAX),
                done,
            })
            .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let write = Write {
            ops: candidates
                .iter()
                .map(|key| RawOp::Sweep { key: key.clone() })
                .collect(),
            // Each sweep op's previous value says whether it deleted a row.
            want_previous: true,
            // The map's id, as the log stores it: the same 64 bits.
            origin: origin as i64,
            ..Write::default()
        };
        let previous = match self.write(write).await? {
            Outcome::Applied { previous } => previous.into_iter().next().flatten(),
            Outcome::Conflict { .. } => unreachable!("a sweep has no conditions"),
        };
        let previous = previous.unwrap_or_default();
        candidates
            .iter()
            .zip(previous)
            .filter(|(_, swept)| swept.is_some())
            .map(|(key, _)| decode::decode_key(self.table(), key))
            .collect()
    }
}

/// `op` as the session executes it.
fn encode<K: ToString, V: Serialize>(table: &str, op: &Op<K, V>) -> Result<RawOp> {
    Ok(match op {
        Op::Save {
            key,
            value,
            deadline,
        } => {
            let key = key.to_string();
            let value = crate::backends::encode::encode_stored_value(table, &key, value)?;
            RawOp::Upsert {
                key,
                value,
                expires_at: expiry::deadline_to_sql(*deadline),
            }
        }
        Op::Delete(key) => RawOp::Delete {
            key: key.to_string(),
        },
        Op::Clear => RawOp::DeleteAll,
    })
}
