//! The SQLite backend: one table per map, in a file that several maps can share.
//!
//! Each table has the columns of persistent-map 0.1.3: `key TEXT PRIMARY KEY` holding the key's
//! `Display` text and `value TEXT` holding the value as JSON, so `sqlite3 app.db` shows the data
//! and a 0.1.3 database opens as it is.
//!
//! No SQLite work runs on tokio's worker threads: writes (and short reads) go to one thread per
//! database file that owns its connection, and a load scans on a blocking-pool thread with a
//! read-only connection of its own, so it never holds up writes; the async methods only send
//! work and wait. Writes that arrive while a commit is syncing are committed together in the
//! next transaction (group commit), so concurrent writers share fsyncs.
//!
//! ```
//! use persistent_map::sqlite::{Durability, SqliteBackend};
//!
//! # persistent_map::__private::run_example(Box::pin(async {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//! let kv = SqliteBackend::new(&path).await?; // table `kv`
//! let cache = SqliteBackend::builder(&path)
//!     .table("cache")
//!     .durability(Durability::Normal) // survives a process crash, not a power cut
//!     .open()
//!     .await?;
//! assert_eq!(kv.table(), "kv");
//! assert_eq!(cache.durability(), Durability::Normal);
//! # Ok(()) }));
//! ```

mod execute;
mod expiry;
mod fence;
mod gather;
mod inbox;
mod known;
mod layout;
mod load;
mod log;
mod open;
mod read;
mod setup;
mod writer;

pub use layout::migrate_keys;

use crate::{MapKey, MapValue};
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use self::log::{Logged, Place};
use self::read::Readers;
use self::writer::{RawOp, TableSql, WritePart, Writer};
pub(crate) use self::writer::{WritePart as TransactionPart, Writer as TransactionWriter};
use crate::backends::decode::decode_key;
use crate::map::{Answer, Op, Write};
use crate::{
    BatchOp, ChangePosition, Checked, Condition, Deadline, ExternalChanges, PersistentError,
    PersistentKey, Result, ScanPage, StorageBackend, WriteOptions,
};

/// How much a commit must survive before a write is acknowledged.
///
/// Both levels use SQLite's write-ahead log (WAL). The level is chosen per backend; backends
/// sharing a file may differ, and a commit that serves several of them uses the strongest level
/// any of its writes asked for.
///
/// ```
/// use persistent_map::sqlite::Durability;
///
/// assert_eq!(Durability::default(), Durability::Full);
/// assert!(Durability::Normal < Durability::Full);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Durability {
    /// `synchronous=NORMAL`: a commit is written to the log but not synced. An acknowledged
    /// write survives the process crashing or being killed; a power cut or OS crash can lose the
    /// last commits (never corrupting the file). Commits cost no fsync, so writes are much faster.
    Normal,
    /// `synchronous=FULL`, the default: every commit is synced to disk (fsync) before it is
    /// acknowledged, so an acknowledged write survives a power cut.
    #[default]
    Full,
}

impl Durability {
    fn pragma_value(self) -> &'static str {
        match self {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        }
    }
}

