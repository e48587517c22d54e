//! The map larger than memory: its entries live in storage, and memory holds a bounded set of
//! the hot ones.
//!
//! A [`CachedMap`] is a [`PersistentMap`] whose shared entries are a bounded cache
//! ([`Entries::Cached`](super::entries::Entries)) rather than every entry: its writes are the
//! same `Write`s on the same write path (`commit.rs`), settled by the same
//! `Shared::settle`, and the cache is one more place a settled write lands. What differs is
//! reading: a key memory does not hold is read from storage, in the key's turn, so that the
//! read never puts an older value over a write of this map that settled meanwhile.

use crate::{MapKey, MapValue};
use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;
#[cfg(feature = "sqlite")]
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::entries::{CacheCapacity, Lookup};
use super::{PersistentMap, RefreshTask, Scan};
use crate::{Deadline, PersistentError, Result, StorageBackend, Subscription};

/// A map whose entries live in storage and whose memory holds at most a [`CacheCapacity`] of
/// the hot ones: for tables larger than memory, or larger than you want to load.
///
/// # When to pick it
///
/// A [`PersistentMap`] holds every entry in memory: its `get` is a hash lookup and never
/// waits, and opening it loads the whole table (a 5M-row file: seconds, and gigabytes). A
/// `CachedMap` opens in milliseconds whatever the size of the table (2-4 ms for 5M rows in
/// BENCHMARKS.md; it reads only where the table's history of changes stands), keeps its
/// memory within its capacity, and pays a storage read for each key it does not hold. Pick it
/// when the table is larger than you want in memory, or when only some of it is read at a time.
///
/// # Reads say what they are
///
/// [`get`](Self::get) is `async` and returns `Result<Option<V>>`: `Ok(None)` means the key is
/// absent *in storage*, never that memory lacked it. A key memory holds costs what
/// `PersistentMap::get` costs (a lookup in a sharded cache and a clone of the value); one it
/// does not hold is read from storage (SQLite: one `SELECT` by primary key, on a read-only
/// connection of its own on tokio's blocking pool; PostgreSQL: the backend's shared
/// connection), kept in memory, and returned. Memory also remembers keys that storage was seen
/// not to hold. [`cached`](Self::cached) asks memory alone, and its answer tells
/// "absent" from "not cached" ([`CacheLookup`]).
///
/// # Writes and guarantees
///
/// Writes are those of [`PersistentMap`], on the same path, with the same guarantees:
/// acknowledged means committed (SQLite: WAL, `synchronous=FULL` unless the backend asks for
/// less); a failed write leaves memory as it was; memory holds, for every key it holds, what
/// storage holds; read-modify-writes ([`update`](Self::update),
/// [`compare_exchange`](Self::compare_exchange), ...) are checked in storage against every
/// handle, process and instance; writes of one key are applied in commit order. A write lands
/// in memory once committed (the written key is likely to be read). A read that misses takes
/// the key's turn, as a write does: it reads storage only when no write of the key by this map
/// is in flight, so it never puts an older value over a newer one.
///
/// Handles opened on one table in this process share one memory, as `PersistentMap`'s do (a
/// `CachedMap` opened while a `PersistentMap` of the same types is open on the table shares
/// that map's entries, all of them); changes made by other processes or instances reach it
/// with a [`refresh`](Self::refresh) (or [`refresh_every`](Self::refresh_every)), which
/// updates the keys memory holds and tells subscribers of every change. Entries with a time
/// to live expire as in `PersistentMap`: absent to every read from their deadline on.
///
/// # Iteration
///
/// [`scan`](Self::scan) and [`scan_prefix`](Self::scan_prefix) read storage a page at a time,
/// in the order of the key text (see [`Scan`]); they neither read nor change memory.
///
/// # Not (yet) here
///
/// A `CachedMap` takes no part in [`transaction`](crate::transaction)s, and has no `entry`,
/// `retain`, `iter` or `snapshot` (which would read every entry into memory); scan instead.
///
/// ```
/// use persistent_map::{sqlite::SqliteBackend, CacheCapacity, CachedMap};
///
/// # persistent_map::__private::run_example(Box::pin(async {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("app.db");
/// let map: CachedMap<u64, String, SqliteBackend> =
///     CachedMap::open(&path, CacheCapacity::entries(100_000)).await?;
/// map.insert(1, "hello".into()).await?; // committed when Ok
/// assert_eq!(map.get(&1).await?, Some("hello".into())); // from memory
/// assert_eq!(map.get(&2).await?, None); // read from storage: not stored
/// # Ok(()) }));
/// ```
pub struct CachedMap<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// The map whose shared entries are a bounded cache: every write goes through it.
    map: PersistentMap<K, V, B>,
}

