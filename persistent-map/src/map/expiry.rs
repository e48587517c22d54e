//! Expiry: entries with a time to live.
//!
//! Each entry in memory is a [`Slot`]: its value alone for an entry that never expires, its
//! value and deadline (on the heap) for one that does. A read looks at the deadline only when
//! there is one, so an entry without a time to live costs no clock read; one with a deadline
//! is absent to every read from the millisecond its deadline passes on this process's wall
//! clock, whether or not it has been swept yet. Storage holds the same deadline beside the
//! value, and treats an expired row as absent in its conditions and loads.
//!
//! A background task per map deletes expired rows from storage in batches of at most
//! [`SWEEP_BATCH`] rows, each batch one short transaction of the backend (which may cut it
//! shorter still, as SQLite's does to let live writes through), and drops them from memory in
//! their keys' turns on tokio's blocking pool, telling subscribers [`Change::Expired`]. The task
//! belongs to the map, not to any handle's runtime: it runs on a thread of the crate's own, through
//! whichever handle's backend is still open, starts when a map opens on a backend that stores
//! deadlines (so expired rows left by an earlier run go without a call) and whenever memory
//! gains a deadline, and stops once the map is dropped or holds no deadline. One sweep of a map runs at a time: the background sweep skips its turn
//! while [`PersistentMap::sweep_expired`] runs, and `sweep_expired` waits for a background sweep
//! under way, so two sweeps never take turns with the live writes.

use crate::{MapKey, MapValue};
use std::future::Future;
use std::hash::Hash;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::commit::{Answer, Kind, Op, Write};
use super::entries::Lookup;
use super::shared::Shared;
use super::PersistentMap;
use crate::deadline::{is_live, now_millis};
use crate::{Change, Deadline, PersistentError, Result, StorageBackend};

/// An entry in memory: the value, and when it expires if it ever does.
///
/// An entry that never expires holds just its value: a map without TTLs pays nothing for
/// them. An entry with a deadline keeps value and deadline together on the heap; where `V`
/// has a spare bit pattern (a `String`'s or a `Vec`'s capacity, a `bool`), Rust hides which
/// variant is which in it, so `Slot<V>` is no larger than `V`.
#[derive(Debug, Clone)]
pub(super) enum Slot<V> {
    Forever(V),
    Expiring(Box<(V, Deadline)>),
}

impl<V> Slot<V> {
    pub(super) fn new(value: V, deadline: Option<Deadline>) -> Self {
        match deadline {
            None => Self::Forever(value),
            Some(deadline) => Self::Expiring(Box::new((value, deadline))),
        }
    }

    /// The value, expired or not.
    pub(super) fn value(&self) -> &V {
        match self {
            Self::Forever(value) => value,
            Self::Expiring(expiring) => &expiring.0,
        }
    }

    /// When the entry expires (`None`: never).
    #[inline]
    pub(super) fn deadline(&self) -> Option<Deadline> {
        match self {
            Self::Forever(_) => None,
            Self::Expiring(expiring) => Some(expiring.1),
        }
    }

    /// The value, unless it has expired; reads the clock only for an entry with a deadline.
    #[inline]
    pub(super) fn live(&self) -> Option<&V> {
        match self {
            Self::Forever(value) => Some(value),
            Self::Expiring(expiring) => (!expiring.1.has_passed()).then_some(&expiring.0),
        }
    }

    /// Whether the entry is live at `now` (Unix milliseconds), for passes over many entries
    /// that read the clock once.
    #[inline]
    pub(super) fn is_live_at(&self, now: u64) -> bool {
        is_live(self.deadline(), now)
    }

    /// The value, unless it has expired.
    pub(super) fn into_live(self) -> Option<V> {
        let live = self.live().is_some();
        let value = match self {
            Self::Forever(value) => value,
            Self::Expiring(expiring) => expiring.0,
        };
        live.then_some(value)
    }
}

