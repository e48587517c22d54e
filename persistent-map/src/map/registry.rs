//! One truth per table in a process: maps opened on the same storage and table (and the same
//! key and value types) share one [`Shared`], so each handle sees every other's commits at once
//! and their writes of one key take turns.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::shared::Shared;

/// Where the maps of one table find each other: the `Shared` of the live ones, if any. Opening
/// holds the slot's lock while it loads, so two maps opened at once on one table load once.
pub(super) type Slot<K, V> = tokio::sync::Mutex<Weak<Shared<K, V>>>;

/// A slot, its types erased.
trait AnySlot: Send + Sync {
    /// Whether a map still uses the slot (or one is being opened on it).
    fn in_use(&self) -> bool;
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl<K, V> AnySlot for Slot<K, V>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    fn in_use(&self) -> bool {
        self.try_lock()
            .map_or(true, |shared| shared.strong_count() > 0)
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

type Slots = HashMap<(String, TypeId), Arc<dyn AnySlot>>;

static SLOTS: Mutex<Option<Slots>> = Mutex::new(None);

/// The slot of the table named `storage_id` for maps of types `T` (the key, value and backend
/// types: maps of other types on the same table cannot share entries).
pub(super) fn slot<T, K, V>(storage_id: String) -> Arc<Slot<K, V>>
where
    T: 'static,
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    let mut slots = SLOTS.lock().unwrap_or_else(PoisonError::into_inner);
    let slots = slots.get_or_insert_with(HashMap::new);
    let key = (storage_id, TypeId::of::<T>());
    if let Some(slot) = slots.get(&key) {
        let slot = Arc::clone(slot).into_any();
        return slot
            .downcast::<Slot<K, V>>()
            .expect("a slot's TypeId key fixes its key and value types");
    }
    // Forget the tables no map uses any more before adding one.
    slots.retain(|_, slot| Arc::strong_count(slot) > 1 || slot.in_use());
    let slot: Arc<Slot<K, V>> = Arc::new(tokio::sync::Mutex::new(Weak::new()));
    slots.insert(key, Arc::clone(&slot) as Arc<dyn AnySlot>);
    slot
}

/// Whether a map of any types is open on the table named `storage_id` in this process.
#[cfg(feature = "sqlite")]
pub(crate) fn is_open(storage_id: &str) -> bool {
    let slots = SLOTS.lock().unwrap_or_else(PoisonError::into_inner);
    slots.as_ref().is_some_and(|slots| {
        slots
            .iter()
            .any(|((id, _), slot)| id == storage_id && slot.in_use())
    })
}
