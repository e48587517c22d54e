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

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde::{de::DeserializeOwned, Serialize};

use super::shared::Shared;
use super::PersistentMap;
use crate::backends::encode::encode_value;
use crate::completion::run_to_completion;
use crate::key_locks::KeyGuard;
use crate::{BatchOp, Condition, Deadline, PersistentError, Result, StorageBackend};

/// Backends whose maps can take part in a [`Transaction`]: the SQLite backend (tables of one
/// file), the PostgreSQL backend (tables of one database, through one connection: backends
/// opened with the same connection string and timeouts), the in-memory backend (clones of one
/// backend). Sealed: implemented by this crate's backends only, since committing several maps
/// at once needs storage's own transaction.
///
/// A transaction that touches a single map works with any backend that implements this trait;
/// maps of different storage (two files, two PostgreSQL databases or connections, PostgreSQL
/// and SQLite, a file and an in-memory store) in one transaction are refused with
/// [`PersistentError::MixedStorage`].
pub trait TransactionalBackend<K, V>:
    StorageBackend<K, V> + sealed::Sealed + Send + Sync + 'static
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    #[doc(hidden)]
    fn __transaction_target(&self) -> crate::__private::TransactionTarget<K, V>;
}

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// Where a map's share of a transaction goes; made by [`TransactionalBackend`]. Not public API.
#[doc(hidden)]
pub struct TransactionTarget<K, V> {
    pub(crate) store: Store,
    /// Builds this map's share of a transaction from its conditions, its writes, the writing
    /// map's id and the deadline of the values it saves.
    pub(crate) prepare: Box<PrepareFn<K, V>>,
    /// The table (or store) as errors name it.
    pub(crate) name: String,
}

impl<K, V> std::fmt::Debug for TransactionTarget<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionTarget")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Conditions, writes, the writing map's id, and when the saved values expire.
type PrepareFn<K, V> = dyn Fn(&[Condition<K>], &[BatchOp<K, V>], u64, Option<Deadline>) -> Result<Prepared>
    + Send
    + Sync;

/// The storage a transaction commits to; two maps can commit together if theirs are equal.
#[derive(Clone)]
pub(crate) enum Store {
    #[cfg(feature = "sqlite")]
    Sqlite(
        Arc<crate::sqlite::TransactionWriter>,
        crate::sqlite::Durability,
    ),
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::TransactionSession),
    InMemory(Arc<Mutex<crate::in_memory::Stores>>),
}

impl Store {
    fn same(&self, other: &Store) -> bool {
        match (self, other) {
            #[cfg(feature = "sqlite")]
            (Store::Sqlite(a, _), Store::Sqlite(b, _)) => Arc::ptr_eq(a, b),
            #[cfg(feature = "postgres")]
            (Store::Postgres(a), Store::Postgres(b)) => a.same(b),
            (Store::InMemory(a), Store::InMemory(b)) => Arc::ptr_eq(a, b),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The store of every part (all the same), committing at the strongest durability any of
    /// them asks for.
    fn strongest(stores: Vec<Store>) -> Store {
        stores
            .into_iter()
            .reduce(|kept, next| match (kept, next) {
                #[cfg(feature = "sqlite")]
                (Store::Sqlite(writer, a), Store::Sqlite(_, b)) => Store::Sqlite(writer, a.max(b)),
                (kept, _) => kept,
            })
            .expect("a transaction with parts has a store")
    }

    fn describe(&self) -> String {
        match self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(writer, _) => format!("SQLite file {}", writer.path().display()),
            #[cfg(feature = "postgres")]
            Store::Postgres(session) => session.describe(),
            Store::InMemory(stores) => format!("in-memory store {:p}", Arc::as_ptr(stores)),
        }
    }
}

/// One map's share of a transaction, ready for its storage.
pub(crate) enum Prepared {
    #[cfg(feature = "sqlite")]
    Sqlite(crate::sqlite::TransactionPart),
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::TransactionPart),
    InMemory(Box<dyn InMemoryPart>),
}

/// The parts of one transaction all come from maps of one store (checked before they are
/// prepared), so each is of that store's kind.
const ONE_KIND: &str = "parts of one store are of one kind";