/// A [`StorageBackend`] that stores a map in one table of a SQLite database file.
///
/// Open one with [`new`](Self::new) (table `kv`, as persistent-map 0.1.3),
/// [`with_table`](Self::with_table), [`for_key`](Self::for_key) (the key type's own table), or
/// [`builder`](Self::builder) for options. Every backend on the same file in this process shares
/// one connection and writer thread, so maps on one file never fail with `database is locked`,
/// and maps opened on one table in this process share their entries (see
/// [`PersistentMap::new`](crate::PersistentMap::new)).
///
/// Conditional writes (what [`PersistentMap::update`](crate::PersistentMap::update) and
/// [`compare_exchange`](crate::PersistentMap::compare_exchange) send) are checked in the
/// `IMMEDIATE` transaction that writes, so they are atomic against every process on the file.
/// Each transaction logs the keys it wrote in the table `persistent_map_log` (each table keeps
/// its last 65,536 rows), so that another process's map re-reads just those keys when it
/// [refreshes](crate::PersistentMap::refresh).
///
/// Errors name what was wrong: a path that cannot be opened, a file that is not a SQLite
/// database (refused, and left untouched), an invalid table name, a stored row whose key or value
/// no longer parses (with the table and the raw key).
///
/// ```
/// use persistent_map::{sqlite::SqliteBackend, PersistentMap};
///
/// # persistent_map::__private::run_example(Box::pin(async {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("app.db");
/// let ages = PersistentMap::<String, u32, _>::new(SqliteBackend::with_table(&path, "ages").await?).await?;
/// let visits = PersistentMap::<String, u32, _>::new(SqliteBackend::with_table(&path, "visits").await?).await?;
/// ages.insert("ada".to_string(), 36).await?;
/// visits.insert("ada".to_string(), 1).await?;
/// assert_eq!(ages.backend().path(), visits.backend().path());
/// # Ok(()) }));
/// ```
#[derive(Clone)]
pub struct SqliteBackend {
    writer: Arc<Writer>,
    /// Read-only connections for reads of a few keys and pages of scans.
    readers: Arc<Readers>,
    table: Arc<TableSql>,
    durability: Durability,
    /// The layout of the key type this backend was opened for (empty: none checked).
    key_layout: &'static str,
}

impl SqliteBackend {
    /// Opens (or creates) the database at `path` and its table `kv`, as persistent-map 0.1.3.
    ///
    /// ```
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let backend = persistent_map::sqlite::SqliteBackend::new(dir.path().join("app.db")).await?;
    /// assert_eq!(backend.table(), "kv");
    /// # Ok(()) }));
    /// ```
    pub async fn new(path: impl AsRef<Path>) -> Result<Self> {
        Self::builder(path).open().await
    }

    /// Opens (or creates) the database at `path` and the table `table`, which must be
    /// `[A-Za-z_][A-Za-z0-9_]*` and not start with `sqlite_`.
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, PersistentError};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("app.db");
    /// let backend = SqliteBackend::with_table(&path, "sessions").await?;
    /// assert_eq!(backend.table(), "sessions");
    ///
    /// let err = SqliteBackend::with_table(&path, "bad name").await.unwrap_err();
    /// assert!(matches!(err, PersistentError::InvalidTableName { .. }));
    /// # Ok(()) }));
    /// ```
    pub async fn with_table(path: impl AsRef<Path>, table: &str) -> Result<Self> {
        Self::builder(path).table(table).open().await
    }

    /// Opens (or creates) the database at `path` and the table of the key type `K`,
    /// [`K::TABLE_NAME`](PersistentKey::TABLE_NAME).
    ///
    /// ```
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let backend = persistent_map::sqlite::SqliteBackend::for_key::<String>(dir.path().join("a.db")).await?;
    /// assert_eq!(backend.table(), "kv");
    /// # Ok(()) }));
    /// ```
    ///
    /// The key type's [layout](PersistentKey::KEY_LAYOUT), if it has one, is recorded with the
    /// table on first open and checked on every later one.
    pub async fn for_key<K: PersistentKey>(path: impl AsRef<Path>) -> Result<Self> {
        Self::builder(path).key::<K>().open().await
    }

    /// Starts configuring a backend on the database at `path`: table `kv`, [`Durability::Full`],
    /// a 5 second busy timeout, until told otherwise.
    ///
    /// ```
    /// use persistent_map::sqlite::{Durability, SqliteBackend};
    /// use std::time::Duration;
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let backend = SqliteBackend::builder(dir.path().join("app.db"))
    ///     .table("events")
    ///     .durability(Durability::Normal)
    ///     .busy_timeout(Duration::from_secs(30))
    ///     .open()
    ///     .await?;
    /// # let _ = backend;
    /// # Ok(()) }));
    /// ```
    pub fn builder(path: impl AsRef<Path>) -> SqliteBuilder {
        SqliteBuilder {
            path: path.as_ref().to_path_buf(),
            table: "kv".to_owned(),
            key_layout: "",
            durability: Durability::default(),
            busy_timeout: Duration::from_secs(5),
        }
    }

    /// The database file, as given to the first backend opened on it in this process.
    ///
    /// ```
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("app.db");
    /// let backend = persistent_map::sqlite::SqliteBackend::new(&path).await?;
    /// assert_eq!(backend.path(), path);
    /// # Ok(()) }));
    /// ```
    pub fn path(&self) -> &Path {
        self.writer.path()
    }

    /// The table this backend stores its map in.
    ///
    /// ```
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let backend = persistent_map::sqlite::SqliteBackend::with_table(dir.path().join("a.db"), "t").await?;
    /// assert_eq!(backend.table(), "t");
    /// # Ok(()) }));
    /// ```
    pub fn table(&self) -> &str {
        &self.table.name
    }

    /// How durable an acknowledged write of this backend is.
    ///
    /// ```
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// use persistent_map::sqlite::{Durability, SqliteBackend};
    /// let backend = SqliteBackend::new(dir.path().join("a.db")).await?;
    /// assert_eq!(backend.durability(), Durability::Full);
    /// # Ok(()) }));
    /// ```
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// What this file's writer has done so far, counted across every backend on the file.
    ///
    /// `writes / commits` is how many acknowledged writes one commit (one fsync) served on
    /// average: above 1 when concurrent writers share commits.
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, PersistentMap};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let map: PersistentMap<String, u32, SqliteBackend> =
    ///     PersistentMap::open(dir.path().join("a.db")).await?;
    /// map.insert("a".to_string(), 1).await?;
    /// let stats = map.backend().stats();
    /// assert_eq!((stats.commits, stats.writes), (1, 1));
    /// # Ok(()) }));
    /// ```
    pub fn stats(&self) -> SqliteStats {
        let (commits, writes) = self.writer.counts();
        SqliteStats { commits, writes }
    }
}

