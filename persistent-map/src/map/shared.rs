//! What every handle on one table in this process shares: the entries, the keys' turns, the
//! change feed, and where the entries stand in the backend's history of changes.

use crate::{MapKey, MapValue};
use std::collections::{hash_map, HashMap, HashSet};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use dashmap::DashMap;
use serde::Serialize;

use super::commit::{Answer, Kind, Op, Write};
use super::entries::{room_for, CacheCapacity, Entries, Held, Hot};
use super::expiry::{ExpiryState, Slot, Sweepers};
use crate::changes::ChangeFeed;
use crate::key_locks::KeyLocks;
use crate::{Change, ChangePosition, Deadline, PersistentError, Result, StorageBackend, Stored};

pub(super) struct Shared<K, V> {
    /// This map's id among the writers of its storage ([`crate::WriteOptions::origin`]).
    pub(super) id: u64,
    pub(super) entries: Entries<K, V>,
    pub(super) key_locks: KeyLocks,
    pub(super) changes: ChangeFeed<K, V>,
    /// Where `entries` stand in the backend's history of changes: replaced only once what a
    /// refresh read has been applied, so a refresh that fails or is dropped part-way loses
    /// nothing.
    position: Mutex<Option<ChangePosition>>,
    /// One refresh at a time, so that positions are replaced in order.
    pub(super) refreshing: tokio::sync::Mutex<()>,
    /// One reload at a time, and the keys written while it scans.
    reloading: tokio::sync::Mutex<()>,
    written_meanwhile: WrittenMeanwhile<K>,
    /// Keys with pipelined writes in flight, and what they will hold once those commit.
    pending: DashMap<K, Pending<V>>,
    pub(super) expiry: ExpiryState,
    pub(super) sweepers: Sweepers<K>,
}

/// What a write did, once memory took it.
pub(super) enum Settled<V> {
    /// Every op was applied, in storage and then in memory.
    Applied {
        /// What the first op's key held before it: storage's word where the backend gives it,
        /// else memory's.
        replaced: Option<V>,
        /// How many deletes removed a key that memory held.
        removed: usize,
    },
    /// A condition did not hold and nothing was written; memory now holds what storage holds
    /// under each condition's key (in the order of the conditions): its value and its text.
    Conflict(Vec<Option<Stored<V>>>),
}

impl<V> Settled<V> {
    /// What the first op replaced. (A write without conditions never settles as a conflict.)
    pub(super) fn replaced(self) -> Option<V> {
        match self {
            Settled::Applied { replaced, .. } => replaced,
            Settled::Conflict(_) => None,
        }
    }

    /// How many deletes removed a key that memory held.
    pub(super) fn removed(&self) -> usize {
        match self {
            Settled::Applied { removed, .. } => *removed,
            Settled::Conflict(_) => 0,
        }
    }
}

/// What a key will hold once its pipelined writes in flight are committed.
struct Pending<V> {
    value: Option<V>,
    in_flight: usize,
    /// The ticket of the last write handed over.
    last: u64,
    /// A write in flight conflicted: the writes handed over after it were computed from a value
    /// storage did not hold, and will conflict too.
    doomed: bool,
}

