//! The entry API: one key's "insert if absent" and "modify in place", each one atomic write,
//! in the manner of `HashMap::entry` (async, since each ends in a write).

use crate::{MapKey, MapValue};
use std::fmt;
use std::hash::Hash;

use super::PersistentMap;
use crate::{Result, StorageBackend};

/// What an [`Entry`] left under its key: the value, and whether the entry inserted it (the key
/// was absent) or found it (and modified it, if asked to).
///
/// ```
/// use persistent_map::Upserted;
///
/// let fresh = Upserted { value: 1, inserted: true };
/// assert!(fresh.inserted);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Upserted<V> {
    /// The value now stored under the key.
    pub value: V,
    /// `true` if the key was absent and this value was inserted; `false` if a stored value was
    /// found (and modified by [`and_modify`](Entry::and_modify), if given).
    pub inserted: bool,
}

/// What [`Entry::and_modify`] does to a stored value.
type Modify<'a, V> = dyn FnMut(&mut V) + Send + 'a;

/// One key of a map, to insert if absent or modify in place; made by
/// [`PersistentMap::entry`].
///
/// Each of its finishing methods is one atomic write, checked against storage as
/// [`update`](PersistentMap::update) is: another handle, process or instance cannot come in
/// between the read and the write.
#[must_use = "an entry does nothing until one of its async methods is awaited"]
pub struct Entry<'a, K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    map: &'a PersistentMap<K, V, B>,
    key: K,
    modify: Option<Box<Modify<'a, V>>>,
}

impl<K, V, B> fmt::Debug for Entry<'_, K, V, B>
where
    K: MapKey + fmt::Debug,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("key", &self.key)
            .field("modify", &self.modify.is_some())
            .finish()
    }
}

impl<K, V, B> PersistentMap<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// The entry of `key`, to insert if absent or modify in place, each as one atomic write.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let visits: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// // Insert if absent, and say whether it inserted:
    /// let first = visits.entry("ada".into()).or_insert(1).await?;
    /// assert!(first.inserted);
    /// // Modify in place, or insert if absent:
    /// let second = visits.entry("ada".into()).and_modify(|n| *n += 1).or_insert(1).await?;
    /// assert_eq!((second.value, second.inserted), (2, false));
    /// // Modify in place only if present:
    /// assert_eq!(visits.entry("bob".into()).and_modify(|n| *n += 1).modify().await?, None);
    /// # Ok(()) }));
    /// ```
    pub fn entry(&self, key: K) -> Entry<'_, K, V, B> {
        Entry {
            map: self,
            key,
            modify: None,
        }
    }
}

impl<'a, K, V, B> Entry<'a, K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// Modifies the stored value in place when the entry is finished, if the key is present.
    ///
    /// `modify` may run more than once (on what storage holds, if another writer got there
    /// first), as [`update`](PersistentMap::update)'s closure may.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let likes: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// likes.insert("post".into(), 1).await?;
    /// let now = likes.entry("post".into()).and_modify(|n| *n += 1).modify().await?;
    /// assert_eq!(now, Some(2));
    /// // An absent key stays absent.
    /// assert_eq!(likes.entry("draft".into()).and_modify(|n| *n += 1).modify().await?, None);
    /// # Ok(()) }));
    /// ```
    pub fn and_modify(mut self, modify: impl FnMut(&mut V) + Send + 'a) -> Self {
        self.modify = Some(Box::new(modify));
        self
    }

    /// Stores `value` if the key is absent; otherwise keeps (and modifies, with
    /// [`and_modify`](Self::and_modify)) the stored value. One atomic write.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// // Which node holds the lock: the first to ask.
    /// let owners: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// assert!(owners.entry("lock".into()).or_insert(1).await?.inserted);
    /// let second = owners.entry("lock".into()).or_insert(2).await?;
    /// assert_eq!((second.value, second.inserted), (1, false));
    /// # Ok(()) }));
    /// ```
    pub async fn or_insert(self, value: V) -> Result<Upserted<V>> {
        self.or_insert_with(|| value).await
    }

    /// [`or_insert`](Self::or_insert) with the value made by `make`, which runs at most once,
    /// and only if the key is absent.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let ids: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// let id = ids.entry("ada".into()).or_insert_with(|| 7).await?;
    /// assert_eq!((id.value, id.inserted), (7, true));
    /// # Ok(()) }));
    /// ```
    pub async fn or_insert_with(self, make: impl FnOnce() -> V) -> Result<Upserted<V>> {
        let Entry { map, key, modify } = self;
        let Some(mut modify) = modify else {
            let (value, inserted) = map.insert_absent(key, make).await?;
            return Ok(Upserted { value, inserted });
        };
        let mut make = Some(make);
        // Made at most once, kept for a rerun that finds the key absent again.
        let mut made: Option<V> = None;
        let mut inserted = false;
        let value = map
            .update(&key, |current| match current {
                Some(current) => {
                    inserted = false;
                    let mut value = current.clone();
                    modify(&mut value);
                    Some(value)
                }
                None => {
                    inserted = true;
                    if let Some(make) = make.take() {
                        made = Some(make());
                    }
                    made.clone()
                }
            })
            .await?
            .expect("both arms store a value");
        Ok(Upserted { value, inserted })
    }

    /// [`or_insert`](Self::or_insert) with `V::default()`.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let counts: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// let n = counts.entry("x".into()).and_modify(|n| *n += 1).or_default().await?;
    /// assert_eq!(n.value, 0);
    /// # Ok(()) }));
    /// ```
    pub async fn or_default(self) -> Result<Upserted<V>>
    where
        V: Default,
    {
        self.or_insert_with(V::default).await
    }

    /// Applies [`and_modify`](Self::and_modify) to the stored value if the key is present
    /// (one atomic write), and returns the new value; an absent key is left absent (`None`).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let stock: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// stock.insert("tea".into(), 3).await?;
    /// assert_eq!(stock.entry("tea".into()).and_modify(|n| *n -= 1).modify().await?, Some(2));
    /// assert_eq!(stock.entry("milk".into()).and_modify(|n| *n -= 1).modify().await?, None);
    /// assert!(!stock.contains_key("milk"));
    /// # Ok(()) }));
    /// ```
    pub async fn modify(self) -> Result<Option<V>> {
        let Entry { map, key, modify } = self;
        let Some(mut modify) = modify else {
            return Ok(map.get(&key));
        };
        map.update(&key, |current| {
            current.map(|current| {
                let mut value = current.clone();
                modify(&mut value);
                value
            })
        })
        .await
    }
}
