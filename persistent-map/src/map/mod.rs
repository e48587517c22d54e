//! The map: entries in memory, every write through to a backend first.
//!
//! The map is split by concern: [`shared`] holds what the handles on one table share, with the
//! entries in memory ([`entries`]: all of them, or the hot ones of a [`CachedMap`]),
//! [`registry`] finds it for a map opened on the same table, and the methods live in [`read`],
//! [`write`] (single writes and read-modify-writes), [`batch`], [`refresh`] and [`scan`];
//! [`cached`] is the map that holds only the hot entries.

mod batch;
mod cached;
mod commit;
mod entries;
mod entry;
mod expiry;
mod read;
mod refresh;
mod registry;
mod scan;
mod shared;
mod transaction;
mod write;

pub use cached::{CacheLookup, CacheStats, CachedMap};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) use commit::Answer;
#[doc(hidden)]
pub use commit::TransactionTarget;
pub(crate) use commit::{Current, InMemoryPart, Op, Prepared, Store, Write};
pub use entries::CacheCapacity;
pub use entry::{Entry, Upserted};
pub use refresh::RefreshTask;
#[cfg(feature = "sqlite")]
pub(crate) use registry::is_open;
pub use scan::Scan;
pub(crate) use transaction::sealed;
pub use transaction::{transaction, Transaction, TransactionError, TransactionalBackend};

use crate::{MapKey, MapValue};
use std::fmt;
#[cfg(feature = "sqlite")]
use std::path::Path;
use std::sync::Arc;

use self::shared::Shared;
use crate::completion::run_to_completion;
use crate::{PersistentError, Result, StorageBackend};

/// A concurrent map whose entries live in memory and whose every write is stored by a
/// [`StorageBackend`] before it is acknowledged.
///
/// - Reads ([`get`](Self::get), [`get_with`](Self::get_with), [`contains_key`](Self::contains_key),
///   [`len`](Self::len)) come from memory and never wait for the backend.
/// - A write ([`insert`](Self::insert), [`remove`](Self::remove)) first goes to the backend; the
///   map changes in memory only once the backend says `Ok`, and the future resolves after that.
///   When the backend refuses the write, the caller gets the error and the map is unchanged.
/// - Writes to the same key are applied one after another, in memory and in storage in the same
///   order; writes to different keys proceed concurrently (the SQLite backend commits them
///   together).
/// - A write runs to completion even if the future that started it is dropped, so memory and
///   storage cannot drift apart through cancellation.
/// - Beyond single writes: batches that are all-or-nothing ([`insert_many`](Self::insert_many),
///   [`remove_many`](Self::remove_many), [`retain`](Self::retain), [`clear`](Self::clear)),
///   atomic read-modify-write ([`update`](Self::update),
///   [`get_or_insert_with`](Self::get_or_insert_with),
///   [`compare_exchange`](Self::compare_exchange)), checked in storage so that other handles,
///   processes and instances cannot come in between, iteration ([`iter`](Self::iter),
///   [`snapshot`](Self::snapshot)), a stream of committed changes ([`subscribe`](Self::subscribe))
///   and catching up with other processes ([`refresh`](Self::refresh),
///   [`refresh_every`](Self::refresh_every)).
///
/// The map is a cheap handle: clones share the same entries and backend. Maps opened in one
/// process on the same table (the same SQLite file and table, clones of one in-memory backend,
/// with the same key and value types) share their entries too: each sees the others' writes at
/// once, and their writes of one key take turns, as clones' do.
///
/// ```
/// use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
///
/// # persistent_map::__private::run_example(Box::pin(async {
/// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
/// assert_eq!(map.insert("k".into(), 1).await?, None);
/// assert_eq!(map.insert("k".into(), 2).await?, Some(1));
/// assert_eq!(map.get("k"), Some(2));
/// assert_eq!(map.remove(&"k".to_string()).await?, Some(2));
/// assert!(map.is_empty());
/// # Ok(()) }));
/// ```
pub struct PersistentMap<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    shared: Arc<Shared<K, V>>,
    backend: Arc<B>,
    /// Where this handle's writes go.
    target: Arc<TransactionTarget<K, V>>,
    /// The time to live this handle gives what it writes ([`Self::with_default_ttl`]).
    default_ttl: Option<std::time::Duration>,
}

