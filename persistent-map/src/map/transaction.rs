//! Transactions: reads and writes over several keys of one or more maps, committed all
//! together or not at all, in storage and in memory.
//!
//! A transaction is optimistic, as sled's and FoundationDB's are: its body runs on the caller's
//! task against memory, remembering what it read and buffering what it writes; the commit sends
//! the reads as conditions and the writes as one checked write (for SQLite, one `IMMEDIATE`
//! transaction over every table involved; for PostgreSQL, one write request of the connection's
//! session, committed in one transaction under the advisory locks of every key involved). If
//! another writer changed something the body read, nothing is written, memory takes what
//! storage holds, and the body runs again.

use crate::{MapKey, MapValue};
use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::commit::{commit, MapWrite, Op, Part, Turn, Write, MAX_ATTEMPTS};
use super::PersistentMap;
use crate::backends::encode::encode_value;
use crate::key_locks::KeyGuard;
use crate::{Condition, Deadline, PersistentError, Result, StorageBackend};

/// Backends whose maps can take part in a [`Transaction`]: the SQLite backend (tables of one
/// file), the PostgreSQL backend (tables of one database, through one connection: backends
/// opened with the same connection string and timeouts), the in-memory backend (clones of one
/// backend). Sealed: implemented by this crate's backends only, since committing several maps
/// at once needs storage's own transaction.
///
/// Maps of different storage (two files, two PostgreSQL databases or connections, PostgreSQL
/// and SQLite, a file and an in-memory store) in one transaction are refused with
/// [`PersistentError::MixedStorage`].
pub trait TransactionalBackend<K, V>:
    StorageBackend<K, V> + sealed::Sealed + Send + Sync + 'static
where
    K: MapKey,
    V: MapValue,
{
}

