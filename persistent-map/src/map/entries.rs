//! Where the handles of one table keep its entries in memory: every one of them (a
//! [`PersistentMap`](super::PersistentMap)), or a bounded set of the hot ones (a
//! [`CachedMap`](super::CachedMap)).
//!
//! Both sit under [`Shared`](super::shared::Shared), so the write path settles into either
//! the same way; what differs is what a key memory lacks means. To the resident map it is
//! absent; to the cached one it is not known, and storage has the answer ([`Lookup::NotCached`]).
//! A cached map also remembers keys that storage was seen not to hold, so that a hot absent key
//! costs no read either.

use std::borrow::Borrow;
use std::cell::Cell;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::expiry::Slot;
use crate::Deadline;

/// The entries of one table in memory.
pub(super) enum Entries<K, V> {
    /// Every live stored entry: a key memory lacks is absent.
    Resident(DashMap<K, Slot<V>>),
    /// The hot entries, and keys known to be absent: a key memory lacks is not known.
    Cached(Hot<K, V>),
}

/// What memory says of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lookup<R> {
    /// Live: what the reader made of its value.
    Live(R),
    /// Absent: storage holds nothing live under it.
    Absent,
    /// Not in a cached map's memory: only storage can say.
    NotCached,
}

impl<R> Lookup<R> {
    /// The live value; `None` for absent and, in a resident map (which never answers it), for
    /// not cached.
    pub(super) fn live(self) -> Option<R> {
        match self {
            Lookup::Live(value) => Some(value),
            Lookup::Absent | Lookup::NotCached => None,
        }
    }
}

/// What memory held under a key just set or let go of.
pub(super) enum Held<V> {
    /// An entry, expired or not.
    Slot(Slot<V>),
    /// Nothing: the key was absent.
    Absent,
    /// A cached map did not know the key.
    NotCached,
}

impl<V> Held<V> {
    /// The live value held, if any.
    pub(super) fn into_live(self) -> Option<V> {
        match self {
            Held::Slot(slot) => slot.into_live(),
            Held::Absent | Held::NotCached => None,
        }
    }
}

/// What a cached map knows of a key it holds: its entry, or (`None`) that storage holds nothing
/// under it.
type Known<V> = Option<Slot<V>>;

/// How the cache holds it: quick_cache's `get` hands out a clone of what it holds, and a clone
/// of an `Arc` costs less than one of the value (which the reader clones once more anyway).
type InCache<V> = Arc<Known<V>>;

/// What the cache held, taken out of it: the entry itself if no reader still shares it.
fn taken<V: Clone>(known: InCache<V>) -> Known<V> {
    Arc::try_unwrap(known).unwrap_or_else(|shared| (*shared).clone())
}

/// How much a cached map's memory holds at most, in entries or in a weight of your choosing
/// (bytes, say): when it is full, the cache lets the least promising entries go (quick_cache's
/// S3-FIFO-like policy: an entry read once is let go before one read again and again). What is
/// let go stays stored; the next read of it reads storage.
///
/// ```
/// use persistent_map::CacheCapacity;
///
/// // At most 100,000 entries.
/// let entries: CacheCapacity<String, String> = CacheCapacity::entries(100_000);
/// assert_eq!(entries.max(), 100_000);
///
/// // At most about 64 MiB of keys and values, as this weigher counts them.
/// let bytes = CacheCapacity::weighted(64 << 20, |key: &String, value: &String| {
///     (key.len() + value.len() + 64) as u64
/// });
/// assert_eq!(bytes.max(), 64 << 20);
/// ```
pub struct CacheCapacity<K, V> {
    max: u64,
    weigh: Option<Weigher<K, V>>,
}

type Weigher<K, V> = Arc<dyn Fn(&K, &V) -> u64 + Send + Sync>;

impl<K, V> CacheCapacity<K, V> {
    /// At most `max` entries in memory (at least one). A key remembered as absent counts as one.
    ///
    /// ```
    /// # use persistent_map::CacheCapacity;
    /// assert_eq!(CacheCapacity::<u64, String>::entries(0).max(), 1);
    /// ```
    pub fn entries(max: u64) -> Self {
        Self {
            max: max.max(1),
            weigh: None,
        }
    }

    /// At most `max` of the weight `weigh` gives each entry (bytes, say: `weigh` is not told
    /// what the map spends on bookkeeping, so count some for it). `weigh` is called once when
    /// an entry comes into memory and again when it leaves, and must give one entry the same
    /// weight each time; a key remembered as absent weighs 1.
    ///
    /// ```
    /// # use persistent_map::CacheCapacity;
    /// let capacity = CacheCapacity::weighted(1 << 30, |_: &u64, value: &Vec<u8>| value.len() as u64 + 48);
    /// assert_eq!(capacity.max(), 1 << 30);
    /// ```
    pub fn weighted(max: u64, weigh: impl Fn(&K, &V) -> u64 + Send + Sync + 'static) -> Self {
        Self {
            max: max.max(1),
            weigh: Some(Arc::new(weigh)),
        }
    }