impl<K, V> Shared<K, V>
where
    K: MapKey,
    V: MapValue,
{
    /// Loads everything `backend` holds.
    pub(super) async fn load<B: StorageBackend<K, V> + Send + Sync + ?Sized>(
        backend: &B,
    ) -> Result<Self> {
        let began = std::time::Instant::now();
        let entries = DashMap::with_capacity(room_for(backend.len_hint().await));
        let expiry = ExpiryState::default();
        let position = scan(backend, &expiry, |key, slot| match entries.entry(key) {
            dashmap::Entry::Vacant(vacant) => {
                drop(vacant.insert(slot));
                Ok(())
            }
            dashmap::Entry::Occupied(occupied) => Err(occupied.key().clone()),
        })
        .await?;
        tracing::debug!(entries = entries.len(), elapsed = ?began.elapsed(), "loaded a map");
        Ok(Self::with_entries(
            Entries::Resident(entries),
            position,
            expiry,
        ))
    }

    /// Opens on `backend` holding nothing yet, to keep at most `capacity` of its entries: reads
    /// only where the backend's history of changes stands.
    pub(super) async fn cached<B: StorageBackend<K, V> + Send + Sync + ?Sized>(
        backend: &B,
        capacity: &CacheCapacity<K, V>,
    ) -> Result<Self>
    where
        K: serde::de::DeserializeOwned,
        V: Serialize + serde::de::DeserializeOwned,
    {
        let position = backend.change_position().await?;
        let entries = Entries::Cached(Hot::new(capacity));
        Ok(Self::with_entries(
            entries,
            position,
            ExpiryState::default(),
        ))
    }

    fn with_entries(
        entries: Entries<K, V>,
        position: Option<ChangePosition>,
        expiry: ExpiryState,
    ) -> Self {
        Self {
            id: new_id(),
            entries,
            key_locks: KeyLocks::new(),
            changes: ChangeFeed::new(),
            position: Mutex::new(position),
            refreshing: tokio::sync::Mutex::new(()),
            reloading: tokio::sync::Mutex::new(()),
            written_meanwhile: WrittenMeanwhile::default(),
            pending: DashMap::new(),
            expiry,
            sweepers: Sweepers::default(),
        }
    }

    /// What `key` will hold once the writes in flight commit: `Some` only while pipelined
    /// writes of it are in flight. The caller holds the key's stripe.
    pub(super) fn pending_value(&self, key: &K) -> Option<Option<V>> {
        self.pending.get(key).map(|pending| pending.value.clone())
    }

    /// Whether the pipelined writes of `key` in flight build on a write that conflicted: a
    /// read-modify-write that built on them would conflict along with them.
    pub(super) fn pending_doomed(&self, key: &K) -> bool {
        self.pending.get(key).is_some_and(|pending| pending.doomed)
    }

    /// A pipelined write of `key` (ticket `ticket`) that will leave `value` was handed over;
    /// `unconditional` if it holds whatever storage holds (an insert or a remove), so that the
    /// writes after it build on what it leaves, whatever came before.
    pub(super) fn pend(&self, key: K, value: Option<V>, ticket: u64, unconditional: bool) {
        let mut pending = self.pending.entry(key).or_insert(Pending {
            value: None,
            in_flight: 0,
            last: ticket,
            doomed: false,
        });
        pending.value = value;
        pending.in_flight += 1;
        pending.last = ticket;
        if unconditional {
            pending.doomed = false;
        }
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
                // A cached map that no longer holds the key says `None`: the next
                // read-modify-write expects that, conflicts, and goes on from storage's value.
                state.value = self.entries.lookup(key, |value, _| value.clone()).live();
            } else if !stored {
                state.doomed = true;
            }
        }
    }

    pub(super) fn position(&self) -> Option<ChangePosition> {
        *self.position.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn set_position(&self, position: Option<ChangePosition>) {
        *self.position.lock().unwrap_or_else(PoisonError::into_inner) = position;
    }

    /// Applies what storage did with `write` to memory and tells subscribers: the one place a
    /// write reaches memory. Applied: every op, in order, each save with its own deadline;
    /// what the first op replaced (storage's word where it gave it). A conflict: what storage
    /// holds under each condition's key, value and deadline from the same read, decoded (an
    /// error names `table` and the key, and leaves that key as it was); a part without
    /// conditions conflicts only because another part of its write did.
    pub(super) fn settle(
        &self,
        write: Write<K, V>,
        answer: Answer,
        table: &str,
    ) -> Result<Settled<V>> {
        match answer {
            Answer::Applied { previous } => {
                self.entries.reserve(write.ops.len());
                let mut first = None;
                let mut removed = 0;
                for (index, op) in write.ops.into_iter().enumerate() {
                    // Whether storage held the key just before this op, where it said.
                    let stored_before = previous
                        .as_ref()
                        .and_then(|previous| previous.get(index))
                        .map(Option::is_some);
                    let replaced = match op {
                        Op::Save {
                            key,
                            value,
                            deadline,
                        } => self.put(key, value, deadline, write.kind),
                        Op::Delete(key) => {
                            let replaced = self.take(&key, write.kind, stored_before);
                            removed += usize::from(stored_before.unwrap_or(replaced.is_some()));
                            replaced
                        }
                        Op::Clear => {
                            self.entries.clear();
                            self.changes.publish(Some(Change::Cleared));
                            None
                        }
                    };
                    if index == 0 {
                        first = replaced;
                    }
                }
                // A value written by another program that does not decode as `V` falls back to
                // memory's.
                let replaced = match previous.and_then(|previous| previous.into_iter().next()) {
                    Some(None) => None,
                    Some(Some(json)) => serde_json::from_str(&json).ok().or(first),
                    None => first,
                };
                Ok(Settled::Applied { replaced, removed })
            }
            Answer::Conflict { current } => {
                let mut read = Vec::with_capacity(current.len());
                for (condition, now) in write.conditions.into_iter().zip(current) {
                    let Some((json, deadline)) = now else {
                        self.apply_stored(condition.key, None);
                        read.push(None);
                        continue;
                    };
                    let value: V = serde_json::from_str(&json).map_err(|source| {
                        PersistentError::InvalidStoredValue {
                            table: table.to_owned(),
                            key: serde_json::to_string(&condition.key).unwrap_or_default(),
                            source: Box::new(source),
                        }
                    })?;
                    self.apply_stored(condition.key, Some((value.clone(), deadline)));
                    read.push(Some(Stored { value, json }));
                }
                Ok(Settled::Conflict(read))
            }
        }
    }

    /// Makes memory hold what storage holds under `key` (`None`: nothing), with its deadline.
    /// The caller holds the key's turn.
    pub(super) fn apply_stored(&self, key: K, stored: Option<(V, Option<Deadline>)>) {
        match stored {
            Some((value, deadline)) => drop(self.put(key, value, deadline, Kind::Plain)),
            None => drop(self.take(&key, Kind::Plain, None)),
        }
    }

    /// What a refresh read under `key`, written by someone else: applied as
    /// [`apply_stored`](Self::apply_stored) does to a key memory knows. A cached map does not
    /// take a key it does not hold into memory (it is not known to be hot); its subscribers
    /// still hear of the change. The caller holds the key's turn.
    pub(super) fn apply_refreshed(&self, key: K, stored: Option<(V, Option<Deadline>)>) {
        if self.entries.knows(&key) {
            return self.apply_stored(key, stored);
        }
        self.changes.publish(Some(match stored {
            Some((value, _)) => Change::Inserted { key, value },
            None => Change::Removed { key },
        }));
    }

    /// What a cached map read from storage under `key` on a miss, in the key's turn: memory
    /// takes it without telling subscribers (nothing changed).
    pub(super) fn fill(&self, key: K, stored: Option<&(V, Option<Deadline>)>) {
        if let Some(hot) = self.entries.cached() {
            hot.count_storage_read();
        }
        match stored {
            Some((value, deadline)) => {
                self.expiry.note(*deadline);
                drop(self.entries.set(key, Slot::new(value.clone(), *deadline)));
            }
            None => drop(self.entries.set_absent(&key)),
        }
    }

    /// Puts `value` under `key` until `deadline`, telling subscribers; returns the live value
    /// it replaced.
    fn put(&self, key: K, value: V, deadline: Option<Deadline>, kind: Kind) -> Option<V> {
        let change = self.changes.is_watched().then(|| match kind {
            Kind::DeadlineOnly => Change::DeadlineChanged {
                key: key.clone(),
                deadline,
            },
            _ => Change::Inserted {
                key: key.clone(),
                value: value.clone(),
            },
        });
        self.expiry.note(deadline);
        self.written_meanwhile.note(&key);
        let old = self.entries.set(key, Slot::new(value, deadline));
        self.changes.publish(change);
        old.into_live()
    }

    /// Takes `key` out of memory, telling subscribers; returns its live value. A sweep's delete
    /// takes only an entry that has expired in memory too. `stored_before`: whether storage
    /// held the key just before, where it said, for a cached map that did not know.
    fn take(&self, key: &K, kind: Kind, stored_before: Option<bool>) -> Option<V> {
        self.written_meanwhile.note(key);
        let old = match kind {
            Kind::Sweep => self
                .entries
                .forget_expired(key, crate::deadline::now_millis()),
            _ => self.entries.set_absent(key),
        };
        let key = key.clone();
        // An expired entry was already absent to every reader; a subscriber that mirrors the
        // map hears that it expired. A key a cached map did not hold is reported as storage
        // had it: the sweep deletes only expired rows.
        let change = match old {
            Held::Slot(slot) => match slot.into_live() {
                Some(value) => {
                    self.changes.publish(Some(Change::Removed { key }));
                    return Some(value);
                }
                None => Change::Expired { key },
            },
            Held::Absent => return None,
            Held::NotCached if kind == Kind::Sweep => Change::Expired { key },
            Held::NotCached if stored_before == Some(false) => return None,
            Held::NotCached => Change::Removed { key },
        };
        self.changes.publish(Some(change));
        None
    }

    /// Replaces memory with what the backend holds. Scans holding no key's turn, so writes go
    /// on meanwhile; then takes every turn to apply what it read, reading again (with nothing
    /// of this map in flight) the keys that a write of this map settled while it scanned: such
    /// a write may have come after the scan's read, or before it and after something else the
    /// scan saw. On error memory is unchanged.
    pub(super) async fn reload<B: StorageBackend<K, V> + Send + Sync + ?Sized>(
        &self,
        backend: &B,
    ) -> Result<()> {
        let _one_at_a_time = self.reloading.lock().await;
        if self.entries.cached().is_some() {
            let _all_keys = self.key_locks.lock_all().await;
            return self.forget_all(backend).await;
        }
        self.written_meanwhile.track();
        let scanned = self.scan_all(backend).await;
        let _all_keys = self.key_locks.lock_all().await;
        let written = self.written_meanwhile.take();
        let (position, mut stored) = scanned?;
        if !written.is_empty() {
            let keys: Vec<K> = written.into_iter().collect();
            let mut now = backend.load_keys_expiring(&keys).await?;
            for key in keys {
                match now.remove(&key) {
                    Some((value, deadline)) => drop(stored.insert(key, Slot::new(value, deadline))),
                    None => drop(stored.remove(&key)),
                }
            }
        }
        self.replace(stored, position);
        Ok(())
    }

    /// [`reload`](Self::reload) for a caller that holds every key's turn.
    pub(super) async fn reload_in_turn<B: StorageBackend<K, V> + Send + Sync + ?Sized>(
        &self,
        backend: &B,
    ) -> Result<()> {
        if self.entries.cached().is_some() {
            return self.forget_all(backend).await;
        }
        let (position, stored) = self.scan_all(backend).await?;
        self.replace(stored, position);
        Ok(())
    }

    /// A cached map's reload: memory lets go of all it knows, and the next read of each key
    /// asks storage. The place in the backend's history is read first, so that what is
    /// committed from then on is reported by the next refresh; what came before, the reads
    /// see. The caller holds every key's turn, so no read is filling memory meanwhile.
    async fn forget_all<B: StorageBackend<K, V> + Send + Sync + ?Sized>(
        &self,
        backend: &B,
    ) -> Result<()>
    where
        K: serde::de::DeserializeOwned,
        V: Serialize + serde::de::DeserializeOwned,
    {
        let position = backend.change_position().await?;
        self.entries.clear();
        self.set_position(position);
        self.changes.publish(Some(Change::Reloaded));
        tracing::debug!("a cached map let go of everything it held");
        Ok(())
    }

    /// Everything `backend` holds, and the place in its history read before.
    async fn scan_all<B: StorageBackend<K, V> + Send + Sync + ?Sized>(
        &self,
        backend: &B,
    ) -> Result<(Option<ChangePosition>, HashMap<K, Slot<V>>)> {
        let mut stored = HashMap::with_capacity(room_for(backend.len_hint().await));
        let position = scan(backend, &self.expiry, |key, slot| match stored.entry(key) {
            hash_map::Entry::Vacant(vacant) => {
                vacant.insert(slot);
                Ok(())
            }
            hash_map::Entry::Occupied(occupied) => Err(occupied.key().clone()),
        })
        .await?;
        Ok((position, stored))
    }

    /// Makes memory hold `stored`; tells subscribers.
    fn replace(&self, stored: HashMap<K, Slot<V>>, position: Option<ChangePosition>) {
        let entries = self
            .entries
            .resident()
            .expect("only a resident map scans the whole table");
        entries.retain(|key, _| stored.contains_key(key));
        self.entries
            .reserve(stored.len().saturating_sub(entries.len()));
        for (key, slot) in stored {
            entries.insert(key, slot);
        }
        self.set_position(position);
        self.changes.publish(Some(Change::Reloaded));
        tracing::debug!(entries = self.entries.len(), "reloaded a map");
    }
}

