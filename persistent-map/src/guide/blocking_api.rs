//! Without async: the blocking API.
//!
//! [`blocking::PersistentMap`](crate::blocking::PersistentMap) is the same map for programs with
//! no async runtime (command-line tools, synchronous servers, build scripts), as
//! `reqwest::blocking` is for reqwest: reads are unchanged, and each write blocks the calling
//! thread until it is committed, with the same guarantees (durable when `Ok`, nothing changed
//! on error).
//!
//! ```
//! use persistent_map::{blocking::PersistentMap, sqlite::SqliteBackend};
//!
//! fn main() -> persistent_map::Result<()> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//!     let map: PersistentMap<u64, String, SqliteBackend> = PersistentMap::open(&path)?;
//!     map.insert(7, "seven".into())?; // on disk when this returns Ok
//!     assert_eq!(map.get(&7), Some("seven".to_string()));
//!     Ok(())
//! }
//! ```
//!
//! Each map (with its clones) runs a private tokio runtime on a thread of its own, started by
//! the constructor and stopped when the last clone is dropped. It keeps the backend's
//! background work going between calls: a PostgreSQL connection and its `LISTEN`, and the
//! sweep of expired entries.
//!
//! Called from inside an async runtime (a `spawn_blocking` thread included), a blocking call
//! returns [`PersistentError::BlockingInAsyncContext`](crate::PersistentError::BlockingInAsyncContext)
//! and does nothing, instead of stalling or deadlocking the runtime's thread; use the async map
//! there ([`as_async`](crate::blocking::PersistentMap::as_async)). The reads never block and
//! work anywhere.
//!
//! It has the writes, batches and read-modify-writes of the async map (`insert`, `remove`,
//! `update`, `get_or_insert_with`, `insert_many`, `remove_many`, `retain`, `clear`), the
//! time-to-live methods (`insert_with_ttl`, `insert_until`, `expire`, `expire_at`, `persist`,
//! `ttl`, `sweep_expired`, `with_default_ttl`), `subscribe`, `refresh` and `refresh_every`;
//! for `compare_exchange`, the entry API and transactions, use
//! [`as_async`](crate::blocking::PersistentMap::as_async) from a runtime of your own.
//!
//! The repository's `examples/bookmarks.rs` is a whole command-line app written this way
//! (`cargo run --example bookmarks -- add rust https://www.rust-lang.org`).