/// Rows deleted per sweep transaction at most, within what the change log records key by key
/// (1,024). A backend may delete fewer per transaction to keep it short (SQLite bounds each by
/// time too).
pub(crate) const SWEEP_BATCH: usize = 1000;

/// How often the background sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Every this many background sweeps, memory is also scanned for expired entries that another
/// process swept from storage (this map's own sweep finds no row for them).
const MEMORY_PASS_EVERY: u64 = 60;

/// What a map's handles share about expiry.
#[derive(Debug, Default)]
pub(super) struct ExpiryState {
    /// Whether any entry ever had a deadline: until then, `len` and `is_empty` need not look
    /// at the entries.
    has_deadlines: AtomicBool,
    /// Whether a background sweep task is running.
    sweeping: AtomicBool,
    /// Held while a sweep deletes: one sweep at a time.
    sweep_turn: tokio::sync::Mutex<()>,
}

impl ExpiryState {
    /// Notes that an entry with `deadline` is (about to be) in memory.
    #[inline]
    pub(super) fn note(&self, deadline: Option<Deadline>) {
        if deadline.is_some() && !self.has_deadlines.load(Ordering::Relaxed) {
            self.has_deadlines.store(true, Ordering::Release);
        }
    }

    #[inline]
    pub(super) fn has_deadlines(&self) -> bool {
        self.has_deadlines.load(Ordering::Acquire)
    }
}

/// The backends of a map's handles, as its sweep uses them: held weakly, so that the sweep goes
/// on through any handle still open, and stops once none is.
pub(super) struct Sweepers<K> {
    backends: Mutex<Vec<Box<dyn Sweeper<K>>>>,
}

/// A backend as the sweep uses it, its value type erased.
trait Sweeper<K>: Send + Sync {
    fn address(&self) -> usize;
    /// Deletes expired rows; `None` if the backend is gone.
    fn sweep(&self, limit: usize, origin: u64) -> Option<Sweep<K>>;
}

type Sweep<K> = Pin<Box<dyn Future<Output = Result<Vec<K>>> + Send>>;

struct WeakBackend<B, V> {
    backend: Weak<B>,
    values: PhantomData<fn() -> V>,
}

impl<K, V, B> Sweeper<K> for WeakBackend<B, V>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    fn address(&self) -> usize {
        self.backend.as_ptr() as *const () as usize
    }

    fn sweep(&self, limit: usize, origin: u64) -> Option<Sweep<K>> {
        let backend = self.backend.upgrade()?;
        Some(Box::pin(async move {
            backend.sweep_expired(limit, origin).await
        }))
    }
}

impl<K> Default for Sweepers<K> {
    fn default() -> Self {
        Self {
            backends: Mutex::new(Vec::new()),
        }
    }
}

impl<K: Send + 'static> Sweepers<K> {
    fn backends(&self) -> std::sync::MutexGuard<'_, Vec<Box<dyn Sweeper<K>>>> {
        // Every change to the list is one `Vec` call.
        self.backends.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets the sweep use `backend` (once).
    pub(super) fn add<V, B>(&self, backend: &Arc<B>)
    where
        K: MapKey,
        V: MapValue,
        B: StorageBackend<K, V> + Send + Sync + 'static,
    {
        let address = Arc::as_ptr(backend) as *const () as usize;
        let mut backends = self.backends();
        if !backends.iter().any(|known| known.address() == address) {
            backends.push(Box::new(WeakBackend {
                backend: Arc::downgrade(backend),
                values: PhantomData::<fn() -> V>,
            }));
        }
    }

    /// Sweeps through the first backend still alive (forgetting those that are gone); `None`
    /// if none is.
    async fn sweep(&self, limit: usize, origin: u64) -> Option<Result<Vec<K>>> {
        let sweep = {
            let mut backends = self.backends();
            loop {
                let first = backends.first()?;
                match first.sweep(limit, origin) {
                    Some(sweep) => break sweep,
                    None => drop(backends.remove(0)),
                }
            }
        };
        Some(sweep.await)
    }
}