/// Every backend of this crate's on the key and value types it stores: the store its maps write
/// to is what a transaction commits to.
impl<K, V, B> TransactionalBackend<K, V> for B
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + sealed::Sealed + Send + Sync + 'static,
{
}

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// Runs `body` as one transaction and returns what it returns.
///
/// `body` reads and writes through the [`Transaction`] it is given: reads come from memory
/// (seeing the transaction's own writes first), writes are buffered. When `body` returns `Ok`,
/// every write is committed at once, on the condition that nothing `body` read has changed
/// since: for SQLite, in one transaction over every table involved, atomic against every
/// process on the file; for PostgreSQL, in one transaction over every table involved, holding
/// the advisory locks of every key it reads or writes (the locks every instance's writes take,
/// in one order), atomic against every instance. If something it read did change, nothing is
/// written, memory takes what storage holds, and `body` runs again, this time holding the turns
/// of the keys it touched before, so that contended transactions of this process take turns
/// rather than conflict again (writes of those keys from this process wait meanwhile). When
/// `body` returns `Err`, nothing is written and the error is returned: that is how to abort.
/// A run that keeps conflicting gives up after 1,000 attempts with
/// [`PersistentError::KeepsChanging`].
///
/// The error type `E` is yours, as long as a [`PersistentError`] (the commit's own failure)
/// converts into it: [`PersistentError`] itself, your own error enum with a
/// `From<PersistentError>`, or [`TransactionError<A>`](TransactionError) around any abort
/// reason `A` (a `String`, an enum of yours) — see there for an example.
///
/// So `body` may run more than once, on the caller's task: keep it a function of what it
/// reads, without side effects that must happen once. Every key's per-key order and failure
/// atomicity hold as for single writes: the maps' writes of the keys involved wait while the
/// commit runs, and a failed commit changes nothing anywhere.
///
/// Every map in one transaction must live in the same storage (tables of one SQLite file,
/// tables of one PostgreSQL database opened with the same connection string and timeouts,
/// clones of one in-memory backend): others are refused with
/// [`PersistentError::MixedStorage`] before anything is written.
///
/// On PostgreSQL, a commit whose connection is lost is retried on a new one, after asking the
/// server whether the lost attempt committed, so it is never made twice; if no connection comes
/// back within the reconnect timeout, the transaction fails with `PersistentError::Connect`
/// (a variant of feature `postgres`): it is then wholly committed or wholly absent (the error
/// says which, when it knows).
///
/// Counting a hit per link, per day and in total, in three maps of one file, all or nothing:
///
/// ```
/// use persistent_map::{sqlite::SqliteBackend, transaction, PersistentMap};
///
/// # persistent_map::__private::run_example(Box::pin(async {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("hits.db");
/// let per_link = PersistentMap::<String, u32, _>::new(SqliteBackend::with_table(&path, "per_link").await?).await?;
/// let per_day = PersistentMap::<String, u32, _>::new(SqliteBackend::with_table(&path, "per_day").await?).await?;
/// let total = PersistentMap::<String, u32, _>::new(SqliteBackend::with_table(&path, "total").await?).await?;
///
/// let bump = |n: Option<&u32>| Some(n.copied().unwrap_or(0) + 1);
/// let hits = transaction(|tx| {
///     tx.update(&per_link, &"/docs".to_string(), bump);
///     tx.update(&per_day, &"2026-12-01".to_string(), bump);
///     Ok::<_, persistent_map::PersistentError>(tx.update(&total, &"all".to_string(), bump))
/// })
/// .await?;
/// assert_eq!(hits, Some(1));
/// assert_eq!(per_day.get("2026-12-01"), Some(1));
/// # Ok(()) }));
/// ```
pub async fn transaction<T, E>(
    mut body: impl FnMut(&mut Transaction) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<PersistentError>,
{
    // After a conflict: the turns of every key the last run touched, held while the body runs
    // again, so that no writer in this process can change them between its reads and its
    // commit (contended keys then take turns instead of conflicting again and again).
    let mut held: Option<Held> = None;
    let mut gave_up = None;
    for _ in 0..MAX_ATTEMPTS {
        let mut tx = Transaction {
            buffers: Vec::new(),
        };
        let value = body(&mut tx)?;
        match tx.commit(held.take()).await? {
            Attempt::Committed => return Ok(value),
            Attempt::Conflicted(buffers) => {
                gave_up = buffers.first().map(|buffer| buffer.keeps_changing());
                held = Some(Held::lock(buffers).await);
            }
        }
    }
    Err(gave_up
        .expect("a transaction that conflicted has a buffer")
        .into())
}

/// The error of a [`transaction`] whose body aborts with a reason of its own, of any type `A`:
/// the body returns `Err(TransactionError::Abort(reason))`, or the commit failed
/// (`Storage`). Either way nothing was written.
///
/// Like sled's `ConflictableTransactionError::Abort`. (An error type of your own with a
/// `From<PersistentError>` serves as well.)
///
/// ```
/// use persistent_map::{in_memory::InMemoryBackend, transaction, PersistentMap, TransactionError};
///
/// #[derive(Debug, PartialEq)]
/// enum Refused {
///     Insufficient { balance: u32 },
/// }
///
/// # persistent_map::__private::run_example(Box::pin(async {
/// let accounts: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
/// accounts.insert("ada".into(), 20).await?;
/// let transfer = transaction(|tx| {
///     let balance = tx.get(&accounts, &"ada".to_string()).unwrap_or(0);
///     if balance < 30 {
///         return Err(TransactionError::Abort(Refused::Insufficient { balance }));
///     }
///     tx.insert(&accounts, "ada".to_string(), balance - 30);
///     tx.update(&accounts, &"bob".to_string(), |b| Some(b.copied().unwrap_or(0) + 30));
///     Ok(())
/// })
/// .await;
/// match transfer {
///     Err(TransactionError::Abort(refused)) => {
///         assert_eq!(refused, Refused::Insufficient { balance: 20 });
///     }
///     other => panic!("{other:?}"),
/// }
/// assert_eq!(accounts.get("ada"), Some(20)); // nothing was written
/// assert_eq!(accounts.get("bob"), None);
/// # Ok(()) }));
/// ```
#[derive(Debug)]
pub enum TransactionError<A> {
    /// The body aborted with this reason.
    Abort(A),
    /// The commit failed: storage refused it, or it kept conflicting.
    Storage(PersistentError),
}

impl<A> From<PersistentError> for TransactionError<A> {
    fn from(error: PersistentError) -> Self {
        TransactionError::Storage(error)
    }
}

impl<A: std::fmt::Display> std::fmt::Display for TransactionError<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransactionError::Abort(reason) => {
                write!(f, "the transaction aborted, writing nothing: {reason}")
            }
            TransactionError::Storage(error) => write!(f, "the transaction failed: {error}"),
        }
    }
}

