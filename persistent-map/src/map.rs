//! The map: entries in memory, every write through to a backend first.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use serde::{de::DeserializeOwned, Serialize};

use crate::changes::{ChangeFeed, Subscription};
use crate::completion::run_to_completion;
use crate::key_locks::{KeyGuard, KeyLocks};
use crate::{BatchOp, Change, ExternalChanges, PersistentError, Result, StorageBackend};

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
///   [`get_or_insert_with`](Self::get_or_insert_with)), iteration ([`iter`](Self::iter),
///   [`snapshot`](Self::snapshot)), a stream of committed changes ([`subscribe`](Self::subscribe))
///   and catching up with other processes ([`refresh`](Self::refresh),
///   [`refresh_every`](Self::refresh_every)).
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
    changes: ChangeFeed<K, V>,
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
        let entries = DashMap::with_capacity(room_for(backend.len_hint().await));
        let mut duplicates = Duplicates::default();
        backend
            .load_each(&mut |key, value| match entries.entry(key) {
                dashmap::Entry::Vacant(vacant) => drop(vacant.insert(value)),
                dashmap::Entry::Occupied(occupied) => duplicates.saw(occupied.key()),
            })
            .await?;
        duplicates.check()?;
        Ok(Self {
            inner: Arc::new(Inner {
                entries,
                key_locks: KeyLocks::new(),
                changes: ChangeFeed::new(),
                backend,
            }),
        })
    }

    /// Makes the map equal to what the backend holds now, discarding in-memory entries that are
    /// no longer stored.
    ///
    /// Writes from this map wait while it runs. Use it when something else (another process,
    /// the backend used directly) has changed the storage; [`refresh`](Self::refresh) does the
    /// same only when something changed. On error the map is unchanged. Subscribers hear
    /// [`Change::Reloaded`].
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
        let all_keys = self.inner.key_locks.lock_all().await;
        let inner = Arc::clone(&self.inner);
        run_to_completion(async move {
            let _all_keys = all_keys;
            inner.reload().await
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
        self.write(BatchOp::Save(key, value)).await
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
        self.write(BatchOp::Delete(key.clone())).await
    }

    /// Atomically replaces the value under `key` with what `change` makes of it, and returns the
    /// new value.
    ///
    /// `change` gets the current value (`None` if absent) and returns the new one (`None`
    /// removes the key). No other write of `key` can come between the read and the write, so
    /// concurrent updates are never lost. Returning `None` for an absent key writes nothing.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let hits: PersistentMap<String, u64, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// let bump = |old: Option<&u64>| Some(old.copied().unwrap_or(0) + 1);
    /// assert_eq!(hits.update(&"home".to_string(), bump).await?, Some(1));
    /// assert_eq!(hits.update(&"home".to_string(), bump).await?, Some(2));
    /// assert_eq!(hits.update(&"home".to_string(), |_| None).await?, None); // removed
    /// assert!(hits.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn update(
        &self,
        key: &K,
        change: impl FnOnce(Option<&V>) -> Option<V>,
    ) -> Result<Option<V>> {
        let guard = self.inner.key_locks.lock(key).await;
        let current = self.get(key);
        match change(current.as_ref()) {
            Some(value) => {
                self.commit(guard, BatchOp::Save(key.clone(), value.clone()))
                    .await?;
                Ok(Some(value))
            }
            None if current.is_some() => {
                self.commit(guard, BatchOp::Delete(key.clone())).await?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Returns the value under `key`, first storing `make()` there if the key is absent.
    ///
    /// `make` runs only when the key is absent, and no other write of `key` can come between the
    /// check and the insert.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let ids: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// assert_eq!(ids.get_or_insert_with("ada".to_string(), || 1).await?, 1);
    /// assert_eq!(ids.get_or_insert_with("ada".to_string(), || 2).await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> Result<V> {
        let guard = self.inner.key_locks.lock(&key).await;
        if let Some(value) = self.get(&key) {
            return Ok(value);
        }
        let value = make();
        self.commit(guard, BatchOp::Save(key, value.clone()))
            .await?;
        Ok(value)
    }

    /// Stores every `(key, value)` pair as one all-or-nothing batch (for SQLite, one
    /// transaction): on error nothing changed, in memory or in storage. A key given twice keeps
    /// its last value.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let map: PersistentMap<u32, String, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert_many((0..100).map(|i| (i, format!("item {i}")))).await?;
    /// assert_eq!(map.len(), 100);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn insert_many(&self, entries: impl IntoIterator<Item = (K, V)>) -> Result<()> {
        let ops = entries
            .into_iter()
            .map(|(key, value)| BatchOp::Save(key, value))
            .collect();
        self.write_batch(ops).await.map(drop)
    }

    /// Removes every key of `keys` as one all-or-nothing batch, and returns how many of them the
    /// map held.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert_many([(1, 1), (2, 2), (3, 3)]).await?;
    /// assert_eq!(map.remove_many([1, 2, 9]).await?, 2);
    /// assert_eq!(map.keys().collect::<Vec<_>>(), [3]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn remove_many(&self, keys: impl IntoIterator<Item = K>) -> Result<usize> {
        self.write_batch(keys.into_iter().map(BatchOp::Delete).collect())
            .await
    }

    /// Keeps only the entries for which `keep` returns `true`, removing the others as one
    /// all-or-nothing batch, and returns how many were removed.
    ///
    /// Other writes wait while `keep` runs over the map.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert_many((0..10).map(|i| (i, i * i))).await?;
    /// assert_eq!(map.retain(|_, square| *square < 20).await?, 5);
    /// assert_eq!(map.len(), 5);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) -> Result<usize> {
        let all_keys = self.inner.key_locks.lock_all().await;
        let doomed: Vec<BatchOp<K, V>> = self
            .inner
            .entries
            .iter()
            .filter(|entry| !keep(entry.key(), entry.value()))
            .map(|entry| BatchOp::Delete(entry.key().clone()))
            .collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        self.commit_batch(all_keys, doomed).await
    }

    /// Removes every entry, from storage too (for SQLite, one `DELETE` in one transaction).
    ///
    /// Unlike persistent-map 0.1.3's `clear`, which emptied only memory (and so was undone by
    /// the next load), this empties the backend first. Subscribers hear [`Change::Cleared`].
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap, StorageBackend};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let backend = InMemoryBackend::new();
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(backend.clone()).await?;
    /// map.insert_many([(1, 1), (2, 2)]).await?;
    /// map.clear().await?;
    /// assert!(map.is_empty());
    /// let stored: std::collections::HashMap<u32, u32> = backend.load_all().await?;
    /// assert!(stored.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn clear(&self) -> Result<()> {
        let all_keys = self.inner.key_locks.lock_all().await;
        let inner = Arc::clone(&self.inner);
        run_to_completion(async move {
            let _all_keys = all_keys;
            match inner.backend.clear().await {
                Ok(()) => {
                    inner.entries.clear();
                    inner.changes.publish(Some(Change::Cleared));
                    Ok(())
                }
                Err(partial @ PersistentError::PartialBatch { .. }) => {
                    // Part of the store was cleared: make memory match what is left.
                    inner.reload().await?;
                    Err(partial)
                }
                Err(error) => Err(error),
            }
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

    /// Clones of every entry, in no particular order.
    ///
    /// The map is copied one shard at a time, so this never waits for the backend and never
    /// blocks writers for long, and other tasks may write meanwhile. The guarantee is weaker
    /// than a point-in-time snapshot: every write acknowledged before the call is reflected,
    /// each key appears at most once, and a write that completes during the call may or may not
    /// be. For a consistent copy, use [`snapshot`](Self::snapshot).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let map: PersistentMap<u32, char, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert_many([(1, 'a'), (2, 'b')]).await?;
    /// let mut entries: Vec<(u32, char)> = map.iter().collect();
    /// entries.sort();
    /// assert_eq!(entries, [(1, 'a'), (2, 'b')]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn iter(&self) -> std::vec::IntoIter<(K, V)> {
        self.copy_entries(|key, value| (key.clone(), value.clone()))
    }

    /// Clones of every key, with the guarantee of [`iter`](Self::iter).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let map: PersistentMap<u32, char, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert(7, 'x').await?;
    /// assert_eq!(map.keys().collect::<Vec<_>>(), [7]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn keys(&self) -> std::vec::IntoIter<K> {
        self.copy_entries(|key, _| key.clone())
    }

    /// Clones of every value, with the guarantee of [`iter`](Self::iter).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let map: PersistentMap<u32, char, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert(7, 'x').await?;
    /// assert_eq!(map.values().collect::<Vec<_>>(), ['x']);
    /// # Ok(())
    /// # }
    /// ```
    pub fn values(&self) -> std::vec::IntoIter<V> {
        self.copy_entries(|_, value| value.clone())
    }

    /// A consistent copy of the map: exactly its contents at one moment between the call and
    /// its return.
    ///
    /// Writes of this map wait while the copy is made (writes already in flight finish first).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let map: PersistentMap<u32, char, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert_many([(1, 'a'), (2, 'b')]).await?;
    /// let copy = map.snapshot().await;
    /// assert_eq!(copy.len(), 2);
    /// assert_eq!(copy[&2], 'b');
    /// # Ok(())
    /// # }
    /// ```
    pub async fn snapshot(&self) -> HashMap<K, V> {
        let _all_keys = self.inner.key_locks.lock_all().await;
        self.iter().collect()
    }

    /// Subscribes to the map's changes from now on: each committed insert, remove, clear and
    /// reload, after it is applied, in commit order per key.
    ///
    /// Writers never wait for subscribers; one that falls too far behind gets
    /// [`RecvError::Lagged`](crate::RecvError::Lagged) and should re-read the map. Changes made
    /// by other processes reach subscribers when the map [refreshes](Self::refresh).
    ///
    /// ```
    /// use persistent_map::{in_memory::InMemoryBackend, Change, PersistentMap};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// let mut changes = map.subscribe();
    /// map.insert("a".into(), 1).await?;
    /// assert_eq!(changes.recv().await.unwrap(), Change::Inserted { key: "a".into(), value: 1 });
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe(&self) -> Subscription<K, V> {
        self.inner.changes.subscribe()
    }

    /// Catches up with changes that others (another process on the same SQLite file, another
    /// instance on PostgreSQL) made to the storage, and returns whether it re-read anything
    /// (a backend that cannot tell what changed re-reads everything, every time).
    ///
    /// Cheap when nothing changed: the SQLite backend asks `PRAGMA data_version` and reloads
    /// only if another connection committed since the last load. Backends that cannot tell
    /// reload every time.
    ///
    /// With SQLite, "others" means other processes (or your own rusqlite connections): all maps
    /// on one file in this process share one connection, so a second map on the *same table* in
    /// this process does not learn of the first one's writes here. Share one map instead; its
    /// clones see everything.
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, PersistentMap};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("app.db");
    /// let map: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path).await?;
    /// assert!(!map.refresh().await?);
    ///
    /// // Another process (here: another SQLite connection) writes the file.
    /// rusqlite::Connection::open(&path)?.execute("INSERT INTO kv VALUES ('other', '5')", [])?;
    /// assert!(map.refresh().await?);
    /// assert_eq!(map.get("other"), Some(5));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn refresh(&self) -> Result<bool> {
        match self.inner.backend.external_changes().await? {
            ExternalChanges::None => Ok(false),
            ExternalChanges::Unknown => self.load().await.map(|()| true),
            ExternalChanges::Keys(keys) => {
                let guard = self.inner.key_locks.lock_many(&keys).await;
                let inner = Arc::clone(&self.inner);
                run_to_completion(async move {
                    let _guard = guard;
                    let mut stored = inner.backend.load_keys(&keys).await?;
                    for key in keys {
                        match stored.remove(&key) {
                            Some(value) => inner.apply(BatchOp::Save(key, value)),
                            None => inner.apply(BatchOp::Delete(key)),
                        };
                    }
                    Ok(true)
                })
                .await
            }
        }
    }

    /// Refreshes the map in the background: every `interval`, and at once whenever the backend
    /// signals a change (PostgreSQL's `NOTIFY`). Dropping the returned task stops it.
    ///
    /// The task keeps the map alive while it runs. A refresh that fails is retried at the next
    /// tick; the last failure is kept in the task.
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, PersistentMap};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// let map: PersistentMap<String, u32, SqliteBackend> =
    ///     PersistentMap::open(dir.path().join("app.db")).await?;
    /// let refresher = map.refresh_every(Duration::from_millis(100));
    /// assert!(refresher.take_error().is_none());
    /// drop(refresher); // stops refreshing
    /// # Ok(())
    /// # }
    /// ```
    pub fn refresh_every(&self, interval: Duration) -> RefreshTask {
        let map = self.clone();
        let last_error = Arc::new(Mutex::new(None));
        let errors = Arc::clone(&last_error);
        // A zero period would make `interval` panic inside the task.
        let interval = interval.max(Duration::from_millis(1));
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = map.inner.backend.external_change_signal() => {}
                }
                if let Err(error) = map.refresh().await {
                    *errors.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
                }
            }
        });
        RefreshTask { task, last_error }
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

    fn copy_entries<T>(&self, copy: impl Fn(&K, &V) -> T) -> std::vec::IntoIter<T> {
        let mut copies = Vec::with_capacity(self.len());
        copies.extend(
            self.inner
                .entries
                .iter()
                .map(|entry| copy(entry.key(), entry.value())),
        );
        copies.into_iter()
    }

    /// One write of one key, in that key's turn.
    async fn write(&self, op: BatchOp<K, V>) -> Result<Option<V>> {
        let guard = self.inner.key_locks.lock(op.key()).await;
        self.commit(guard, op).await
    }

    /// Stores `op` in the backend, then applies it to memory, holding `guard` (the key's turn)
    /// throughout. Runs to completion even if the caller stops waiting.
    async fn commit(&self, guard: KeyGuard, op: BatchOp<K, V>) -> Result<Option<V>> {
        let inner = Arc::clone(&self.inner);
        run_to_completion(async move {
            let _guard = guard;
            match &op {
                BatchOp::Save(key, value) => inner.backend.save(key.clone(), value.clone()).await?,
                BatchOp::Delete(key) => inner.backend.delete(key).await?,
            }
            Ok(inner.apply(op))
        })
        .await
    }

    async fn write_batch(&self, ops: Vec<BatchOp<K, V>>) -> Result<usize> {
        if ops.is_empty() {
            return Ok(0);
        }
        let guard = self
            .inner
            .key_locks
            .lock_many(ops.iter().map(BatchOp::key))
            .await;
        self.commit_batch(guard, ops).await
    }

    /// Stores `ops` as one batch, then applies them to memory; returns how many deletes removed
    /// a key the map held.
    async fn commit_batch(&self, guard: KeyGuard, ops: Vec<BatchOp<K, V>>) -> Result<usize> {
        let inner = Arc::clone(&self.inner);
        run_to_completion(async move {
            let _guard = guard;
            match inner.backend.apply_batch(&ops).await {
                Ok(()) => Ok(inner.apply_all(ops)),
                Err(PersistentError::PartialBatch { applied, source }) => {
                    Err(inner.undo_partial_batch(ops, applied, *source).await)
                }
                Err(error) => Err(error),
            }
        })
        .await
    }
}