impl SqliteBackend {
    /// Commits one map's `write` (by the map with id `origin`) alone, as the backend's own
    /// methods do; what storage did with it.
    async fn commit_write<K, V>(&self, write: Write<K, V>, origin: u64) -> Result<Answer>
    where
        K: ToString + Sync,
        V: Serialize + DeserializeOwned + Sync,
    {
        let part = write_part(&self.table, self.key_layout, &write, origin)?;
        let answers = self
            .writer
            .commit(vec![part], self.durability, write.want_previous)
            .await?;
        Ok(answers
            .into_iter()
            .next()
            .expect("the writer answers each part of a write"))
    }
}

/// A map's id as the change log's `origin` column (an SQLite integer) holds it.
pub(crate) fn log_origin(origin: u64) -> i64 {
    i64::from_ne_bytes(origin.to_ne_bytes())
}

impl fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.path())
            .field("table", &self.table())
            .field("durability", &self.durability)
            .finish()
    }
}

/// Counts from a database file's writer, returned by [`SqliteBackend::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SqliteStats {
    /// Transactions committed.
    pub commits: u64,
    /// Write requests (a single insert or remove, or one batch) committed and acknowledged.
    pub writes: u64,
}

/// Options for a [`SqliteBackend`]; made by [`SqliteBackend::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `.open().await`"]
pub struct SqliteBuilder {
    path: PathBuf,
    table: String,
    key_layout: &'static str,
    durability: Durability,
    busy_timeout: Duration,
}

