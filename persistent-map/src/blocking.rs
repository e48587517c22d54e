//! A blocking API over the same map, for programs without an async runtime (command-line
//! tools, synchronous servers, build scripts), in the manner of `reqwest::blocking` and the
//! `postgres` crate over `tokio-postgres`.
//!
//! [`PersistentMap`] here wraps the async [`crate::PersistentMap`]: reads are the same
//! memory-speed calls, and writes block the calling thread until the backend has committed
//! them, with the same guarantees (durable when `Ok`, nothing changed on error).
//!
//! ```
//! use persistent_map::{blocking::PersistentMap, sqlite::SqliteBackend};
//!
//! fn main() -> persistent_map::Result<()> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//!     let map: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path)?;
//!     map.insert("seven".into(), 7)?; // committed to SQLite when this returns Ok
//!     assert_eq!(map.get("seven"), Some(7));
//!     Ok(())
//! }
//! ```
//!
//! # The runtime
//!
//! Each map (with its clones) owns a private tokio runtime on a thread of its own, started by
//! the constructor and stopped when the last clone is dropped. A blocking call runs its work
//! on the calling thread while that runtime drives I/O and timers and runs the backend's
//! background tasks (the PostgreSQL backend's connection and its `LISTEN`, the sweep of expired
//! entries), which therefore go on between calls, as `reqwest::blocking` keeps its client's connections.
//!
//! A call that blocks (the constructors, the writes, [`snapshot`](PersistentMap::snapshot),
//! [`flush`](PersistentMap::flush), [`load`](PersistentMap::load),
//! [`refresh`](PersistentMap::refresh), [`sweep_expired`](PersistentMap::sweep_expired),
//! [`Subscription::recv`]) on a thread that is inside a
//! tokio runtime returns [`PersistentError::BlockingInAsyncContext`] and does nothing: blocking
//! there would stall the runtime's thread, or deadlock it. Use the async map there
//! ([`as_async`](PersistentMap::as_async)). This includes `spawn_blocking` threads, which run
//! inside their runtime's context. The reads never block and work anywhere.
//!
//! ```
//! use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend, PersistentError};
//!
//! let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
//! let runtime = tokio::runtime::Builder::new_current_thread().build()?;
//! let err = runtime.block_on(async { map.insert(1, 10) }).unwrap_err();
//! assert!(matches!(err, PersistentError::BlockingInAsyncContext { operation: "insert" }));
//! assert!(map.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::{MapKey, MapValue};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
#[cfg(feature = "sqlite")]
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use crate::{Change, Deadline, PersistentError, RecvError, RefreshTask, Result, StorageBackend};

/// The async [`crate::PersistentMap`] with writes that block the calling thread; see the
/// [module docs](self) for the runtime it brings.
///
/// Reads ([`get`](Self::get), [`get_with`](Self::get_with), [`contains_key`](Self::contains_key),
/// [`len`](Self::len), [`iter`](Self::iter), ...) are the async map's own, from memory. Every
/// other method blocks until the async map's future is done. Clones share the entries, the
/// backend and the runtime.
///
/// ```
/// use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
///
/// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
/// assert_eq!(map.insert("a".into(), 1)?, None);
/// assert_eq!(map.update(&"a".into(), |old| old.map(|n| n + 1))?, Some(2));
/// assert_eq!(map.get("a"), Some(2));
/// assert_eq!(map.remove(&"a".into())?, Some(2));
/// # Ok::<(), persistent_map::PersistentError>(())
/// ```
pub struct PersistentMap<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    map: crate::PersistentMap<K, V, B>,
    runtime: Arc<Runtime>,
}

