//! A typed, async, persistent key-value map: reads from memory, every write committed to storage
//! (SQLite by default) before it is acknowledged.
//!
//! ```
//! use persistent_map::{sqlite::SqliteBackend, PersistentMap};
//!
//! # persistent_map::__private::run_example(Box::pin(async {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//! let map: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path).await?;
//! map.insert("visits".to_string(), 1).await?; // committed to SQLite when this returns Ok
//! assert_eq!(map.get(&"visits".to_string()), Some(1)); // served from memory
//! drop(map);
//!
//! let reopened: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path).await?;
//! assert_eq!(reopened.get(&"visits".to_string()), Some(1));
//! # Ok(()) }));
//! ```
//!
//! - [`PersistentMap`] holds the entries in memory and writes through to a [`StorageBackend`].
//! - [`CachedMap`] keeps its entries in storage and at most a [`CacheCapacity`] of the hot ones
//!   in memory, for tables larger than memory: it opens without loading, and a read of a key
//!   it does not hold reads storage.
//! - [`sqlite::SqliteBackend`] (feature `sqlite`, on by default) stores each map in a table of a
//!   SQLite file: `key TEXT PRIMARY KEY` (the key's `Display` text) and `value TEXT` (JSON).
//! - [`in_memory::InMemoryBackend`] keeps the store in process memory, for tests.
//! - [`PersistentKey`] gives a key type its text form and its own table; derive it (feature
//!   `derive`, on by default).
//!
//! The [`guide`] explains how the map behaves, a page per subject: writes and transactions,
//! durability, keys, several processes on one table, expiry, the blocking API, PostgreSQL,
//! errors, and coming from persistent-map 0.1.3.
#![warn(missing_docs)]
// On docs.rs (nightly), mark each item with the features it needs. `doc_auto_cfg` was folded
// into `doc_cfg`, which now does this by itself; naming the old feature fails the build.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod backends;
pub mod blocking;
mod bounds;
mod changes;
mod completion;
mod deadline;
mod error;
// Documentation only: no items, just pages (and the README's code blocks as doctests).
pub mod guide;
mod key;
mod key_locks;
mod map;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod options;
mod std_keys;
mod table_name;
mod tasks;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use backend::{
    BatchOp, ChangePosition, Checked, Condition, ExternalChanges, ScanPage, StorageBackend, Stored,
    WriteOptions,
};
#[cfg(feature = "csv_backend")]
pub use backends::csv;
pub use backends::in_memory;
#[cfg(feature = "postgres")]
pub use backends::postgres;
#[cfg(feature = "sqlite")]
pub use backends::sqlite;
pub use bounds::{MapKey, MapValue};
pub use changes::{Change, RecvError, Subscription, CHANGE_BUFFER};
pub use deadline::Deadline;
pub use error::{PersistentError, Result};
pub use key::{KeyParseError, PersistentKey};
pub use map::{
    transaction, CacheCapacity, CacheLookup, CacheStats, CachedMap, Entry, PersistentMap,
    RefreshTask, Scan, Transaction, TransactionError, TransactionalBackend, Upserted,
};
#[cfg(feature = "postgres")]
pub use options::PostgresOptions;
#[cfg(feature = "sqlite")]
pub use options::SqliteOptions;
pub use table_name::validate_table_name;

/// Derives [`PersistentKey`](trait@PersistentKey), `Display` and `FromStr` for a struct or enum.
///
/// `use persistent_map::PersistentKey;` brings both this derive and the trait, as serde's
/// derives come with its traits. The text of each shape, the attributes (`table`,
/// `separator`, `rename_all`, `rename`, `text`, `crate`) and the compile errors are documented
/// on the [trait](trait@PersistentKey); parse errors are a [`KeyParseError`].
///
/// ```
/// use persistent_map::PersistentKey;
///
/// #[derive(PersistentKey, Debug, PartialEq)]
/// #[persistent_key(table = "sessions")]
/// struct SessionKey {
///     tenant: String,
///     user: u64,
/// }
///
/// let key = SessionKey { tenant: "acme".into(), user: 42 };
/// assert_eq!(key.to_string(), "acme:42");
/// assert_eq!("acme:42".parse::<SessionKey>()?, key);
/// assert_eq!(SessionKey::TABLE_NAME, "sessions");
/// # Ok::<(), persistent_map::KeyParseError>(())
/// ```
#[cfg(feature = "derive")]
pub use persistent_map_derive::PersistentKey;