impl SqliteBuilder {
    /// The table to store the map in (default `kv`).
    ///
    /// ```
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let backend = persistent_map::sqlite::SqliteBackend::builder(dir.path().join("a.db"))
    ///     .table("orders")
    ///     .open()
    ///     .await?;
    /// assert_eq!(backend.table(), "orders");
    /// # Ok(()) }));
    /// ```
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// The table of key type `K` ([`K::TABLE_NAME`](PersistentKey::TABLE_NAME)), whose
    /// [layout](PersistentKey::KEY_LAYOUT) is recorded on first open and checked after, as
    /// [`SqliteBackend::for_key`] does.
    ///
    /// ```
    /// use persistent_map::{sqlite::{Durability, SqliteBackend}, PersistentKey};
    ///
    /// #[derive(PersistentKey)]
    /// struct SessionKey { tenant: String, user: u64 }
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let backend = SqliteBackend::builder(dir.path().join("a.db"))
    ///     .key::<SessionKey>()
    ///     .durability(Durability::Normal)
    ///     .open()
    ///     .await?;
    /// assert_eq!(backend.table(), "session_key");
    /// # Ok(()) }));
    /// ```
    pub fn key<K: PersistentKey>(mut self) -> Self {
        self.table = K::TABLE_NAME.to_owned();
        self.key_layout = K::KEY_LAYOUT;
        self
    }

    /// How durable a write must be before it is acknowledged (default [`Durability::Full`]).
    ///
    /// ```
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// use persistent_map::sqlite::{Durability, SqliteBackend};
    /// let fast = SqliteBackend::builder(dir.path().join("a.db"))
    ///     .durability(Durability::Normal)
    ///     .open()
    ///     .await?;
    /// assert_eq!(fast.durability(), Durability::Normal);
    /// # Ok(()) }));
    /// ```
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long a commit waits for another process that holds the file's write lock before it
    /// fails with `database is locked` (default 5 seconds). It is set when the file's connection
    /// opens, so it is the first backend's value on a file that counts.
    ///
    /// ```
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let backend = persistent_map::sqlite::SqliteBackend::builder(dir.path().join("a.db"))
    ///     .busy_timeout(std::time::Duration::from_secs(60))
    ///     .open()
    ///     .await?;
    /// # let _ = backend;
    /// # Ok(()) }));
    /// ```
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Opens the database (creating the file if missing) and the table (creating it if missing).
    ///
    /// Fails without touching stored data if the table name is invalid (checked before the file
    /// is opened), the path cannot be opened, the file is not a SQLite database (never opened
    /// by SQLite, left byte for byte), or the table exists without `key` and `value` columns. A
    /// SQLite file is switched to WAL mode as it opens, before its tables are checked.
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, PersistentError};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let not_a_db = dir.path().join("notes.txt");
    /// std::fs::write(&not_a_db, "my notes")?;
    /// let err = SqliteBackend::builder(&not_a_db).open().await.unwrap_err();
    /// assert!(matches!(err, PersistentError::NotADatabase { .. }));
    /// assert_eq!(std::fs::read_to_string(&not_a_db)?, "my notes");
    /// # Ok(()) }));
    /// ```
    pub async fn open(self) -> Result<SqliteBackend> {
        crate::validate_table_name(&self.table)?;
        let SqliteBuilder {
            path,
            table,
            key_layout,
            durability,
            busy_timeout,
        } = self;
        // The blocking thread (and the writer thread it may start) report to the caller's
        // `tracing` subscriber.
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let writer = crate::tasks::spawn_blocking(move || {
            tracing::dispatcher::with_default(&dispatch, || open::writer_for(&path, busy_timeout))
        })
        .await
        .map_err(|join_error| PersistentError::Backend(join_error.into()))??;
        setup::set_up_table(&writer, &table, key_layout).await?;
        Ok(SqliteBackend {
            readers: Arc::new(Readers::new(Arc::clone(&writer))),
            writer,
            table: Arc::new(TableSql::new(&table)),
            durability,
            key_layout,
        })
    }
}