impl<A: std::fmt::Debug + std::fmt::Display> std::error::Error for TransactionError<A> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransactionError::Abort(_) => None,
            TransactionError::Storage(error) => Some(error),
        }
    }
}

/// How one commit of a transaction went.
enum Attempt {
    Committed,
    /// Something read had changed; memory now holds what storage holds. The buffers, to hold
    /// their keys' turns while the body runs again.
    Conflicted(Vec<Box<dyn Buffer>>),
}

/// The keys' turns of a conflicted run's buffers, one guard per map.
struct Held {
    buffers: Vec<Box<dyn Buffer>>,
    guards: Vec<KeyGuard>,
}

impl Held {
    /// Takes the turns of every key of `buffers` (sorted by map, as every commit takes them).
    async fn lock(buffers: Vec<Box<dyn Buffer>>) -> Self {
        let mut guards = Vec::with_capacity(buffers.len());
        for buffer in &buffers {
            guards.push(buffer.lock().await);
        }
        Self { buffers, guards }
    }

    /// The held turns of each of `buffers`' maps, if they cover every key of `buffers`.
    fn covering(self, buffers: &[Box<dyn Buffer>]) -> Option<Vec<KeyGuard>> {
        let covered = buffers.iter().all(|buffer| {
            self.buffers
                .iter()
                .any(|held| held.address() == buffer.address() && held.covers(&**buffer))
        });
        if !covered {
            return None;
        }
        let mut guards: Vec<(usize, KeyGuard)> = self
            .buffers
            .iter()
            .map(|held| held.address())
            .zip(self.guards)
            .collect();
        let guards = buffers
            .iter()
            .map(|buffer| {
                let at = guards
                    .iter()
                    .position(|(address, _)| *address == buffer.address())
                    .expect("covered: every map is held");
                guards.swap_remove(at).1
            })
            .collect();
        Some(guards)
    }
}

/// The reads and writes of one run of a [`transaction`]'s body.
///
/// Reads ([`get`](Self::get), and the read half of [`update`](Self::update)) come from memory
/// and are remembered: the commit goes ahead only if storage still holds what was read (what
/// it means: an old row that lacks a `#[serde(default)]` field holds the value it decodes to).
/// Writes ([`insert`](Self::insert), [`remove`](Self::remove)) are buffered until the commit,
/// each with the time to live of the handle it went through, and later reads of the same key
/// in this transaction see them.
pub struct Transaction {
    buffers: Vec<Box<dyn Buffer>>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("maps", &self.buffers.len())
            .finish_non_exhaustive()
    }
}

impl Transaction {
    /// The value under `key` in `map`, as this transaction sees it: its own write of the key if
    /// it made one, else memory's value, which the commit then requires storage still to hold.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, transaction, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let stock: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// stock.insert("tea".into(), 3).await?;
    /// let left = transaction(|tx| {
    ///     let left = tx.get(&stock, &"tea".to_string()).unwrap_or(0);
    ///     tx.insert(&stock, "tea".to_string(), left - 1);
    ///     Ok::<_, persistent_map::PersistentError>(tx.get(&stock, &"tea".to_string()))
    /// })
    /// .await?;
    /// assert_eq!(left, Some(2));
    /// # Ok(()) }));
    /// ```
    pub fn get<K, V, B>(&mut self, map: &PersistentMap<K, V, B>, key: &K) -> Option<V>
    where
        K: MapKey,
        V: MapValue,
        B: TransactionalBackend<K, V>,
    {
        self.buffer(map).read(key)
    }

    /// Stores `value` under `key` in `map` when the transaction commits.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, transaction, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let backend = InMemoryBackend::new();
    /// let ids: PersistentMap<String, u32, _> = PersistentMap::new(backend.clone()).await?;
    /// let ages: PersistentMap<u32, u32, _> = PersistentMap::new(backend).await?;
    /// transaction(|tx| {
    ///     tx.insert(&ids, "ada".to_string(), 7);
    ///     tx.insert(&ages, 7, 36);
    ///     Ok::<_, persistent_map::PersistentError>(())
    /// })
    /// .await?;
    /// assert_eq!((ids.get("ada"), ages.get(&7)), (Some(7), Some(36)));
    /// # Ok(()) }));
    /// ```
    pub fn insert<K, V, B>(&mut self, map: &PersistentMap<K, V, B>, key: K, value: V)
    where
        K: MapKey,
        V: MapValue,
        B: TransactionalBackend<K, V>,
    {
        let deadline = map.default_deadline();
        self.buffer(map).write(key, Some(value), deadline);
    }