impl<K, V> Shared<K, V>
where
    K: Eq + Hash + Clone + Serialize + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Drops every expired entry from memory, telling subscribers; returns how many.
    fn drop_expired_in_memory(&self) -> usize {
        if !self.expiry.has_deadlines() {
            return 0;
        }
        self.entries.drop_expired(now_millis(), |key| {
            self.changes
                .publish(Some(Change::Expired { key: key.clone() }));
        })
    }
}

impl<K, V, B> PersistentMap<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// This handle with a default time to live: every later write of it that stores a value
    /// ([`insert`](Self::insert), [`insert_many`](Self::insert_many), [`update`](Self::update),
    /// [`get_or_insert_with`](Self::get_or_insert_with),
    /// [`compare_exchange`](Self::compare_exchange), a [`transaction`](crate::transaction)'s
    /// writes) gives it a deadline `ttl` after the write, replacing the deadline the key had, as
    /// Redis's `SET ... EX` does. Clones made from the returned handle keep the default; other
    /// handles on the table are not affected.
    ///
    /// Fails with [`PersistentError::ExpiryUnsupported`] if the backend does not store
    /// deadlines (see [`StorageBackend::supports_expiry`]).
    ///
    /// A cache whose entries live ten minutes after their last write:
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, PersistentMap};
    /// use std::time::Duration;
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let sessions: PersistentMap<String, u32, SqliteBackend> =
    ///     PersistentMap::open(dir.path().join("sessions.db")).await?;
    /// let sessions = sessions.with_default_ttl(Duration::from_secs(600))?;
    ///
    /// sessions.insert("token-1".into(), 42).await?;
    /// let left = sessions.ttl("token-1").unwrap();
    /// assert!(left > Duration::from_secs(590) && left <= Duration::from_secs(600));
    /// # Ok(()) }));
    /// ```
    pub fn with_default_ttl(mut self, ttl: Duration) -> Result<Self> {
        if !self.backend.supports_expiry() {
            return Err(PersistentError::ExpiryUnsupported);
        }
        self.default_ttl = Some(ttl);
        Ok(self)
    }

    /// This handle's default time to live (see [`with_default_ttl`](Self::with_default_ttl)).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// assert_eq!(map.default_ttl(), None);
    /// # Ok(()) }));
    /// ```
    pub fn default_ttl(&self) -> Option<Duration> {
        self.default_ttl
    }

    /// The deadline a write of this handle gives the values it stores, if it has a default.
    pub(super) fn default_deadline(&self) -> Option<Deadline> {
        self.default_ttl.map(Deadline::after)
    }

    /// Stores `value` under `key` until `ttl` from now, then returns the value it replaced (as
    /// [`insert`](Self::insert) does). From the moment the time to live runs out, every read
    /// treats the key as absent; the background sweep then deletes it from storage and memory.
    ///
    /// Fails with [`PersistentError::ExpiryUnsupported`], writing nothing, if the backend does
    /// not store deadlines.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// use std::time::Duration;
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let sessions: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// sessions.insert_with_ttl("token-1".into(), 42, Duration::from_secs(1800)).await?;
    /// assert_eq!(sessions.get("token-1"), Some(42));
    /// # Ok(()) }));
    /// ```
    pub async fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) -> Result<Option<V>> {
        self.write_until(key, value, Some(Deadline::after(ttl)))
            .await
    }

    /// Stores `value` under `key` until the absolute time `deadline` (rounded up to the
    /// millisecond), then returns the value it replaced. A deadline already past stores the
    /// entry already expired: every read treats it as absent.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// use std::time::{Duration, SystemTime};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// // Which node holds each lease.
    /// let leases: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// let until = SystemTime::now() + Duration::from_secs(30);
    /// leases.insert_until("scheduler".into(), 1, until).await?;
    /// assert!(leases.contains_key("scheduler"));
    ///
    /// leases.insert_until("old".into(), 2, SystemTime::UNIX_EPOCH).await?;
    /// assert!(!leases.contains_key("old"));
    /// # Ok(()) }));
    /// ```
    pub async fn insert_until(&self, key: K, value: V, deadline: SystemTime) -> Result<Option<V>> {
        self.write_until(key, value, Some(Deadline::at(deadline)))
            .await
    }

    /// Gives the live entry under `key` a time to live of `ttl` from now, replacing any it had,
    /// and returns whether there was such an entry (Redis's `EXPIRE`).
    ///
    /// The write is conditional on storage still holding the value read (as
    /// [`update`](Self::update)'s is), so it never resurrects or overwrites a value another
    /// handle or process wrote meanwhile: it applies to whatever is stored then.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// use std::time::Duration;
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert("a".into(), 1).await?;
    /// assert!(map.expire(&"a".into(), Duration::from_secs(60)).await?);
    /// assert!(map.ttl("a").is_some());
    /// assert!(!map.expire(&"missing".into(), Duration::from_secs(60)).await?);
    /// # Ok(()) }));
    /// ```
    pub async fn expire(&self, key: &K, ttl: Duration) -> Result<bool> {
        self.set_deadline(key, Some(Deadline::after(ttl))).await
    }

    /// Like [`expire`](Self::expire), with the absolute time `deadline` (Redis's `EXPIREAT`).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// use std::time::{Duration, SystemTime};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert("a".into(), 1).await?;
    /// assert!(map.expire_at(&"a".into(), SystemTime::now() - Duration::from_secs(1)).await?);
    /// assert_eq!(map.get("a"), None); // expired at once
    /// # Ok(()) }));
    /// ```
    pub async fn expire_at(&self, key: &K, deadline: SystemTime) -> Result<bool> {
        self.set_deadline(key, Some(Deadline::at(deadline))).await
    }

    /// Removes the time to live of the live entry under `key`, so that it never expires, and
    /// returns whether there was such an entry (Redis's `PERSIST`). Conditional on what is
    /// stored, as [`expire`](Self::expire) is.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// use std::time::Duration;
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert_with_ttl("a".into(), 1, Duration::from_secs(60)).await?;
    /// assert!(map.persist(&"a".into()).await?);
    /// assert_eq!(map.ttl("a"), None);
    /// assert_eq!(map.get("a"), Some(1));
    /// # Ok(()) }));
    /// ```
    pub async fn persist(&self, key: &K) -> Result<bool> {
        let known = self.shared.entries.lookup(key, |_, deadline| deadline);
        if matches!(known, Lookup::Absent | Lookup::Live(None)) {
            return Ok(false); // Absent, or never expires: nothing to write.
        }
        self.set_deadline(key, None).await
    }

    /// The time left before the entry under `key` expires: `None` if the key is absent (or
    /// expired) or never expires. From memory, like [`get`](Self::get).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// use std::time::Duration;
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert_with_ttl("a".into(), 1, Duration::from_secs(60)).await?;
    /// map.insert("b".into(), 2).await?;
    /// assert!(map.ttl("a").unwrap() <= Duration::from_secs(60));
    /// assert_eq!(map.ttl("b"), None);
    /// # Ok(()) }));
    /// ```
    pub fn ttl<Q>(&self, key: &Q) -> Option<Duration>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.deadline(key)?.remaining()
    }

    /// When the live entry under `key` expires: `None` if the key is absent (or expired) or
    /// never expires.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// use std::time::{Duration, SystemTime};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// let until = SystemTime::now() + Duration::from_secs(60);
    /// map.insert_until("a".into(), 1, until).await?;
    /// assert!(map.deadline("a").unwrap().to_system_time() >= until);
    /// # Ok(()) }));
    /// ```
    pub fn deadline<Q>(&self, key: &Q) -> Option<Deadline>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shared
            .entries
            .lookup(key, |_, deadline| deadline)
            .live()
            .flatten()
    }

    /// Deletes every expired entry from storage now, in short transactions (at most 1,000 rows
    /// each, and on SQLite about a millisecond of work when live writes are waiting), drops
    /// expired entries from memory, and returns how many rows were deleted from storage. If the
    /// background sweep is under way, waits for it first.
    ///
    /// The background sweep (every second while the map holds an entry with a deadline, and once
    /// soon after the map opens) does the same; call this to reclaim space at a moment of your choosing. Expired entries are
    /// absent to every read either way. Subscribers hear [`Change::Expired`] for each entry
    /// dropped from memory.
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, PersistentMap};
    /// use std::time::SystemTime;
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let map: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(dir.path().join("a.db")).await?;
    /// map.insert_until("gone".into(), 1, SystemTime::UNIX_EPOCH).await?;
    /// assert!(map.sweep_expired().await? <= 1); // 0 if the background sweep came first
    /// assert_eq!(map.sweep_expired().await?, 0);
    /// # Ok(()) }));
    /// ```
    pub async fn sweep_expired(&self) -> Result<usize> {
        self.shared.sweepers.add(&self.backend);
        let swept = {
            let _turn = self.shared.expiry.sweep_turn.lock().await;
            sweep_storage(&self.shared).await?
        };
        let shared = Arc::clone(&self.shared);
        off_workers(move || shared.drop_expired_in_memory()).await;
        Ok(swept)
    }

    /// Stores `value` under `key` with `deadline`, in the key's turn.
    async fn write_until(&self, key: K, value: V, deadline: Option<Deadline>) -> Result<Option<V>> {
        self.write_one(Op::Save {
            key,
            value,
            deadline,
        })
        .await
    }

    /// Gives the live entry under `key` `deadline`, conditional on its value; whether there was
    /// one.
    async fn set_deadline(&self, key: &K, deadline: Option<Deadline>) -> Result<bool> {
        let kept = self
            .read_modify_write(key, deadline, Kind::DeadlineOnly, |value| value.cloned())
            .await?;
        Ok(kept.is_some())
    }

    /// Refuses `write` if it saves a value with a deadline and the backend stores none; else
    /// makes sure the background sweep runs for it.
    pub(super) fn check_deadlines(&self, write: &Write<K, V>) -> Result<()> {
        let deadline = write.ops.iter().find_map(|op| match op {
            Op::Save { deadline, .. } => *deadline,
            _ => None,
        });
        if deadline.is_none() {
            return Ok(());
        }
        if !self.backend.supports_expiry() {
            return Err(PersistentError::ExpiryUnsupported);
        }
        self.shared.expiry.note(deadline);
        self.start_sweeping();
        Ok(())
    }

    /// Starts the map's background sweep unless it runs: a round every [`SWEEP_EVERY`] while
    /// memory holds entries with deadlines. A backend that stores deadlines is swept once soon
    /// after a map opens on it, so expired rows left by an earlier run go without a call.
    pub(super) fn start_sweeping(&self) {
        if !self.backend.supports_expiry() {
            return;
        }
        self.shared.sweepers.add(&self.backend);
        let state = &self.shared.expiry;
        if state.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = Arc::downgrade(&self.shared);
        match sweep_runtime() {
            Some(runtime) => drop(runtime.spawn(crate::tasks::task(sweep_in_background(shared)))),
            None => state.sweeping.store(false, Ordering::Release),
        }
    }
}

