//! The map: entries in memory, every write through to a backend first.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash, RandomState};
use std::path::Path;
use std::sync::Arc;

use dashmap::DashMap;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{Mutex, MutexGuard};

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
///
/// The map is a cheap handle: clones share the same entries and backend.
///
/// ```
/// use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> persistent_map::Result<()> {
/// let map: PersistentMap<String, String, _> = PersistentMap::new(InMemoryBackend::new()).await?;
/// assert_eq!(map.insert("k".into(), "v1".into()).await?, None);
/// assert_eq!(map.insert("k".into(), "v2".into()).await?, Some("v1".into()));
/// assert_eq!(map.get("k"), Some("v2".to_string()));
/// assert_eq!(map.remove(&"k".to_string()).await?, Some("v2".into()));
/// assert!(map.is_empty());
/// # Ok(())
/// # }
/// ```
pub struct PersistentMap<K, V, B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    inner: Arc<Inner<K, V, B>>,
}

struct Inner<K, V, B> {
    entries: DashMap<K, V>,
    key_locks: KeyLocks,
    backend: B,
}

impl<K, V, B> PersistentMap<K, V, B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// Creates a map over `backend` and loads everything the backend holds.
    ///
    /// Fails if the backend cannot load, for instance when a stored row no longer parses; the
    /// error names the row and nothing stored is changed.
    ///
    /// ```
    /// use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let map: PersistentMap<u32, String, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// assert!(map.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn new(backend: B) -> Result<Self> {
        let entries = DashMap::new();
        backend
            .load_each(&mut |key, value| {
                entries.insert(key, value);
            })
            .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                entries,
                key_locks: KeyLocks::new(),
                backend,
            }),
        })
    }

    /// Makes the map equal to what the backend holds now, discarding in-memory entries that are
    /// no longer stored.
    ///
    /// Writes from this map wait while it runs. Use it when something else (another process,
    /// the backend used directly) has changed the storage. On error the map is unchanged.
    ///
    /// ```
    /// use persistent_map::{in_memory::InMemoryBackend, PersistentMap, StorageBackend};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let backend = InMemoryBackend::new();
    /// let map: PersistentMap<String, u8, _> = PersistentMap::new(backend.clone()).await?;
    /// backend.save("written-elsewhere".to_string(), 7u8).await?;
    /// assert_eq!(map.get("written-elsewhere"), None);
    /// map.load().await?;
    /// assert_eq!(map.get("written-elsewhere"), Some(7));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn load(&self) -> Result<(), PersistentError> {
        let inner = Arc::clone(&self.inner);
        run_to_completion(async move {
            let _all_keys = inner.key_locks.lock_all().await;
            let mut stored = HashMap::new();
            inner
                .backend
                .load_each(&mut |key, value| {
                    stored.insert(key, value);
                })
                .await?;
            inner.entries.retain(|key, _| stored.contains_key(key));
            for (key, value) in stored {
                inner.entries.insert(key, value);
            }
            Ok(())
        })
        .await
    }

    /// Stores `value` under `key`, then returns the value it replaced.
    ///
    /// When this resolves `Ok`, the backend has the write (for SQLite: committed and synced to
    /// disk); when it resolves `Err`, neither the backend nor the map changed.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// assert_eq!(map.insert("a".to_string(), 1).await?, None);
    /// assert_eq!(map.insert("a".to_string(), 2).await?, Some(1));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn insert(&self, key: K, value: V) -> Result<Option<V>> {
        let inner = Arc::clone(&self.inner);
        run_to_completion(async move {
            let _key = inner.key_locks.lock(&key).await;
            inner.backend.save(key.clone(), value.clone()).await?;
            Ok(inner.entries.insert(key, value))
        })
        .await
    }

    /// Removes `key` from the backend, then from the map, and returns the value it held.
    ///
    /// The delete reaches the backend even when the map does not hold the key, so a key written
    /// to storage by someone else is removed too.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert("a".to_string(), 1).await?;
    /// assert_eq!(map.remove(&"a".to_string()).await?, Some(1));
    /// assert_eq!(map.remove(&"a".to_string()).await?, None);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn remove(&self, key: &K) -> Result<Option<V>> {
        let inner = Arc::clone(&self.inner);
        let key = key.clone();
        run_to_completion(async move {
            let _key = inner.key_locks.lock(&key).await;
            inner.backend.delete(&key).await?;
            Ok(inner.entries.remove(&key).map(|(_, value)| value))
        })
        .await
    }

    /// Returns a clone of the value under `key`, from memory.
    ///
    /// Never waits for the backend, and sees only acknowledged writes.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert("a".to_string(), 1).await?;
    /// assert_eq!(map.get("a"), Some(1)); // a &str works for String keys
    /// assert_eq!(map.get(&"b".to_string()), None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_with(key, V::clone)
    }

    /// Calls `read` with a reference to the value under `key`, without cloning it, and returns
    /// what `read` returns.
    ///
    /// `read` runs while a shard of the map is read-locked: keep it short, and do not write to
    /// this map from inside it.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let map: PersistentMap<String, Vec<u8>, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert("blob".to_string(), vec![0; 1024]).await?;
    /// assert_eq!(map.get_with("blob", |bytes| bytes.len()), Some(1024));
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_with<Q, R>(&self, key: &Q, read: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.entries.get(key).map(|entry| read(entry.value()))
    }

    /// Whether the map holds `key`.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert("a".to_string(), 1).await?;
    /// assert!(map.contains_key("a"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.entries.contains_key(key)
    }

    /// The number of entries.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert("a".to_string(), 1).await?;
    /// assert_eq!(map.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn len(&self) -> usize {
        self.inner.entries.len()
    }

    /// Whether the map has no entries.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// assert!(map.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.inner.entries.is_empty()
    }

    /// Asks the backend to persist anything it buffers ([`StorageBackend::flush`]).
    ///
    /// Every acknowledged write is already stored, so this is only needed for backends that
    /// buffer; the SQLite backend returns once the writes queued before the call are committed.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.flush().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn flush(&self) -> Result<(), PersistentError> {
        self.inner.backend.flush().await
    }

    /// The backend this map writes to.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// let _backend: &InMemoryBackend = map.backend();
    /// # Ok(())
    /// # }
    /// ```
    pub fn backend(&self) -> &B {
        &self.inner.backend
    }
}

