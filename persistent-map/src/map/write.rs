//! Writes: each goes to the backend first, then to memory, in its key's turn, and runs to
//! completion even when its caller stops waiting. Every write is one call of
//! [`StorageBackend::apply_checked`]: a plain write, a write with conditions (the
//! read-modify-writes), or a batch.

use std::hash::Hash;
use std::sync::Arc;
use std::task::Poll;

use serde::{de::DeserializeOwned, Serialize};

use super::shared::Shared;
use super::PersistentMap;
use crate::backends::encode::encode_value;
use crate::completion::run_to_completion;
use crate::key_locks::{KeyGuard, Ticket};
use crate::{
    BatchOp, Checked, Condition, Deadline, PersistentError, Result, StorageBackend, Stored,
    WriteOptions,
};

/// What a write did, once memory took it.
pub(super) enum Outcome<V> {
    /// Every write was applied, in storage and then in memory.
    Applied {
        /// What the first write's key held before it: storage's word where the backend gives
        /// it, else memory's.
        replaced: Option<V>,
        /// How many deletes removed a key that memory held.
        removed: usize,
    },
    /// A condition did not hold and nothing was written; memory now holds what storage holds
    /// under each condition's key (in the order of the conditions).
    Conflict(Vec<Option<Stored<V>>>),
}

