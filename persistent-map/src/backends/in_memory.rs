//! A backend that keeps its store in process memory.

use crate::{MapKey, MapValue};
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::backends::encode::{encode_value, same_json};
use crate::deadline::{is_live, now_millis};
use crate::map::{Op, Write};
use crate::{
    BatchOp, Checked, Condition, Deadline, PersistentError, Result, StorageBackend, Stored,
    WriteOptions,
};

/// A backend that stores entries in process memory, so nothing survives the process.
///
/// It keeps a real copy of what was written, as a disk would: a second map opened on a clone of
/// the backend (clones share one store) loads what the first one wrote. That makes it the
/// backend for tests and for maps that are persistent only within a process. Batches are atomic
/// (unless a key's `Hash` or a key's or value's `Clone` panics part-way). It stores deadlines
/// too, so entries with a time to live expire as they do on SQLite.
/// The copy costs memory as much again as the map's own.
///
/// ```
/// use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
///
/// # persistent_map::__private::run_example(Box::pin(async {
/// let backend = InMemoryBackend::new();
/// let map: PersistentMap<String, u32, _> = PersistentMap::new(backend.clone()).await?;
/// map.insert("visits".to_string(), 1).await?;
/// drop(map);
///
/// let reopened: PersistentMap<String, u32, _> = PersistentMap::new(backend).await?;
/// assert_eq!(reopened.get(&"visits".to_string()), Some(1));
/// # Ok(()) }));
/// ```
#[derive(Clone, Default)]
pub struct InMemoryBackend {
    stores: Arc<Mutex<Stores>>,
}

/// One [`Store`] per key and value type, keyed by their `TypeId`s.
pub(crate) type Stores = HashMap<(TypeId, TypeId), Box<dyn Any + Send>>;

/// The entries of one key and value type, each with its deadline.
type Store<K, V> = HashMap<K, (V, Option<Deadline>)>;

/// The store of `K` and `V` in `stores`, made empty on first use.
fn store_in<K, V>(stores: &mut Stores) -> &mut Store<K, V>
where
    K: Eq + Hash + Send + 'static,
    V: Send + 'static,
{
    stores
        .entry((TypeId::of::<K>(), TypeId::of::<V>()))
        .or_insert_with(|| Box::new(Store::<K, V>::new()))
        .downcast_mut::<Store<K, V>>()
        .expect("the store under (TypeId K, TypeId V) is always a Store<K, V>")
}

/// The live value under `key`, if any.
fn live<'s, K: Eq + Hash, V>(store: &'s Store<K, V>, key: &K, now: u64) -> Option<&'s V> {
    store
        .get(key)
        .filter(|(_, deadline)| is_live(*deadline, now))
        .map(|(value, _)| value)
}

impl InMemoryBackend {
    /// Creates an empty store.
    ///
    /// ```
    /// let backend = persistent_map::in_memory::InMemoryBackend::new();
    /// # let _ = backend;
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn with_store<K, V, R>(&self, f: impl FnOnce(&mut Store<K, V>) -> R) -> R
    where
        K: Eq + Hash + Send + 'static,
        V: Send + 'static,
    {
        f(store_in(&mut lock(&self.stores)))
    }
}

/// The store's data stays consistent even if a panic poisoned the lock: every change is a single
/// `HashMap` call.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl fmt::Debug for InMemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryBackend")
            .field("stores", &lock(&self.stores).len())
            .finish()
    }
}

