//! Guides: how the map behaves, a page per subject, with examples that run as doctests.
//!
//! The README is the five-minute tour; these pages hold the depth, and each item's own docs
//! hold its contract. Read them in any order:
//!
//! | page | what it covers |
//! | --- | --- |
//! | [`durability`] | the backends, what an acknowledged write survives, how SQLite is written, what a file holds, options |
//! | [`keys`] | keys from std, derived keys and their text on disk, tables, several maps in one file |
//! | [`writes`] | read-modify-writes, the entry API, batches, transactions and their abort reasons, hot keys, the one write path |
//! | [`coherence`] | handles, processes and instances on one table: refresh, the change log, subscriptions |
//! | [`expiry`] | entries with a time to live: exact expiry, the clock, storage, the sweep |
//! | [`blocking_api`] | the same map without an async runtime |
//! | [`postgresql`] | one store for many instances (feature `postgres`): across instances, health, faults, operating it |
//! | [`errors`] | what can go wrong, what each message names, and what it says to do |
//! | [`upgrading`] | coming from persistent-map 0.1.3: what is kept, fixed and changed, and what a first open changes in a 0.1.3 file |
//! | [`speed`] | the current figures against raw rusqlite, `HashMap` and 0.1.3, and where the benchmarks live |
//! | [`repository`] | the repository: layout, example apps, the tests and how to run the long ones |
//!
//! # The guarantees
//!
//! Each has a test in the repository's `tests/` that fails without it.
//!
//! 1. **Memory and storage agree.** Once your writes have returned, what the map holds in memory
//!    is exactly what the backend would load, even when many tasks wrote the same keys at once,
//!    and even when a task was cancelled mid-write (a write that started runs to completion).
//! 2. **A failed write changes nothing.** When the backend refuses a write (a full disk, a value
//!    that cannot be serialized), you get the error and the map still holds the old value.
//! 3. **`Ok` means on disk.** When `insert` or `remove` returns `Ok`, the change is committed: a
//!    process killed with SIGKILL right after loses none of it, and the file stays intact
//!    (`PRAGMA integrity_check`). With the default durability that holds for a power cut too.
//! 4. **Reads never wait.** [`get`](crate::PersistentMap::get) reads memory only and never
//!    waits for a write, not even a write stuck in the backend; until a write is committed,
//!    `get` returns the value from before it. No SQLite work runs on tokio's worker threads.
//! 5. **Concurrent writes share commits** (group commit), so they are fast without giving up 3.
//! 6. **Bad input is an error, never a panic, and never costs stored data**: a path that cannot
//!    be opened, a file that is not a database or is damaged (left byte for byte as it was), a
//!    stored key or value that no longer parses (the error names the table and the key, and the
//!    row is kept), two stored rows that parse to one key, a stored key text that is not the
//!    key's own text (`007` for the number 7, refused rather than aliased), an invalid table
//!    name, a value JSON cannot hold (a NaN or infinite float is refused rather than stored as
//!    `null`).
//! 7. **One file, many maps.** Maps on different tables of one file can be written
//!    concurrently without `database is locked` errors.
//! 8. **One table, one truth.** Every handle, process and (on PostgreSQL) instance on a table
//!    is one map: read-modify-writes and transactions are atomic across all of them (two
//!    processes running 8 tasks × 200 `update(+1)` each end at exactly 3,200), no acknowledged
//!    write is lost to another writer's stale copy, handles in one process see each other's
//!    writes at once and other processes' after a [refresh](coherence).
//! 9. **Time is exact.** An entry whose time to live has passed is absent to every read from
//!    that instant, whether or not a sweep has run ([`expiry`]).
//! 10. **One write path.** Every write, of every kind, is one checked transaction handed to the
//!     backend by one path and settled into memory by one function, in commit order; retries
//!     are bounded ([`writes`]).

pub mod blocking_api;
pub mod coherence;
pub mod durability;
pub mod errors;
pub mod expiry;
pub mod keys;
pub mod postgresql;
pub mod repository;
pub mod speed;
pub mod upgrading;
pub mod writes;

/// The README's code blocks, compiled by `cargo test` as doctests (the README on its own
/// is not a page of these docs).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