/// The runtime every map's background sweep runs on: a thread of its own, so that a sweep
/// outlives the runtime of whichever handle started it (a blocking map's, a test's). `None` if
/// no thread can be had; the next write tries again.
fn sweep_runtime() -> Option<&'static tokio::runtime::Handle> {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Handle>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .ok()?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name("persistent-map-expiry".into())
                .spawn(move || runtime.block_on(std::future::pending::<()>()))
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

/// The background sweep: a round every [`SWEEP_EVERY`] while the map is alive and holds
/// deadlines (the first one [`SWEEP_EVERY`] after it starts, out of the way of the writes a
/// program makes as it opens its maps), through whichever of its handles' backends is still
/// alive. Holds neither the map nor a backend in between, so dropping the map stops it.
async fn sweep_in_background<K, V>(shared: Weak<Shared<K, V>>)
where
    K: MapKey,
    V: MapValue,
{
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_EVERY, SWEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds: u64 = 0;
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let swept = {
            // A sweep under way (`sweep_expired`) does this round's work.
            let Ok(_turn) = shared.expiry.sweep_turn.try_lock() else {
                continue;
            };
            // A failed sweep (a busy file, a closed backend) is simply tried again next time.
            sweep_storage(&shared).await.unwrap_or(0)
        };
        rounds += 1;
        if rounds.is_multiple_of(MEMORY_PASS_EVERY) {
            let shared = Arc::clone(&shared);
            off_workers(move || shared.drop_expired_in_memory()).await;
        }
        if swept == 0 && !shared.expiry.has_deadlines() {
            // Nothing to sweep: stop, unless a deadline arrived meanwhile.
            shared.expiry.sweeping.store(false, Ordering::Release);
            if !shared.expiry.has_deadlines() || shared.expiry.sweeping.swap(true, Ordering::AcqRel)
            {
                return;
            }
        }
    }
}

