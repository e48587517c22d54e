//! Coming from persistent-map 0.1.3: what is kept, what a first open changes in a 0.1.3 file,
//! what was fixed, and what changed.
//!
//! # Kept
//!
//! Code written for 0.1.3 keeps compiling in the common cases:
//!
//! - `PersistentMap::new(backend).await`, `insert`, `get`, `remove`, `contains_key`, `len`,
//!   `is_empty`, `load`, `flush`, `backend`; [`PersistentError`](crate::PersistentError) (with
//!   `From<std::io::Error>` and `From<serde_json::Error>`) and [`Result`](crate::Result).
//! - The [`StorageBackend`](crate::StorageBackend) trait, method for method: a backend written
//!   for 0.1.3 compiles and works unchanged (the repository's `examples/custom_backend.rs` is
//!   written that way). New methods (`apply_batch`, `apply_checked`, `clear`, ...) have
//!   defaults.
//! - [`SqliteBackend::new(path)`](crate::sqlite::SqliteBackend::new) with its table `kv` and
//!   its columns `key TEXT PRIMARY KEY` and `value TEXT`, and `String` keys in that same table,
//!   so a 0.1.3 database opens with its table and rows as they are.
//!   [`InMemoryBackend::new()`](crate::in_memory::InMemoryBackend::new).
//! - The CSV backend, `persistent_map::csv::CsvBackend::new(path)`, under 0.1.3's feature name
//!   `csv_backend`: it reads 0.1.3's files as they are (no header; the key's text, then the
//!   value's fields) and writes them in the same format, one record per key.
//!
//! # What the first open changes in a 0.1.3 file
//!
//! The map's table and its rows are left as they are, but the file is not: the first open
//! (before anything else, after checking the file with `PRAGMA quick_check`, so a damaged file
//! is refused unchanged) makes these changes, and later opens change nothing:
//!
//! - **The journal mode becomes WAL** (write-ahead logging), which stays with the file. Writes
//!   then go to `app.db-wal` beside the file, with its index `app.db-shm`, while a program has
//!   the file open (SQLite folds the log back into `app.db` and removes it when the last
//!   connection closes cleanly, but not after a crash or a kill). So the newest acknowledged
//!   writes may be in `app.db-wal`: **copying `app.db` alone can miss them.** Copy or move the
//!   three files together, or copy with `sqlite3 app.db '.backup copy.db'`. WAL is what lets
//!   readers and the writer work at once and lets concurrent writers share one fsync (group
//!   commit).
//! - **The crate's own tables are added**: `persistent_map_log` (with its index
//!   `persistent_map_log_by_table`) and `persistent_map_log_pruned`, the change log through
//!   which other processes re-read just the keys a commit wrote
//!   ([`coherence`](super::coherence)), and `persistent_map_tables`, which records the key
//!   layout of each table written by a derived key type ([`keys`](super::keys#layouts); the
//!   `String` keys of `kv` record none).
//! - A table that later stores an entry with a time to live gains a column `expires_at` and an
//!   index ([`expiry`](super::expiry)); one that never does keeps its two columns.
//!
//! 0.1.3 still opens the file afterwards (its SQLite knows WAL), but it does not log its
//! writes: a map of this crate that sees a commit nobody logged reloads the table at its next
//! refresh.
//!
//! ```
//! # use persistent_map::{sqlite::SqliteBackend, PersistentMap};
//! # persistent_map::__private::run_example(Box::pin(async {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//! // A file as 0.1.3 left it: the table `kv`, SQLite's default rollback journal.
//! let old = rusqlite::Connection::open(&path)?;
//! old.execute_batch("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT); \
//!                    INSERT INTO kv VALUES ('visits', '41');")?;
//! drop(old);
//!
//! let map: PersistentMap<String, u32, _> = PersistentMap::new(SqliteBackend::new(&path).await?).await?;
//! assert_eq!(map.get("visits"), Some(41));
//! map.insert("visits".to_string(), 42).await?;
//!
//! let file = rusqlite::Connection::open(&path)?;
//! let mode: String = file.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
//! assert_eq!(mode, "wal");
//! let tables: Vec<String> = file
//!     .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?
//!     .query_map([], |row| row.get(0))?
//!     .collect::<Result<_, _>>()?;
//! assert_eq!(tables, ["kv", "persistent_map_log", "persistent_map_log_pruned", "persistent_map_tables"]);
//! # Ok(()) }));
//! ```
//!
//! # Fixed
//!
//! - 0.1.3's `insert` changed memory first and wrote to SQLite after, so a failed write left
//!   memory holding a value that was never stored, a cancelled `insert` could do the same, and
//!   two concurrent writes of one key could end in memory and on disk in different orders. Now
//!   memory changes only after the backend says `Ok`, writes of one key take turns, and a
//!   started write finishes.
//! - `remove` deleted a key from SQLite only if memory held it; `clear` emptied memory only
//!   (the next load brought everything back); `load` kept keys that had been deleted from
//!   storage. Now all three act on storage and leave memory equal to it.
//! - Loading stopped silently at the first row it could not read, so a map could open with
//!   part of its data, and a key or value that failed to parse did not say which row. Now
//!   either is an error that names the table and the key.
//! - Every map of a file shared one table `kv`, keyed by strings you formatted yourself. Now
//!   each key type has its own table and a derived, documented text form, and maps on one file
//!   can be written concurrently.
//! - Every write was its own transaction on SQLite's defaults; now writes use WAL and share
//!   commits, with the durability you choose ([`durability`](super::durability)).
//! - The CSV backend now replaces the file durably on each write (temporary file, fsync,
//!   rename) instead of appending, and a damaged file is refused with an error naming the path
//!   and the line instead of a panic or a silent skip.
//!
//! # Changed
//!
//! `clear` is now `async` and returns a `Result`; `SqliteBackend::db_path()` is
//! [`path()`](crate::sqlite::SqliteBackend::path); `get` and `contains_key` take any borrowed
//! form of the key (`map.get("a")` for `String` keys); paths are `impl AsRef<Path>` (a `&str`
//! still works); `InMemoryBackend` now keeps what was written (0.1.3's stored nothing).