    /// The most memory may hold: entries, or weight.
    ///
    /// ```
    /// # use persistent_map::CacheCapacity;
    /// assert_eq!(CacheCapacity::<u64, u64>::entries(10).max(), 10);
    /// ```
    pub fn max(&self) -> u64 {
        self.max
    }
}

impl<K, V> Clone for CacheCapacity<K, V> {
    fn clone(&self) -> Self {
        Self {
            max: self.max,
            weigh: self.weigh.clone(),
        }
    }
}

impl<K, V> fmt::Debug for CacheCapacity<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheCapacity")
            .field("max", &self.max)
            .field("weighted", &self.weigh.is_some())
            .finish()
    }
}

/// The weight of an entry in the cache: 1 each, or what the user's weigher says.
struct Weight<K, V>(Option<Weigher<K, V>>);

impl<K, V> Clone for Weight<K, V> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K, V> quick_cache::Weighter<K, InCache<V>> for Weight<K, V> {
    fn weight(&self, key: &K, known: &InCache<V>) -> u64 {
        match (&self.0, known.as_ref()) {
            // Never 0: quick_cache never lets go of an entry that weighs nothing.
            (Some(weigh), Some(slot)) => weigh(key, slot.value()).max(1),
            _ => 1,
        }
    }
}

/// A cached map's memory: quick_cache's sharded cache of what is known of the hot keys.
pub(super) struct Hot<K, V> {
    cache: quick_cache::sync::Cache<K, InCache<V>, Weight<K, V>>,
    /// Keys read from storage because memory did not know them.
    storage_reads: AtomicU64,
}

impl<K, V> Hot<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    pub(super) fn new(capacity: &CacheCapacity<K, V>) -> Self {
        // An estimate of how many entries fit, to size the cache's tables; quick_cache grows
        // them if more do.
        let estimated = match capacity.weigh {
            None => capacity.max,
            Some(_) => (capacity.max / 256).max(64),
        };
        let estimated = usize::try_from(estimated)
            .unwrap_or(usize::MAX)
            .min(1 << 24);
        Self {
            cache: quick_cache::sync::Cache::with_weighter(
                estimated,
                capacity.max,
                Weight(capacity.weigh.clone()),
            ),
            storage_reads: AtomicU64::new(0),
        }
    }

    /// Entries (and keys known to be absent) in memory.
    pub(super) fn len(&self) -> usize {
        self.cache.len()
    }

    /// Their weight (their count, without a weigher).
    pub(super) fn weight(&self) -> u64 {
        self.cache.weight()
    }

    /// The most they may weigh.
    pub(super) fn capacity(&self) -> u64 {
        self.cache.capacity()
    }

    /// How many keys were read from storage because memory did not know them.
    pub(super) fn storage_reads(&self) -> u64 {
        self.storage_reads.load(Ordering::Relaxed)
    }

    pub(super) fn count_storage_read(&self) {
        self.storage_reads.fetch_add(1, Ordering::Relaxed);
    }
}

