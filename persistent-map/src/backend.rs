//! The storage backend trait: where a map's entries live when the process is gone.

use std::collections::HashMap;
use std::hash::Hash;

use serde::{de::DeserializeOwned, Serialize};

use crate::{Deadline, PersistentError, Result};

/// One write of a batch handed to [`StorageBackend::apply_batch`].
///
/// ```
/// use persistent_map::BatchOp;
///
/// let ops: Vec<BatchOp<String, u32>> = vec![
///     BatchOp::Save("apples".to_string(), 3),
///     BatchOp::Delete("pears".to_string()),
/// ];
/// assert_eq!(ops[1].key(), "pears");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp<K, V> {
    /// Store `value` under `key`, replacing any previous value.
    Save(K, V),
    /// Remove `key` (a key that is not stored is not an error).
    Delete(K),
}

impl<K, V> BatchOp<K, V> {
    /// The key this write touches.
    pub fn key(&self) -> &K {
        match self {
            BatchOp::Save(key, _) | BatchOp::Delete(key) => key,
        }
    }
}

/// What changed in storage, written by someone other than this backend, since the backend last
/// loaded. Returned by [`StorageBackend::external_changes`] and, with what the changed keys
/// hold (`V`), by [`StorageBackend::changes_since`].
///
/// ```
/// use persistent_map::ExternalChanges;
///
/// let changes: ExternalChanges<String> = ExternalChanges::Keys(vec!["a".into()]);
/// assert!(matches!(changes, ExternalChanges::Keys(keys) if keys.len() == 1));
///
/// // Read together with the change: "a" now holds 7 (no deadline), "b" was removed.
/// let read: ExternalChanges<String, u32> =
///     ExternalChanges::Entries(vec![("a".into(), Some((7, None))), ("b".into(), None)]);
/// assert_eq!(read.without_values::<()>(), ExternalChanges::Keys(vec!["a".into(), "b".into()]));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExternalChanges<K, V = ()> {
    /// Nothing changed: the map is up to date.
    None,
    /// Only these keys may have changed; the map re-reads them with
    /// [`StorageBackend::load_keys_expiring`].
    Keys(Vec<K>),
    /// Only these keys may have changed, and this is what storage holds under each (`None`:
    /// nothing; else the value and its deadline), read together with the change and the
    /// position returned beside it: never older than the change that named the key. The map
    /// applies these without reading the keys again, unless a write of its own to one of them
    /// may have finished while they were read; then it re-reads them, as for
    /// [`Keys`](Self::Keys).
    // Spelled out rather than aliased, so that the docs show what each key holds.
    #[allow(clippy::type_complexity)]
    Entries(Vec<(K, Option<(V, Option<Deadline>)>)>),
    /// Something may have changed; the map reloads everything.
    Unknown,
}

impl<K, V> ExternalChanges<K, V> {
    /// The same changes without what the keys hold: [`Entries`](Self::Entries) become
    /// [`Keys`](Self::Keys), to be read again.
    pub fn without_values<W>(self) -> ExternalChanges<K, W> {
        match self {
            ExternalChanges::None => ExternalChanges::None,
            ExternalChanges::Keys(keys) => ExternalChanges::Keys(keys),
            ExternalChanges::Entries(entries) => {
                ExternalChanges::Keys(entries.into_iter().map(|(key, _)| key).collect())
            }
            ExternalChanges::Unknown => ExternalChanges::Unknown,
        }
    }
}