#[async_trait::async_trait]
impl<K, V> StorageBackend<K, V> for SqliteBackend
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

    async fn save(&self, key: K, value: V) -> Result<(), PersistentError> {
        let save = Op::Save {
            key,
            value,
            deadline: None,
        };
        self.commit_write(Write::new(Vec::new(), vec![save]), 0)
            .await
            .map(drop)
    }

    async fn delete(&self, key: &K) -> Result<(), PersistentError> {
        let delete = Op::Delete(key.clone());
        self.commit_write(Write::<K, V>::new(Vec::new(), vec![delete]), 0)
            .await
            .map(drop)
    }

    /// Returns once every write queued before it on this file is committed.
    async fn flush(&self) -> Result<(), PersistentError> {
        self.writer.run(|_| Ok(())).await
    }

    /// Commits all of `ops` in one transaction: all or nothing.
    async fn apply_batch(&self, ops: &[BatchOp<K, V>]) -> Result<(), PersistentError> {
        if ops.is_empty() {
            return Ok(());
        }
        let write = Write::from_batch(&[], ops, WriteOptions::new());
        self.commit_write(write, 0).await.map(drop)
    }

    async fn load_each(&self, sink: &mut (dyn FnMut(K, V) + Send)) -> Result<(), PersistentError> {
        load::load_each(&self.writer, &self.table.name, &mut |key, value, _| {
            sink(key, value);
        })
        .await
    }

    /// Deadlines live in the column `expires_at` (Unix milliseconds, `NULL`: never).
    fn supports_expiry(&self) -> bool {
        true
    }

    /// Rows whose deadline has passed on this process's clock are not loaded.
    async fn load_each_expiring(
        &self,
        sink: &mut (dyn FnMut(K, V, Option<Deadline>) + Send),
    ) -> Result<(), PersistentError> {
        load::load_each(&self.writer, &self.table.name, sink).await
    }

    /// One `SELECT` by primary key per key, on a read-only connection of its own (see
    /// [`CachedMap`](crate::CachedMap)), off the writer thread.
    async fn load_keys_expiring(
        &self,
        keys: &[K],
    ) -> Result<HashMap<K, (V, Option<Deadline>)>, PersistentError> {
        self.readers.rows_of(&self.table.name, keys).await
    }

    fn __transaction_target(&self) -> Option<crate::__private::TransactionTarget<K, V>> {
        let table = Arc::clone(&self.table);
        let layout = self.key_layout;
        Some(crate::map::TransactionTarget {
            store: crate::map::Store::Sqlite(Arc::clone(&self.writer), self.durability),
            prepare: Box::new(move |write, origin| {
                write_part(&table, layout, write, origin).map(crate::map::Prepared::Sqlite)
            }),
            name: self.table.name.clone(),
        })
    }

    /// `DELETE ... RETURNING`s of at most `limit` expired rows in all (found through the partial
    /// index on `expires_at`), logged like any write: inside the file's next commit of live
    /// writes, after them, for at most about 150 µs of it, or, when no write is coming, in a
    /// transaction of its own, cut short after about a millisecond when other work is queued
    /// (see `expiry.rs`).
    async fn sweep_expired(&self, limit: usize, origin: u64) -> Result<Vec<K>, PersistentError> {
        let texts = expiry::sweep(&self.writer, &self.table, limit, log_origin(origin)).await?;
        texts
            .iter()
            .map(|text| decode_key(&self.table.name, text))
            .collect()
    }

    /// `SELECT count(*)`: a few milliseconds per million rows, against the hash table growing
    /// and rehashing over and over while it loads.
    async fn len_hint(&self) -> Option<usize> {
        load::count(&self.writer, &self.table.name).await.ok()
    }

    /// One `DELETE` in one transaction.
    async fn clear(&self) -> Result<(), PersistentError> {
        self.commit_write(Write::<K, V>::new(Vec::new(), vec![Op::Clear]), 0)
            .await
            .map(drop)
    }

    async fn load_keys(&self, keys: &[K]) -> Result<HashMap<K, V>, PersistentError> {
        Ok(self
            .readers
            .rows_of(&self.table.name, keys)
            .await?
            .into_iter()
            .map(|(key, (value, _))| (key, value))
            .collect())
    }

    /// One `SELECT ... ORDER BY key LIMIT` through the primary key's index, on a read-only
    /// connection of its own, off the writer thread.
    async fn scan_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage<K, V>, PersistentError>
    where
        K: ToString,
    {
        self.readers
            .page(&self.table.name, prefix, after, limit)
            .await
    }

    /// One `SELECT count(*)` of the live rows, on a read-only connection of its own.
    async fn count_live(&self) -> Result<usize, PersistentError> {
        self.readers.count_live(&self.table.name).await
    }

    /// Checks and writes in one `IMMEDIATE` transaction, shared with the other writes of its
    /// group: atomic against every process on the file.
    async fn apply_checked(
        &self,
        conditions: &[Condition<K>],
        ops: &[BatchOp<K, V>],
        options: WriteOptions,
    ) -> Result<Checked<V>, PersistentError> {
        if conditions.is_empty() && ops.is_empty() {
            return Ok(Checked::Applied {
                previous: options.wants_previous().then(Vec::new),
            });
        }
        let write = Write::from_batch(conditions, ops, options);
        let answer = self.commit_write(write, options.origin_id()).await?;
        answer.into_checked(&self.table.name, conditions)
    }

    /// Writes queue on the file's writer thread as their futures are first polled, and it
    /// commits them in queue order.
    fn pipelines_writes(&self) -> bool {
        true
    }

    /// The file's canonical path and the table (for `:memory:`, this backend's own database).
    fn storage_id(&self) -> Option<String> {
        Some(self.storage_id_of(&self.table.name))
    }

    async fn change_position(&self) -> Result<Option<ChangePosition>, PersistentError> {
        Ok(Some(log::place(&self.writer).await?.to_position()))
    }

    /// The keys that other maps (in other processes, or of other types on this table in this
    /// process) logged since `since`, read in one snapshot; [`ExternalChanges::Unknown`] after
    /// a clear, after a commit by a program that does not log (the `sqlite3` shell), or when
    /// `since` is older than the rows the log keeps of this table (its newest 65,536).
    async fn changes_since(
        &self,
        since: Option<ChangePosition>,
        origin: u64,
    ) -> Result<(ExternalChanges<K, V>, Option<ChangePosition>), PersistentError> {
        let since = since.map(Place::from_position);
        let origin = log_origin(origin);
        let (logged, now) = log::since(&self.writer, &self.table.name, origin, since).await?;
        let changes = match logged {
            Logged::Unknown => ExternalChanges::Unknown,
            Logged::Keys(texts) if texts.is_empty() => ExternalChanges::None,
            Logged::Keys(texts) => {
                let keys: Result<Vec<K>> = texts
                    .iter()
                    .map(|text| decode_key(&self.table.name, text))
                    .collect();
                // A key this type cannot read was not written by a map of this type: reload,
                // which reports the row if it is really there.
                keys.map_or(ExternalChanges::Unknown, ExternalChanges::Keys)
            }
        };
        Ok((changes, Some(now.to_position())))
    }
}