/// Sweeps storage in batches until a batch comes back empty (a backend may cut a batch short
/// with more rows expired), through a live backend of the map's handles. What a batch deleted
/// is dropped from memory on the blocking pool while storage sweeps the next. Returns how many
/// rows were deleted. The caller holds the sweep's turn.
async fn sweep_storage<K, V>(shared: &Arc<Shared<K, V>>) -> Result<usize>
where
    K: MapKey,
    V: MapValue,
{
    let mut swept = 0;
    let mut dropping = None;
    loop {
        let Some(keys) = shared.sweepers.sweep(SWEEP_BATCH, shared.id).await else {
            return Ok(swept); // Every handle is gone.
        };
        let keys = keys?;
        if let Some(dropped) = dropping.take() {
            join_off_workers(dropped).await;
        }
        if keys.is_empty() {
            return Ok(swept);
        }
        swept += keys.len();
        // In the keys' turns, as every write settles: a write of one of them settling meanwhile
        // must not hear of it out of order.
        let turns = shared.key_locks.lock_many(&keys).await;
        let shared = Arc::clone(shared);
        dropping = Some(crate::tasks::spawn_blocking(move || {
            let _turns = turns;
            let mut write = Write::new(Vec::new(), keys.into_iter().map(Op::Delete).collect());
            write.kind = Kind::Sweep;
            let _ = shared.settle(write, Answer::Applied { previous: None }, "");
        }));
        // Let the writes queued meanwhile go first.
        tokio::task::yield_now().await;
    }
}