impl<K, V, B> PersistentMap<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// Creates a map over `backend` and loads everything it holds, as
    /// [`crate::PersistentMap::new`] does.
    ///
    /// For a backend whose constructor is async (SQLite, PostgreSQL), use
    /// [`open_backend`](Self::open_backend), [`open`](Self::open) or
    /// [`open_with`](Self::open_with), so that it is made on the map's runtime.
    ///
    /// ```
    /// use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    ///
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// assert!(map.is_empty());
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn new(backend: B) -> Result<Self> {
        Self::start(
            "new",
            async move { crate::PersistentMap::new(backend).await },
        )
    }

    /// Makes the backend with `make` on the map's own runtime, then creates the map over it:
    /// the way to any backend and option, since a backend that starts background tasks (the
    /// PostgreSQL backend) must start them on the runtime that will go on running them.
    ///
    /// ```
    /// use persistent_map::{blocking::PersistentMap, sqlite::SqliteBackend};
    ///
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("app.db");
    /// let map: PersistentMap<String, u32, SqliteBackend> =
    ///     PersistentMap::open_backend(|| SqliteBackend::builder(&path).table("counters").open())?;
    /// assert_eq!(map.backend().table(), "counters");
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn open_backend<F, Fut>(make: F) -> Result<Self>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<B>>,
    {
        Self::start("open_backend", async move {
            crate::PersistentMap::new(make().await?).await
        })
    }

    /// Starts the map's runtime and runs `open` on it to make the async map; refused, naming
    /// the `constructor` that was called, on a thread inside a runtime.
    fn start(
        constructor: &'static str,
        open: impl Future<Output = Result<crate::PersistentMap<K, V, B>>>,
    ) -> Result<Self> {
        refuse_inside_async(constructor)?;
        let runtime = Arc::new(Runtime::start()?);
        let map = runtime.handle.block_on(open)?;
        Ok(PersistentMap { map, runtime })
    }

    /// The async map behind this one, to use inside async code (it shares the entries and
    /// the backend). It lives on this map's runtime: keep this map alive while you use it.
    ///
    /// ```
    /// use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    ///
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    /// runtime.block_on(map.as_async().insert(1, 10))?;
    /// assert_eq!(map.get(&1), Some(10));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_async(&self) -> &crate::PersistentMap<K, V, B> {
        &self.map
    }

    /// Runs `work` to completion on this thread, with the map's runtime driving I/O and
    /// timers; refused on a thread inside a runtime.
    /// (Boxed, so that tokio's `block_on` is compiled once per result type rather than once per
    /// method and map type: see `tasks`.)
    fn block_on<T>(&self, operation: &'static str, work: impl Future<Output = T>) -> Result<T> {
        refuse_inside_async(operation)?;
        let work: Pin<Box<dyn Future<Output = T> + '_>> = Box::pin(work);
        Ok(self.runtime.handle.block_on(work))
    }

    /// Re-reads everything the backend holds ([`crate::PersistentMap::load`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.load()?;
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn load(&self) -> Result<()> {
        self.block_on("load", self.map.load())?
    }

    /// Stores `value` under `key` and returns the value it replaced; blocks until the backend
    /// has committed it ([`crate::PersistentMap::insert`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// assert_eq!(map.insert(1, 10)?, None);
    /// assert_eq!(map.insert(1, 11)?, Some(10));
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn insert(&self, key: K, value: V) -> Result<Option<V>> {
        self.block_on("insert", self.map.insert(key, value))?
    }

    /// Removes `key` and returns its value; blocks until the backend has committed it
    /// ([`crate::PersistentMap::remove`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.insert(1, 10)?;
    /// assert_eq!(map.remove(&1)?, Some(10));
    /// assert_eq!(map.remove(&1)?, None);
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn remove(&self, key: &K) -> Result<Option<V>> {
        self.block_on("remove", self.map.remove(key))?
    }

    /// Sets `key` to what `change` makes of its current value (`None`: absent, or remove it),
    /// atomically, and returns the new value ([`crate::PersistentMap::update`]). `change` may
    /// be called more than once, so it should only compute.
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let hits: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// let bump = |old: Option<&u32>| Some(old.copied().unwrap_or(0) + 1);
    /// assert_eq!(hits.update(&"home".to_string(), bump)?, Some(1));
    /// assert_eq!(hits.update(&"home".to_string(), bump)?, Some(2));
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn update(
        &self,
        key: &K,
        change: impl FnMut(Option<&V>) -> Option<V>,
    ) -> Result<Option<V>> {
        self.block_on("update", self.map.update(key, change))?
    }

    /// Returns the value under `key`, first storing `make()` there if the key is absent
    /// ([`crate::PersistentMap::get_or_insert_with`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let ids: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// assert_eq!(ids.get_or_insert_with("ada".to_string(), || 1)?, 1);
    /// assert_eq!(ids.get_or_insert_with("ada".to_string(), || 2)?, 1);
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> Result<V> {
        self.block_on("get_or_insert_with", self.map.get_or_insert_with(key, make))?
    }

    /// Stores every pair as one all-or-nothing batch ([`crate::PersistentMap::insert_many`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.insert_many((0..10).map(|i| (i, i * i)))?;
    /// assert_eq!(map.get(&3), Some(9));
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn insert_many(&self, entries: impl IntoIterator<Item = (K, V)>) -> Result<()> {
        self.block_on("insert_many", self.map.insert_many(entries))?
    }

    /// Removes every key given as one all-or-nothing batch and returns how many were present
    /// ([`crate::PersistentMap::remove_many`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.insert_many([(1, 1), (2, 2)])?;
    /// assert_eq!(map.remove_many([1, 2, 3])?, 2);
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn remove_many(&self, keys: impl IntoIterator<Item = K>) -> Result<usize> {
        self.block_on("remove_many", self.map.remove_many(keys))?
    }

    /// Keeps only the entries for which `keep` is true, removing the others as one batch, and
    /// returns how many were removed ([`crate::PersistentMap::retain`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.insert_many((0..10).map(|i| (i, i)))?;
    /// assert_eq!(map.retain(|_, value| value % 2 == 0)?, 5);
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn retain(&self, keep: impl FnMut(&K, &V) -> bool) -> Result<usize> {
        self.block_on("retain", self.map.retain(keep))?
    }

    /// Removes every entry ([`crate::PersistentMap::clear`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.insert(1, 1)?;
    /// map.clear()?;
    /// assert!(map.is_empty());
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn clear(&self) -> Result<()> {
        self.block_on("clear", self.map.clear())?
    }

    /// This handle with a default time to live: every later write of it that stores a value
    /// gives it a deadline `ttl` after the write ([`crate::PersistentMap::with_default_ttl`]).
    /// Clones made from the returned handle keep the default; other handles are not affected.
    /// It does not block, so it works anywhere.
    ///
    /// Fails with [`PersistentError::ExpiryUnsupported`] if the backend does not store
    /// deadlines.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    ///
    /// let sessions: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// let sessions = sessions.with_default_ttl(Duration::from_secs(600))?;
    /// assert_eq!(sessions.default_ttl(), Some(Duration::from_secs(600)));
    /// sessions.insert("token-1".into(), 42)?;
    /// assert!(sessions.ttl("token-1").unwrap() <= Duration::from_secs(600));
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn with_default_ttl(self, ttl: Duration) -> Result<Self> {
        Ok(PersistentMap {
            map: self.map.with_default_ttl(ttl)?,
            runtime: self.runtime,
        })
    }

    /// This handle's default time to live ([`crate::PersistentMap::default_ttl`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// assert_eq!(map.default_ttl(), None);
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn default_ttl(&self) -> Option<Duration> {
        self.map.default_ttl()
    }

    /// Stores `value` under `key` until `ttl` from now and returns the value it replaced;
    /// blocks until the backend has committed it ([`crate::PersistentMap::insert_with_ttl`]).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let sessions: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// sessions.insert_with_ttl("token-1".into(), 42, Duration::from_secs(1800))?;
    /// assert_eq!(sessions.get("token-1"), Some(42));
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) -> Result<Option<V>> {
        self.block_on("insert_with_ttl", self.map.insert_with_ttl(key, value, ttl))?
    }

    /// Stores `value` under `key` until the absolute time `deadline` and returns the value it
    /// replaced; blocks until the backend has committed it
    /// ([`crate::PersistentMap::insert_until`]). A deadline already past stores the entry
    /// already expired.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    ///
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let leases: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// let until = SystemTime::now() + Duration::from_secs(30);
    /// leases.insert_until("scheduler".into(), 1, until)?; // held by node 1
    /// assert!(leases.contains_key("scheduler"));
    /// leases.insert_until("old".into(), 2, SystemTime::UNIX_EPOCH)?;
    /// assert!(!leases.contains_key("old"));
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn insert_until(&self, key: K, value: V, deadline: SystemTime) -> Result<Option<V>> {
        self.block_on("insert_until", self.map.insert_until(key, value, deadline))?
    }

    /// Gives the live entry under `key` a time to live of `ttl` from now and returns whether
    /// there was such an entry; blocks until the backend has committed it
    /// ([`crate::PersistentMap::expire`]).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.insert("a".into(), 1)?;
    /// assert!(map.expire(&"a".into(), Duration::from_secs(60))?);
    /// assert!(map.ttl("a").is_some());
    /// assert!(!map.expire(&"missing".into(), Duration::from_secs(60))?);
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn expire(&self, key: &K, ttl: Duration) -> Result<bool> {
        self.block_on("expire", self.map.expire(key, ttl))?
    }

    /// Like [`expire`](Self::expire), with the absolute time `deadline`
    /// ([`crate::PersistentMap::expire_at`]).
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    ///
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.insert("a".into(), 1)?;
    /// assert!(map.expire_at(&"a".into(), SystemTime::now() - Duration::from_secs(1))?);
    /// assert_eq!(map.get("a"), None); // expired at once
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn expire_at(&self, key: &K, deadline: SystemTime) -> Result<bool> {
        self.block_on("expire_at", self.map.expire_at(key, deadline))?
    }

    /// Removes the time to live of the live entry under `key`, so that it never expires, and
    /// returns whether there was such an entry; blocks until the backend has committed it
    /// ([`crate::PersistentMap::persist`]).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.insert_with_ttl("a".into(), 1, Duration::from_secs(60))?;
    /// assert!(map.persist(&"a".into())?);
    /// assert_eq!(map.ttl("a"), None);
    /// assert_eq!(map.get("a"), Some(1));
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn persist(&self, key: &K) -> Result<bool> {
        self.block_on("persist", self.map.persist(key))?
    }

    /// The time left before the entry under `key` expires: `None` if the key is absent (or
    /// expired) or never expires. From memory, so it works anywhere
    /// ([`crate::PersistentMap::ttl`]).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.insert_with_ttl("a".into(), 1, Duration::from_secs(60))?;
    /// map.insert("b".into(), 2)?;
    /// assert!(map.ttl("a").unwrap() <= Duration::from_secs(60));
    /// assert_eq!(map.ttl("b"), None);
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn ttl<Q>(&self, key: &Q) -> Option<Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.ttl(key)
    }

    /// When the live entry under `key` expires: `None` if the key is absent (or expired) or
    /// never expires. From memory, so it works anywhere ([`crate::PersistentMap::deadline`]).
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    ///
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// let until = SystemTime::now() + Duration::from_secs(60);
    /// map.insert_until("a".into(), 1, until)?;
    /// assert!(map.deadline("a").unwrap().to_system_time() >= until);
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn deadline<Q>(&self, key: &Q) -> Option<Deadline>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.deadline(key)
    }

    /// Deletes every expired entry from storage now, drops expired entries from memory, and
    /// returns how many rows were deleted from storage; blocks until it is done
    /// ([`crate::PersistentMap::sweep_expired`]). The map also sweeps in the background, on a
    /// thread of its own, every second while it holds an entry with a deadline.
    ///
    /// ```
    /// use std::time::SystemTime;
    ///
    /// use persistent_map::{blocking::PersistentMap, sqlite::SqliteBackend};
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let map: PersistentMap<String, u32, SqliteBackend> =
    ///     PersistentMap::open(dir.path().join("a.db"))?;
    /// map.insert_until("gone".into(), 1, SystemTime::UNIX_EPOCH)?;
    /// assert!(map.sweep_expired()? <= 1); // 0 if the background sweep came first
    /// assert_eq!(map.sweep_expired()?, 0);
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn sweep_expired(&self) -> Result<usize> {
        self.block_on("sweep_expired", self.map.sweep_expired())?
    }

    /// A copy of the value under `key`, from memory ([`crate::PersistentMap::get`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.insert("a".into(), 1)?;
    /// assert_eq!(map.get("a"), Some(1));
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key)
    }

    /// What `read` makes of the value under `key`, without copying the value
    /// ([`crate::PersistentMap::get_with`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.insert("a".into(), 21)?;
    /// assert_eq!(map.get_with("a", |value| value * 2), Some(42));
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn get_with<Q, R>(&self, key: &Q, read: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get_with(key, read)
    }

    /// Whether `key` has a value ([`crate::PersistentMap::contains_key`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.insert(1, 1)?;
    /// assert!(map.contains_key(&1));
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.contains_key(key)
    }

    /// How many entries the map holds.
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.insert(1, 1)?;
    /// assert_eq!(map.len(), 1);
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the map holds no entry.
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// assert!(map.is_empty());
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A copy of every entry, in no particular order ([`crate::PersistentMap::iter`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.insert_many([(1, 10), (2, 20)])?;
    /// let total: u32 = map.iter().map(|(_, value)| value).sum();
    /// assert_eq!(total, 30);
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn iter(&self) -> std::vec::IntoIter<(K, V)> {
        self.map.iter()
    }

    /// A copy of every key ([`crate::PersistentMap::keys`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.insert_many([(1, 10), (2, 20)])?;
    /// let mut keys: Vec<u32> = map.keys().collect();
    /// keys.sort();
    /// assert_eq!(keys, [1, 2]);
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn keys(&self) -> std::vec::IntoIter<K> {
        self.map.keys()
    }

    /// A copy of every value ([`crate::PersistentMap::values`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.insert(1, 10)?;
    /// assert_eq!(map.values().collect::<Vec<_>>(), [10]);
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn values(&self) -> std::vec::IntoIter<V> {
        self.map.values()
    }

    /// A consistent copy of the whole map: no write is half-seen
    /// ([`crate::PersistentMap::snapshot`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.insert_many([(1, 10), (2, 20)])?;
    /// assert_eq!(map.snapshot()?[&2], 20);
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn snapshot(&self) -> Result<HashMap<K, V>> {
        self.block_on("snapshot", self.map.snapshot())
    }

    /// Subscribes to the map's committed changes from now on
    /// ([`crate::PersistentMap::subscribe`]), to be received by blocking or polling.
    ///
    /// ```
    /// use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend, Change};
    ///
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// let mut changes = map.subscribe();
    /// map.insert("a".into(), 1)?;
    /// assert_eq!(changes.recv()?, Change::Inserted { key: "a".into(), value: 1 });
    /// assert_eq!(changes.try_recv()?, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscribe(&self) -> Subscription<K, V> {
        Subscription {
            changes: self.map.subscribe(),
            runtime: Arc::clone(&self.runtime),
        }
    }

    /// Catches up with changes that others made to the storage, and returns whether it re-read
    /// anything ([`crate::PersistentMap::refresh`]).
    ///
    /// ```
    /// use persistent_map::{blocking::PersistentMap, sqlite::SqliteBackend};
    ///
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("app.db");
    /// let map: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path)?;
    /// rusqlite::Connection::open(&path)?.execute("INSERT INTO kv VALUES ('other', '5')", [])?;
    /// assert!(map.refresh()?);
    /// assert_eq!(map.get("other"), Some(5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn refresh(&self) -> Result<bool> {
        self.block_on("refresh", self.map.refresh())?
    }

    /// Refreshes the map in the background on its runtime, every `interval` and whenever the
    /// backend signals a change ([`crate::PersistentMap::refresh_every`]); dropping the
    /// returned task stops it. It does not block, so it works anywhere.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    ///
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// let refresher = map.refresh_every(Duration::from_secs(1));
    /// assert!(refresher.take_error().is_none());
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn refresh_every(&self, interval: Duration) -> RefreshTask {
        let _runtime = self.runtime.handle.enter();
        self.map.refresh_every(interval)
    }

    /// Asks the backend to persist anything it buffers ([`crate::PersistentMap::flush`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// map.flush()?;
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn flush(&self) -> Result<()> {
        self.block_on("flush", self.map.flush())?
    }

    /// The backend this map writes to.
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// let _backend: &InMemoryBackend = map.backend();
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn backend(&self) -> &B {
        self.map.backend()
    }
}

