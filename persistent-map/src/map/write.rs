//! Writes of one key: each is one [`Write`] on the write path (`commit.rs`), in its key's
//! turn; the read-modify-writes are a loop around it.

use crate::{MapKey, MapValue};

use super::commit::{commit_one, commit_pipelined, Kind, MapWrite, Op, Turn, Write, MAX_ATTEMPTS};
use super::shared::Settled;
use super::PersistentMap;
use crate::backends::encode::encode_value;
use crate::{Condition, Deadline, PersistentError, Result, StorageBackend, Stored};

impl<K, V, B> PersistentMap<K, V, B>
where
    K: MapKey,
    V: MapValue,
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
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// assert_eq!(map.insert("a".to_string(), 1).await?, None);
    /// assert_eq!(map.insert("a".to_string(), 2).await?, Some(1));
    /// # Ok(()) }));
    /// ```
    pub async fn insert(&self, key: K, value: V) -> Result<Option<V>> {
        let deadline = self.default_deadline();
        self.write_one(Op::Save {
            key,
            value,
            deadline,
        })
        .await
    }

    /// Removes `key` from the backend, then from the map, and returns the value storage held
    /// (as [`insert`](Self::insert) does).
    ///
    /// The delete reaches the backend even when the map does not hold the key, so a key written
    /// to storage by someone else is removed too.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert("a".to_string(), 1).await?;
    /// assert_eq!(map.remove(&"a".to_string()).await?, Some(1));
    /// assert_eq!(map.remove(&"a".to_string()).await?, None);
    /// # Ok(()) }));
    /// ```
    pub async fn remove(&self, key: &K) -> Result<Option<V>> {
        self.write_one(Op::Delete(key.clone())).await
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
    /// with what storage held at that moment, or with what this map's writes of `key` already
    /// on their way to storage will leave there (the write is conditional on that too). Keep it a pure function of its argument: no side
    /// effects that must happen exactly once. Writes of `key` from this process wait while it
    /// runs, so keep it short, and do not write `key` from inside it.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let hits: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// let bump = |old: Option<&u32>| Some(old.copied().unwrap_or(0) + 1);
    /// assert_eq!(hits.update(&"home".to_string(), bump).await?, Some(1));
    /// assert_eq!(hits.update(&"home".to_string(), bump).await?, Some(2));
    /// assert_eq!(hits.update(&"home".to_string(), |_| None).await?, None); // removed
    /// assert!(hits.is_empty());
    /// # Ok(()) }));
    /// ```
    pub async fn update(
        &self,
        key: &K,
        change: impl FnMut(Option<&V>) -> Option<V>,
    ) -> Result<Option<V>> {
        let deadline = self.default_deadline();
        self.read_modify_write(key, deadline, Kind::Plain, change)
            .await
    }

    /// The loop of every read-modify-write of one key: `change` computes the key's next value
    /// (saved expiring at `deadline`) from what it holds, and the write is conditional on the
    /// key still holding that. The value and the text expected come from one source: the
    /// writes of this map still in flight (a hot key's next update is computed from the one
    /// before it, before that one commits), else (on a backend that does not pipeline) the
    /// last conflict's read of storage, else memory, which took that read. Gives up after
    /// [`MAX_ATTEMPTS`] conflicts.
    pub(super) async fn read_modify_write(
        &self,
        key: &K,
        deadline: Option<Deadline>,
        kind: Kind,
        mut change: impl FnMut(Option<&V>) -> Option<V>,
    ) -> Result<Option<V>> {
        let pipelined = self.backend.pipelines_writes();
        // After a conflict in an exclusive turn: what storage holds, value and text from one
        // read, and the count of turns ended when memory took it.
        let mut read: Option<(Option<Stored<V>>, u64)> = None;
        // After a pipelined conflict: the tickets of the key's stripe handed out when it
        // settled.
        let mut conflicted: Option<u64> = None;
        for _ in 0..MAX_ATTEMPTS {
            let (turn, pending) = if pipelined {
                // After a conflict, the writes of the key's stripe handed over before it settled
                // were computed from a value that is gone too; and while a write of the key in
                // flight is known to have conflicted, those after it build on a value storage
                // does not hold. They settle first, so that this attempt builds on what they
                // left rather than conflicting along with them. Not the writes handed over
                // since (the other writers' attempts again, which build on what is stored):
                // this one joins them in the pipeline, and they go in one commit.
                if let Some(issued) = conflicted.take() {
                    self.shared.key_locks.finished_before(key, issued).await;
                }
                while self.shared.pending_doomed(key) {
                    self.shared.key_locks.finished_so_far(key).await;
                }
                let (guard, ticket) = self.shared.key_locks.pipeline(key).await;
                let pending = self.shared.pending_value(key);
                let turn = Turn::Pipelined {
                    handover: Some(guard),
                    ticket: Some(ticket),
                };
                (turn, pending)
            } else {
                (Turn::Exclusive(self.shared.key_locks.lock(key).await), None)
            };
            let (current, expected) = match (pending, read.take()) {
                (Some(pending), _) => {
                    let json = pending.as_ref().map(encode_value).transpose()?;
                    (pending, json)
                }
                // No write of this map ended since memory took the conflict's read: storage's
                // own value and text. (Else memory holds what came after.)
                (None, Some((stored, turns))) if self.shared.key_locks.turns_ended() == turns => {
                    stored.map_or((None, None), |s| (Some(s.value), Some(s.json)))
                }
                (None, _) => {
                    let current = self.current(key).await?;
                    let json = current.as_ref().map(encode_value).transpose()?;
                    (current, json)
                }
            };
            let new = change(current.as_ref());
            let op = match (&new, &current) {
                (Some(value), _) => Some(Op::Save {
                    key: key.clone(),
                    value: value.clone(),
                    deadline,
                }),
                (None, Some(_)) => Some(Op::Delete(key.clone())),
                // Absent, and to stay absent: the condition alone says storage agrees.
                (None, None) => None,
            };
            let condition = Condition {
                key: key.clone(),
                expected,
            };
            let mut write = Write::new(vec![condition], op.into_iter().collect());
            write.kind = kind;
            if let Turn::Pipelined {
                ticket: Some(ticket),
                ..
            } = &turn
            {
                self.shared
                    .pend(key.clone(), new.clone(), ticket.number(), false);
            }
            let (settled, issued) = commit_pipelined(MapWrite::new(self, write, turn)).await;
            match settled? {
                Settled::Applied { .. } => return Ok(new),
                // Memory took this read: a pipelined attempt builds on it, or on the writes of
                // this map handed over since.
                Settled::Conflict(_) if pipelined => conflicted = Some(issued),
                Settled::Conflict(mut now) => {
                    read = Some((now.pop().flatten(), self.shared.key_locks.turns_ended()));
                }
            }
        }
        Err(self.keeps_changing(key))
    }

    /// The error of a read-modify-write of `key` that gave up.
    pub(super) fn keeps_changing(&self, key: &K) -> PersistentError {
        PersistentError::KeepsChanging {
            table: self.target.name.clone(),
            key: serde_json::to_string(key).unwrap_or_default(),
            attempts: MAX_ATTEMPTS,
        }
    }

    /// Returns the value under `key`, first storing `make()` there if the key is absent.
    ///
    /// `make` runs at most once, only when the key is absent. The insert is
    /// conditional on storage not holding the key either (checked in the same atomic step, as
    /// [`update`](Self::update) does): if another handle, process or instance stored it
    /// meanwhile, its value is kept and returned, and `make`'s is dropped.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let ids: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// assert_eq!(ids.get_or_insert_with("ada".to_string(), || 1).await?, 1);
    /// assert_eq!(ids.get_or_insert_with("ada".to_string(), || 2).await?, 1);
    /// # Ok(()) }));
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
        let mut make = Some(make);
        let mut made = None;
        for _ in 0..MAX_ATTEMPTS {
            let turn = self.shared.key_locks.lock(&key).await;
            if let Some(value) = self.current(&key).await? {
                return Ok((value, false));
            }
            let value: V = match (&made, make.take()) {
                (Some(value), _) => Clone::clone(value),
                (None, Some(make)) => made.insert(make()).clone(),
                (None, None) => unreachable!("`make` is taken only to fill `made`"),
            };
            let save = Op::Save {
                key: key.clone(),
                value: value.clone(),
                deadline: self.default_deadline(),
            };
            let write = Write::new(vec![Condition::absent(key.clone())], vec![save]);
            match commit_one(MapWrite::new(self, write, Turn::Exclusive(turn))).await? {
                Settled::Applied { .. } => return Ok((value, true)),
                Settled::Conflict(mut now) => {
                    if let Some(stored) = now.pop().flatten() {
                        return Ok((stored.value, false));
                    }
                    // The backend said the key is stored and then that it is not: ask again.
                }
            }
        }
        Err(self.keeps_changing(&key))
    }

    /// Stores `new` under `key` (`None` removes it) only if storage holds `current` there
    /// (`None`: not stored), as one atomic step; fleet-wide where the backend checks in
    /// storage (see [`update`](Self::update)).
    ///
    /// Shaped like std's `AtomicU64::compare_exchange`: `Ok(previous)` when it wrote (the
    /// previous value is `current`), `Err(actual)` with what storage holds when it did not;
    /// memory then holds that too. Values are compared by what they mean as `V`'s JSON (field
    /// order, spacing, and a stored row's missing `#[serde(default)]` fields aside), so `V`
    /// needs no `PartialEq`, and a loop that retries with `actual` ends. The outer `Result` is
    /// the backend's error, as for every write.
    ///
    /// A counter that never loses an increment, however many processes bump it:
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
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
    /// # Ok(()) }));
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
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let leases = PersistentMap::new(InMemoryBackend::new()).await?;
    /// assert!(acquire(&leases, "node-a", 30_000).await?);
    /// assert!(!acquire(&leases, "node-b", 30_000).await?);
    /// # Ok(()) }));
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
            Some(value) => Op::Save {
                key: key.clone(),
                value,
                deadline: self.default_deadline(),
            },
            None => Op::Delete(key.clone()),
        };
        let turn = Turn::Exclusive(self.shared.key_locks.lock(key).await);
        let write = Write::new(vec![condition], vec![op]);
        Ok(match commit_one(MapWrite::new(self, write, turn)).await? {
            Settled::Applied { .. } => Ok(current.cloned()),
            Settled::Conflict(mut now) => Err(now.pop().flatten().map(|stored| stored.value)),
        })
    }

    /// One write of one key, saying what the key held before it: pipelined where the backend
    /// allows it, else in the key's turn.
    pub(super) async fn write_one(&self, op: Op<K, V>) -> Result<Option<V>> {
        let key = op.key().expect("a write of one key").clone();
        let turn = if self.backend.pipelines_writes() {
            let (guard, ticket) = self.shared.key_locks.pipeline(&key).await;
            let value = match &op {
                Op::Save { value, .. } => Some(value.clone()),
                _ => None,
            };
            self.shared.pend(key, value, ticket.number(), true);
            Turn::Pipelined {
                handover: Some(guard),
                ticket: Some(ticket),
            }
        } else {
            Turn::Exclusive(self.shared.key_locks.lock(&key).await)
        };
        let mut write = Write::new(Vec::new(), vec![op]);
        write.want_previous = true;
        Ok(commit_one(MapWrite::new(self, write, turn))
            .await?
            .replaced())
    }
}