/// What storage must hold under a key for a conditional write to go ahead; see
/// [`StorageBackend::apply_checked`].
///
/// ```
/// use persistent_map::Condition;
///
/// // "only if `lease` is not stored"
/// let absent: Condition<String> = Condition::absent("lease".to_string());
/// // "only if `count` holds 41"
/// let holds = Condition::holds("count".to_string(), &41)?;
/// assert_eq!(holds.expected.as_deref(), Some("41"));
/// assert_eq!(absent.expected, None);
/// # Ok::<(), persistent_map::PersistentError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition<K> {
    /// The key whose stored value is checked.
    pub key: K,
    /// The JSON text of the value that must be stored, or `None` for "not stored". It is
    /// compared with what the stored value means, not byte for byte: as JSON (`{"a":1,"b":2}`
    /// equals `{"b": 2, "a": 1}`), and as the value type would write what is stored (a row
    /// lacking a `#[serde(default)]` field holds the value it decodes to).
    pub expected: Option<String>,
}

impl<K> Condition<K> {
    /// The condition that `key` is not stored.
    pub fn absent(key: K) -> Self {
        Self {
            key,
            expected: None,
        }
    }

    /// The condition that `key` holds `value` (compared as JSON).
    ///
    /// Fails if `value` cannot be written as JSON (a NaN or infinite float).
    pub fn holds<V: Serialize + ?Sized>(key: K, value: &V) -> Result<Self> {
        Ok(Self {
            key,
            expected: Some(crate::backends::encode::encode_value(value)?),
        })
    }
}

/// A value as storage holds it: decoded, and its JSON text as stored, returned with a
/// [`Checked::Conflict`].
///
/// ```
/// use persistent_map::Stored;
///
/// let stored = Stored { value: 42u32, json: "42".to_string() };
/// assert_eq!(stored.value, 42);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored<V> {
    /// The stored value.
    pub value: V,
    /// Its JSON text as storage holds it: expecting this text is sure to match it, even where
    /// the value would serialize differently (fields it does not know, a map's order).
    pub json: String,
}

/// What [`StorageBackend::apply_checked`] did.
///
/// ```
/// use persistent_map::Checked;
///
/// let done: Checked<u32> = Checked::Applied { previous: None };
/// assert!(matches!(done, Checked::Applied { .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Checked<V> {
    /// Every condition held, and every write was applied.
    Applied {
        /// When the caller asked for them and the backend knows them: for each write, in
        /// order, the JSON text of the value its key held just before it (`None`: not stored).
        /// `None` where the backend does not say, and the map then reports the value it held.
        previous: Option<Vec<Option<String>>>,
    },
    /// A condition did not hold, and nothing was written. For each condition, in order, what
    /// storage holds under its key now (`None`: not stored).
    Conflict {
        /// What storage holds under each condition's key.
        current: Vec<Option<Stored<V>>>,
    },
    /// As [`Conflict`](Self::Conflict), from a backend that stores deadlines and read each
    /// key's deadline with its value (as the PostgreSQL backend does): the map takes them as
    /// they are, instead of reading the keys again with
    /// [`load_keys_expiring`](StorageBackend::load_keys_expiring).
    ConflictWithDeadlines {
        /// What storage holds under each condition's key, and when it expires (`None`: never).
        current: Vec<Option<(Stored<V>, Option<Deadline>)>>,
    },
}

/// How the map asks for a write; see [`StorageBackend::apply_checked`].
///
/// ```
/// use persistent_map::WriteOptions;
///
/// let options = WriteOptions::new().want_previous(true).origin(7);
/// assert!(options.wants_previous());
/// assert_eq!(options.origin_id(), 7);
/// assert_eq!(options.deadline(), None);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    want_previous: bool,
    origin: u64,
    expires: Option<Deadline>,
}

impl WriteOptions {
    /// No previous values, origin 0 (nobody in particular).
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask for what each write's key held just before it.
    #[must_use]
    pub fn want_previous(mut self, want: bool) -> Self {
        self.want_previous = want;
        self
    }

    /// Who writes: the id of the map (shared by its handles in this process) that makes the
    /// write. A backend that logs changes records it, so that
    /// [`changes_since`](StorageBackend::changes_since) does not report a map's own writes back
    /// to it.
    #[must_use]
    pub fn origin(mut self, origin: u64) -> Self {
        self.origin = origin;
        self
    }