/// What a [`CachedMap`]'s memory alone says of a key ([`CachedMap::cached`]).
///
/// ```
/// use persistent_map::CacheLookup;
///
/// let lookup: CacheLookup<u32> = CacheLookup::NotCached;
/// assert_eq!(lookup.present(), None); // not "absent": unknown
/// assert!(!lookup.is_known());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheLookup<V> {
    /// Memory holds the key's live value.
    Present(V),
    /// Memory knows that storage holds nothing live under the key.
    Absent,
    /// Memory does not know the key: this says nothing of storage, where
    /// [`CachedMap::get`] would look.
    NotCached,
}

impl<V> CacheLookup<V> {
    /// The value, if memory holds it.
    ///
    /// ```
    /// # use persistent_map::CacheLookup;
    /// assert_eq!(CacheLookup::Present(7).present(), Some(7));
    /// assert_eq!(CacheLookup::<u8>::Absent.present(), None);
    /// ```
    pub fn present(self) -> Option<V> {
        match self {
            CacheLookup::Present(value) => Some(value),
            CacheLookup::Absent | CacheLookup::NotCached => None,
        }
    }

    /// Whether memory knows the key (holds it, or knows it is absent).
    ///
    /// ```
    /// # use persistent_map::CacheLookup;
    /// assert!(CacheLookup::<u8>::Absent.is_known());
    /// assert!(!CacheLookup::<u8>::NotCached.is_known());
    /// ```
    pub fn is_known(&self) -> bool {
        !matches!(self, CacheLookup::NotCached)
    }
}

/// What a [`CachedMap`]'s memory holds, and how often it sent a read to storage
/// ([`CachedMap::cache_stats`]).
///
/// ```
/// use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
///
/// # persistent_map::__private::run_example(Box::pin(async {
/// let map: CachedMap<String, u32, _> =
///     CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
/// map.get("a").await?; // not known: read from storage, remembered as absent
/// map.get("a").await?; // known
/// let stats = map.cache_stats();
/// assert_eq!((stats.entries, stats.storage_reads, stats.capacity), (1, 1, 10));
/// # Ok(()) }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Keys memory holds (entries, and keys known to be absent).
    pub entries: usize,
    /// Their weight: their count, or what the capacity's weigher says.
    pub weight: u64,
    /// The most they may weigh.
    pub capacity: u64,
    /// Keys read from storage because memory did not hold them, since the map opened: the
    /// misses. (Hits are not counted: counting every read would cost each one.)
    pub storage_reads: u64,
}

