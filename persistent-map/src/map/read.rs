//! Reads: from memory only, never waiting for the backend.

use crate::{MapKey, MapValue};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

use super::entries::Lookup;
use super::PersistentMap;
use crate::{Deadline, Result, StorageBackend, Subscription};

impl<K, V, B> PersistentMap<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// Returns a clone of the value under `key`, from memory.
    ///
    /// Never waits for the backend, and sees only acknowledged writes.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert("a".to_string(), 1).await?;
    /// assert_eq!(map.get("a"), Some(1)); // a &str works for String keys
    /// assert_eq!(map.get(&"b".to_string()), None);
    /// # Ok(()) }));
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
    /// # use persistent_map::{sqlite::SqliteBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let pages: PersistentMap<u64, String, SqliteBackend> =
    ///     PersistentMap::open(dir.path().join("app.db")).await?;
    /// pages.insert(1, "x".repeat(1024)).await?;
    /// assert_eq!(pages.get_with(&1, |text| text.len()), Some(1024));
    /// # Ok(()) }));
    /// ```
    pub fn get_with<Q, R>(&self, key: &Q, read: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // A resident map's memory never answers `NotCached`.
        self.shared
            .entries
            .lookup(key, |value, _| read(value))
            .live()
    }

    /// Whether the map holds `key`.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert("a".to_string(), 1).await?;
    /// assert!(map.contains_key("a"));
    /// # Ok(()) }));
    /// ```
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_with(key, |_| ()).is_some()
    }

    /// The number of entries, not counting expired ones.
    ///
    /// Constant time (a count per shard) for a map that has never held an entry with a time to
    /// live. Once one has, expired entries may still sit in memory until they are swept, so
    /// this counts the live ones: a pass over every entry, with one clock read.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert("a".to_string(), 1).await?;
    /// assert_eq!(map.len(), 1);
    /// # Ok(()) }));
    /// ```
    pub fn len(&self) -> usize {
        if !self.shared.expiry.has_deadlines() {
            return self.shared.entries.len();
        }
        let mut live = 0;
        self.shared
            .entries
            .for_each_live(crate::deadline::now_millis(), |_, _| live += 1);
        live
    }

    /// Whether the map has no entries (expired ones do not count; see [`len`](Self::len)).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// assert!(map.is_empty());
    /// # Ok(()) }));
    /// ```
    pub fn is_empty(&self) -> bool {
        if !self.shared.expiry.has_deadlines() {
            return self.shared.entries.len() == 0;
        }
        !self.shared.entries.any_live(crate::deadline::now_millis())
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
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert_many([(1, 10), (2, 20)]).await?;
    /// let mut entries: Vec<(u32, u32)> = map.iter().collect();
    /// entries.sort();
    /// assert_eq!(entries, [(1, 10), (2, 20)]);
    /// # Ok(()) }));
    /// ```
    pub fn iter(&self) -> std::vec::IntoIter<(K, V)> {
        self.copy_entries(|key, value| (key.clone(), value.clone()))
    }

    /// Clones of every key, with the guarantee of [`iter`](Self::iter).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert(7, 70).await?;
    /// assert_eq!(map.keys().collect::<Vec<_>>(), [7]);
    /// # Ok(()) }));
    /// ```
    pub fn keys(&self) -> std::vec::IntoIter<K> {
        self.copy_entries(|key, _| key.clone())
    }

    /// Clones of every value, with the guarantee of [`iter`](Self::iter).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert(7, 70).await?;
    /// assert_eq!(map.values().collect::<Vec<_>>(), [70]);
    /// # Ok(()) }));
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
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert_many([(1, 10), (2, 20)]).await?;
    /// let copy = map.snapshot().await;
    /// assert_eq!(copy.len(), 2);
    /// assert_eq!(copy[&2], 20);
    /// # Ok(()) }));
    /// ```
    pub async fn snapshot(&self) -> HashMap<K, V> {
        let _all_keys = self.shared.key_locks.lock_all().await;
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
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// let mut changes = map.subscribe();
    /// map.insert("a".into(), 1).await?;
    /// assert_eq!(changes.recv().await.unwrap(), Change::Inserted { key: "a".into(), value: 1 });
    /// # Ok(()) }));
    /// ```
    pub fn subscribe(&self) -> Subscription<K, V> {
        self.shared.changes.subscribe()
    }

    /// What `key` holds now: memory's word or, for a cached map that does not hold the key,
    /// storage's, which memory then keeps. The caller holds the key's turn, so no write of
    /// this map to the key is in flight, and what storage holds is the newest there is.
    pub(super) async fn current(&self, key: &K) -> Result<Option<V>> {
        Ok(self.current_entry(key).await?.map(|(value, _)| value))
    }

    /// [`current`](Self::current), with the entry's deadline.
    pub(super) async fn current_entry(&self, key: &K) -> Result<Option<(V, Option<Deadline>)>> {
        match self
            .shared
            .entries
            .lookup(key, |value, deadline| (value.clone(), deadline))
        {
            Lookup::Live(entry) => Ok(Some(entry)),
            Lookup::Absent => Ok(None),
            Lookup::NotCached => {
                let stored = self
                    .backend
                    .load_keys_expiring(std::slice::from_ref(key))
                    .await?
                    .remove(key);
                self.shared.fill(key.clone(), stored.as_ref());
                Ok(stored)
            }
        }
    }

    /// Copies of the live entries, as of one clock read.
    fn copy_entries<T>(&self, copy: impl Fn(&K, &V) -> T) -> std::vec::IntoIter<T> {
        let mut copies = Vec::with_capacity(self.shared.entries.len());
        self.shared
            .entries
            .for_each_live(crate::deadline::now_millis(), |key, value| {
                copies.push(copy(key, value));
            });
        copies.into_iter()
    }
}