impl<K, V, B> PersistentMap<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// Creates a map over `backend` and loads everything the backend holds.
    ///
    /// If a map of the same types is already open in this process on the same table (the
    /// backend's [`storage_id`](StorageBackend::storage_id)), the new one shares its entries
    /// and catches up with a [`refresh`](Self::refresh) instead of loading again. Writes still
    /// go through the backend given here (with its own durability, say).
    ///
    /// Fails if the backend cannot load, for instance when a stored row no longer parses; the
    /// error names the row and nothing stored is changed.
    ///
    /// ```
    /// use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// assert!(map.is_empty());
    /// # Ok(()) }));
    /// ```
    pub async fn new(backend: B) -> Result<Self> {
        Self::open_on(backend, None).await
    }

    /// A handle on `backend`'s table. It shares the entries of a map of the same kind open on
    /// the table in this process (a cached map also those of a resident one, which holds
    /// every entry), catching up with a refresh; else it holds every entry, loaded now
    /// (`capacity` `None`), or at most `capacity` of them, none yet.
    pub(super) async fn open_on(
        backend: B,
        capacity: Option<&CacheCapacity<K, V>>,
    ) -> Result<Self> {
        let backend = Arc::new(backend);
        let open = |backend: Arc<B>| async move {
            let shared = match capacity {
                None => Shared::load(&*backend).await?,
                Some(capacity) => Shared::cached(&*backend, capacity).await?,
            };
            Ok::<_, PersistentError>(Arc::new(shared))
        };
        let Some(storage_id) = backend.storage_id() else {
            let shared = open(Arc::clone(&backend)).await?;
            return Ok(Self::handle(shared, backend));
        };
        let resident = registry::slot::<(K, V, B), K, V>(storage_id.clone());
        let slot = match capacity {
            None => resident,
            Some(_) => {
                let open_resident = resident.lock().await.upgrade();
                if let Some(shared) = open_resident {
                    return Self::share(shared, backend).await;
                }
                registry::slot::<(K, V, B, CachedMap<K, V, B>), K, V>(storage_id)
            }
        };
        let mut slot = slot.lock().await;
        if let Some(shared) = slot.upgrade() {
            drop(slot);
            return Self::share(shared, backend).await;
        }
        let shared = open(Arc::clone(&backend)).await?;
        *slot = Arc::downgrade(&shared);
        Ok(Self::handle(shared, backend))
    }

    /// A handle on entries already open, caught up with what others wrote since.
    async fn share(shared: Arc<Shared<K, V>>, backend: Arc<B>) -> Result<Self> {
        let map = Self::handle(shared, backend);
        map.refresh().await?;
        Ok(map)
    }

    /// A handle on `shared` writing through `backend`, sweeping expired entries if any are
    /// loaded.
    fn handle(shared: Arc<Shared<K, V>>, backend: Arc<B>) -> Self {
        let target = backend
            .__transaction_target()
            .unwrap_or_else(|| commit::custom_target(&backend));
        let map = Self {
            shared,
            backend,
            target: Arc::new(target),
            default_ttl: None,
        };
        map.start_sweeping();
        map
    }

    /// Makes the map equal to what the backend holds now, discarding in-memory entries that are
    /// no longer stored.
    ///
    /// Writes from this map go on while it reads storage and wait only while it applies what
    /// it read (a key written meanwhile is read again then). Use it when something
    /// else (another process, the backend used directly) has changed the storage;
    /// [`refresh`](Self::refresh) does the same only when something changed. On error the map is unchanged. Subscribers hear
    /// [`Change::Reloaded`](crate::Change::Reloaded).
    ///
    /// ```
    /// use persistent_map::{in_memory::InMemoryBackend, PersistentMap, StorageBackend};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let backend = InMemoryBackend::new();
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(backend.clone()).await?;
    /// backend.save("written-elsewhere".to_string(), 7u32).await?;
    /// assert_eq!(map.get("written-elsewhere"), None);
    /// map.load().await?;
    /// assert_eq!(map.get("written-elsewhere"), Some(7));
    /// # Ok(()) }));
    /// ```
    pub async fn load(&self) -> Result<(), PersistentError> {
        let shared = Arc::clone(&self.shared);
        let backend = Arc::clone(&self.backend);
        let reloaded = run_to_completion(async move { shared.reload(&*backend).await }).await;
        self.start_sweeping();
        reloaded
    }

    /// Asks the backend to persist anything it buffers ([`StorageBackend::flush`]).
    ///
    /// Every acknowledged write is already stored, so this is only needed for backends that
    /// buffer; the SQLite backend returns once the writes queued before the call are committed.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.flush().await?;
    /// # Ok(()) }));
    /// ```
    pub async fn flush(&self) -> Result<(), PersistentError> {
        self.backend.flush().await
    }

    /// The backend this map writes to.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// let _backend: &InMemoryBackend = map.backend();
    /// # Ok(()) }));
    /// ```
    pub fn backend(&self) -> &B {
        &self.backend
    }
}

