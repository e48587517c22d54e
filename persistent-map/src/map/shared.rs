//! What every handle on one table in this process shares: the entries, the keys' turns, the
//! change feed, and where the entries stand in the backend's history of changes.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, PoisonError};

use dashmap::DashMap;
use serde::Serialize;

use super::expiry::{ExpiryState, Slot};
use crate::changes::ChangeFeed;
use crate::key_locks::KeyLocks;
use crate::{BatchOp, Change, ChangePosition, Deadline, PersistentError, Result, StorageBackend};

pub(super) struct Shared<K, V> {
    /// This map's id among the writers of its storage ([`crate::WriteOptions::origin`]).
    pub(super) id: u64,
    pub(super) entries: DashMap<K, Slot<V>>,
    pub(super) key_locks: KeyLocks,
    pub(super) changes: ChangeFeed<K, V>,
    /// Where `entries` stand in the backend's history of changes: replaced only once what a
    /// refresh read has been applied, so a refresh that fails or is dropped part-way loses
    /// nothing.
    position: Mutex<Option<ChangePosition>>,
    /// One refresh at a time, so that positions are replaced in order.
    pub(super) refreshing: tokio::sync::Mutex<()>,
    /// Keys with pipelined writes in flight, and what they will hold once those commit.
    pending: DashMap<K, Pending<V>>,
    pub(super) expiry: ExpiryState,
}

/// What a key will hold once its pipelined writes in flight are committed.
struct Pending<V> {
    value: Option<V>,
    in_flight: usize,
    /// The ticket of the last write handed over.
    last: u64,
}