// Each takes the part of its store's kind; with one storage feature, the other arms are gone.
#[allow(unreachable_patterns)]
impl Prepared {
    #[cfg(feature = "sqlite")]
    fn into_sqlite(self) -> crate::sqlite::TransactionPart {
        match self {
            Prepared::Sqlite(part) => part,
            _ => unreachable!("{ONE_KIND}"),
        }
    }

    #[cfg(feature = "postgres")]
    fn into_postgres(self) -> crate::postgres::TransactionPart {
        match self {
            Prepared::Postgres(part) => part,
            _ => unreachable!("{ONE_KIND}"),
        }
    }

    fn into_in_memory(self) -> Box<dyn InMemoryPart> {
        match self {
            Prepared::InMemory(part) => part,
            _ => unreachable!("{ONE_KIND}"),
        }
    }
}

/// A map's share of a transaction on the in-memory backend, checked and applied under the
/// store's lock.
pub(crate) trait InMemoryPart: Send + Sync {
    /// What is stored under each condition's key, as JSON, and whether every condition holds.
    fn check(&self, stores: &mut crate::in_memory::Stores) -> Result<(Vec<Option<String>>, bool)>;
    fn apply(&self, stores: &mut crate::in_memory::Stores);
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
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> persistent_map::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("hits.db");
/// let per_link = PersistentMap::<String, u64, _>::new(SqliteBackend::with_table(&path, "per_link").await?).await?;
/// let per_day = PersistentMap::<String, u64, _>::new(SqliteBackend::with_table(&path, "per_day").await?).await?;
/// let total = PersistentMap::<String, u64, _>::new(SqliteBackend::with_table(&path, "total").await?).await?;
///
/// let bump = |n: Option<&u64>| Some(n.copied().unwrap_or(0) + 1);
/// let hits = transaction(|tx| {
///     tx.update(&per_link, &"/docs".to_string(), bump);
///     tx.update(&per_day, &"2026-12-01".to_string(), bump);
///     Ok::<_, persistent_map::PersistentError>(tx.update(&total, &"all".to_string(), bump))
/// })
/// .await?;
/// assert_eq!(hits, Some(1));
/// assert_eq!(per_day.get("2026-12-01"), Some(1));
/// # Ok(())
/// # }
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
    loop {
        let mut tx = Transaction { parts: Vec::new() };
        let value = body(&mut tx)?;
        match tx.commit(held.take()).await? {
            Attempt::Committed => return Ok(value),
            Attempt::Conflicted(parts) => held = Some(Held::lock(parts).await),
        }
    }
}

/// How one commit of a transaction went.
enum Attempt {
    Committed,
    /// Something read had changed; memory now holds what storage holds. The parts, to hold
    /// their keys' turns while the body runs again.
    Conflicted(Vec<Box<dyn ErasedPart>>),
}

/// The keys' turns of a conflicted run's parts.
struct Held {
    parts: Vec<Box<dyn ErasedPart>>,
    guards: Vec<KeyGuard>,
}

impl Held {
    /// Takes the turns of every key of `parts` (sorted by map, as every commit takes them).
    async fn lock(parts: Vec<Box<dyn ErasedPart>>) -> Self {
        let mut guards = Vec::with_capacity(parts.len());
        for part in &parts {
            guards.push(part.lock().await);
        }
        Self { parts, guards }
    }

    /// The held turns, if they cover every key of `parts` (both sorted by map).
    fn covering(self, parts: &[Box<dyn ErasedPart>]) -> Option<Vec<KeyGuard>> {
        let covered = parts.iter().all(|part| {
            self.parts
                .iter()
                .any(|held| held.address() == part.address() && held.covers(&**part))
        });
        covered.then_some(self.guards)
    }
}

/// The reads and writes of one run of a [`transaction`]'s body.
///
/// Reads ([`get`](Self::get), and the read half of [`update`](Self::update)) come from memory
/// and are remembered: the commit goes ahead only if storage still holds what was read. Writes
/// ([`insert`](Self::insert), [`remove`](Self::remove)) are buffered until the commit, and later
/// reads of the same key in this transaction see them.
pub struct Transaction {
    parts: Vec<Box<dyn ErasedPart>>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("maps", &self.parts.len())
            .finish_non_exhaustive()
    }
}