impl<K, V> Entries<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    /// What memory says of `key`, reading a live value with `read`.
    #[inline]
    pub(super) fn lookup<Q, R>(
        &self,
        key: &Q,
        read: impl FnOnce(&V, Option<Deadline>) -> R,
    ) -> Lookup<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            Entries::Resident(entries) => match entries.get(key) {
                Some(slot) => match slot.live() {
                    Some(value) => Lookup::Live(read(value, slot.deadline())),
                    None => Lookup::Absent,
                },
                None => Lookup::Absent,
            },
            Entries::Cached(hot) => match hot.cache.get(key).as_deref() {
                Some(Some(slot)) => match slot.live() {
                    Some(value) => Lookup::Live(read(value, slot.deadline())),
                    None => Lookup::Absent,
                },
                Some(None) => Lookup::Absent,
                None => Lookup::NotCached,
            },
        }
    }

    /// Whether memory knows what storage holds under `key`: always, for a resident map.
    pub(super) fn knows(&self, key: &K) -> bool {
        match self {
            Entries::Resident(_) => true,
            Entries::Cached(hot) => hot.cache.contains_key(key),
        }
    }

    /// Makes memory hold `slot` under `key`; what it held before.
    pub(super) fn set(&self, key: K, slot: Slot<V>) -> Held<V> {
        match self {
            Entries::Resident(entries) => match entries.insert(key, slot) {
                Some(old) => Held::Slot(old),
                None => Held::Absent,
            },
            Entries::Cached(hot) => hot.set(key, Some(slot)),
        }
    }

    /// Makes memory hold that `key` is absent; what it held before.
    pub(super) fn set_absent(&self, key: &K) -> Held<V> {
        match self {
            Entries::Resident(entries) => match entries.remove(key) {
                Some((_, old)) => Held::Slot(old),
                None => Held::Absent,
            },
            Entries::Cached(hot) => hot.set(key.clone(), None),
        }
    }

    /// Lets go of `key`'s entry if it has expired at `now` (Unix milliseconds); what memory
    /// held there if it let go, else [`Held::Absent`] (nothing, or a live entry, is left as it
    /// was) or [`Held::NotCached`]. Needs no turn: a write that came since left a live entry.
    pub(super) fn forget_expired(&self, key: &K, now: u64) -> Held<V> {
        let expired = |slot: &Slot<V>| !slot.is_live_at(now);
        match self {
            Entries::Resident(entries) => match entries.remove_if(key, |_, slot| expired(slot)) {
                Some((_, old)) => Held::Slot(old),
                None => Held::Absent,
            },
            Entries::Cached(hot) => {
                let removed = hot
                    .cache
                    .remove_if(key, |known| known.as_ref().as_ref().is_some_and(expired));
                match removed.map(|(_, old)| taken(old)) {
                    Some(Some(old)) => Held::Slot(old),
                    Some(None) => unreachable!("only an entry that has expired is removed"),
                    None if hot.cache.contains_key(key) => Held::Absent,
                    None => Held::NotCached,
                }
            }
        }
    }

    /// Empties memory: the resident map's table is then empty, the cached map knows nothing.
    pub(super) fn clear(&self) {
        match self {
            Entries::Resident(entries) => entries.clear(),
            Entries::Cached(hot) => hot.cache.clear(),
        }
    }

    /// Drops every entry that has expired at `now`, calling `dropped` with its key; how many.
    pub(super) fn drop_expired(&self, now: u64, dropped: impl Fn(&K)) -> usize {
        let count = Cell::new(0);
        let keep = |key: &K, slot: &Slot<V>| {
            let live = slot.is_live_at(now);
            if !live {
                count.set(count.get() + 1);
                dropped(key);
            }
            live
        };
        match self {
            Entries::Resident(entries) => entries.retain(|key, slot| keep(key, slot)),
            Entries::Cached(hot) => hot
                .cache
                .retain(|key, known| known.as_ref().as_ref().is_none_or(|slot| keep(key, slot))),
        }
        count.get()
    }

    /// Entries in memory (a cached map counts the keys it knows to be absent too).
    pub(super) fn len(&self) -> usize {
        match self {
            Entries::Resident(entries) => entries.len(),
            Entries::Cached(hot) => hot.len(),
        }
    }

    /// Whether memory holds an entry live at `now`.
    pub(super) fn any_live(&self, now: u64) -> bool {
        match self {
            Entries::Resident(entries) => entries.iter().any(|entry| entry.value().is_live_at(now)),
            Entries::Cached(hot) => hot.cache.iter().any(|(_, known)| {
                known
                    .as_ref()
                    .as_ref()
                    .is_some_and(|slot| slot.is_live_at(now))
            }),
        }
    }

    /// Calls `each` with every live entry in memory, as of `now`, in no particular order.
    pub(super) fn for_each_live(&self, now: u64, mut each: impl FnMut(&K, &V)) {
        match self {
            Entries::Resident(entries) => entries
                .iter()
                .filter(|entry| entry.value().is_live_at(now))
                .for_each(|entry| each(entry.key(), entry.value().value())),
            Entries::Cached(hot) => {
                for (key, known) in hot.cache.iter() {
                    if let Some(slot) = known.as_ref().as_ref().filter(|slot| slot.is_live_at(now))
                    {
                        each(&key, slot.value());
                    }
                }
            }
        }
    }

    /// The resident map's table: `None` for a cached map.
    pub(super) fn resident(&self) -> Option<&DashMap<K, Slot<V>>> {
        match self {
            Entries::Resident(entries) => Some(entries),
            Entries::Cached(_) => None,
        }
    }

    /// The cached map's memory: `None` for a resident map.
    pub(super) fn cached(&self) -> Option<&Hot<K, V>> {
        match self {
            Entries::Resident(_) => None,
            Entries::Cached(hot) => Some(hot),
        }
    }

    /// Makes room for `additional` more entries before a large batch, so that the resident
    /// map's shards grow once instead of doubling (and rehashing every key) again and again on
    /// the way. A small batch is not worth the locking of every shard; a cache does not grow.
    pub(super) fn reserve(&self, additional: usize) {
        let Entries::Resident(entries) = self else {
            return;
        };
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
}

impl<K, V> Hot<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    /// Makes the cache hold `known` under `key`; what it held before. The caller holds the
    /// key's turn, so no other write or fill of the key comes in between; a read meanwhile may
    /// find the key not cached, and then reads storage in the key's turn, after this.
    fn set(&self, key: K, known: Known<V>) -> Held<V> {
        let old = match self.cache.remove(&key).map(|(_, old)| taken(old)) {
            Some(Some(old)) => Held::Slot(old),
            Some(None) => Held::Absent,
            None => Held::NotCached,
        };
        self.cache.insert(key, Arc::new(known));
        old
    }
}

/// The capacity to give a table about to receive `hint` entries. The map's shards split it
/// evenly, but keys do not split perfectly evenly, so a little slack keeps a shard that gets a
/// few more than its share from doubling.
pub(super) fn room_for(hint: Option<usize>) -> usize {
    hint.map_or(0, |entries| entries + entries / 64)
}