#[cfg(feature = "sqlite")]
impl<K, V> PersistentMap<K, V, crate::sqlite::SqliteBackend>
where
    K: crate::PersistentKey + MapKey,
    V: MapValue,
{
    /// Opens (or creates) the SQLite database at `path` and loads the map stored in the key
    /// type's table ([`crate::PersistentMap::open`]).
    ///
    /// ```
    /// use persistent_map::{blocking::PersistentMap, sqlite::SqliteBackend};
    ///
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("app.db");
    /// let map: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path)?;
    /// map.insert("a".into(), 1)?;
    /// drop(map);
    /// let reopened: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path)?;
    /// assert_eq!(reopened.get("a"), Some(1));
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::start("open", crate::SqliteOptions::new().open(path))
    }

    /// Opens (or creates) the SQLite database at `path` and loads the map, with `options`
    /// ([`crate::PersistentMap::open_with`]).
    ///
    /// ```
    /// use persistent_map::blocking::PersistentMap;
    /// use persistent_map::sqlite::{Durability, SqliteBackend};
    /// use persistent_map::SqliteOptions;
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let options = SqliteOptions::new().table("visits").durability(Durability::Normal);
    /// let map: PersistentMap<String, u32, SqliteBackend> =
    ///     PersistentMap::open_with(dir.path().join("app.db"), options)?;
    /// assert_eq!(map.backend().table(), "visits");
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn open_with(path: impl AsRef<Path>, options: crate::SqliteOptions) -> Result<Self> {
        Self::start("open_with", options.open(path))
    }
}