impl Transaction {
    /// The value under `key` in `map`, as this transaction sees it: its own write of the key if
    /// it made one, else memory's value, which the commit then requires storage still to hold.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, transaction, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let stock: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// stock.insert("tea".into(), 3).await?;
    /// let left = transaction(|tx| {
    ///     let left = tx.get(&stock, &"tea".to_string()).unwrap_or(0);
    ///     tx.insert(&stock, "tea".to_string(), left - 1);
    ///     Ok::<_, persistent_map::PersistentError>(tx.get(&stock, &"tea".to_string()))
    /// })
    /// .await?;
    /// assert_eq!(left, Some(2));
    /// # Ok(())
    /// # }
    /// ```
    pub fn get<K, V, B>(&mut self, map: &PersistentMap<K, V, B>, key: &K) -> Option<V>
    where
        K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        B: TransactionalBackend<K, V>,
    {
        self.part(map).read(key)
    }

    /// Stores `value` under `key` in `map` when the transaction commits.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, transaction, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let backend = InMemoryBackend::new();
    /// let names: PersistentMap<String, String, _> = PersistentMap::new(backend.clone()).await?;
    /// let ids: PersistentMap<String, u32, _> = PersistentMap::new(backend).await?;
    /// transaction(|tx| {
    ///     tx.insert(&names, "user-7".to_string(), "ada".to_string());
    ///     tx.insert(&ids, "ada".to_string(), 7);
    ///     Ok::<_, persistent_map::PersistentError>(())
    /// })
    /// .await?;
    /// assert_eq!((names.get("user-7"), ids.get("ada")), (Some("ada".to_string()), Some(7)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn insert<K, V, B>(&mut self, map: &PersistentMap<K, V, B>, key: K, value: V)
    where
        K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        B: TransactionalBackend<K, V>,
    {
        self.part(map).write(key, Some(value));
    }

    /// Removes `key` from `map` when the transaction commits.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, transaction, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert("old".into(), 1).await?;
    /// transaction(|tx| {
    ///     tx.remove(&map, &"old".to_string());
    ///     tx.insert(&map, "new".to_string(), 2);
    ///     Ok::<_, persistent_map::PersistentError>(())
    /// })
    /// .await?;
    /// assert_eq!(map.keys().collect::<Vec<_>>(), ["new"]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn remove<K, V, B>(&mut self, map: &PersistentMap<K, V, B>, key: &K)
    where
        K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        B: TransactionalBackend<K, V>,
    {
        self.part(map).write(key.clone(), None);
    }

    /// Replaces the value under `key` in `map` with what `change` makes of it (`None` removes
    /// it), and returns the new value: a [`get`](Self::get) then an [`insert`](Self::insert) or
    /// [`remove`](Self::remove).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, transaction, PersistentMap};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map::Result<()> {
    /// let accounts: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// accounts.insert("ada".into(), 100).await?;
    /// transaction(|tx| {
    ///     tx.update(&accounts, &"ada".to_string(), |b| b.map(|b| b - 30));
    ///     tx.update(&accounts, &"bob".to_string(), |b| Some(b.copied().unwrap_or(0) + 30));
    ///     Ok::<_, persistent_map::PersistentError>(())
    /// })
    /// .await?;
    /// assert_eq!((accounts.get("ada"), accounts.get("bob")), (Some(70), Some(30)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn update<K, V, B>(
        &mut self,
        map: &PersistentMap<K, V, B>,
        key: &K,
        change: impl FnOnce(Option<&V>) -> Option<V>,
    ) -> Option<V>
    where
        K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        B: TransactionalBackend<K, V>,
    {
        let part = self.part(map);
        let current = part.read(key);
        let new = change(current.as_ref());
        if new.is_some() || current.is_some() {
            part.write(key.clone(), new.clone());
        }
        new
    }

    /// This transaction's share for `map`, made on first use.
    fn part<K, V, B>(&mut self, map: &PersistentMap<K, V, B>) -> &mut Part<K, V, B>
    where
        K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        B: TransactionalBackend<K, V>,
    {
        let address = Arc::as_ptr(&map.shared) as usize;
        let index = match self.parts.iter().position(|part| part.address() == address) {
            Some(index) => index,
            None => {
                self.parts.push(Box::new(Part {
                    map: map.clone(),
                    reads: HashMap::new(),
                    writes: HashMap::new(),
                    order: Vec::new(),
                    deadline: map.default_deadline(),
                }));
                self.parts.len() - 1
            }
        };
        self.parts[index]
            .as_any_mut()
            .downcast_mut::<Part<K, V, B>>()
            .expect("maps sharing entries have the same key, value and backend types")
    }

    /// Commits; `Ok(false)` when something read had changed (nothing was written, memory now
    /// holds what storage holds, and the body should run again).
    async fn commit(mut self, held: Option<Held>) -> Result<Attempt> {
        self.parts.retain(|part| !part.is_empty());
        if self.parts.is_empty() {
            return Ok(Attempt::Committed);
        }
        // One order for every transaction, so that two never wait for each other's keys.
        self.parts.sort_by_key(|part| part.address());
        let targets: Vec<Store> = self.parts.iter().map(|part| part.store()).collect();
        if let Some(other) = targets.iter().find(|store| !store.same(&targets[0])) {
            return Err(PersistentError::MixedStorage {
                first: targets[0].describe(),
                second: other.describe(),
            });
        }
        // Turns held since a conflict serve if this run touched no other key; otherwise they
        // are let go before any is taken, so that turns are only ever taken in one order.
        let guards = match held.and_then(|held| held.covering(&self.parts)) {
            Some(guards) => guards,
            None => {
                let mut guards = Vec::with_capacity(self.parts.len());
                for part in &self.parts {
                    guards.push(part.lock().await);
                }
                guards
            }
        };
        let parts = self.parts;
        let store = Store::strongest(targets);
        run_to_completion(async move {
            let committed = commit_parts(&store, &parts).await;
            drop(guards);
            match committed? {
                true => Ok(Attempt::Committed),
                false => Ok(Attempt::Conflicted(parts)),
            }
        })
        .await
    }
}