impl<K, V, B> PersistentMap<K, V, B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// Stores `value` under `key`, then returns the value it replaced: the value storage held,
    /// also when another handle, process or instance wrote it (for backends that report it, as
    /// SQLite's and the in-memory one do; a custom backend's map reports the value memory held).
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
        let deadline = self.default_deadline();
        self.write_with(BatchOp::Save(key, value), deadline).await
    }

    /// Removes `key` from the backend, then from the map, and returns the value storage held
    /// (as [`insert`](Self::insert) does).
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
        self.write_with(BatchOp::Delete(key.clone()), None).await
    }

    /// Atomically replaces the value under `key` with what `change` makes of it, and returns the
    /// new value.
    ///
    /// `change` gets the current value (`None` if absent) and returns the new one (`None`
    /// removes the key; `None` for an absent key writes nothing). The write is conditional: it
    /// is stored only if storage still holds the value `change` was given, checked in the same
    /// atomic step as the write. If another writer got there first, memory takes what storage
    /// holds and `change` runs again on that. So no update is ever lost, and afterwards memory
    /// holds what was stored.
    ///
    /// # Across handles, processes and instances
    ///
    /// The check is as wide as the backend's [`apply_checked`](StorageBackend::apply_checked):
    /// every handle and every process on a SQLite file (the check and the write are one
    /// `IMMEDIATE` transaction), every map on clones of an in-memory backend. A custom backend
    /// that does not override `apply_checked` is atomic only against the maps of this process.
    ///
    /// # What `change` may assume
    ///
    /// It runs on the caller's task, once or more (once more per write that beat it), each time
    /// with what storage held at that moment. Keep it a pure function of its argument: no side
    /// effects that must happen exactly once. Writes of `key` from this process wait while it
    /// runs, so keep it short, and do not write `key` from inside it.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let hits: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// let bump = |old: Option<&u32>| Some(old.copied().unwrap_or(0) + 1);
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
        change: impl FnMut(Option<&V>) -> Option<V>,
    ) -> Result<Option<V>> {
        self.update_until(key, change, self.default_deadline())
            .await
    }

    /// [`update`](Self::update), the value it stores expiring at `deadline`.
    pub(super) async fn update_until(
        &self,
        key: &K,
        mut change: impl FnMut(Option<&V>) -> Option<V>,
        deadline: Option<Deadline>,
    ) -> Result<Option<V>> {
        if !self.backend.pipelines_writes() {
            return self.update_in_turn(key, change, deadline).await;
        }
        // After a conflict with nothing else in flight: storage's own text of what it holds.
        let mut stored_json: Option<Option<String>> = None;
        loop {
            let (guard, ticket) = self.shared.key_locks.pipeline(key).await;
            // What the key will hold once the writes already handed over commit: a hot key's
            // next update is computed from its previous one before that one commits.
            let (current, expected) = match self.shared.pending_value(key) {
                Some(pending) => {
                    let json = pending.as_ref().map(encode_value).transpose()?;
                    (pending, json)
                }
                None => {
                    let current = self.get(key);
                    let json = match stored_json.take() {
                        Some(json) => json,
                        None => current.as_ref().map(encode_value).transpose()?,
                    };
                    (current, json)
                }
            };
            let new = change(current.as_ref());
            let ops = update_ops(key, &current, &new);
            let condition = Condition {
                key: key.clone(),
                expected,
            };
            self.shared.pend(key.clone(), new.clone(), ticket.number());
            let outcome = self
                .commit_pipelined(
                    guard,
                    ticket,
                    key.clone(),
                    vec![condition],
                    ops,
                    self.write_options(false, deadline),
                )
                .await?;
            match outcome {
                Outcome::Applied { .. } => return Ok(new),
                Outcome::Conflict(mut now) => {
                    stored_json = Some(now.pop().flatten().map(|stored| stored.json));
                }
            }
        }
    }

    /// [`update`](Self::update) holding the key's turn until each attempt is done, for backends
    /// that do not pipeline writes.
    async fn update_in_turn(
        &self,
        key: &K,
        mut change: impl FnMut(Option<&V>) -> Option<V>,
        deadline: Option<Deadline>,
    ) -> Result<Option<V>> {
        let mut guard = self.shared.key_locks.lock(key).await;
        let mut current = self.get(key);
        let mut expected = current.as_ref().map(encode_value).transpose()?;
        loop {
            let new = change(current.as_ref());
            let ops = update_ops(key, &current, &new);
            let condition = Condition {
                key: key.clone(),
                expected,
            };
            let (returned, outcome) = self
                .commit(guard, vec![condition], ops, false, deadline)
                .await;
            guard = returned;
            match outcome? {
                Outcome::Applied { .. } => return Ok(new),
                Outcome::Conflict(mut now) => {
                    let stored = now.pop().flatten();
                    expected = stored.as_ref().map(|stored| stored.json.clone());
                    current = stored.map(|stored| stored.value);
                }
            }
        }
    }

    /// Returns the value under `key`, first storing `make()` there if the key is absent.
    ///
    /// `make` runs at most once, only when memory does not hold the key. The insert is
    /// conditional on storage not holding the key either (checked in the same atomic step, as
    /// [`update`](Self::update) does): if another handle, process or instance stored it
    /// meanwhile, its value is kept and returned, and `make`'s is dropped.
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
        self.insert_absent(key, make).await.map(|(value, _)| value)
    }

    /// Stores `make()` under `key` unless a value is there (in memory, or in storage when the
    /// conditional insert is checked); returns the value now under `key` and whether it is
    /// `make`'s.
    pub(super) async fn insert_absent(
        &self,
        key: K,
        make: impl FnOnce() -> V,
    ) -> Result<(V, bool)> {
        let mut guard = self.shared.key_locks.lock(&key).await;
        if let Some(value) = self.get(&key) {
            return Ok((value, false));
        }
        let value = make();
        let deadline = self.default_deadline();
        loop {
            let condition = Condition::absent(key.clone());
            let op = BatchOp::Save(key.clone(), value.clone());
            let (returned, outcome) = self
                .commit(guard, vec![condition], vec![op], false, deadline)
                .await;
            guard = returned;
            match outcome? {
                Outcome::Applied { .. } => return Ok((value, true)),
                Outcome::Conflict(mut now) => {
                    if let Some(stored) = now.pop().flatten() {
                        return Ok((stored.value, false));
                    }
                    // The backend said the key is stored and then that it is not: ask again.
                }
            }
        }
    }

    /// Stores `new` under `key` (`None` removes it) only if storage holds `current` there
    /// (`None`: not stored), as one atomic step; fleet-wide where the backend checks in
    /// storage (see [`update`](Self::update)).
    ///
    /// Shaped like std's `AtomicU64::compare_exchange`: `Ok(previous)` when it wrote (the
    /// previous value is `current`), `Err(actual)` with what storage holds when it did not;
    /// memory then holds that too. Values are compared as JSON (field order and spacing aside),
    /// so `V` needs no `PartialEq`. The outer `Result` is the backend's error, as for every
    /// write.
    ///
    /// A counter that never loses an increment, however many processes bump it:
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let counters: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// let key = "jobs".to_string();
    /// let mut seen = counters.get(&key);
    /// loop {
    ///     let next = seen.unwrap_or(0) + 1;
    ///     match counters.compare_exchange(&key, seen.as_ref(), Some(next)).await? {
    ///         Ok(_) => break,
    ///         Err(actual) => seen = actual, // someone else bumped it: try again from theirs
    ///     }
    /// }
    /// assert_eq!(counters.get(&key), Some(1));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A lease: one owner at a time, taken over only once it has expired.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// use serde::{Deserialize, Serialize};
    /// use std::time::{SystemTime, UNIX_EPOCH};
    ///
    /// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    /// struct Lease { owner: String, expires_at_ms: u128 }
    ///
    /// /// Takes the lease for `me` if it is free or expired; returns whether `me` holds it.
    /// async fn acquire<B>(leases: &PersistentMap<String, Lease, B>, me: &str, ttl_ms: u128) -> persistent_map::Result<bool>
    /// where B: persistent_map::StorageBackend<String, Lease> + Send + Sync + 'static {
    ///     let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
    ///     let key = "scheduler".to_string();
    ///     let held = leases.get(&key);
    ///     if let Some(lease) = &held {
    ///         if lease.owner != me && lease.expires_at_ms > now {
    ///             return Ok(false); // someone else holds it
    ///         }
    ///     }
    ///     let mine = Lease { owner: me.into(), expires_at_ms: now + ttl_ms };
    ///     Ok(leases.compare_exchange(&key, held.as_ref(), Some(mine)).await?.is_ok())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let leases = PersistentMap::new(InMemoryBackend::new()).await?;
    /// assert!(acquire(&leases, "node-a", 30_000).await?);
    /// assert!(!acquire(&leases, "node-b", 30_000).await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn compare_exchange(
        &self,
        key: &K,
        current: Option<&V>,
        new: Option<V>,
    ) -> Result<std::result::Result<Option<V>, Option<V>>> {
        let condition = Condition {
            key: key.clone(),
            expected: current.map(encode_value).transpose()?,
        };
        let op = match new {
            Some(value) => BatchOp::Save(key.clone(), value),
            None => BatchOp::Delete(key.clone()),
        };
        let guard = self.shared.key_locks.lock(key).await;
        let deadline = self.default_deadline();
        let (_, outcome) = self
            .commit(guard, vec![condition], vec![op], false, deadline)
            .await;
        Ok(match outcome? {
            Outcome::Applied { .. } => Ok(current.cloned()),
            Outcome::Conflict(mut now) => Err(now.pop().flatten().map(|stored| stored.value)),
        })
    }

    /// One write of one key: pipelined where the backend allows it, else in the key's turn; a
    /// saved value expires at `deadline`.
    pub(super) async fn write_with(
        &self,
        op: BatchOp<K, V>,
        deadline: Option<Deadline>,
    ) -> Result<Option<V>> {
        let outcome = if self.backend.pipelines_writes() {
            let (guard, ticket) = self.shared.key_locks.pipeline(op.key()).await;
            let (key, value) = match &op {
                BatchOp::Save(key, value) => (key.clone(), Some(value.clone())),
                BatchOp::Delete(key) => (key.clone(), None),
            };
            self.shared.pend(key.clone(), value, ticket.number());
            let options = self.write_options(true, deadline);
            self.commit_pipelined(guard, ticket, key, Vec::new(), vec![op], options)
                .await
        } else {
            let guard = self.shared.key_locks.lock(op.key()).await;
            self.commit(guard, Vec::new(), vec![op], true, deadline)
                .await
                .1
        };
        match outcome? {
            Outcome::Applied { replaced, .. } => Ok(replaced),
            Outcome::Conflict(_) => unreachable!("a write without conditions has no conflict"),
        }
    }

    /// Stores `ops` in the backend if `conditions` hold, then applies them to memory, holding
    /// `guard` (the turns of every key involved) throughout; on a conflict, makes memory hold
    /// what storage holds under the conditions' keys instead. Runs to completion even if the
    /// caller stops waiting, and hands `guard` back for a caller that tries again. Saved values
    /// expire at `deadline`.
    pub(super) async fn commit(
        &self,
        guard: KeyGuard,
        conditions: Vec<Condition<K>>,
        ops: Vec<BatchOp<K, V>>,
        want_previous: bool,
        deadline: Option<Deadline>,
    ) -> (KeyGuard, Result<Outcome<V>>) {
        if let Err(unsupported) = self.prepare_deadline(deadline) {
            return (guard, Err(unsupported));
        }
        let options = self.write_options(want_previous, deadline);
        let shared = Arc::clone(&self.shared);
        let backend = Arc::clone(&self.backend);
        run_to_completion(async move {
            let checked = backend.apply_checked(&conditions, &ops, options).await;
            let outcome = settle(&shared, &*backend, conditions, ops, checked, deadline).await;
            (guard, outcome)
        })
        .await
    }

    /// [`commit`](Self::commit) for the writes of one key, pipelined: `guard` is held only until
    /// the backend has the write, so the key's next write can join the same commit; memory
    /// takes the write in `ticket`'s turn. The caller has [pended](Shared::pend) the write.
    async fn commit_pipelined(
        &self,
        guard: KeyGuard,
        ticket: Ticket,
        key: K,
        conditions: Vec<Condition<K>>,
        ops: Vec<BatchOp<K, V>>,
        options: WriteOptions,
    ) -> Result<Outcome<V>> {
        let deadline = options.deadline();
        if let Err(unsupported) = self.prepare_deadline(deadline) {
            // Handed nothing over: the ticket's turn passes at once.
            drop(guard);
            self.shared.unpend(&key, ticket.number(), false);
            ticket.finish();
            return Err(unsupported);
        }
        let shared = Arc::clone(&self.shared);
        let backend = Arc::clone(&self.backend);
        run_to_completion(async move {
            let checked = {
                let mut call = backend.apply_checked(&conditions, &ops, options);
                // `pipelines_writes`: the first poll hands the write over, in the stripe's
                // order; then the key's next write may go.
                let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
                drop(guard);
                match first {
                    Poll::Ready(checked) => checked,
                    Poll::Pending => call.await,
                }
            };
            ticket.turn().await;
            let outcome = settle(&shared, &*backend, conditions, ops, checked, deadline).await;
            let stored = matches!(outcome, Ok(Outcome::Applied { .. }));
            shared.unpend(&key, ticket.number(), stored);
            ticket.finish();
            outcome
        })
        .await
    }

    fn write_options(&self, want_previous: bool, deadline: Option<Deadline>) -> WriteOptions {
        WriteOptions::new()
            .want_previous(want_previous)
            .origin(self.shared.id)
            .expires(deadline)
    }
}