#[cfg(feature = "postgres")]
impl<K, V> PersistentMap<K, V, crate::postgres::PostgresBackend>
where
    K: crate::PersistentKey + MapKey,
    V: MapValue,
{
    /// Connects to the PostgreSQL database at `url` and loads the map stored in the key type's
    /// table ([`crate::PersistentMap::open_postgres`]). The connection is kept, and the other
    /// instances' changes listened for, on the map's runtime between calls.
    ///
    /// ```no_run
    /// use persistent_map::{blocking::PersistentMap, postgres::PostgresBackend};
    ///
    /// let map: PersistentMap<u64, String, PostgresBackend> =
    ///     PersistentMap::open_postgres("postgres://postgres@127.0.0.1:5432/test")?;
    /// map.insert(7, "seven".into())?;
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn open_postgres(url: &str) -> Result<Self> {
        Self::start("open_postgres", crate::PostgresOptions::new().connect(url))
    }

    /// Connects to the PostgreSQL database at `url` and loads the map, with `options`
    /// ([`crate::PersistentMap::open_postgres_with`]).
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// use persistent_map::{blocking::PersistentMap, postgres::PostgresBackend, PostgresOptions};
    ///
    /// let options = PostgresOptions::new().connect_timeout(Duration::from_secs(2));
    /// let map: PersistentMap<u64, String, PostgresBackend> =
    ///     PersistentMap::open_postgres_with("postgres://postgres@127.0.0.1:5432/test", options)?;
    /// # let _ = map;
    /// # Ok::<(), persistent_map::PersistentError>(())
    /// ```
    pub fn open_postgres_with(url: &str, options: crate::PostgresOptions) -> Result<Self> {
        Self::start("open_postgres_with", options.connect(url))
    }
}

