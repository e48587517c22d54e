//! Many handles, processes and instances: one table, one truth.
//!
//! Every handle, process and (on PostgreSQL) instance on a table is one map. Read-modify-writes
//! are atomic across all of them ([`writes`](super::writes#read-modify-writes)), no
//! acknowledged write is lost to another writer's stale copy, handles in one process see each
//! other's writes at once, and other processes' after a refresh.
//!
//! # Handles in one process
//!
//! [`PersistentMap::open`](crate::PersistentMap::open) twice on one table (with the same key and
//! value types), or clones of one map, give handles on the same entries: each sees the other's
//! writes at once, with no refresh, and their writes of one key take turns. Handles of other
//! value types on the same table are separate maps in memory, kept true to storage by their
//! writes' checks and by `refresh`. Each handle keeps its own backend for its writes (its own
//! durability, say).
//!
//! ```
//! # use persistent_map::{sqlite::SqliteBackend, PersistentMap};
//! # persistent_map::__private::run_example(Box::pin(async {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//! let a: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path).await?;
//! let b: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path).await?;
//! a.insert("visits".into(), 1).await?;
//! assert_eq!(b.get("visits"), Some(1)); // at once: one map in memory
//! # Ok(()) }));
//! ```
//!
//! # Other processes: refresh
//!
//! Other processes' writes arrive with [`refresh`](crate::PersistentMap::refresh), or in the
//! background with [`refresh_every`](crate::PersistentMap::refresh_every) (dropping the
//! [`RefreshTask`](crate::RefreshTask) stops it; it keeps the last error for
//! [`take_error`](crate::RefreshTask::take_error)). A refresh returns whether it re-read
//! anything, and costs what changed:
//!
//! - **The change log.** Every commit of this crate logs the keys it wrote, each once, in the
//!   file's table `persistent_map_log`, numbered in commit order, with the writing map's id (a
//!   map skips its own writes). A refresh re-reads just the keys other maps wrote since its
//!   place in that log; a clear (or a key migration) is logged as "any key" and reloads the
//!   table; a write to another table costs it nothing.
//! - **Kept per table.** Each table keeps its newest 65,536 log rows: a busy table prunes its
//!   own rows, never a quiet table's. Pruning runs in short transactions of its own while the
//!   writer is idle, never inside a commit of live writes, and records the newest number pruned
//!   per table in `persistent_map_log_pruned`; a map that fell further behind than that reloads
//!   the table rather than trust a list with holes.
//! - **Writers that do not log.** The map also keeps the file's `PRAGMA data_version`, which
//!   moves when any other connection commits. When it moved and nobody logged anything, a
//!   program that does not log (the `sqlite3` shell, a script, an older version of this crate)
//!   committed, and the next refresh reloads the table. (When another process of this crate
//!   logged in the same interval, such a commit goes unnoticed until the next one;
//!   [`load`](crate::PersistentMap::load) always catches it.)
//! - **Nothing lost.** The map keeps its own place in the log and replaces it only once what
//!   was read has been applied, so a refresh that fails or is cancelled part-way loses nothing:
//!   the next one reads the same changes again.
//!
//! ```
//! # use persistent_map::{sqlite::SqliteBackend, PersistentMap};
//! # persistent_map::__private::run_example(Box::pin(async {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//! let map: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path).await?;
//! assert!(!map.refresh().await?); // nothing changed
//!
//! // Another program writes the file (here: a plain SQLite connection, which does not log).
//! rusqlite::Connection::open(&path)?.execute("INSERT INTO kv VALUES ('other', '5')", [])?;
//! assert!(map.refresh().await?);
//! assert_eq!(map.get("other"), Some(5));
//! # Ok(()) }));
//! ```
//!
//! On PostgreSQL the log is shared by the instances, and each commit also sends a `NOTIFY`
//! that wakes the other instances' `refresh_every` at once (see
//! [`postgresql`](super::postgresql)).
//!
//! # Subscriptions
//!
//! [`subscribe`](crate::PersistentMap::subscribe) gives a stream of the map's committed
//! changes: each [`Change`](crate::Change) arrives after it is committed and applied to memory,
//! and the changes of one key arrive in commit order. They are `Inserted` (a new or replaced
//! value), `Removed`, `DeadlineChanged` (only the time to live changed: `expire`, `persist`),
//! `Expired` (swept after its deadline), `Cleared`, and `Reloaded` (the map was reloaded
//! wholesale by `load` or a refresh that could not tell which keys changed: re-read what you
//! mirror). Writers never wait for a subscriber: one that falls more than
//! [`CHANGE_BUFFER`](crate::CHANGE_BUFFER) changes behind is told so by
//! [`RecvError::Lagged`](crate::RecvError::Lagged). Changes made by other processes arrive when
//! a refresh applies them.
//!
//! ```
//! # use persistent_map::{sqlite::SqliteBackend, Change, PersistentMap};
//! # persistent_map::__private::run_example(Box::pin(async {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//! let map: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path).await?;
//! let mut changes = map.subscribe();
//! map.insert("a".into(), 1).await?;
//! map.remove(&"a".into()).await?;
//! assert_eq!(changes.recv().await.unwrap(), Change::Inserted { key: "a".into(), value: 1 });
//! assert_eq!(changes.recv().await.unwrap(), Change::Removed { key: "a".into() });
//! # Ok(()) }));
//! ```
//!
//! # Reading many entries
//!
//! [`iter`](crate::PersistentMap::iter), [`keys`](crate::PersistentMap::keys) and
//! [`values`](crate::PersistentMap::values) copy memory one shard at a time, never blocking
//! writers for long: every write acknowledged before the call is reflected, and one completing
//! during it may or may not be. [`snapshot`](crate::PersistentMap::snapshot) is exactly the
//! map's contents at one moment (this map's writes wait while it copies).
//! [`get_with`](crate::PersistentMap::get_with) reads a value without cloning it.