#[cfg(feature = "sqlite")]
impl<K, V> PersistentMap<K, V, crate::sqlite::SqliteBackend>
where
    K: crate::PersistentKey
        + Eq
        + Hash
        + Clone
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Opens (or creates) the SQLite database at `path` and loads the map stored in the key
    /// type's table, [`K::TABLE_NAME`](crate::PersistentKey::TABLE_NAME).
    ///
    /// The one-line way in; for options (durability, another table) build a
    /// [`SqliteBackend`](crate::sqlite::SqliteBackend) and call [`new`](Self::new).
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, PersistentMap};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("app.db");
    /// // String keys live in the table `kv`.
    /// let map: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path).await?;
    /// map.insert("a".to_string(), 1).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(crate::sqlite::SqliteBackend::for_key::<K>(path).await?).await
    }
}

impl<K, V, B> Clone for PersistentMap<K, V, B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V, B> fmt::Debug for PersistentMap<K, V, B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistentMap")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// Runs a write on its own task, so that dropping the caller's future cannot stop it between the
/// backend's `Ok` and the change in memory. Outside a tokio runtime it runs in place.
async fn run_to_completion<T, F>(write: F) -> Result<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return write.await;
    };
    match runtime.spawn(write).await {
        Ok(result) => result,
        Err(join_error) => match join_error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_cancelled) => Err(PersistentError::Backend(
                "the write was cancelled because the tokio runtime is shutting down; \
                 reopen the map to see what was stored"
                    .into(),
            )),
        },
    }
}

/// Serializes writes per key: a write holds its key's stripe from before the backend call until
/// memory is updated, so two writes of one key reach storage and memory in the same order.
///
/// Keys are spread over many stripes so that writes to different keys rarely wait on each other;
/// several stripes are always taken in ascending order, so lockers cannot deadlock.
struct KeyLocks {
    hasher: RandomState,
    stripes: Box<[Mutex<()>]>,
}

const KEY_LOCK_STRIPES: usize = 1024;

impl KeyLocks {
    fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            stripes: (0..KEY_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    fn stripe_of<K: Hash>(&self, key: &K) -> usize {
        // The modulo keeps the index in range; truncating the hash first loses nothing we need.
        (self.hasher.hash_one(key) as usize) % self.stripes.len()
    }

    async fn lock<K: Hash>(&self, key: &K) -> MutexGuard<'_, ()> {
        self.stripes[self.stripe_of(key)].lock().await
    }

    async fn lock_all(&self) -> Vec<MutexGuard<'_, ()>> {
        let mut guards = Vec::with_capacity(self.stripes.len());
        for stripe in self.stripes.iter() {
            guards.push(stripe.lock().await);
        }
        guards
    }
}