impl<K, V, B> Clone for PersistentMap<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    fn clone(&self) -> Self {
        PersistentMap {
            map: self.map.clone(),
            runtime: Arc::clone(&self.runtime),
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
        f.debug_struct("blocking::PersistentMap")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// A blocking [`crate::Subscription`]: the changes of one map, received by blocking or polling;
/// made by [`PersistentMap::subscribe`].
///
/// ```
/// use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend, Change};
///
/// let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
/// let mut changes = map.subscribe();
/// map.insert(1, 10)?;
/// assert_eq!(changes.recv()?, Change::Inserted { key: 1, value: 10 });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Subscription<K, V> {
    changes: crate::Subscription<K, V>,
    runtime: Arc<Runtime>,
}

impl<K: Clone, V: Clone> Subscription<K, V> {
    /// Blocks until the next change ([`crate::Subscription::recv`]). Inside a runtime it
    /// returns [`PersistentError::BlockingInAsyncContext`] (as a
    /// [`RecvError::Blocking`](BlockingRecvError::Blocking)) instead of blocking.
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend, Change};
    /// # let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// let mut changes = map.subscribe();
    /// map.insert(1, 10)?;
    /// assert_eq!(changes.recv()?, Change::Inserted { key: 1, value: 10 });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv(&mut self) -> std::result::Result<Change<K, V>, BlockingRecvError> {
        refuse_inside_async("Subscription::recv").map_err(BlockingRecvError::Blocking)?;
        self.runtime
            .handle
            .block_on(self.changes.recv())
            .map_err(BlockingRecvError::Recv)
    }

    /// The next change if one is waiting, else `None`, without blocking
    /// ([`crate::Subscription::try_recv`]).
    ///
    /// ```
    /// # use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend};
    /// # let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new())?;
    /// let mut changes = map.subscribe();
    /// assert_eq!(changes.try_recv()?, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_recv(&mut self) -> std::result::Result<Option<Change<K, V>>, RecvError> {
        self.changes.try_recv()
    }
}