    /// Removes `key` from `map` when the transaction commits.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, transaction, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert("old".into(), 1).await?;
    /// transaction(|tx| {
    ///     tx.remove(&map, &"old".to_string());
    ///     tx.insert(&map, "new".to_string(), 2);
    ///     Ok::<_, persistent_map::PersistentError>(())
    /// })
    /// .await?;
    /// assert_eq!(map.keys().collect::<Vec<_>>(), ["new"]);
    /// # Ok(()) }));
    /// ```
    pub fn remove<K, V, B>(&mut self, map: &PersistentMap<K, V, B>, key: &K)
    where
        K: MapKey,
        V: MapValue,
        B: TransactionalBackend<K, V>,
    {
        self.buffer(map).write(key.clone(), None, None);
    }

    /// Replaces the value under `key` in `map` with what `change` makes of it (`None` removes
    /// it), and returns the new value: a [`get`](Self::get) then an [`insert`](Self::insert) or
    /// [`remove`](Self::remove).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, transaction, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let accounts: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// accounts.insert("ada".into(), 100).await?;
    /// transaction(|tx| {
    ///     tx.update(&accounts, &"ada".to_string(), |b| b.map(|b| b - 30));
    ///     tx.update(&accounts, &"bob".to_string(), |b| Some(b.copied().unwrap_or(0) + 30));
    ///     Ok::<_, persistent_map::PersistentError>(())
    /// })
    /// .await?;
    /// assert_eq!((accounts.get("ada"), accounts.get("bob")), (Some(70), Some(30)));
    /// # Ok(()) }));
    /// ```
    pub fn update<K, V, B>(
        &mut self,
        map: &PersistentMap<K, V, B>,
        key: &K,
        change: impl FnOnce(Option<&V>) -> Option<V>,
    ) -> Option<V>
    where
        K: MapKey,
        V: MapValue,
        B: TransactionalBackend<K, V>,
    {
        let deadline = map.default_deadline();
        let buffer = self.buffer(map);
        let current = buffer.read(key);
        let new = change(current.as_ref());
        if new.is_some() || current.is_some() {
            buffer.write(key.clone(), new.clone(), deadline);
        }
        new
    }

    /// This transaction's buffer for `map`, made on first use.
    fn buffer<K, V, B>(&mut self, map: &PersistentMap<K, V, B>) -> &mut MapBuffer<K, V, B>
    where
        K: MapKey,
        V: MapValue,
        B: TransactionalBackend<K, V>,
    {
        let address = Arc::as_ptr(&map.shared) as usize;
        let index = match self
            .buffers
            .iter()
            .position(|buffer| buffer.address() == address)
        {
            Some(index) => index,
            None => {
                self.buffers.push(Box::new(MapBuffer {
                    map: map.clone(),
                    reads: HashMap::new(),
                    writes: HashMap::new(),
                    order: Vec::new(),
                }));
                self.buffers.len() - 1
            }
        };
        self.buffers[index]
            .as_any_mut()
            .downcast_mut::<MapBuffer<K, V, B>>()
            .expect("maps sharing entries have the same key, value and backend types")
    }

    /// Commits every map's reads (as conditions) and writes as one write on the write path.
    async fn commit(mut self, held: Option<Held>) -> Result<Attempt> {
        self.buffers.retain(|buffer| !buffer.is_empty());
        if self.buffers.is_empty() {
            return Ok(Attempt::Committed);
        }
        // One order for every transaction, so that two never wait for each other's keys.
        self.buffers.sort_by_key(|buffer| buffer.address());
        // Turns held since a conflict serve if this run touched no other key; otherwise they
        // are let go before any is taken, so that turns are only ever taken in one order.
        let guards = match held.and_then(|held| held.covering(&self.buffers)) {
            Some(guards) => guards,
            None => {
                let mut guards = Vec::with_capacity(self.buffers.len());
                for buffer in &self.buffers {
                    guards.push(buffer.lock().await);
                }
                guards
            }
        };
        let parts = self
            .buffers
            .iter()
            .zip(guards)
            .map(|(buffer, guard)| buffer.to_part(guard))
            .collect::<Result<Vec<_>>>()?;
        let (mut parts, committed) = commit(parts).await;
        committed?;
        let mut conflicted = false;
        for part in &mut parts {
            if let Some(error) = part.take_error() {
                return Err(error);
            }
            conflicted |= part.conflicted();
        }
        Ok(match conflicted {
            true => Attempt::Conflicted(self.buffers),
            false => Attempt::Committed,
        })
    }
}