/// Runs `work` on tokio's blocking pool, off the workers that serve the map's callers: a pass
/// over many entries takes their shards' locks and the CPU for a while.
async fn off_workers<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) {
    join_off_workers(crate::tasks::spawn_blocking(work)).await;
}

/// Waits for work on the blocking pool; a panic in it is resumed here. (A runtime shutting
/// down cancels it: nothing is left to wait for.)
async fn join_off_workers<T>(work: impl Future<Output = Result<T, tokio::task::JoinError>>) {
    if let Err(error) = work.await
        && error.is_panic()
    {
        std::panic::resume_unwind(error.into_panic());
    }
}

#[cfg(test)]
mod tests {
    use super::Slot;
    use std::mem::size_of;

    /// An entry without a deadline costs nothing for expiry where the value has a niche to
    /// hide the variant in, as `String`, `Vec` and most structs holding one do.
    #[test]
    fn a_slot_is_no_larger_than_a_value_with_a_niche() {
        assert_eq!(size_of::<Slot<String>>(), size_of::<String>());
        assert_eq!(
            size_of::<Slot<(u64, String, bool)>>(),
            size_of::<(u64, String, bool)>()
        );
        assert_eq!(size_of::<Slot<Vec<u8>>>(), size_of::<Vec<u8>>());
    }
}