impl<K, V, B> CachedMap<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// Creates a map over `backend` that keeps at most `capacity` of its entries in memory.
    /// Reads nothing but where the backend's history of changes stands
    /// ([`StorageBackend::change_position`]), so it takes the same time whatever the size of
    /// the table.
    ///
    /// If a map of the same types is open on the same table in this process, the new one
    /// shares its memory (and its capacity) and catches up with a refresh, as
    /// [`PersistentMap::new`] does.
    ///
    /// ```
    /// use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: CachedMap<String, u32, _> =
    ///     CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(1_000)).await?;
    /// assert_eq!(map.len().await?, 0);
    /// # Ok(()) }));
    /// ```
    pub async fn new(backend: B, capacity: CacheCapacity<K, V>) -> Result<Self> {
        let map = PersistentMap::open_on(backend, Some(&capacity)).await?;
        Ok(Self { map })
    }

    /// The value stored under `key`: from memory if it holds the key, else read from storage
    /// (and kept in memory). `Ok(None)`: storage holds nothing live under `key`.
    ///
    /// Sees every acknowledged write of this process; another process's or instance's once a
    /// [`refresh`](Self::refresh) has run after it, or once the key was read from storage
    /// after it. A read from storage waits for the writes of the key this map has in flight.
    /// Fails only when storage cannot be read, or holds a row that no longer decodes (the
    /// error names the table and the key).
    ///
    /// ```
    /// use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap, StorageBackend};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let backend = InMemoryBackend::new();
    /// backend.save("stored".to_string(), 7u32).await?; // stored before the map opened
    /// let map: CachedMap<String, u32, _> =
    ///     CachedMap::new(backend, CacheCapacity::entries(100)).await?;
    /// assert_eq!(map.get("stored").await?, Some(7)); // read from storage
    /// assert_eq!(map.get("stored").await?, Some(7)); // from memory
    /// assert_eq!(map.get("absent").await?, None);
    /// # Ok(()) }));
    /// ```
    pub async fn get<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match self
            .map
            .shared
            .entries
            .lookup(key, |value, _| value.clone())
        {
            Lookup::Live(value) => Ok(Some(value)),
            Lookup::Absent => Ok(None),
            Lookup::NotCached => Ok(self.read_through(key).await?.map(|(value, _)| value)),
        }
    }

    /// Whether storage holds `key`: from memory if it knows, else read from storage, as
    /// [`get`](Self::get) does.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// map.insert("a".into(), 1).await?;
    /// assert!(map.contains_key("a").await?);
    /// assert!(!map.contains_key("b").await?);
    /// # Ok(()) }));
    /// ```
    pub async fn contains_key<Q>(&self, key: &Q) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match self.map.shared.entries.lookup(key, |_, _| ()) {
            Lookup::Live(()) => Ok(true),
            Lookup::Absent => Ok(false),
            Lookup::NotCached => Ok(self.read_through(key).await?.is_some()),
        }
    }

    /// What memory alone says of `key`, without reading storage: its value, that it is
    /// absent, or [`CacheLookup::NotCached`], which says nothing of storage.
    ///
    /// ```
    /// use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CacheLookup, CachedMap};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: CachedMap<String, u32, _> =
    ///     CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// assert_eq!(map.cached("a"), CacheLookup::NotCached);
    /// map.insert("a".into(), 1).await?;
    /// assert_eq!(map.cached("a"), CacheLookup::Present(1));
    /// map.remove(&"a".into()).await?;
    /// assert_eq!(map.cached("a"), CacheLookup::Absent);
    /// # Ok(()) }));
    /// ```
    pub fn cached<Q>(&self, key: &Q) -> CacheLookup<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self
            .map
            .shared
            .entries
            .lookup(key, |value, _| value.clone())
        {
            Lookup::Live(value) => CacheLookup::Present(value),
            Lookup::Absent => CacheLookup::Absent,
            Lookup::NotCached => CacheLookup::NotCached,
        }
    }

    /// When the entry under `key` expires: `None` if it is absent or never expires. From
    /// memory if it holds the key, else read from storage, as [`get`](Self::get) does.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// use std::time::{Duration, SystemTime};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// let until = SystemTime::now() + Duration::from_secs(60);
    /// map.insert_until("a".into(), 1, until).await?;
    /// assert!(map.deadline("a").await?.unwrap().to_system_time() >= until);
    /// assert_eq!(map.deadline("b").await?, None);
    /// # Ok(()) }));
    /// ```
    pub async fn deadline<Q>(&self, key: &Q) -> Result<Option<Deadline>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match self.map.shared.entries.lookup(key, |_, deadline| deadline) {
            Lookup::Live(deadline) => Ok(deadline),
            Lookup::Absent => Ok(None),
            Lookup::NotCached => Ok(self.read_through(key).await?.and_then(|(_, at)| at)),
        }
    }

    /// The time left before the entry under `key` expires: `None` if it is absent (or
    /// expired) or never expires. As [`deadline`](Self::deadline) reads it.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// use std::time::Duration;
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// map.insert_with_ttl("a".into(), 1, Duration::from_secs(60)).await?;
    /// assert!(map.ttl("a").await?.unwrap() <= Duration::from_secs(60));
    /// # Ok(()) }));
    /// ```
    pub async fn ttl<Q>(&self, key: &Q) -> Result<Option<Duration>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        Ok(self.deadline(key).await?.and_then(Deadline::remaining))
    }

    /// Reads `key` from storage in its turn (unless memory learnt it while the turn was
    /// awaited), keeping what it read in memory.
    async fn read_through<Q>(&self, key: &Q) -> Result<Option<(V, Option<Deadline>)>>
    where
        Q: ToOwned<Owned = K> + ?Sized,
    {
        let key = key.to_owned();
        let _turn = self.map.shared.key_locks.lock(&key).await;
        self.map.current_entry(&key).await
    }

    /// How many live entries storage holds (SQLite: one `SELECT count(*)`, off the writer
    /// thread; see [`StorageBackend::count_live`]).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<u32, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(1)).await?;
    /// map.insert_many((0..5).map(|i| (i, i))).await?;
    /// assert_eq!(map.len().await?, 5); // though memory holds at most one
    /// # Ok(()) }));
    /// ```
    pub async fn len(&self) -> Result<usize> {
        self.map.backend.count_live().await
    }

    /// Whether storage holds no live entry ([`len`](Self::len) is 0).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<u32, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(1)).await?;
    /// assert!(map.is_empty().await?);
    /// # Ok(()) }));
    /// ```
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// What memory holds, and how many reads went to storage.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: CachedMap<u32, u32, _> =
    ///     CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(2)).await?;
    /// map.insert_many((0..100).map(|i| (i, i))).await?;
    /// assert!(map.cache_stats().entries <= 2);
    /// # Ok(()) }));
    /// ```
    pub fn cache_stats(&self) -> CacheStats {
        match self.map.shared.entries.cached() {
            Some(hot) => CacheStats {
                entries: hot.len(),
                weight: hot.weight(),
                capacity: hot.capacity(),
                storage_reads: hot.storage_reads(),
            },
            // Sharing a resident map's entries: every one is in memory.
            None => {
                let entries = self.map.shared.entries.len();
                let all = u64::try_from(entries).unwrap_or(u64::MAX);
                CacheStats {
                    entries,
                    weight: all,
                    capacity: all,
                    storage_reads: 0,
                }
            }
        }
    }

    /// Stores `value` under `key`, then returns the value storage held before (as
    /// [`PersistentMap::insert`]); memory then holds `value`.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// assert_eq!(map.insert("a".into(), 1).await?, None);
    /// assert_eq!(map.insert("a".into(), 2).await?, Some(1));
    /// # Ok(()) }));
    /// ```
    pub async fn insert(&self, key: K, value: V) -> Result<Option<V>> {
        self.map.insert(key, value).await
    }

    /// Removes `key` from storage, then from memory, and returns the value storage held (as
    /// [`PersistentMap::remove`]); memory then knows the key is absent.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// map.insert("a".into(), 1).await?;
    /// assert_eq!(map.remove(&"a".into()).await?, Some(1));
    /// assert_eq!(map.get("a").await?, None);
    /// # Ok(()) }));
    /// ```
    pub async fn remove(&self, key: &K) -> Result<Option<V>> {
        self.map.remove(key).await
    }

    /// Atomically replaces the value under `key` with what `change` makes of it, and returns
    /// the new value, as [`PersistentMap::update`] does (checked in storage, retried on a
    /// conflict). A key memory does not hold is read from storage first, in the key's turn.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let hits: CachedMap<String, u32, _> =
    ///     CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// let bump = |old: Option<&u32>| Some(old.copied().unwrap_or(0) + 1);
    /// assert_eq!(hits.update(&"home".into(), bump).await?, Some(1));
    /// assert_eq!(hits.update(&"home".into(), bump).await?, Some(2));
    /// # Ok(()) }));
    /// ```
    pub async fn update(
        &self,
        key: &K,
        change: impl FnMut(Option<&V>) -> Option<V>,
    ) -> Result<Option<V>> {
        self.map.update(key, change).await
    }

    /// Returns the value under `key`, first storing `make()` there if the key is absent (in
    /// storage: checked as [`PersistentMap::get_or_insert_with`] checks it).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let ids: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// assert_eq!(ids.get_or_insert_with("ada".into(), || 1).await?, 1);
    /// assert_eq!(ids.get_or_insert_with("ada".into(), || 2).await?, 1);
    /// # Ok(()) }));
    /// ```
    pub async fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> Result<V> {
        self.map.get_or_insert_with(key, make).await
    }

    /// Stores `new` under `key` (`None` removes it) only if storage holds `current` there, as
    /// [`PersistentMap::compare_exchange`] does: `Ok(previous)` when it wrote, `Err(actual)`
    /// with what storage holds when it did not.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// assert_eq!(map.compare_exchange(&"k".into(), None, Some(1)).await?, Ok(None));
    /// assert_eq!(map.compare_exchange(&"k".into(), None, Some(2)).await?, Err(Some(1)));
    /// # Ok(()) }));
    /// ```
    pub async fn compare_exchange(
        &self,
        key: &K,
        current: Option<&V>,
        new: Option<V>,
    ) -> Result<std::result::Result<Option<V>, Option<V>>> {
        self.map.compare_exchange(key, current, new).await
    }

    /// Stores every `(key, value)` pair as one all-or-nothing batch (for SQLite, one
    /// transaction), as [`PersistentMap::insert_many`] does.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<u32, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// map.insert_many((0..100).map(|i| (i, i * 2))).await?;
    /// assert_eq!(map.get(&99).await?, Some(198));
    /// # Ok(()) }));
    /// ```
    pub async fn insert_many(&self, entries: impl IntoIterator<Item = (K, V)>) -> Result<()> {
        self.map.insert_many(entries).await
    }

    /// Removes every key of `keys` as one all-or-nothing batch, and returns how many of them
    /// storage held.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<u32, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(1)).await?;
    /// map.insert_many([(1, 1), (2, 2), (3, 3)]).await?;
    /// assert_eq!(map.remove_many([1, 2, 9]).await?, 2);
    /// # Ok(()) }));
    /// ```
    pub async fn remove_many(&self, keys: impl IntoIterator<Item = K>) -> Result<usize> {
        self.map.remove_many(keys).await
    }

    /// Removes every entry, from storage and memory, as [`PersistentMap::clear`] does.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<u32, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// map.insert_many([(1, 1), (2, 2)]).await?;
    /// map.clear().await?;
    /// assert!(map.is_empty().await?);
    /// # Ok(()) }));
    /// ```
    pub async fn clear(&self) -> Result<()> {
        self.map.clear().await
    }

    /// Stores `value` under `key` until `ttl` from now, as [`PersistentMap::insert_with_ttl`].
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// use std::time::Duration;
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// map.insert_with_ttl("token".into(), 42, Duration::from_secs(1800)).await?;
    /// assert_eq!(map.get("token").await?, Some(42));
    /// # Ok(()) }));
    /// ```
    pub async fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) -> Result<Option<V>> {
        self.map.insert_with_ttl(key, value, ttl).await
    }

    /// Stores `value` under `key` until `deadline`, as [`PersistentMap::insert_until`].
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// use std::time::SystemTime;
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// map.insert_until("old".into(), 1, SystemTime::UNIX_EPOCH).await?;
    /// assert_eq!(map.get("old").await?, None); // expired at once
    /// # Ok(()) }));
    /// ```
    pub async fn insert_until(&self, key: K, value: V, deadline: SystemTime) -> Result<Option<V>> {
        self.map.insert_until(key, value, deadline).await
    }

    /// Gives the live entry under `key` a time to live of `ttl` from now, as
    /// [`PersistentMap::expire`]; whether there was such an entry.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// use std::time::Duration;
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// map.insert("a".into(), 1).await?;
    /// assert!(map.expire(&"a".into(), Duration::from_secs(60)).await?);
    /// assert!(!map.expire(&"b".into(), Duration::from_secs(60)).await?);
    /// # Ok(()) }));
    /// ```
    pub async fn expire(&self, key: &K, ttl: Duration) -> Result<bool> {
        self.map.expire(key, ttl).await
    }

    /// Like [`expire`](Self::expire), with the absolute time `deadline`.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// use std::time::{Duration, SystemTime};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// map.insert("a".into(), 1).await?;
    /// assert!(map.expire_at(&"a".into(), SystemTime::now() - Duration::from_secs(1)).await?);
    /// assert_eq!(map.get("a").await?, None);
    /// # Ok(()) }));
    /// ```
    pub async fn expire_at(&self, key: &K, deadline: SystemTime) -> Result<bool> {
        self.map.expire_at(key, deadline).await
    }

    /// Removes the time to live of the live entry under `key`, as [`PersistentMap::persist`];
    /// whether there was such an entry with one.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// use std::time::Duration;
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// map.insert_with_ttl("a".into(), 1, Duration::from_secs(60)).await?;
    /// assert!(map.persist(&"a".into()).await?);
    /// assert_eq!(map.ttl("a").await?, None);
    /// # Ok(()) }));
    /// ```
    pub async fn persist(&self, key: &K) -> Result<bool> {
        self.map.persist(key).await
    }

    /// This handle with a default time to live for what it writes, as
    /// [`PersistentMap::with_default_ttl`].
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// use std::time::Duration;
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// let map = map.with_default_ttl(Duration::from_secs(600))?;
    /// map.insert("a".into(), 1).await?;
    /// assert!(map.ttl("a").await?.is_some());
    /// assert_eq!(map.default_ttl(), Some(Duration::from_secs(600)));
    /// # Ok(()) }));
    /// ```
    pub fn with_default_ttl(self, ttl: Duration) -> Result<Self> {
        Ok(Self {
            map: self.map.with_default_ttl(ttl)?,
        })
    }

    /// This handle's default time to live (see [`with_default_ttl`](Self::with_default_ttl)).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// assert_eq!(map.default_ttl(), None);
    /// # Ok(()) }));
    /// ```
    pub fn default_ttl(&self) -> Option<Duration> {
        self.map.default_ttl()
    }

    /// Deletes every expired entry from storage now, as [`PersistentMap::sweep_expired`];
    /// how many rows were deleted.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// use std::time::SystemTime;
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// map.insert_until("gone".into(), 1, SystemTime::UNIX_EPOCH).await?;
    /// assert!(map.sweep_expired().await? <= 1); // 0 if the background sweep came first
    /// # Ok(()) }));
    /// ```
    pub async fn sweep_expired(&self) -> Result<usize> {
        self.map.sweep_expired().await
    }

    /// Subscribes to the map's changes from now on, as [`PersistentMap::subscribe`]: each
    /// committed write of this process, and each change a [refresh](Self::refresh) finds,
    /// whether or not memory holds the key.
    ///
    /// ```
    /// use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap, Change};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// let mut changes = map.subscribe();
    /// map.insert("a".into(), 1).await?;
    /// assert_eq!(changes.recv().await.unwrap(), Change::Inserted { key: "a".into(), value: 1 });
    /// # Ok(()) }));
    /// ```
    pub fn subscribe(&self) -> Subscription<K, V> {
        self.map.subscribe()
    }

    /// Catches up with what others (another process on the SQLite file, another instance on
    /// PostgreSQL) wrote, as [`PersistentMap::refresh`] does: the changed keys memory holds
    /// are read again; the others are left to be read when asked for. A backend that cannot
    /// tell what changed makes memory let go of everything it holds. Returns whether anything
    /// changed.
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, CacheCapacity, CachedMap};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("app.db");
    /// let map: CachedMap<String, u32, SqliteBackend> =
    ///     CachedMap::open(&path, CacheCapacity::entries(100)).await?;
    /// map.insert("n".into(), 1).await?;
    ///
    /// // Another process (here: another SQLite connection) writes the file.
    /// rusqlite::Connection::open(&path)?.execute("UPDATE kv SET value = '2' WHERE key = 'n'", [])?;
    /// assert!(map.refresh().await?);
    /// assert_eq!(map.get("n").await?, Some(2));
    /// # Ok(()) }));
    /// ```
    pub async fn refresh(&self) -> Result<bool> {
        self.map.refresh().await
    }

    /// Refreshes the map in the background, as [`PersistentMap::refresh_every`]; dropping the
    /// returned task stops it.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// use std::time::Duration;
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// let refresher = map.refresh_every(Duration::from_secs(1));
    /// assert!(refresher.take_error().is_none());
    /// # Ok(()) }));
    /// ```
    pub fn refresh_every(&self, interval: Duration) -> RefreshTask {
        self.map.refresh_every(interval)
    }

    /// Asks the backend to persist anything it buffers ([`StorageBackend::flush`]).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: CachedMap<String, u32, _> = CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// map.flush().await?;
    /// # Ok(()) }));
    /// ```
    pub async fn flush(&self) -> Result<(), PersistentError> {
        self.map.flush().await
    }

    /// The backend this map reads and writes.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, CacheCapacity, CachedMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: CachedMap<String, u32, _> =
    ///     CachedMap::new(InMemoryBackend::new(), CacheCapacity::entries(10)).await?;
    /// let _backend: &InMemoryBackend = map.backend();
    /// # Ok(()) }));
    /// ```
    pub fn backend(&self) -> &B {
        self.map.backend()
    }
}