#[cfg(feature = "sqlite")]
impl<K, V> PersistentMap<K, V, crate::sqlite::SqliteBackend>
where
    K: crate::PersistentKey + MapKey,
    V: MapValue,
{
    /// Opens (or creates) the SQLite database at `path` and loads the map stored in the key
    /// type's table, [`K::TABLE_NAME`](crate::PersistentKey::TABLE_NAME).
    ///
    /// The one-line way in. For options (another table, durability, a busy timeout), use
    /// [`open_with`](Self::open_with) and [`SqliteOptions`](crate::SqliteOptions):
    /// `PersistentMap::open_with(path, SqliteOptions::new().table("visits")).await`.
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, PersistentMap};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("app.db");
    /// // String keys live in the table `kv`.
    /// let map: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path).await?;
    /// map.insert("a".to_string(), 1).await?;
    /// # Ok(()) }));
    /// ```
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(crate::sqlite::SqliteBackend::for_key::<K>(path).await?).await
    }
}

impl<K, V, B> Clone for PersistentMap<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            backend: Arc::clone(&self.backend),
            target: Arc::clone(&self.target),
            default_ttl: self.default_ttl,
        }
    }
}

impl<K, V, B> fmt::Debug for PersistentMap<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistentMap")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "postgres")]
impl<K, V> PersistentMap<K, V, crate::postgres::PostgresBackend>
where
    K: crate::PersistentKey + MapKey,
    V: MapValue,
{
    /// Connects to the PostgreSQL database at `url` and loads the map stored in the key type's
    /// table, [`K::TABLE_NAME`](crate::PersistentKey::TABLE_NAME) (created if missing).
    ///
    /// The one-line way in; for options (another table, timeouts) build a
    /// [`PostgresBackend`](crate::postgres::PostgresBackend) and call [`new`](Self::new). To
    /// follow what other instances write, keep a [`refresh_every`](Self::refresh_every) task.
    ///
    /// ```no_run
    /// use persistent_map::{postgres::PostgresBackend, PersistentMap};
    /// use std::time::Duration;
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// // String keys live in the table `kv`.
    /// let map: PersistentMap<String, u32, PostgresBackend> =
    ///     PersistentMap::open_postgres("postgres://postgres@127.0.0.1:5432/test").await?;
    /// let _follow = map.refresh_every(Duration::from_secs(10));
    /// map.insert("a".to_string(), 1).await?;
    /// # Ok(()) }));
    /// ```
    pub async fn open_postgres(url: &str) -> Result<Self> {
        Self::new(crate::postgres::PostgresBackend::for_key::<K>(url).await?).await
    }
}
