//! Expiry: entries with a time to live, for sessions, caches and leases.
//!
//! A write can give its value a deadline, and a handle can give one to every value it writes:
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! # use persistent_map::{sqlite::SqliteBackend, PersistentMap};
//! # persistent_map::__private::run_example(Box::pin(async {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//!
//! // A cache whose entries live ten minutes after their last write.
//! let cache: PersistentMap<u64, String, SqliteBackend> = PersistentMap::open(&path).await?;
//! let cache = cache.with_default_ttl(Duration::from_secs(600))?;
//! cache.insert(404, "<html>Not found</html>".into()).await?;
//!
//! let sessions: PersistentMap<u64, String, SqliteBackend> = PersistentMap::open(&path).await?;
//! let half_hour = Duration::from_secs(1800);
//! sessions.insert_with_ttl(7, "token".into(), half_hour).await?; // relative
//! sessions.insert_until(8, "lease".into(), SystemTime::now() + half_hour).await?; // absolute
//! assert!(sessions.expire(&7, Duration::from_secs(60)).await?); // set the TTL of a stored key
//! assert!(sessions.persist(&8).await?); // clear it
//! let left: Option<Duration> = sessions.ttl(&7); // time left, from memory
//! assert!(left.is_some_and(|left| left <= Duration::from_secs(60)));
//! assert_eq!(sessions.ttl(&8), None);
//! # Ok(()) }));
//! ```
//!
//! # Exact
//!
//! From the millisecond its deadline passes, an entry is absent to every read:
//! [`get`](crate::PersistentMap::get), `get_with`, `contains_key`, `len`, `iter`, `keys`,
//! `values`, `snapshot`, and to the read-modify-writes (`update` sees `None`,
//! `get_or_insert_with` inserts, a `compare_exchange` expecting `None` succeeds, a transaction
//! reads `None`), whose conditions are checked in storage, which also treats the expired row as
//! absent. No sweep has to run first.
//!
//! # The clock
//!
//! A deadline is absolute: milliseconds since the Unix epoch on the wall clock (`SystemTime`)
//! of the process that wrote it, stored with the row. Every process (on PostgreSQL, every
//! instance) compares it with its own wall clock, in memory and in the queries it sends, so
//! processes agree on expiry up to their clock skew: one whose clock runs ahead sees entries
//! expire early by as much, one behind sees them late, and a sweep deletes what the sweeping
//! process's clock says has expired. Keep hosts on NTP. A relative TTL is turned into a
//! deadline when the write is made, rounded up to the millisecond, so an entry lives at least
//! its TTL.
//!
//! # Writes replace the TTL
//!
//! As Redis's `SET` does: every write that stores a value (`insert`, `insert_many`, `update`,
//! `get_or_insert_with`, `compare_exchange`, a transaction's writes) gives it the handle's
//! default TTL ([`with_default_ttl`](crate::PersistentMap::with_default_ttl)), or none, so an
//! `insert` on a handle without a default stores an entry that never expires.
//! [`expire`](crate::PersistentMap::expire), [`expire_at`](crate::PersistentMap::expire_at) and
//! [`persist`](crate::PersistentMap::persist) change only the deadline, on the condition that the
//! value is still the one read; subscribers hear
//! [`Change::DeadlineChanged`](crate::Change::DeadlineChanged).
//!
//! # Storage
//!
//! SQLite keeps the deadline in a nullable column `expires_at INTEGER` (`NULL`: never), which
//! the table gains in place (`ALTER TABLE ... ADD COLUMN`, plus a partial index
//! `persistent_map_expiry_<table>` over the rows that have a deadline) in the transaction of
//! its first write with a TTL. A table that never uses one keeps exactly the two columns of
//! persistent-map 0.1.3; one that does still has `key` and `value`, so `sqlite3` and 0.1.3
//! (which selects those two) read it, though 0.1.3 does not know that a row has expired. An
//! expired row is not loaded when a map opens.
//!
//! PostgreSQL does the same with a nullable `expires_at BIGINT` and a partial index, added in
//! place (`ADD COLUMN IF NOT EXISTS`) by a table's first write with a TTL under the table's
//! advisory lock, so that instances adding it at once take turns; `psql` reads the table as
//! before. Each instance checks a table's columns under its locks in every commit and read, so
//! one that opened the table before another gave it the column still treats expired rows as
//! absent. For a large table, add the column and index beforehand (the `postgres` module's
//! docs show the SQL).
//!
//! # The sweep
//!
//! Once a map holds an entry with a deadline, a background sweep deletes expired rows from
//! storage every second, at most 1,000 per request, and drops them from memory (off tokio's
//! workers), telling subscribers [`Change::Expired`](crate::Change::Expired). The sweeps of
//! every map run on one thread of their own (`persistent-map-expiry`), so a sweep outlives the
//! runtime of whichever handle started it (a blocking map's, a test's); dropping the map stops
//! its sweep. A backend that stores deadlines is swept once soon after a map opens on it, so
//! expired rows left by an earlier run go without a call. One sweep of a map runs at a time;
//! [`sweep_expired`](crate::PersistentMap::sweep_expired) sweeps at once. Every minute the
//! sweep also drops from memory the expired entries that another process swept from storage.
//!
//! On SQLite a sweep request waits on the file's writer thread for the next commit of live
//! writes and rides on it: after the writes, under a savepoint (a sweep that fails is undone
//! alone; the writes still commit), it deletes for at most about 150 µs of that commit, 64 rows
//! at least. Only when no write is coming does it take a transaction of its own, sized to about
//! 2 ms, not synced (the next synced commit syncs it; a sweep lost to a power cut only brings
//! back rows that are expired anyway), and cut short when work arrives. In the bench's 1M mass
//! expiry on an idle machine, 16 tasks writing throughout, the median write took 1.18-1.19 ms
//! during the sweep against 0.60-0.65 ms before it (about two commits), the 99th percentile
//! 4.2-4.9 ms against plain writes' own 2.4 ms (SQLite's checkpoints give plain writes a tail
//! too), and the slowest write 15-23 ms against plain writes' slowest of 7-15 ms. The price is a
//! slower sweep while writes keep coming: 20-22 s for 1M rows. Other processes learn of the
//! deletes from the change log when they refresh.
//!
//! On PostgreSQL a sweep finds up to 256 expired rows by the partial index and deletes those
//! still expired under their keys' advisory locks in one commit (shared with other writes, as
//! any write's is), logged and announced like deletes: the other instances drop the keys at
//! their next refresh.
//!
//! # Cost
//!
//! An entry without a deadline holds its value alone: no bytes for expiry where the value type
//! has a spare bit pattern to tell the two kinds apart in (a `String`, a `Vec`, a `bool`, most
//! structs holding one), else a word. An entry with a deadline keeps value and deadline
//! together in one heap allocation. A `get` of an entry without a deadline reads no clock; one
//! with a deadline reads the wall clock once (tens of nanoseconds). `len` and `is_empty` count
//! entries per shard until the map first holds a deadline, and from then on count the live ones
//! (a pass over every entry).
//!
//! # Backends
//!
//! SQLite, PostgreSQL and the in-memory backend store deadlines. The CSV backend does not yet:
//! a write with a TTL there fails with
//! [`PersistentError::ExpiryUnsupported`](crate::PersistentError::ExpiryUnsupported) and writes
//! nothing. A custom backend opts in with
//! [`StorageBackend::supports_expiry`](crate::StorageBackend::supports_expiry) and the expiry
//! methods beside it; one that does not is refused the same way.