/// A buffer with its types erased, so that one transaction holds maps of any types.
trait Buffer: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Whether every key `other` (a buffer of the same map) touches is one this one touches.
    fn covers(&self, other: &dyn Buffer) -> bool;
    /// The address of the map's shared entries: one buffer per map.
    fn address(&self) -> usize;
    fn is_empty(&self) -> bool;
    fn lock(&self) -> Pin<Box<dyn Future<Output = KeyGuard> + Send + '_>>;
    /// The map's share of the write, in the turns of `guard`.
    fn to_part(&self, guard: KeyGuard) -> Result<Box<dyn Part>>;
    /// The error of a transaction that gave up on this map.
    fn keeps_changing(&self) -> PersistentError;
}

/// One map's reads and writes in a transaction.
struct MapBuffer<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: TransactionalBackend<K, V>,
{
    map: PersistentMap<K, V, B>,
    /// What the transaction read under each key (memory's value at the time).
    reads: HashMap<K, Option<V>>,
    /// The last write of each key (`None`: remove), with the deadline of the handle that
    /// wrote it.
    writes: HashMap<K, (Option<V>, Option<Deadline>)>,
    /// Keys in the order of their first write.
    order: Vec<K>,
}

impl<K, V, B> MapBuffer<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: TransactionalBackend<K, V>,
{
    fn read(&mut self, key: &K) -> Option<V> {
        if let Some((written, _)) = self.writes.get(key) {
            return written.clone();
        }
        if let Some(read) = self.reads.get(key) {
            return read.clone();
        }
        let value = self.map.get(key);
        self.reads.insert(key.clone(), value.clone());
        value
    }

    fn write(&mut self, key: K, value: Option<V>, deadline: Option<Deadline>) {
        if self.writes.insert(key.clone(), (value, deadline)).is_none() {
            self.order.push(key);
        }
    }
}

impl<K, V, B> Buffer for MapBuffer<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: TransactionalBackend<K, V>,
{
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn covers(&self, other: &dyn Buffer) -> bool {
        let touches = |buffer: &Self, key: &K| {
            buffer.reads.contains_key(key) || buffer.writes.contains_key(key)
        };
        other.as_any().downcast_ref::<Self>().is_some_and(|other| {
            other
                .reads
                .keys()
                .chain(other.writes.keys())
                .all(|key| touches(self, key))
        })
    }

    fn address(&self) -> usize {
        Arc::as_ptr(&self.map.shared) as usize
    }

    fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.writes.is_empty()
    }

    fn lock(&self) -> Pin<Box<dyn Future<Output = KeyGuard> + Send + '_>> {
        Box::pin(
            self.map
                .shared
                .key_locks
                .lock_many(self.reads.keys().chain(self.writes.keys())),
        )
    }

    fn to_part(&self, guard: KeyGuard) -> Result<Box<dyn Part>> {
        let conditions = self
            .reads
            .iter()
            .map(|(key, read)| {
                Ok(Condition {
                    key: key.clone(),
                    expected: read.as_ref().map(encode_value).transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let ops = self
            .order
            .iter()
            .map(|key| match &self.writes[key] {
                (Some(value), deadline) => Op::Save {
                    key: key.clone(),
                    value: value.clone(),
                    deadline: *deadline,
                },
                (None, _) => Op::Delete(key.clone()),
            })
            .collect();
        let write = Write::new(conditions, ops);
        Ok(Box::new(MapWrite::new(
            &self.map,
            write,
            Turn::Exclusive(guard),
        )))
    }

    fn keeps_changing(&self) -> PersistentError {
        let key = self.reads.keys().chain(self.writes.keys()).next();
        match key {
            Some(key) => self.map.keeps_changing(key),
            None => PersistentError::Backend("a transaction kept conflicting".into()),
        }
    }
}