impl<K, V> Shared<K, V>
where
    K: Eq + Hash + Clone + Serialize + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Loads everything `backend` holds.
    pub(super) async fn load<B: StorageBackend<K, V> + Send + Sync + ?Sized>(
        backend: &B,
    ) -> Result<Self>
    where
        K: serde::de::DeserializeOwned,
        V: Serialize + serde::de::DeserializeOwned,
    {
        let began = std::time::Instant::now();
        let position = backend.change_position().await?;
        let entries = DashMap::with_capacity(room_for(backend.len_hint().await));
        let mut duplicates = Duplicates::default();
        let expiry = ExpiryState::default();
        backend
            .load_each_expiring(&mut |key, value, deadline| match entries.entry(key) {
                dashmap::Entry::Vacant(vacant) => {
                    expiry.note(deadline);
                    drop(vacant.insert(Slot::new(value, deadline)));
                }
                dashmap::Entry::Occupied(occupied) => duplicates.saw(occupied.key()),
            })
            .await?;
        duplicates.check()?;
        tracing::debug!(entries = entries.len(), elapsed = ?began.elapsed(), "loaded a map");
        Ok(Self {
            id: new_id(),
            entries,
            key_locks: KeyLocks::new(),
            changes: ChangeFeed::new(),
            position: Mutex::new(position),
            refreshing: tokio::sync::Mutex::new(()),
            pending: DashMap::new(),
            expiry,
        })
    }

    /// What `key` will hold once the writes in flight commit: `Some` only while pipelined
    /// writes of it are in flight. The caller holds the key's stripe.
    pub(super) fn pending_value(&self, key: &K) -> Option<Option<V>> {
        self.pending.get(key).map(|pending| pending.value.clone())
    }

    /// A pipelined write of `key` (ticket `ticket`) that will leave `value` was handed over.
    pub(super) fn pend(&self, key: K, value: Option<V>, ticket: u64) {
        let mut pending = self.pending.entry(key).or_insert(Pending {
            value: None,
            in_flight: 0,
            last: ticket,
        });
        pending.value = value;
        pending.in_flight += 1;
        pending.last = ticket;
    }

    /// The pipelined write of `key` with ticket `ticket` is settled in memory. If it did not
    /// store what it meant to and it was the last one handed over, what the key will hold is
    /// what memory now holds.
    pub(super) fn unpend(&self, key: &K, ticket: u64, stored: bool) {
        if let dashmap::Entry::Occupied(mut pending) = self.pending.entry(key.clone()) {
            let state = pending.get_mut();
            state.in_flight -= 1;
            if state.in_flight == 0 {
                pending.remove();
            } else if !stored && state.last == ticket {
                state.value = self.entries.get(key).and_then(|slot| slot.live().cloned());
            }
        }
    }

    pub(super) fn position(&self) -> Option<ChangePosition> {
        *self.position.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn set_position(&self, position: Option<ChangePosition>) {
        *self.position.lock().unwrap_or_else(PoisonError::into_inner) = position;
    }

    /// Applies a stored write to memory and tells subscribers; returns the value it replaced.
    pub(super) fn apply(&self, op: BatchOp<K, V>) -> Option<V> {
        self.apply_until(op, None)
    }

    /// Applies a stored write whose saved value expires at `deadline` to memory and tells
    /// subscribers; returns the live value it replaced.
    pub(super) fn apply_until(&self, op: BatchOp<K, V>, deadline: Option<Deadline>) -> Option<V> {
        match op {
            BatchOp::Save(key, value) => {
                let change = self.changes.is_watched().then(|| Change::Inserted {
                    key: key.clone(),
                    value: value.clone(),
                });
                self.expiry.note(deadline);
                let old = self.entries.insert(key, Slot::new(value, deadline));
                self.changes.publish(change);
                old.and_then(Slot::into_live)
            }
            BatchOp::Delete(key) => {
                let (key, old) = self.entries.remove(&key)?;
                let old = old.into_live();
                // An expired entry was already absent to every reader; a subscriber that mirrors
                // the map hears that it expired.
                self.changes.publish(Some(match old {
                    Some(_) => Change::Removed { key },
                    None => Change::Expired { key },
                }));
                old
            }
        }
    }

    /// Makes memory hold what storage holds under `key` (`None`: nothing), with its deadline.
    pub(super) fn apply_stored(&self, key: K, stored: Option<(V, Option<Deadline>)>) {
        match stored {
            Some((value, deadline)) => self.apply_until(BatchOp::Save(key, value), deadline),
            None => self.apply(BatchOp::Delete(key)),
        };
    }

    /// Applies stored writes, whose saved values expire at `deadline`, to memory; returns the
    /// value the first one replaced, and how many deletes removed a key.
    pub(super) fn apply_all(
        &self,
        ops: impl ExactSizeIterator<Item = BatchOp<K, V>>,
        deadline: Option<Deadline>,
    ) -> (Option<V>, usize) {
        reserve(&self.entries, ops.len());
        let mut first = None;
        let mut removed = 0;
        for (index, op) in ops.enumerate() {
            let is_delete = matches!(op, BatchOp::Delete(_));
            let replaced = self.apply_until(op, deadline);
            if replaced.is_some() && is_delete {
                removed += 1;
            }
            if index == 0 {
                first = replaced;
            }
        }
        (first, removed)
    }

    /// Replaces memory with what the backend holds. The caller holds every key's turn.
    pub(super) async fn reload<B: StorageBackend<K, V> + Send + Sync + ?Sized>(
        &self,
        backend: &B,
    ) -> Result<()>
    where
        K: serde::de::DeserializeOwned,
        V: Serialize + serde::de::DeserializeOwned,
    {
        let began = std::time::Instant::now();
        // Read first: whatever is committed during the scan is reported again, never missed.
        let position = backend.change_position().await?;
        let mut stored = HashMap::with_capacity(room_for(backend.len_hint().await));
        let mut duplicates = Duplicates::default();
        backend
            .load_each_expiring(&mut |key, value, deadline| match stored.entry(key) {
                std::collections::hash_map::Entry::Vacant(vacant) => {
                    self.expiry.note(deadline);
                    vacant.insert(Slot::new(value, deadline));
                }
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
        self.set_position(position);
        self.changes.publish(Some(Change::Reloaded));
        tracing::debug!(entries = self.entries.len(), elapsed = ?began.elapsed(), "reloaded a map");
        Ok(())
    }
}

/// A map id: different for every map opened, in this process and (with overwhelming
/// likelihood) in any other, and never 0.
fn new_id() -> u64 {
    use std::hash::RandomState;
    use std::sync::atomic::{AtomicU64, Ordering};
    static OPENED: AtomicU64 = AtomicU64::new(0);
    let opened = OPENED.fetch_add(1, Ordering::Relaxed);
    RandomState::new()
        .hash_one((std::process::id(), opened))
        .max(1)
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

/// Keys that a load found twice: two stored entries that parse to the same key. The SQLite and
/// PostgreSQL backends refuse a stored key text that is not the key's own text before it gets
/// here; a custom backend may not. Loading either entry would let one silently hide the other,
/// and writes would then go to only one of them.
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
