//! Batches: several writes, all or nothing, in memory and in storage.

use crate::{MapKey, MapValue};
use std::collections::HashSet;

use super::commit::{commit_one, MapWrite, Op, Turn, Write};
use super::entries::Lookup;
use super::shared::Shared;
use super::PersistentMap;
use crate::key_locks::KeyGuard;
use crate::{BatchOp, PersistentError, Result, StorageBackend};

impl<K, V, B> PersistentMap<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// Stores every `(key, value)` pair as one all-or-nothing batch (for SQLite, one
    /// transaction): on error nothing changed, in memory or in storage. A key given twice keeps
    /// its last value.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert_many((0..100).map(|i| (i, i * i))).await?;
    /// assert_eq!(map.len(), 100);
    /// # Ok(()) }));
    /// ```
    pub async fn insert_many(&self, entries: impl IntoIterator<Item = (K, V)>) -> Result<()> {
        let deadline = self.default_deadline();
        let ops = entries
            .into_iter()
            .map(|(key, value)| Op::Save {
                key,
                value,
                deadline,
            })
            .collect();
        self.write_batch(ops).await.map(drop)
    }

    /// Removes every key of `keys` as one all-or-nothing batch, and returns how many of them the
    /// map held.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert_many([(1, 1), (2, 2), (3, 3)]).await?;
    /// assert_eq!(map.remove_many([1, 2, 9]).await?, 2);
    /// assert_eq!(map.keys().collect::<Vec<_>>(), [3]);
    /// # Ok(()) }));
    /// ```
    pub async fn remove_many(&self, keys: impl IntoIterator<Item = K>) -> Result<usize> {
        self.write_batch(keys.into_iter().map(Op::Delete).collect())
            .await
    }

    /// Keeps only the entries for which `keep` returns `true`, removing the others as one
    /// all-or-nothing batch, and returns how many were removed.
    ///
    /// Other writes wait while `keep` runs over the map. Expired entries are not shown to
    /// `keep`: the sweep removes them.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert_many((0..10).map(|i| (i, i * i))).await?;
    /// assert_eq!(map.retain(|_, square| *square < 20).await?, 5);
    /// assert_eq!(map.len(), 5);
    /// # Ok(()) }));
    /// ```
    pub async fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) -> Result<usize> {
        let all_keys = self.shared.key_locks.lock_all().await;
        let mut doomed = Vec::new();
        self.shared
            .entries
            .for_each_live(crate::deadline::now_millis(), |key, value| {
                if !keep(key, value) {
                    doomed.push(Op::Delete(key.clone()));
                }
            });
        if doomed.is_empty() {
            return Ok(0);
        }
        self.commit_batch(all_keys, doomed).await
    }

    /// Removes every entry, from storage too (for SQLite, one `DELETE` in one transaction).
    ///
    /// Unlike persistent-map 0.1.3's `clear`, which emptied only memory (and so was undone by
    /// the next load), this empties the backend first. Subscribers hear [`Change::Cleared`](crate::Change::Cleared).
    ///
    /// A backend that cannot clear atomically (the default [`StorageBackend::clear`]) may
    /// fail part-way: the error is the one that stopped it, and the map reloads so that memory
    /// holds what is left. If that reload fails too, the next [`refresh`](Self::refresh)
    /// reloads everything.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap, StorageBackend};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let backend = InMemoryBackend::new();
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(backend.clone()).await?;
    /// map.insert_many([(1, 1), (2, 2)]).await?;
    /// map.clear().await?;
    /// assert!(map.is_empty());
    /// let stored: std::collections::HashMap<u32, u32> = backend.load_all().await?;
    /// assert!(stored.is_empty());
    /// # Ok(()) }));
    /// ```
    pub async fn clear(&self) -> Result<()> {
        let all_keys = self.shared.key_locks.lock_all().await;
        self.commit_batch(all_keys, vec![Op::Clear]).await.map(drop)
    }

    async fn write_batch(&self, ops: Vec<Op<K, V>>) -> Result<usize> {
        if ops.is_empty() {
            return Ok(0);
        }
        let guard = self
            .shared
            .key_locks
            .lock_many(ops.iter().filter_map(Op::key))
            .await;
        self.commit_batch(guard, ops).await
    }

    /// Stores `ops` as one write, then applies them to memory; returns how many deletes removed
    /// a key the map held (in storage, for a cached map).
    async fn commit_batch(&self, guard: KeyGuard, ops: Vec<Op<K, V>>) -> Result<usize> {
        let mut write = Write::new(Vec::new(), ops);
        // A cached map counts (and tells subscribers of) the keys a delete removed as storage
        // says: memory need not have held them.
        write.want_previous = self.shared.entries.cached().is_some();
        let settled = commit_one(MapWrite::new(self, write, Turn::Exclusive(guard))).await?;
        Ok(settled.removed())
    }
}

/// A backend that cannot apply batches atomically applied the first `applied` writes of `ops`
/// and then failed with `cause`. Restores those keys' previous values in storage so that the
/// batch changed nothing, and returns `cause`. Where the restore fails too, memory takes the
/// batch's values instead, so memory still equals storage, and the error says how much of the
/// batch was applied. A clear that stopped part-way reloads memory instead (if that fails too,
/// the next refresh reloads everything).
pub(super) async fn undo_partial_batch<K, V, B>(
    shared: &Shared<K, V>,
    backend: &B,
    mut ops: Vec<Op<K, V>>,
    applied: usize,
    cause: PersistentError,
) -> PersistentError
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + ?Sized,
{
    let partial = |cause| PersistentError::PartialBatch {
        applied,
        source: Box::new(cause),
    };
    if ops.iter().any(|op| matches!(op, Op::Clear)) {
        if shared.reload_in_turn(backend).await.is_err() {
            shared.set_position(None);
        }
        return partial(cause);
    }
    ops.truncate(applied);
    // Memory still holds every key's value from before the batch, or (a cached map) knows
    // nothing of it: such a key keeps the batch's value in storage, and memory still knows
    // nothing of it.
    let mut seen = HashSet::new();
    let mut unknown = false;
    let restore: Vec<BatchOp<K, V>> = ops
        .iter()
        .filter_map(Op::key)
        .filter(|key| seen.insert(*key))
        .filter_map(
            |key| match shared.entries.lookup(key, |value, _| value.clone()) {
                Lookup::Live(value) => Some(BatchOp::Save(key.clone(), value)),
                Lookup::Absent => Some(BatchOp::Delete(key.clone())),
                Lookup::NotCached => {
                    unknown = true;
                    None
                }
            },
        )
        .collect();
    let restored = match backend.apply_batch(&restore).await {
        Ok(()) if !unknown => return cause,
        Ok(()) => return partial(cause),
        Err(PersistentError::PartialBatch { applied, .. }) => applied,
        Err(_) => 0,
    };
    // `min`: a backend that over-reports must not make the map panic.
    let unrestored: HashSet<&K> = restore[restored.min(restore.len())..]
        .iter()
        .map(BatchOp::key)
        .collect();
    let diverged: Vec<Op<K, V>> = ops
        .into_iter()
        .filter(|op| op.key().is_some_and(|key| unrestored.contains(key)))
        .collect();
    let write = Write::new(Vec::new(), diverged);
    let _ = shared.settle(write, super::commit::Answer::Applied { previous: None }, "");
    partial(cause)
}