    /// When every value this write saves expires (`None`, the default: never). A save replaces
    /// the deadline its key had, as it replaces the value. Only a backend whose
    /// [`supports_expiry`](StorageBackend::supports_expiry) is `true` is handed a deadline.
    ///
    /// ```
    /// use persistent_map::{Deadline, WriteOptions};
    /// use std::time::Duration;
    ///
    /// let deadline = Deadline::after(Duration::from_secs(30));
    /// assert_eq!(WriteOptions::new().expires(Some(deadline)).deadline(), Some(deadline));
    /// ```
    #[must_use]
    pub fn expires(mut self, deadline: Option<Deadline>) -> Self {
        self.expires = deadline;
        self
    }

    /// When the values this write saves expire (`None`: never).
    pub fn deadline(&self) -> Option<Deadline> {
        self.expires
    }

    /// Whether previous values are asked for.
    pub fn wants_previous(&self) -> bool {
        self.want_previous
    }

    /// The id of the writing map (0: none given).
    pub fn origin_id(&self) -> u64 {
        self.origin
    }
}

/// A point in a backend's history of changes, from which
/// [`StorageBackend::changes_since`] tells what changed. Opaque to the map: only the backend
/// that made it gives it meaning.
///
/// ```
/// use persistent_map::ChangePosition;
///
/// let position = ChangePosition::new(7);
/// assert_eq!(position.get(), 7);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChangePosition(u128);

impl ChangePosition {
    /// A position with the backend's own encoding.
    pub fn new(position: u128) -> Self {
        Self(position)
    }

    /// The backend's encoding of the position.
    pub fn get(self) -> u128 {
        self.0
    }
}

/// One page of a scan in the order of the keys' text, as
/// [`StorageBackend::scan_page`] returns it.
///
/// ```
/// use persistent_map::ScanPage;
///
/// // Two live entries, and more to read after the key text "b".
/// let page: ScanPage<String, u32> =
///     ScanPage::new(vec![("a".into(), 1, None), ("b".into(), 2, None)], Some("b".into()));
/// assert_eq!(page.entries.len(), 2);
/// assert_eq!(page.resume_after.as_deref(), Some("b"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScanPage<K, V> {
    /// The live entries of the page, in the order of their key text, with their deadlines
    /// (`None`: never expires).
    // Spelled out rather than aliased, so that the docs show what each entry holds.
    #[allow(clippy::type_complexity)]
    pub entries: Vec<(K, V, Option<Deadline>)>,
    /// The key text to go on after, if the scan may have more (`None`: it is done). It may
    /// come after the last of `entries`: the rows read past it had expired.
    pub resume_after: Option<String>,
}

impl<K, V> ScanPage<K, V> {
    /// A page of `entries`, going on after the key text `resume_after` (`None`: the last page).
    #[allow(clippy::type_complexity)]
    pub fn new(entries: Vec<(K, V, Option<Deadline>)>, resume_after: Option<String>) -> Self {
        Self {
            entries,
            resume_after,
        }
    }
}