/// The write an update makes: `new` under `key`, or a remove if it had `current` and `new` is
/// `None`, or nothing (absent, and to stay absent).
fn update_ops<K: Clone, V: Clone>(
    key: &K,
    current: &Option<V>,
    new: &Option<V>,
) -> Vec<BatchOp<K, V>> {
    match (new, current) {
        (Some(value), _) => vec![BatchOp::Save(key.clone(), value.clone())],
        (None, Some(_)) => vec![BatchOp::Delete(key.clone())],
        (None, None) => Vec::new(),
    }
}

/// Makes memory follow what the backend did with `ops`: applies them if they were stored
/// (returning what the first one replaced, by storage's word where the backend gives it),
/// applies what storage holds under the conditions' keys on a conflict, and undoes a batch
/// that a non-atomic backend applied part of.
async fn settle<K, V, B>(
    shared: &Shared<K, V>,
    backend: &B,
    conditions: Vec<Condition<K>>,
    ops: Vec<BatchOp<K, V>>,
    checked: Result<Checked<V>>,
    deadline: Option<Deadline>,
) -> Result<Outcome<V>>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync + ?Sized,
{
    match checked {
        Ok(Checked::Applied { previous }) => {
            let (in_memory, removed) = shared.apply_all(ops.into_iter(), deadline);
            // A value written by another program that does not decode as `V` falls back to
            // memory's.
            let replaced = match previous.and_then(|previous| previous.into_iter().next()) {
                Some(None) => None,
                Some(Some(json)) => serde_json::from_str(&json).ok().or(in_memory),
                None => in_memory,
            };
            Ok(Outcome::Applied { replaced, removed })
        }
        Ok(Checked::Conflict { current }) => {
            let stored = conditions
                .into_iter()
                .zip(&current)
                .map(|(condition, stored)| {
                    let value = stored.as_ref().map(|stored| stored.value.clone());
                    (condition.key, value)
                })
                .collect();
            super::expiry::settle(shared, backend, stored)
                .await
                .map(|()| Outcome::Conflict(current))
        }
        Ok(Checked::ConflictWithDeadlines { current }) => {
            let mut values = Vec::with_capacity(current.len());
            for (condition, now) in conditions.into_iter().zip(current) {
                let (stored, deadline) =
                    now.map_or((None, None), |(stored, deadline)| (Some(stored), deadline));
                let value = stored
                    .as_ref()
                    .map(|stored| (stored.value.clone(), deadline));
                shared.apply_stored(condition.key, value);
                values.push(stored);
            }
            Ok(Outcome::Conflict(values))
        }
        Err(PersistentError::PartialBatch { applied, source }) => {
            Err(super::batch::undo_partial_batch(shared, backend, ops, applied, *source).await)
        }
        Err(error) => Err(error),
    }
}