/// Sends every part to `store` as one checked write, then settles each part in memory.
async fn commit_parts(store: &Store, parts: &[Box<dyn ErasedPart>]) -> Result<bool> {
    let prepared = parts
        .iter()
        .map(|part| part.prepare())
        .collect::<Result<Vec<_>>>()?;
    let current = match store {
        #[cfg(feature = "sqlite")]
        Store::Sqlite(writer, durability) => {
            let parts = prepared.into_iter().map(Prepared::into_sqlite).collect();
            writer.commit(parts, *durability).await?
        }
        #[cfg(feature = "postgres")]
        Store::Postgres(session) => {
            let parts = prepared.into_iter().map(Prepared::into_postgres).collect();
            session.commit(parts).await?
        }
        Store::InMemory(stores) => {
            let parts: Vec<Box<dyn InMemoryPart>> =
                prepared.into_iter().map(Prepared::into_in_memory).collect();
            commit_in_memory(stores, &parts)?
        }
    };
    match current {
        None => {
            for part in parts {
                part.applied();
            }
            Ok(true)
        }
        Some(current) => {
            for (part, current) in parts.iter().zip(current) {
                part.conflicted(current).await?;
            }
            Ok(false)
        }
    }
}

/// Checks every part's conditions, then applies every part, under the store's lock. Returns
/// what each condition's key holds if a condition failed.
fn commit_in_memory(
    stores: &Mutex<crate::in_memory::Stores>,
    parts: &[Box<dyn InMemoryPart>],
) -> Result<Option<Vec<Vec<Option<String>>>>> {
    let mut stores = stores
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut holds = true;
    let mut current = Vec::with_capacity(parts.len());
    for part in parts {
        let (stored, part_holds) = part.check(&mut stores)?;
        holds &= part_holds;
        current.push(stored);
    }
    if !holds {
        return Ok(Some(current));
    }
    for part in parts {
        part.apply(&mut stores);
    }
    Ok(None)
}

/// A part with its types erased, so that one transaction holds maps of any types.
trait ErasedPart: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Whether every key `other` (a part of the same map) touches is one this part touches.
    fn covers(&self, other: &dyn ErasedPart) -> bool;
    /// The address of the map's shared entries: one part per map.
    fn address(&self) -> usize;
    fn is_empty(&self) -> bool;
    fn store(&self) -> Store;
    fn lock(&self) -> Pin<Box<dyn Future<Output = KeyGuard> + Send + '_>>;
    fn prepare(&self) -> Result<Prepared>;
    /// The commit went through: memory takes the writes.
    fn applied(&self);
    /// A condition failed: memory takes what storage holds under the keys read.
    fn conflicted(
        &self,
        current: Vec<Option<String>>,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send + '_>>;
}