impl<K, V, B> Inner<K, V, B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// Applies a stored write to memory and tells subscribers; returns the value it replaced.
    fn apply(&self, op: BatchOp<K, V>) -> Option<V> {
        match op {
            BatchOp::Save(key, value) => {
                let change = self.changes.is_watched().then(|| Change::Inserted {
                    key: key.clone(),
                    value: value.clone(),
                });
                let old = self.entries.insert(key, value);
                self.changes.publish(change);
                old
            }
            BatchOp::Delete(key) => {
                let (key, old) = self.entries.remove(&key)?;
                self.changes.publish(Some(Change::Removed { key }));
                Some(old)
            }
        }
    }

    /// Applies a stored batch to memory; returns how many deletes removed a key.
    fn apply_all(&self, ops: Vec<BatchOp<K, V>>) -> usize {
        let saves = ops
            .iter()
            .filter(|op| matches!(op, BatchOp::Save(..)))
            .count();
        reserve(&self.entries, saves);
        let mut removed = 0;
        for op in ops {
            let is_delete = matches!(op, BatchOp::Delete(_));
            if self.apply(op).is_some() && is_delete {
                removed += 1;
            }
        }
        removed
    }

    /// Replaces memory with what the backend holds. The caller holds every key's turn.
    async fn reload(&self) -> Result<()> {
        let mut stored = HashMap::with_capacity(room_for(self.backend.len_hint().await));
        let mut duplicates = Duplicates::default();
        self.backend
            .load_each(&mut |key, value| match stored.entry(key) {
                std::collections::hash_map::Entry::Vacant(vacant) => drop(vacant.insert(value)),
                std::collections::hash_map::Entry::Occupied(occupied) => {
                    duplicates.saw(occupied.key());
                }
            })
            .await?;
        duplicates.check()?;
        self.entries.retain(|key, _| stored.contains_key(key));
        for (key, value) in stored {
            self.entries.insert(key, value);
        }
        self.changes.publish(Some(Change::Reloaded));
        Ok(())
    }

    /// A backend that cannot apply batches atomically applied the first `applied` writes of
    /// `ops` and then failed with `cause`. Restores those keys' previous values in storage so
    /// that the batch changed nothing, and returns `cause`. Where the restore fails too, memory
    /// takes the batch's values instead, so memory still equals storage, and the error says how
    /// much of the batch was applied.
    async fn undo_partial_batch(
        &self,
        mut ops: Vec<BatchOp<K, V>>,
        applied: usize,
        cause: PersistentError,
    ) -> PersistentError {
        ops.truncate(applied);
        // Memory still holds every key's value from before the batch.
        let mut seen = HashSet::new();
        let restore: Vec<BatchOp<K, V>> = ops
            .iter()
            .map(BatchOp::key)
            .filter(|key| seen.insert(*key))
            .map(|key| match self.entries.get(key) {
                Some(value) => BatchOp::Save(key.clone(), value.clone()),
                None => BatchOp::Delete(key.clone()),
            })
            .collect();
        let restored = match self.backend.apply_batch(&restore).await {
            Ok(()) => return cause,
            Err(PersistentError::PartialBatch { applied, .. }) => applied,
            Err(_) => 0,
        };
        // `min`: a backend that over-reports must not make the map panic.
        let unrestored: HashSet<&K> = restore[restored.min(restore.len())..]
            .iter()
            .map(BatchOp::key)
            .collect();
        for op in ops {
            if unrestored.contains(op.key()) {
                self.apply(op);
            }
        }
        PersistentError::PartialBatch {
            applied,
            source: Box::new(cause),
        }
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

/// Makes room in `entries` for `additional` more before a large batch, so that the shards grow
/// once instead of doubling (and rehashing every key) again and again on the way. A small
/// batch is not worth the locking of every shard.
fn reserve<K: Hash + Eq, V>(entries: &DashMap<K, V>, additional: usize) {
    if additional < 4096 {
        return;
    }
    let shards = entries.shards();
    let per_shard = room_for(Some(additional / shards.len()));
    let hasher = entries.hasher();
    for shard in shards {
        shard
            .write()
            .reserve(per_shard, |(key, _)| hasher.hash_one(key));
    }
}

/// Keys that a load found twice: two stored entries that parse to the same key (at least one not
/// written the way the key type writes it, such as `01` for the number 1). Loading either would
/// let one silently hide the other, and writes would then go to only one of them.
#[derive(Default)]
struct Duplicates {
    first: Option<String>,
}

impl Duplicates {
    fn saw<K: Serialize>(&mut self, key: &K) {
        if self.first.is_none() {
            self.first = Some(
                serde_json::to_string(key)
                    .unwrap_or_else(|_| "(a key that does not serialize)".into()),
            );
        }
    }

    fn check(self) -> Result<()> {
        match self.first {
            None => Ok(()),
            Some(key) => Err(PersistentError::AmbiguousStoredKey { key }),
        }
    }
}

/// The capacity to give a table about to receive `hint` entries. The map's shards split it
/// evenly, but keys do not split perfectly evenly, so a little slack keeps a shard that gets a
/// few more than its share from doubling.
fn room_for(hint: Option<usize>) -> usize {
    hint.map_or(0, |entries| entries + entries / 64)
}

/// A background refresh started by [`PersistentMap::refresh_every`]; dropping it stops the
/// refresh.
#[derive(Debug)]
#[must_use = "the refresh stops when this task is dropped"]
pub struct RefreshTask {
    task: tokio::task::JoinHandle<()>,
    last_error: Arc<Mutex<Option<PersistentError>>>,
}

impl RefreshTask {
    /// Takes the error of the last refresh that failed, if one failed since the last call.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// let task = map.refresh_every(std::time::Duration::from_secs(1));
    /// assert!(task.take_error().is_none());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A task that has stopped (a refresh panicked, in a key's `FromStr` or a value's
    /// `Deserialize`) reports that, every time it is asked.
    pub fn take_error(&self) -> Option<PersistentError> {
        let failed = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        failed.or_else(|| {
            self.task.is_finished().then(|| {
                PersistentError::Backend(
                    "the background refresh has stopped: a refresh panicked; \
                     start a new one with refresh_every"
                        .into(),
                )
            })
        })
    }
}

impl Drop for RefreshTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(feature = "postgres")]
impl<K, V> PersistentMap<K, V, crate::postgres::PostgresBackend>
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
    /// # #[tokio::main]
    /// # async fn main() -> persistent_map::Result<()> {
    /// // String keys live in the table `kv`.
    /// let map: PersistentMap<String, u32, PostgresBackend> =
    ///     PersistentMap::open_postgres("postgres://postgres@127.0.0.1:5432/test").await?;
    /// let _follow = map.refresh_every(Duration::from_secs(10));
    /// map.insert("a".to_string(), 1).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn open_postgres(url: &str) -> Result<Self> {
        Self::new(crate::postgres::PostgresBackend::for_key::<K>(url).await?).await
    }
}