impl<K, V, B> CachedMap<K, V, B>
where
    K: MapKey + ToString,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// Every stored entry, in the order of the key text, a page at a time, read from storage
    /// (see [`Scan`]): a table larger than memory is never held in memory at once, and memory
    /// is left as it was.
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, CacheCapacity, CachedMap};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let map: CachedMap<String, u32, SqliteBackend> =
    ///     CachedMap::open(dir.path().join("app.db"), CacheCapacity::entries(2)).await?;
    /// map.insert_many((0..10).map(|i| (format!("k{i}"), i))).await?;
    /// let mut scan = map.scan().page_size(3);
    /// let mut visited = 0;
    /// while let Some((_, _)) = scan.next().await? {
    ///     visited += 1;
    /// }
    /// assert_eq!(visited, 10);
    /// # Ok(()) }));
    /// ```
    pub fn scan(&self) -> Scan<K, V, B> {
        self.map.scan()
    }

    /// The stored entries whose key text starts with `prefix`, in the order of the key text, a
    /// page at a time, read from storage (see [`PersistentMap::scan_prefix`]).
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, CacheCapacity, CachedMap};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let map: CachedMap<String, u32, SqliteBackend> =
    ///     CachedMap::open(dir.path().join("app.db"), CacheCapacity::entries(100)).await?;
    /// map.insert_many([("acme:1".into(), 1), ("acme:2".into(), 2), ("globex:1".into(), 3)]).await?;
    /// let mut acme = map.scan_prefix("acme:");
    /// assert_eq!(acme.next_page().await?, Some(vec![("acme:1".into(), 1), ("acme:2".into(), 2)]));
    /// assert_eq!(acme.next_page().await?, None);
    /// # Ok(()) }));
    /// ```
    pub fn scan_prefix(&self, prefix: impl Into<String>) -> Scan<K, V, B> {
        self.map.scan_prefix(prefix)
    }
}