/// A trait for implementing storage backends for [`PersistentMap`](crate::PersistentMap).
///
/// A backend stores what the map holds in memory. The map calls it in a way that makes a simple
/// backend correct:
///
/// - Writes to one key are never concurrent: the map waits for a write of a key to resolve
///   before it hands the backend the next write of that key (unless the backend says it
///   applies writes in the order they are handed over: [`pipelines_writes`](Self::pipelines_writes)).
///   Writes to different keys may arrive concurrently (a backend that commits them together
///   gets group commit for free).
/// - `Ok` from `save`, `delete`, [`apply_batch`](Self::apply_batch) or
///   [`apply_checked`](Self::apply_checked) is the map's acknowledgement to its caller: return
///   it only once the write is as durable as the backend promises. `Err` must mean the write
///   was not done; the map then leaves its memory unchanged.
/// - Every write of the map goes through [`apply_checked`](Self::apply_checked) (but `clear`,
///   which calls [`clear`](Self::clear)), whose default calls `save`, `delete` or
///   `apply_batch`. How far the map's read-modify-writes are atomic (one process, or every
///   process and instance on the storage) is how far that method is: override it where storage
///   can check and write in one step.
/// - `load_all` (or [`load_each`](Self::load_each)) is called when the map opens and on
///   [`PersistentMap::load`](crate::PersistentMap::load), never concurrently with a write from
///   that map. A batch ([`apply_batch`](Self::apply_batch), [`clear`](Self::clear)) is likewise
///   never concurrent with another write of its keys.
///
/// The three required methods and `flush` have exactly the signatures of persistent-map 0.1.3,
/// so a backend written for it compiles unchanged. The other provided methods have defaults
/// built on the required ones; override them when the backend can do better.
///
/// # Examples
///
/// Implementing a custom backend:
///
/// ```
/// use persistent_map::{StorageBackend, PersistentError, Result};
/// use std::collections::HashMap;
/// use serde::{Serialize, de::DeserializeOwned};
/// use std::hash::Hash;
/// use std::sync::Mutex;
///
/// /// Keeps entries as JSON text, as a file-based backend would.
/// #[derive(Default)]
/// struct JsonLinesBackend {
///     rows: Mutex<HashMap<String, String>>,
/// }
///
/// #[async_trait::async_trait]
/// impl<K, V> StorageBackend<K, V> for JsonLinesBackend
/// where
///     K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
///     V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
/// {
///     async fn load_all(&self) -> Result<HashMap<K, V>, PersistentError> {
///         let rows = self.rows.lock().unwrap();
///         let mut map = HashMap::with_capacity(rows.len());
///         for (key, value) in rows.iter() {
///             map.insert(serde_json::from_str(key)?, serde_json::from_str(value)?);
///         }
///         Ok(map)
///     }
///
///     async fn save(&self, key: K, value: V) -> Result<(), PersistentError> {
///         let (key, value) = (serde_json::to_string(&key)?, serde_json::to_string(&value)?);
///         self.rows.lock().unwrap().insert(key, value);
///         Ok(())
///     }
///
///     async fn delete(&self, key: &K) -> Result<(), PersistentError> {
///         self.rows.lock().unwrap().remove(&serde_json::to_string(key)?);
///         Ok(())
///     }
/// }
///
/// # persistent_map::__private::run_example(Box::pin(async {
/// let map = persistent_map::PersistentMap::new(JsonLinesBackend::default()).await?;
/// map.insert("answer".to_string(), 42).await?;
/// assert_eq!(map.get(&"answer".to_string()), Some(42));
/// # Ok(()) }));
/// ```
#[async_trait::async_trait]
pub trait StorageBackend<K, V>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Load all key-value pairs from the storage backend.
    ///
    /// This method is called when initializing a `PersistentMap` to populate the in-memory map
    /// with existing data (through the default [`load_each`](Self::load_each)). A stored entry
    /// that cannot be decoded is an error; it must not be skipped or deleted.
    async fn load_all(&self) -> Result<HashMap<K, V>, PersistentError>;

    /// Save a key-value pair to the storage backend, replacing any value stored under `key`.
    ///
    /// This method is called whenever a key-value pair is inserted into the map. `Ok` means the
    /// pair is stored (durably, for a durable backend); `Err` means nothing was changed.
    async fn save(&self, key: K, value: V) -> Result<(), PersistentError>;

    /// Delete a key-value pair from the storage backend.
    ///
    /// This method is called whenever a key is removed from the map. Deleting a key that is not
    /// stored is not an error. `Err` means nothing was changed.
    async fn delete(&self, key: &K) -> Result<(), PersistentError>;

    /// Flush any buffered writes to the storage backend.
    ///
    /// This method is optional and has a default implementation that does nothing. Backends that
    /// buffer writes should override this method to ensure data is persisted.
    async fn flush(&self) -> Result<(), PersistentError> {
        Ok(())
    }

    /// Apply `ops` in order, ideally atomically: all of them or none.
    ///
    /// The map calls this for its batch operations; a key may appear more than once, and the
    /// last write of it wins. The default
    /// applies the writes one at a time with `save` and `delete`, which is not atomic: when a
    /// write fails after others succeeded it returns [`PersistentError::PartialBatch`] saying how
    /// many were applied, so the map can keep its memory equal to storage. A plain error (not
    /// `PartialBatch`) must mean that nothing was applied; backends with transactions override
    /// this method to make that always so.
    async fn apply_batch(&self, ops: &[BatchOp<K, V>]) -> Result<(), PersistentError> {
        for (applied, op) in ops.iter().enumerate() {
            let result = match op {
                BatchOp::Save(key, value) => self.save(key.clone(), value.clone()).await,
                BatchOp::Delete(key) => self.delete(key).await,
            };
            if let Err(error) = result {
                return Err(match applied {
                    0 => error,
                    _ => PersistentError::PartialBatch {
                        applied,
                        source: Box::new(error),
                    },
                });
            }
        }
        Ok(())
    }

    /// Hand every stored entry to `sink`, one at a time.
    ///
    /// The map loads through this method so that a large store need not be held twice (once in
    /// a `HashMap`, once in the map) while it opens. The default calls `load_all`; backends that
    /// can stream rows override it.
    async fn load_each(&self, sink: &mut (dyn FnMut(K, V) + Send)) -> Result<(), PersistentError> {
        for (key, value) in self.load_all().await? {
            sink(key, value);
        }
        Ok(())
    }

    /// About how many entries are stored, if the backend can tell cheaply; `None` if not.
    ///
    /// The map sizes its table with it before loading, instead of growing (and rehashing
    /// everything) many times on the way. The default says nothing.
    async fn len_hint(&self) -> Option<usize> {
        None
    }

    /// Remove every stored entry, atomically if the backend can.
    ///
    /// The default loads every key and deletes them with one [`apply_batch`](Self::apply_batch);
    /// backends override it with something cheaper (SQLite: one `DELETE`).
    async fn clear(&self) -> Result<(), PersistentError> {
        let ops: Vec<BatchOp<K, V>> = self
            .load_all()
            .await?
            .into_keys()
            .map(BatchOp::Delete)
            .collect();
        self.apply_batch(&ops).await
    }

    /// Load the entries stored under `keys`; a key that is not stored is left out.
    ///
    /// The map calls this to catch up with [`ExternalChanges::Keys`]. The default loads
    /// everything and keeps the asked-for keys; backends that can look keys up override it.
    async fn load_keys(&self, keys: &[K]) -> Result<HashMap<K, V>, PersistentError> {
        let mut all = self.load_all().await?;
        Ok(keys
            .iter()
            .filter_map(|key| all.remove_entry(key))
            .collect())
    }

    /// What others (another process, another instance) changed in storage since this backend
    /// last loaded; called by [`PersistentMap::refresh`](crate::PersistentMap::refresh).
    ///
    /// The default, [`ExternalChanges::Unknown`], makes every refresh a full reload, which is
    /// always correct. A backend that can tell cheaply that nothing changed (SQLite's
    /// `PRAGMA data_version`) or which keys changed (PostgreSQL's `NOTIFY`) overrides it.
    async fn external_changes(&self) -> Result<ExternalChanges<K>, PersistentError> {
        Ok(ExternalChanges::Unknown)
    }

    /// Resolves when the backend learns that storage may have changed under it, so that a
    /// background refresh ([`PersistentMap::refresh_every`](crate::PersistentMap::refresh_every))
    /// can act at once instead of at its next tick.
    ///
    /// The default never resolves: the refresh runs on its interval only. It must be cancel
    /// safe: the map drops it when the interval fires first.
    async fn external_change_signal(&self) {
        std::future::pending::<()>().await;
    }

    /// Applies `ops` in order, all or nothing, only if every condition holds when they are
    /// applied; the check and the writes are one atomic step. With
    /// [`want_previous`](WriteOptions::want_previous), also says what each write's key held just
    /// before it.
    ///
    /// Every write of the map goes through here: [`insert`](crate::PersistentMap::insert) and
    /// [`remove`](crate::PersistentMap::remove) ask for the previous value, and
    /// [`update`](crate::PersistentMap::update), [`get_or_insert_with`](crate::PersistentMap::get_or_insert_with)
    /// and [`compare_exchange`](crate::PersistentMap::compare_exchange) state what they read as
    /// conditions. So what a backend's check is atomic against is what those are atomic against:
    /// the SQLite backend checks and writes in one `IMMEDIATE` transaction (atomic against every
    /// process on the file), the in-memory backend under its lock.
    ///
    /// A condition holds when storage holds what the expected JSON means: compare the stored
    /// value as `V` would write it (decode it, encode it again), not the stored text byte for
    /// byte, so that a row written before a `#[serde(default)]` field was added satisfies a
    /// condition built from the value it decodes to. (The default does.) On a conflict, say
    /// what is stored under each condition's key as read in the same atomic step
    /// ([`Checked::ConflictWithDeadlines`] where deadlines are stored), so that the map settles
    /// from that one read.
    ///
    /// The default reads the conditions' keys with [`load_keys`](Self::load_keys), compares, and
    /// then writes with `save`, `delete` or `apply_batch`: atomic only against the writes of
    /// maps in this process (which hold the keys' locks meanwhile), not against another process
    /// writing the same storage, and it does not report previous values (`previous: None`).
    /// Override it where storage can check and write in one step.
    async fn apply_checked(
        &self,
        conditions: &[Condition<K>],
        ops: &[BatchOp<K, V>],
        options: WriteOptions,
    ) -> Result<Checked<V>, PersistentError> {
        let _ = options;
        if !conditions.is_empty() {
            let keys: Vec<K> = conditions.iter().map(|c| c.key.clone()).collect();
            let stored = self.load_keys(&keys).await?;
            let mut current = Vec::with_capacity(conditions.len());
            let mut holds = true;
            for condition in conditions {
                let value = stored.get(&condition.key);
                let json = value
                    .map(crate::backends::encode::encode_value)
                    .transpose()?;
                holds &= crate::backends::encode::same_json(
                    json.as_deref(),
                    condition.expected.as_deref(),
                );
                current.push(
                    value
                        .cloned()
                        .zip(json)
                        .map(|(value, json)| Stored { value, json }),
                );
            }
            if !holds {
                return Ok(Checked::Conflict { current });
            }
        }
        match ops {
            [] => {}
            [BatchOp::Save(key, value)] => self.save(key.clone(), value.clone()).await?,
            [BatchOp::Delete(key)] => self.delete(key).await?,
            ops => self.apply_batch(ops).await?,
        }
        Ok(Checked::Applied { previous: None })
    }

    /// Whether writes handed to this backend are applied in the order their futures were
    /// first polled, each future handing its write over on that first poll (as the SQLite
    /// backend's do: they queue on the file's writer thread, which commits in queue order).
    ///
    /// If so, the map lets the next write of a key go to the backend before the previous one
    /// of that key has committed, so that writes of a hot key share commits; it still applies
    /// them to memory in that order, and a write computed from a value that then failed to
    /// commit is refused by its condition and computed again. The default, `false`, makes each
    /// write of a key wait until the previous one is done, which is always correct.
    fn pipelines_writes(&self) -> bool {
        false
    }

    /// A name for the storage and table this backend writes, equal for every backend on that
    /// same table in this process, or `None` (the default) if the backend cannot tell.
    ///
    /// Maps opened in one process on backends with the same name (and the same key and value
    /// types) share one in-memory map: each sees the others' writes at once. The SQLite backend
    /// names the file's canonical path and the table; the in-memory backend its store.
    fn storage_id(&self) -> Option<String> {
        None
    }

    /// Where the backend's history of changes stands now, to pass to
    /// [`changes_since`](Self::changes_since) later; `None` (the default) if it keeps none.
    ///
    /// The map asks before it loads, so anything committed during the load is reported again
    /// later rather than missed.
    async fn change_position(&self) -> Result<Option<ChangePosition>, PersistentError> {
        Ok(None)
    }

    /// What others (another process, another instance, another map on the same table) changed
    /// in storage after `since`, and the position to ask from next time. Writes made with
    /// `origin` (the asking map's id, as given in [`WriteOptions::origin`]) are its own and
    /// need not be reported.
    ///
    /// The map keeps the position and replaces it only once it has applied the changes, so a
    /// refresh that fails or is cancelled part-way is simply asked again: this method must not
    /// forget anything it reported. A `since` the backend can no longer answer for (too old,
    /// or `None`) is [`ExternalChanges::Unknown`].
    ///
    /// A backend that can read what the changed keys hold in the same step (one snapshot with
    /// the position it returns) answers [`ExternalChanges::Entries`], which spares the map a
    /// second read; otherwise [`ExternalChanges::Keys`], and the map reads them.
    ///
    /// The default asks [`external_changes`](Self::external_changes) and keeps no position,
    /// which is only as cancellation-safe as that method is.
    async fn changes_since(
        &self,
        since: Option<ChangePosition>,
        origin: u64,
    ) -> Result<(ExternalChanges<K, V>, Option<ChangePosition>), PersistentError> {
        let _ = (since, origin);
        Ok((self.external_changes().await?.without_values(), None))
    }

    /// [`changes_since`](Self::changes_since), answered from what the backend has already heard
    /// (without I/O), or `None` (the default) when it cannot answer that way.
    ///
    /// A map's background refresh ([`PersistentMap::refresh_every`](crate::PersistentMap::refresh_every))
    /// asks this first when [`external_change_signal`](Self::external_change_signal) woke it:
    /// a backend whose announcements carry the changes themselves (the PostgreSQL backend's,
    /// when they fit in a notification) answers with them, and the map applies them without a
    /// round trip. The answer need not include changes not heard yet (their announcements will
    /// wake the map again), but must be what `changes_since` would have said up to the position
    /// it returns. An explicit [`refresh`](crate::PersistentMap::refresh) never asks it: it
    /// must see every write acknowledged before it was called, heard or not.
    fn changes_heard(
        &self,
        since: Option<ChangePosition>,
        origin: u64,
    ) -> Option<(ExternalChanges<K, V>, Option<ChangePosition>)> {
        let _ = (since, origin);
        None
    }

    /// Whether this backend stores deadlines ([`WriteOptions::deadline`]), so that a map on it
    /// can hold entries with a time to live; the default is `false`.
    ///
    /// A backend that says `true` must: store each save's deadline with its value (clearing it
    /// when the save has none); treat a stored entry whose deadline has passed on its own clock
    /// as absent in everything it reads (conditions, previous values, loads, `load_keys`); and
    /// implement [`load_each_expiring`](Self::load_each_expiring),
    /// [`load_keys_expiring`](Self::load_keys_expiring) and
    /// [`sweep_expired`](Self::sweep_expired). The SQLite, PostgreSQL and in-memory backends
    /// do; the CSV backend does not yet. On a backend that says `false`, a write with a
    /// time to live fails with [`PersistentError::ExpiryUnsupported`] before anything is
    /// written, so memory never holds a deadline that storage would forget.
    fn supports_expiry(&self) -> bool {
        false
    }

    /// [`load_each`](Self::load_each) with each entry's deadline; entries already expired are
    /// left out. The default hands out every entry of `load_each` with no deadline.
    async fn load_each_expiring(
        &self,
        sink: &mut (dyn FnMut(K, V, Option<Deadline>) + Send),
    ) -> Result<(), PersistentError> {
        self.load_each(&mut |key, value| sink(key, value, None))
            .await
    }

    /// [`load_keys`](Self::load_keys) with each entry's deadline; entries already expired are
    /// left out. The default is `load_keys` with no deadlines.
    async fn load_keys_expiring(
        &self,
        keys: &[K],
    ) -> Result<HashMap<K, (V, Option<Deadline>)>, PersistentError> {
        Ok(self
            .load_keys(keys)
            .await?
            .into_iter()
            .map(|(key, value)| (key, (value, None)))
            .collect())
    }

    /// Deletes up to `limit` stored entries whose deadline has passed, in one atomic step, and
    /// returns their keys; `origin` is the sweeping map's id, as in [`WriteOptions::origin`].
    ///
    /// The map calls it in the background (and from
    /// [`PersistentMap::sweep_expired`](crate::PersistentMap::sweep_expired)) until it returns
    /// no keys, one call at a time per map, so a backend should keep each call short: other
    /// writes wait for it. It may return fewer than `limit` keys while more have expired (to
    /// stop a transaction early and let queued writes through); it is called again. The default deletes nothing: without [`supports_expiry`](Self::supports_expiry)
    /// nothing is stored with a deadline.
    async fn sweep_expired(&self, limit: usize, origin: u64) -> Result<Vec<K>, PersistentError> {
        let _ = (limit, origin);
        Ok(Vec::new())
    }

    /// Up to `limit` live entries whose key text (`to_string()`, the text the SQLite and
    /// PostgreSQL backends store) starts with `prefix`, in the byte order of that text, after
    /// the key text `after` (from the first, when `None`); and where to go on from. A scan
    /// ([`PersistentMap::scan`](crate::PersistentMap::scan),
    /// [`CachedMap::scan`](crate::CachedMap::scan)) asks for one page after another, so the
    /// table is never held in memory at once.
    ///
    /// Each page is read on its own: a key stored throughout the scan is visited once, in its
    /// place in the order; one written or removed meanwhile may or may not be.
    ///
    /// The default loads every entry ([`load_each_expiring`](Self::load_each_expiring)), keeps
    /// those of the page and sorts them: correct, and as slow as a full load per page. The
    /// SQLite backend reads one page through the primary key's index, on a read-only
    /// connection of its own.
    async fn scan_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage<K, V>, PersistentError>
    where
        K: ToString,
    {
        let limit = limit.max(1);
        let mut rows = Vec::new();
        self.load_each_expiring(&mut |key, value, deadline| {
            let text = key.to_string();
            if text.starts_with(prefix) && after.is_none_or(|after| text.as_str() > after) {
                rows.push((text, (key, value, deadline)));
            }
        })
        .await?;
        rows.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        let resume_after = (rows.len() > limit).then(|| rows[limit - 1].0.clone());
        rows.truncate(limit);
        let entries = rows.into_iter().map(|(_, entry)| entry).collect();
        Ok(ScanPage::new(entries, resume_after))
    }

    /// How many live entries are stored, counted in storage.
    ///
    /// [`CachedMap::len`](crate::CachedMap::len) asks this (its memory holds only some). The
    /// default counts what [`load_each_expiring`](Self::load_each_expiring) hands out; the
    /// SQLite backend runs one `SELECT count(*)` on a read-only connection of its own.
    async fn count_live(&self) -> Result<usize, PersistentError> {
        let mut count = 0;
        self.load_each_expiring(&mut |_, _, _| count += 1).await?;
        Ok(count)
    }

    /// Where the map's writes go, for this crate's own backends. Not public API: a custom
    /// backend keeps the default, and the map writes through [`apply_checked`](Self::apply_checked).
    #[doc(hidden)]
    fn __transaction_target(&self) -> Option<crate::__private::TransactionTarget<K, V>> {
        None
    }
}