/// One map's reads and writes in a transaction.
struct Part<K, V, B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: TransactionalBackend<K, V>,
{
    map: PersistentMap<K, V, B>,
    /// What the transaction read under each key (memory's value at the time).
    reads: HashMap<K, Option<V>>,
    /// The last write of each key (`None`: remove).
    writes: HashMap<K, Option<V>>,
    /// Keys in the order of their first write.
    order: Vec<K>,
    /// When the values written expire: the map's default time to live from the body's run.
    deadline: Option<Deadline>,
}

impl<K, V, B> Part<K, V, B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: TransactionalBackend<K, V>,
{
    fn read(&mut self, key: &K) -> Option<V> {
        if let Some(written) = self.writes.get(key) {
            return written.clone();
        }
        if let Some(read) = self.reads.get(key) {
            return read.clone();
        }
        let value = self.map.get(key);
        self.reads.insert(key.clone(), value.clone());
        value
    }

    fn write(&mut self, key: K, value: Option<V>) {
        if self.writes.insert(key.clone(), value).is_none() {
            self.order.push(key);
        }
    }

    fn ops(&self) -> Vec<BatchOp<K, V>> {
        self.order
            .iter()
            .map(|key| match &self.writes[key] {
                Some(value) => BatchOp::Save(key.clone(), value.clone()),
                None => BatchOp::Delete(key.clone()),
            })
            .collect()
    }

    fn conditions(&self) -> Result<Vec<Condition<K>>> {
        self.reads
            .iter()
            .map(|(key, read)| {
                Ok(Condition {
                    key: key.clone(),
                    expected: read.as_ref().map(encode_value).transpose()?,
                })
            })
            .collect()
    }

    fn shared(&self) -> &Arc<Shared<K, V>> {
        &self.map.shared
    }
}

impl<K, V, B> ErasedPart for Part<K, V, B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: TransactionalBackend<K, V>,
{
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn covers(&self, other: &dyn ErasedPart) -> bool {
        let touches =
            |part: &Self, key: &K| part.reads.contains_key(key) || part.writes.contains_key(key);
        other.as_any().downcast_ref::<Self>().is_some_and(|other| {
            other
                .reads
                .keys()
                .chain(other.writes.keys())
                .all(|key| touches(self, key))
        })
    }

    fn address(&self) -> usize {
        Arc::as_ptr(self.shared()) as usize
    }

    fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.writes.is_empty()
    }

    fn store(&self) -> Store {
        self.map.backend.__transaction_target().store
    }

    fn lock(&self) -> Pin<Box<dyn Future<Output = KeyGuard> + Send + '_>> {
        Box::pin(
            self.shared()
                .key_locks
                .lock_many(self.reads.keys().chain(self.writes.keys())),
        )
    }

    fn prepare(&self) -> Result<Prepared> {
        self.map.prepare_deadline(self.deadline)?;
        let target = self.map.backend.__transaction_target();
        (target.prepare)(
            &self.conditions()?,
            &self.ops(),
            self.shared().id,
            self.deadline,
        )
    }

    fn applied(&self) {
        self.shared()
            .apply_all(self.ops().into_iter(), self.deadline);
    }

    fn conflicted(
        &self,
        current: Vec<Option<String>>,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send + '_>> {
        Box::pin(async move {
            let target = self.map.backend.__transaction_target();
            // `conditions()` and `current` follow the same iteration of `reads`.
            let mut stored = Vec::with_capacity(current.len());
            for ((key, _), json) in self.reads.iter().zip(current) {
                let value = json
                    .map(|json| {
                        serde_json::from_str(&json).map_err(|source| {
                            PersistentError::InvalidStoredValue {
                                table: target.name.clone(),
                                key: serde_json::to_string(key).unwrap_or_default(),
                                source: Box::new(source),
                            }
                        })
                    })
                    .transpose()?;
                stored.push((key.clone(), value));
            }
            super::expiry::settle(self.shared(), &*self.map.backend, stored).await
        })
    }
}