impl crate::map::sealed::Sealed for SqliteBackend {}

impl SqliteBackend {
    /// The name of `table` on this backend's file, as [`StorageBackend::storage_id`] gives it.
    pub(super) fn storage_id_of(&self, table: &str) -> String {
        match self.writer.reader() {
            Some(reader) => format!("sqlite:{}\0{table}", reader.path().display()),
            None => format!("sqlite-memory:{:p}\0{table}", Arc::as_ptr(&self.writer)),
        }
    }
}

/// `write` as the writer executes it on `table`, by the map with id `origin`.
fn write_part<K, V>(
    table: &Arc<TableSql>,
    layout: &'static str,
    write: &Write<K, V>,
    origin: u64,
) -> Result<WritePart>
where
    K: ToString + Sync,
    V: Serialize + DeserializeOwned + Sync,
{
    Ok(WritePart {
        table: Arc::clone(table),
        conditions: write
            .conditions
            .iter()
            .map(|c| (c.key.to_string(), c.expected.clone()))
            .collect(),
        ops: crate::backends::encode::encode_all(&write.ops, |op| encode(&table.name, op))?,
        layout,
        origin: log_origin(origin),
        canonical: crate::backends::encode::canonical_json::<V>,
    })
}

/// `op` as the writer executes it.
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