#[async_trait::async_trait]
impl<K, V> StorageBackend<K, V> for InMemoryBackend
where
    K: MapKey,
    V: MapValue,
{
    async fn load_all(&self) -> Result<HashMap<K, V>, PersistentError> {
        let now = now_millis();
        Ok(self.with_store(|store: &mut Store<K, V>| {
            store
                .iter()
                .filter(|(_, (_, deadline))| is_live(*deadline, now))
                .map(|(key, (value, _))| (key.clone(), value.clone()))
                .collect()
        }))
    }

    async fn save(&self, key: K, value: V) -> Result<(), PersistentError> {
        self.with_store(|store| store.insert(key, (value, None)));
        Ok(())
    }

    async fn delete(&self, key: &K) -> Result<(), PersistentError> {
        self.with_store(|store: &mut Store<K, V>| store.remove(key));
        Ok(())
    }

    async fn apply_batch(&self, ops: &[BatchOp<K, V>]) -> Result<(), PersistentError> {
        let write = Write::from_batch(&[], ops, WriteOptions::new());
        self.with_store(|store| apply(store, &write.ops, false, now_millis()))
            .map(drop)
    }

    fn supports_expiry(&self) -> bool {
        true
    }

    async fn load_each_expiring(
        &self,
        sink: &mut (dyn FnMut(K, V, Option<Deadline>) + Send),
    ) -> Result<(), PersistentError> {
        let now = now_millis();
        let entries: Vec<(K, V, Option<Deadline>)> = self.with_store(|store: &mut Store<K, V>| {
            store
                .iter()
                .filter(|(_, (_, deadline))| is_live(*deadline, now))
                .map(|(key, (value, deadline))| (key.clone(), value.clone(), *deadline))
                .collect()
        });
        for (key, value, deadline) in entries {
            sink(key, value, deadline);
        }
        Ok(())
    }

    async fn load_keys_expiring(
        &self,
        keys: &[K],
    ) -> Result<HashMap<K, (V, Option<Deadline>)>, PersistentError> {
        let now = now_millis();
        Ok(self.with_store(|store: &mut Store<K, V>| {
            keys.iter()
                .filter_map(|key| {
                    let (value, deadline) = store.get(key)?;
                    is_live(*deadline, now).then(|| (key.clone(), (value.clone(), *deadline)))
                })
                .collect()
        }))
    }

    /// Deletes up to `limit` expired entries under the store's lock.
    async fn sweep_expired(&self, limit: usize, _origin: u64) -> Result<Vec<K>, PersistentError> {
        let now = now_millis();
        Ok(self.with_store(|store: &mut Store<K, V>| {
            let expired: Vec<K> = store
                .iter()
                .filter(|(_, (_, deadline))| !is_live(*deadline, now))
                .map(|(key, _)| key.clone())
                .take(limit)
                .collect();
            for key in &expired {
                store.remove(key);
            }
            expired
        }))
    }

    /// Checks and writes under the store's lock: atomic against every map on a clone of this
    /// backend.
    async fn apply_checked(
        &self,
        conditions: &[Condition<K>],
        ops: &[BatchOp<K, V>],
        options: WriteOptions,
    ) -> Result<Checked<V>, PersistentError> {
        let write = Write::from_batch(conditions, ops, options);
        self.with_store(|store: &mut Store<K, V>| {
            let now = now_millis();
            let (current, holds) = check(store, conditions, now)?;
            if !holds {
                return Ok(Checked::ConflictWithDeadlines { current });
            }
            let previous = apply(store, &write.ops, write.want_previous, now)?;
            Ok(Checked::Applied { previous })
        })
    }

    fn __transaction_target(&self) -> Option<crate::__private::TransactionTarget<K, V>> {
        Some(crate::map::TransactionTarget {
            store: crate::map::Store::InMemory(Arc::clone(&self.stores)),
            prepare: Box::new(|write, _origin| {
                Ok(crate::map::Prepared::InMemory(Box::new(WritePart {
                    conditions: write.conditions.clone(),
                    ops: write.ops.clone(),
                })))
            }),
            name: "(in-memory store)".to_owned(),
        })
    }

    /// Every write is done, under the store's lock, on its future's first poll.
    fn pipelines_writes(&self) -> bool {
        true
    }

    /// One name per store: maps on clones of one backend share their entries.
    fn storage_id(&self) -> Option<String> {
        Some(format!("in-memory:{:p}", Arc::as_ptr(&self.stores)))
    }
}

/// What `store` holds (live at `now`) under each condition's key, with its deadline, and
/// whether every condition holds.
#[allow(clippy::type_complexity)]
fn check<K: Eq + Hash, V: Clone + Serialize>(
    store: &Store<K, V>,
    conditions: &[Condition<K>],
    now: u64,
) -> Result<(Vec<Option<(Stored<V>, Option<Deadline>)>>, bool)> {
    let mut current = Vec::with_capacity(conditions.len());
    let mut holds = true;
    for condition in conditions {
        let stored = store
            .get(&condition.key)
            .filter(|(_, deadline)| is_live(*deadline, now));
        let json = stored.map(|(value, _)| encode_value(value)).transpose()?;
        holds &= same_json(json.as_deref(), condition.expected.as_deref());
        current.push(stored.zip(json).map(|((value, deadline), json)| {
            let value = value.clone();
            (Stored { value, json }, *deadline)
        }));
    }
    Ok((current, holds))
}

/// Applies `ops` to `store`; with `want_previous`, says what each op's key held (live at
/// `now`) just before it.
fn apply<K: Eq + Hash + Clone, V: Clone + Serialize>(
    store: &mut Store<K, V>,
    ops: &[Op<K, V>],
    want_previous: bool,
    now: u64,
) -> Result<Option<Vec<Option<String>>>> {
    let mut previous = Vec::with_capacity(if want_previous { ops.len() } else { 0 });
    for op in ops {
        if want_previous {
            let held = op.key().and_then(|key| live(store, key, now));
            previous.push(held.map(encode_value).transpose()?);
        }
        match op {
            Op::Save {
                key,
                value,
                deadline,
            } => drop(store.insert(key.clone(), (value.clone(), *deadline))),
            Op::Delete(key) => drop(store.remove(key)),
            Op::Clear => store.clear(),
        }
    }
    Ok(want_previous.then_some(previous))
}

impl crate::map::sealed::Sealed for InMemoryBackend {}

/// A map's share of a write on this backend.
struct WritePart<K, V> {
    conditions: Vec<Condition<K>>,
    ops: Vec<Op<K, V>>,
}

impl<K, V> crate::map::InMemoryPart for WritePart<K, V>
where
    K: Eq + Hash + Clone + Serialize + Send + Sync + 'static,
    V: Clone + Serialize + Send + Sync + 'static,
{
    fn check(&self, stores: &mut Stores) -> Result<(crate::map::Current, bool)> {
        let (current, holds) = check(store_in::<K, V>(stores), &self.conditions, now_millis())?;
        let current = current
            .into_iter()
            .map(|now| now.map(|(stored, deadline)| (stored.json, deadline)))
            .collect();
        Ok((current, holds))
    }

    fn apply(
        &self,
        stores: &mut Stores,
        want_previous: bool,
    ) -> Result<Option<Vec<Option<String>>>> {
        apply(
            store_in::<K, V>(stores),
            &self.ops,
            want_previous,
            now_millis(),
        )
    }
}
