//! Backends and durability: where the data lives, what an acknowledged write survives, and how
//! the SQLite backend writes.
//!
//! # Backends
//!
//! A write is acknowledged (its `insert`, `remove`, ... returns `Ok`) only once the backend has
//! it, as durably as this table says:
//!
//! | backend | where the data lives | an acknowledged write survives |
//! | --- | --- | --- |
//! | [`SqliteBackend`](crate::sqlite::SqliteBackend) with [`Durability::Full`] (the default) | a table of a SQLite file, in WAL mode with `synchronous=FULL` | the process crashing or being killed, and a power cut or OS crash: every commit is fsynced first |
//! | [`SqliteBackend`](crate::sqlite::SqliteBackend) with [`Durability::Normal`] | the same, with `synchronous=NORMAL` | the process crashing or being killed; a power cut or OS crash may lose the last commits, never corrupting the file. Much faster: no fsync per commit |
//! | `postgres::PostgresBackend` (feature `postgres`) | a table of a PostgreSQL database, shared by every instance | whatever PostgreSQL promises for a committed transaction (with its default `synchronous_commit=on`: a crash of the server too); see [`postgresql`](super::postgresql) |
//! | `csv::CsvBackend` (feature `csv_backend`) | one CSV file in persistent-map 0.1.3's format, replaced whole on every write (temporary file, fsync, rename, fsync of the directory): for small maps | the process crashing or being killed, and a power cut or OS crash: the old file or the new one, whole |
//! | [`InMemoryBackend`](crate::in_memory::InMemoryBackend) | a copy in process memory, shared by its clones | nothing survives the process: for tests |
//! | your own [`StorageBackend`](crate::StorageBackend) | wherever it writes | whatever its `save` ensures before it returns `Ok` (the repository's `examples/custom_backend.rs` writes a JSON file atomically) |
//!
//! # Durability levels
//!
//! Both SQLite levels use SQLite's write-ahead log. The level is chosen per backend; backends
//! sharing a file may differ, and a commit that serves several of them uses the strongest
//! level any of its writes asked for. Choose it with [`SqliteOptions`](crate::SqliteOptions) (or
//! [`SqliteBackend::builder`](crate::sqlite::SqliteBackend::builder)); an option left unset keeps
//! the backend's default (the key type's table, [`Durability::Full`], a 5 second busy timeout):
//!
//! ```
//! use persistent_map::sqlite::{Durability, SqliteBackend};
//! use persistent_map::{PersistentMap, SqliteOptions};
//!
//! # persistent_map::__private::run_example(Box::pin(async {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//! // A cache that may lose its last writes to a power cut, in return for no fsync per commit.
//! let options = SqliteOptions::new().table("cache").durability(Durability::Normal);
//! let cache: PersistentMap<u64, String, SqliteBackend> =
//!     PersistentMap::open_with(&path, options).await?;
//! cache.insert(404, "<html>Not found</html>".into()).await?;
//! assert_eq!(cache.backend().durability(), Durability::Normal);
//! # Ok(()) }));
//! ```
//!
//! [`PostgresOptions`](../../struct.PostgresOptions.html) (feature `postgres`) does the same
//! from a URL.
//!
//! # How the SQLite backend writes
//!
//! - **Off tokio's workers.** In each process, writes (and short reads) go to one thread per
//!   database file, which owns the file's connection; a map's load scans on a blocking-pool
//!   thread with a read-only connection of its own, so it never holds up writes. The async
//!   methods only send work and wait.
//! - **Group commit.** The writes that arrive while a commit is syncing are committed together
//!   in the next transaction, so concurrent writers share fsyncs (up to 4,096 requests in one
//!   transaction). The writer also waits briefly (at most 200 µs, without spinning) for the
//!   writers it has just acknowledged, so that 16 tasks writing in turn share every commit; a
//!   lone sequential writer is never made to wait.
//! - **Executing as writes arrive.** While no other process commits to the file, the writer
//!   begins a group's transaction with its first write and executes each write as it arrives,
//!   so that only `COMMIT` is left once the group is complete (this holds the file's write lock
//!   up to 200 µs longer); once another process writes to the file, it gathers each group
//!   first, holding the lock only for the commit.
//! - **One bad write fails alone.** A shared commit that fails is retried without the sweeps
//!   riding on it, then write by write.
//! - [`backend().stats()`](crate::sqlite::SqliteBackend::stats) counts the commits and the
//!   writes they served.
//!
//! # What a SQLite file holds
//!
//! It is an ordinary SQLite database; `sqlite3 app.db 'SELECT * FROM sessions'` shows a map's
//! rows.
//!
//! - **A table per map**, with the columns of persistent-map 0.1.3: `key TEXT PRIMARY KEY` (the
//!   key's text, see [`keys`](super::keys)) and `value TEXT` (the value as JSON). A table that
//!   ever stores an entry with a time to live gains a column `expires_at INTEGER` and a partial
//!   index `persistent_map_expiry_<table>` (see [`expiry`](super::expiry)).
//! - **`persistent_map_tables`**: the key layout of each table written by a derived key type,
//!   checked at every open (see [`keys`](super::keys#layouts)).
//! - **`persistent_map_log`** (with its index `persistent_map_log_by_table`) and
//!   **`persistent_map_log_pruned`**: the change log, which keys each commit wrote, so that
//!   other processes re-read just those keys (see [`coherence`](super::coherence)).
//! - **`app.db-wal` and `app.db-shm`** beside the file: SQLite's write-ahead log, there while a
//!   program has the file open, and sometimes after. They are part of the database: copy or
//!   move the three together, or make a copy with `sqlite3 app.db '.backup copy.db'`.
//!
//! An open reads before it writes. A file that is not a database is refused having only been
//! read; a file that must change (a new file, a 0.1.3 file, a table not yet created) is first
//! checked with `PRAGMA quick_check`, and a damaged one is refused left byte for byte as it
//! was (restore it from a backup, or recover it with the `sqlite3` tool's `.recover`). A file
//! this crate has set up before, and a table it has opened before, open without writing
//! anything.
//!
//! # Your own backend
//!
//! A [`StorageBackend`](crate::StorageBackend) needs `load_all`, `save` and `delete`, as in
//! persistent-map 0.1.3; every other method has a default. The map calls it so that a simple
//! backend is correct: writes of one key never overlap, `Ok` is the caller's acknowledgement,
//! `Err` means nothing was written. Its read-modify-writes are then atomic within one process;
//! to make them atomic for every process on the storage, override
//! [`apply_checked`](crate::StorageBackend::apply_checked) to check and write in one step. The
//! repository's `examples/custom_backend.rs` is a backend written as 0.1.3's docs show.
//!
//! [`Durability::Full`]: crate::sqlite::Durability::Full
//! [`Durability::Normal`]: crate::sqlite::Durability::Normal