/// Reads everything `backend` holds into `put` (which hands back a key it already had), noting
/// deadlines in `expiry`; returns the place in the backend's history read first, so that
/// whatever is committed during the scan is reported again, never missed. Two stored entries
/// that parse to one key are an error.
async fn scan<K, V, B>(
    backend: &B,
    expiry: &ExpiryState,
    mut put: impl FnMut(K, Slot<V>) -> std::result::Result<(), K> + Send,
) -> Result<Option<ChangePosition>>
where
    K: Serialize + Send,
    V: Send,
    B: StorageBackend<K, V> + Send + Sync + ?Sized,
    K: Eq + Hash + Clone + serde::de::DeserializeOwned + Sync + 'static,
    V: Clone + Serialize + serde::de::DeserializeOwned + Sync + 'static,
{
    let position = backend.change_position().await?;
    let mut duplicates = Duplicates::default();
    backend
        .load_each_expiring(&mut |key, value, deadline| {
            expiry.note(deadline);
            if let Err(key) = put(key, Slot::new(value, deadline)) {
                duplicates.saw(&key);
            }
        })
        .await?;
    duplicates.check()?;
    Ok(position)
}

/// The keys that writes of this map settled while a reload scanned, which the reload then reads
/// again. Costs a write one atomic load while no reload scans.
pub(super) struct WrittenMeanwhile<K> {
    tracking: AtomicBool,
    keys: Mutex<HashSet<K>>,
}

impl<K> Default for WrittenMeanwhile<K> {
    fn default() -> Self {
        Self {
            tracking: AtomicBool::new(false),
            keys: Mutex::new(HashSet::new()),
        }
    }
}

impl<K: Eq + Hash + Clone> WrittenMeanwhile<K> {
    fn keys(&self) -> std::sync::MutexGuard<'_, HashSet<K>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn track(&self) {
        self.keys().clear();
        self.tracking.store(true, Ordering::SeqCst);
    }

    fn note(&self, key: &K) {
        if self.tracking.load(Ordering::SeqCst) {
            self.keys().insert(key.clone());
        }
    }

    fn take(&self) -> HashSet<K> {
        self.tracking.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.keys())
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