impl<K, V> fmt::Debug for Subscription<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("blocking::Subscription")
            .finish_non_exhaustive()
    }
}

/// Why [`Subscription::recv`] returned no change.
///
/// ```
/// use persistent_map::blocking::BlockingRecvError;
/// use persistent_map::RecvError;
///
/// let err = BlockingRecvError::Recv(RecvError::Closed);
/// assert_eq!(err.to_string(), RecvError::Closed.to_string());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlockingRecvError {
    /// The subscription's own error: it lagged behind, or the map is gone.
    #[error(transparent)]
    Recv(RecvError),
    /// `recv` was called inside an async runtime and did not block.
    #[error(transparent)]
    Blocking(PersistentError),
}

/// The map's private runtime: a current-thread tokio runtime that a thread of its own keeps
/// running (driving I/O and timers, running spawned tasks) until the last map handle is gone.
struct Runtime {
    handle: tokio::runtime::Handle,
    /// Dropped with the last handle, which ends the runtime's thread.
    _stop: oneshot::Sender<()>,
}

impl Runtime {
    fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("persistent-map-blocking".into())
            .spawn(move || {
                // Ends when the sender is dropped; dropping the runtime then cancels its tasks.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Runtime {
            handle,
            _stop: stop,
        })
    }
}

/// Refuses to block a thread that is inside a tokio runtime.
fn refuse_inside_async(operation: &'static str) -> Result<()> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => Err(PersistentError::BlockingInAsyncContext { operation }),
        Err(_) => Ok(()),
    }
}