#[cfg(feature = "sqlite")]
impl<K, V> CachedMap<K, V, crate::sqlite::SqliteBackend>
where
    K: crate::PersistentKey + MapKey,
    V: MapValue,
{
    /// Opens (or creates) the SQLite database at `path` and the key type's table
    /// ([`K::TABLE_NAME`](crate::PersistentKey::TABLE_NAME)), keeping at most `capacity` of its
    /// entries in memory. Reads nothing of the table's rows: a 5M-row file opens in about the
    /// time an empty one does.
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, CacheCapacity, CachedMap};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let map: CachedMap<u64, String, SqliteBackend> =
    ///     CachedMap::open(dir.path().join("app.db"), CacheCapacity::entries(10_000)).await?;
    /// map.insert(1, "one".into()).await?;
    /// # Ok(()) }));
    /// ```
    pub async fn open(path: impl AsRef<Path>, capacity: CacheCapacity<K, V>) -> Result<Self> {
        let backend = crate::sqlite::SqliteBackend::for_key::<K>(path).await?;
        Self::new(backend, capacity).await
    }
}

#[cfg(feature = "postgres")]
impl<K, V> CachedMap<K, V, crate::postgres::PostgresBackend>
where
    K: crate::PersistentKey + MapKey,
    V: MapValue,
{
    /// Connects to the PostgreSQL database at `url` and the key type's table (created if
    /// missing), keeping at most `capacity` of its entries in memory; every instance of a
    /// fleet opens without loading the table. To follow what other instances write, keep a
    /// [`refresh_every`](Self::refresh_every) task.
    ///
    /// ```no_run
    /// use persistent_map::{postgres::PostgresBackend, CacheCapacity, CachedMap};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: CachedMap<String, u32, PostgresBackend> = CachedMap::open_postgres(
    ///     "postgres://postgres@127.0.0.1:5432/test",
    ///     CacheCapacity::entries(100_000),
    /// )
    /// .await?;
    /// let _follow = map.refresh_every(std::time::Duration::from_secs(10));
    /// # Ok(()) }));
    /// ```
    pub async fn open_postgres(url: &str, capacity: CacheCapacity<K, V>) -> Result<Self> {
        let backend = crate::postgres::PostgresBackend::for_key::<K>(url).await?;
        Self::new(backend, capacity).await
    }
}

impl<K, V, B> Clone for CachedMap<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
        }
    }
}

impl<K, V, B> fmt::Debug for CachedMap<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedMap")
            .field("cache", &self.cache_stats())
            .finish_non_exhaustive()
    }
}
