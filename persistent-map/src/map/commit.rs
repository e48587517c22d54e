//! The write path: every write of a map, of every kind, goes this one way.
//!
//! ```text
//! insert, remove, update, compare_exchange, entry, get_or_insert_with, insert_many,
//! remove_many, retain, clear, transaction, expire, persist
//!   └─ a Write per map: conditions (key, the stored text expected) and ops (save with its own
//!      deadline, delete, clear), taken in the keys' turns
//!        └─ commit(parts)          hands every part to the storage in one call (one SQLite or
//!             │                    PostgreSQL transaction, the in-memory store's lock, or a
//!             │                    custom backend's `apply_checked`), all or nothing
//!             └─ Shared::settle    applies storage's answer to memory and subscribers, in
//!                                  the keys' commit order
//! ```
//!
//! - **Turns.** A write takes the turns of its keys before it is handed over (see
//!   `key_locks.rs`). A single write of one key on a backend that applies writes in the order
//!   they are handed over (`pipelines_writes`) holds its key's stripe only until the storage has
//!   it and settles in its ticket's turn, so a hot key's writes share commits; every other
//!   write holds its turns until it has settled. Either way memory takes a key's writes in the
//!   order storage committed them.
//! - **Conflicts.** A condition that does not hold writes nothing, anywhere. Storage answers
//!   with what it holds under each condition's key, value text and deadline from the same read
//!   (inside the transaction that checked); memory takes exactly that, and a read-modify-write
//!   computes its next attempt from it (that value and that text; when writes pipeline, once the
//!   writes of its key's stripe in flight when it conflicted have settled, memory's value or
//!   the writes of the key handed over since, as a first attempt would).
//!   Nothing is re-read around writes in flight. Storage compares a condition with what a value means (an old
//!   row that lacks a `#[serde(default)]` field, or has another key order, matches the value it
//!   decodes to), so an old row's spelling never refuses a write.
//! - **Bounded.** A read-modify-write that keeps conflicting gives up after [`MAX_ATTEMPTS`]
//!   attempts with [`PersistentError::KeepsChanging`], naming the table and the key.
//! - **To completion.** Once a write is handed over it runs to completion even if its caller
//!   stops waiting (`completion.rs`), so memory and storage cannot drift apart.
//!
//! The sweep of expired rows has its own backend call (`sweep_expired`) and settles through the
//! same [`Shared::settle`]; a refresh applies what storage holds, never a write of its own.

use crate::{MapKey, MapValue};
use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use serde::de::DeserializeOwned;

use super::shared::Settled;
use super::PersistentMap;
use crate::completion::run_to_completion;
use crate::key_locks::{KeyGuard, Ticket};
use crate::{
    BatchOp, Checked, Condition, Deadline, PersistentError, Result, StorageBackend, WriteOptions,
};

/// Attempts a read-modify-write (an update, a transaction's body) makes before it gives up.
/// A fleet's hot key makes a few updates lose the race dozens of times in a row (3 PostgreSQL
/// instances x 8 tasks on one key exhausted 100); a thousand still ends a true spin (a
/// condition that can never hold) within about a second.
pub(super) const MAX_ATTEMPTS: usize = 1_000;

/// One map's share of a write: committed only if every condition holds, all its ops or none.
pub(crate) struct Write<K, V> {
    /// What storage must hold under some keys (their JSON text, or nothing).
    pub(crate) conditions: Vec<Condition<K>>,
    pub(crate) ops: Vec<Op<K, V>>,
    /// Report what each op's key held just before it.
    pub(crate) want_previous: bool,
    /// What subscribers hear of it.
    pub(crate) kind: Kind,
}

/// What a [`Write`] means to subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Saves are [`Change::Inserted`](crate::Change::Inserted), deletes
    /// [`Change::Removed`](crate::Change::Removed).
    Plain,
    /// Only the deadline of the saved values changes (`expire`, `persist`):
    /// [`Change::DeadlineChanged`](crate::Change::DeadlineChanged).
    DeadlineOnly,
    /// Deletes of rows the sweep found expired: each key leaves memory only if its entry there
    /// has expired too, as [`Change::Expired`](crate::Change::Expired).
    Sweep,
}

/// One op of a [`Write`].
#[derive(Debug, Clone)]
pub(crate) enum Op<K, V> {
    /// Store `value` under `key`, expiring at `deadline` (`None`: never), replacing the key's
    /// value and deadline.
    Save {
        key: K,
        value: V,
        deadline: Option<Deadline>,
    },
    Delete(K),
    /// Remove every entry.
    Clear,
}

impl<K, V> Op<K, V> {
    pub(crate) fn key(&self) -> Option<&K> {
        match self {
            Op::Save { key, .. } | Op::Delete(key) => Some(key),
            Op::Clear => None,
        }
    }

    fn deadline(&self) -> Option<Deadline> {
        match self {
            Op::Save { deadline, .. } => *deadline,
            _ => None,
        }
    }
}

impl<K, V> Write<K, V> {
    pub(crate) fn new(conditions: Vec<Condition<K>>, ops: Vec<Op<K, V>>) -> Self {
        Self {
            conditions,
            ops,
            want_previous: false,
            kind: Kind::Plain,
        }
    }

    /// The write's keys: its conditions' and its ops'.
    pub(super) fn keys(&self) -> impl Iterator<Item = &K> {
        let written = self.ops.iter().filter_map(Op::key);
        self.conditions.iter().map(|c| &c.key).chain(written)
    }

    fn clears(&self) -> bool {
        self.ops.iter().any(|op| matches!(op, Op::Clear))
    }
}

impl<K: Clone, V: Clone> Write<K, V> {
    /// The write a backend's own [`apply_checked`](StorageBackend::apply_checked) is asked for.
    pub(crate) fn from_batch(
        conditions: &[Condition<K>],
        ops: &[BatchOp<K, V>],
        options: WriteOptions,
    ) -> Self {
        let deadline = options.deadline();
        let ops = ops
            .iter()
            .map(|op| match op {
                BatchOp::Save(key, value) => Op::Save {
                    key: key.clone(),
                    value: value.clone(),
                    deadline,
                },
                BatchOp::Delete(key) => Op::Delete(key.clone()),
            })
            .collect();
        let mut write = Self::new(conditions.to_vec(), ops);
        write.want_previous = options.wants_previous();
        write
    }
}

/// What storage did with one map's share of a write: the SQL backends' answer.
#[derive(Debug)]
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) enum Answer {
    /// Every condition of every part held and every op was applied. With `want_previous`: per
    /// op, the JSON text its key held just before it.
    Applied {
        previous: Option<Vec<Option<String>>>,
    },
    /// A condition of some part did not hold and nothing was written. Per condition of this
    /// part, what storage holds under its key: its JSON text and deadline, read together.
    Conflict {
        current: Vec<Option<(String, Option<Deadline>)>>,
    },
}

#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
impl Answer {
    /// The answer as a backend's own [`apply_checked`](StorageBackend::apply_checked) gives it:
    /// a conflict's values decoded (an error names `table` and the key), with their deadlines.
    pub(crate) fn into_checked<K: ToString, V: DeserializeOwned>(
        self,
        table: &str,
        conditions: &[Condition<K>],
    ) -> Result<Checked<V>> {
        Ok(match self {
            Answer::Applied { previous } => Checked::Applied { previous },
            Answer::Conflict { current } => Checked::ConflictWithDeadlines {
                current: conditions
                    .iter()
                    .zip(current)
                    .map(|(condition, now)| {
                        now.map(|(json, deadline)| {
                            let key = condition.key.to_string();
                            let value = crate::backends::decode::decode_value(table, &key, &json)?;
                            Ok((crate::Stored { value, json }, deadline))
                        })
                        .transpose()
                    })
                    .collect::<Result<_>>()?,
            },
        })
    }
}

/// Where a map's writes go, and how to make its share of a write ready for it: made once per
/// handle from its backend. Not public API (the name is kept for `__private`).
#[doc(hidden)]
pub struct TransactionTarget<K, V> {
    pub(crate) store: Store,
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

/// Makes a map's [`Write`] (with the writing map's id) ready for its store.
pub(crate) type PrepareFn<K, V> = dyn Fn(&Write<K, V>, u64) -> Result<Prepared> + Send + Sync;

/// The storage a write commits to; the parts of one write must all have the same.
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
    /// A backend of the crate's user, one map at a time (its address tells two apart).
    Custom(usize),
}

/// One map's share of a write, ready for its store.
pub(crate) enum Prepared {
    #[cfg(feature = "sqlite")]
    Sqlite(crate::sqlite::TransactionPart),
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::TransactionPart),
    InMemory(Box<dyn InMemoryPart>),
    Custom(Pin<Box<dyn Future<Output = Result<Answer>> + Send>>),
}

/// A map's share of a write on the in-memory backend, checked and applied under the store's
/// lock.
pub(crate) trait InMemoryPart: Send {
    /// What is stored under each condition's key (JSON text and deadline), and whether every
    /// condition holds.
    fn check(&self, stores: &mut crate::in_memory::Stores) -> Result<(Current, bool)>;
    /// Applies the ops; with `want_previous`, what each op's key held before it.
    fn apply(
        &self,
        stores: &mut crate::in_memory::Stores,
        want_previous: bool,
    ) -> Result<Option<Vec<Option<String>>>>;
}

/// What storage holds under each condition's key: JSON text and deadline.
pub(crate) type Current = Vec<Option<(String, Option<Deadline>)>>;

impl Store {
    fn same(&self, other: &Store) -> bool {
        match (self, other) {
            #[cfg(feature = "sqlite")]
            (Store::Sqlite(a, _), Store::Sqlite(b, _)) => Arc::ptr_eq(a, b),
            #[cfg(feature = "postgres")]
            (Store::Postgres(a), Store::Postgres(b)) => a.same(b),
            (Store::InMemory(a), Store::InMemory(b)) => Arc::ptr_eq(a, b),
            (Store::Custom(a), Store::Custom(b)) => a == b,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The store of every part (all the same), committing at the strongest durability any of
    /// them asks for.
    fn strongest<'a>(mut stores: impl Iterator<Item = &'a Store>) -> Store {
        let first = stores.next().expect("a write has parts").clone();
        stores.fold(first, |kept, next| match (kept, next) {
            #[cfg(feature = "sqlite")]
            (Store::Sqlite(writer, a), Store::Sqlite(_, b)) => Store::Sqlite(writer, a.max(*b)),
            (kept, _) => kept,
        })
    }

    fn describe(&self) -> String {
        match self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(writer, _) => format!("SQLite file {}", writer.path().display()),
            #[cfg(feature = "postgres")]
            Store::Postgres(session) => session.describe(),
            Store::InMemory(stores) => format!("in-memory store {:p}", Arc::as_ptr(stores)),
            Store::Custom(address) => format!("custom backend {address:#x}"),
        }
    }

    /// Hands every part to the storage in one call; what it did with each.
    async fn commit(&self, parts: Vec<Prepared>, want_previous: bool) -> Result<Vec<Answer>> {
        // The parts of one write are all of its store's kind (checked before they were
        // prepared); with one storage feature, the other arms are gone.
        macro_rules! of_kind {
            ($variant:path) => {
                parts
                    .into_iter()
                    .map(|part| match part {
                        $variant(part) => part,
                        #[allow(unreachable_patterns)]
                        _ => unreachable!("parts of one store are of one kind"),
                    })
                    .collect::<Vec<_>>()
            };
        }
        match self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(writer, durability) => {
                let parts = of_kind!(Prepared::Sqlite);
                writer.commit(parts, *durability, want_previous).await
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(session) => {
                session
                    .commit(of_kind!(Prepared::Postgres), want_previous)
                    .await
            }
            Store::InMemory(stores) => {
                commit_in_memory(stores, &of_kind!(Prepared::InMemory), want_previous)
            }
            Store::Custom(_) => {
                let mut answers = Vec::with_capacity(1);
                for write in of_kind!(Prepared::Custom) {
                    answers.push(write.await?);
                }
                Ok(answers)
            }
        }
    }
}

/// Checks every part's conditions, then applies every part, under the store's lock.
fn commit_in_memory(
    stores: &Mutex<crate::in_memory::Stores>,
    parts: &[Box<dyn InMemoryPart>],
    want_previous: bool,
) -> Result<Vec<Answer>> {
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
        return Ok(current
            .into_iter()
            .map(|current| Answer::Conflict { current })
            .collect());
    }
    parts
        .iter()
        .map(|part| {
            let previous = part.apply(&mut stores, want_previous)?;
            Ok(Answer::Applied { previous })
        })
        .collect()
}

/// The target of a custom backend: each write goes to its
/// [`apply_checked`](StorageBackend::apply_checked) (or its `clear`), alone.
pub(super) fn custom_target<K, V, B>(backend: &Arc<B>) -> TransactionTarget<K, V>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    let address = Arc::as_ptr(backend) as *const () as usize;
    let backend = Arc::clone(backend);
    TransactionTarget {
        store: Store::Custom(address),
        name: backend
            .storage_id()
            .unwrap_or_else(|| std::any::type_name::<B>().to_owned()),
        prepare: Box::new(move |write: &Write<K, V>, origin| {
            let backend = Arc::clone(&backend);
            let conditions = write.conditions.clone();
            let clear = write.clears();
            let deadline = write.ops.iter().find_map(Op::deadline);
            if write
                .ops
                .iter()
                .any(|op| op.deadline() != deadline && op.key().is_some())
            {
                return Err(PersistentError::Backend(
                    "a custom backend takes one deadline per write, and this write's values \
                     have several; nothing was written"
                        .into(),
                ));
            }
            let ops: Vec<BatchOp<K, V>> = write
                .ops
                .iter()
                .filter_map(|op| match op {
                    Op::Save { key, value, .. } => Some(BatchOp::Save(key.clone(), value.clone())),
                    Op::Delete(key) => Some(BatchOp::Delete(key.clone())),
                    Op::Clear => None,
                })
                .collect();
            let options = WriteOptions::new()
                .want_previous(write.want_previous)
                .origin(origin)
                .expires(deadline);
            Ok(Prepared::Custom(Box::pin(async move {
                if clear {
                    backend.clear().await?;
                    return Ok(Answer::Applied { previous: None });
                }
                let checked = backend.apply_checked(&conditions, &ops, options).await?;
                answer_of(&*backend, &conditions, checked).await
            })))
        }),
    }
}

/// A custom backend's [`Checked`] as an [`Answer`]. A conflict that came without deadlines,
/// from a backend that stores them, is read again with them: value and deadline from that one
/// read (the map holds the keys' turns, and custom backends never pipeline).
async fn answer_of<K, V, B>(
    backend: &B,
    conditions: &[Condition<K>],
    checked: Checked<V>,
) -> Result<Answer>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + ?Sized,
{
    let encode = crate::backends::encode::encode_value;
    Ok(match checked {
        Checked::Applied { previous } => Answer::Applied { previous },
        Checked::ConflictWithDeadlines { current } => Answer::Conflict {
            current: current
                .into_iter()
                .map(|now| now.map(|(stored, deadline)| (stored.json, deadline)))
                .collect(),
        },
        Checked::Conflict { .. } if backend.supports_expiry() => {
            let keys: Vec<K> = conditions.iter().map(|c| c.key.clone()).collect();
            let mut read = backend.load_keys_expiring(&keys).await?;
            let current = keys
                .iter()
                .map(|key| {
                    read.remove(key)
                        .map(|(value, deadline)| Ok((encode(&value)?, deadline)))
                        .transpose()
                })
                .collect::<Result<_>>()?;
            Answer::Conflict { current }
        }
        Checked::Conflict { current } => Answer::Conflict {
            current: current
                .into_iter()
                .map(|now| now.map(|stored| (stored.json, None)))
                .collect(),
        },
        #[allow(unreachable_patterns)]
        _ => {
            return Err(PersistentError::Backend(
                "the backend answered a write in a way this version does not know".into(),
            ))
        }
    })
}

/// A write's turns: how it waits for the writes of its keys before and after it.
pub(super) enum Turn {
    /// The keys' stripes, held until the write has settled (then dropped with the write).
    Exclusive(#[allow(dead_code)] KeyGuard),
    /// A pipelined write of one key: the stripe until the storage has the write, then the
    /// ticket's turn to settle.
    Pipelined {
        handover: Option<KeyGuard>,
        ticket: Option<Ticket>,
    },
}

/// One map's share of a write, with the map and its turns, once committed: how it settled.
pub(super) struct MapWrite<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    map: PersistentMap<K, V, B>,
    pub(super) write: Write<K, V>,
    turn: Turn,
    /// What memory took, once settled.
    pub(super) settled: Option<Result<Settled<V>>>,
    /// For a pipelined write, the tickets of its stripe handed out when it settled: those
    /// after it among them built on what it meant to leave.
    issued_when_settled: u64,
}

/// A [`MapWrite`] with its types erased, so that one write holds maps of any types.
pub(super) trait Part: Send {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn store(&self) -> &Store;
    fn prepare(&self) -> Result<Prepared>;
    /// The storage has the write: a pipelined write lets its key's next write go.
    fn handed_over(&mut self);
    /// Applies what storage did (or the error that stopped it) to memory, in the write's turn.
    fn settle(&mut self, answer: Result<Answer>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// Whether it settled as a conflict.
    fn conflicted(&self) -> bool;
    /// Why it was refused, if it was (taken, once).
    fn take_error(&mut self) -> Option<PersistentError>;
    fn want_previous(&self) -> bool;
    fn has_conditions(&self) -> bool;
    /// The map's table (or store), as errors name it.
    fn name(&self) -> &str;
}

impl<K, V, B> MapWrite<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    pub(super) fn new(map: &PersistentMap<K, V, B>, write: Write<K, V>, turn: Turn) -> Self {
        Self {
            map: map.clone(),
            write,
            turn,
            settled: None,
            issued_when_settled: 0,
        }
    }

    /// The key of a pipelined write, and its ticket's number.
    fn pipelined(&self) -> Option<(&K, u64)> {
        match &self.turn {
            Turn::Pipelined {
                ticket: Some(ticket),
                ..
            } => Some((self.write.keys().next()?, ticket.number())),
            _ => None,
        }
    }
}

impl<K, V, B> Part for MapWrite<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn store(&self) -> &Store {
        &self.map.target.store
    }

    fn prepare(&self) -> Result<Prepared> {
        self.map.check_deadlines(&self.write)?;
        (self.map.target.prepare)(&self.write, self.map.shared.id)
    }

    fn handed_over(&mut self) {
        if let Turn::Pipelined { handover, .. } = &mut self.turn {
            drop(handover.take());
        }
    }

    fn settle(&mut self, answer: Result<Answer>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if let Turn::Pipelined {
                ticket: Some(ticket),
                ..
            } = &self.turn
            {
                ticket.turn().await;
            }
            let shared = &self.map.shared;
            let pipelined = self.pipelined().map(|(key, number)| (key.clone(), number));
            let write = std::mem::replace(&mut self.write, Write::new(Vec::new(), Vec::new()));
            let settled = match answer {
                Ok(answer) => shared.settle(write, answer, &self.map.target.name),
                Err(PersistentError::PartialBatch { applied, source }) => {
                    Err(super::batch::undo_partial_batch(
                        shared,
                        &*self.map.backend,
                        write.ops,
                        applied,
                        *source,
                    )
                    .await)
                }
                Err(error) => Err(error),
            };
            if let Some((key, number)) = pipelined {
                let stored = matches!(settled, Ok(Settled::Applied { .. }));
                shared.unpend(&key, number, stored);
            }
            if let Turn::Pipelined { ticket, .. } = &mut self.turn
                && let Some(ticket) = ticket.take()
            {
                self.issued_when_settled = ticket.finish();
            }
            self.settled = Some(settled);
        })
    }

    fn conflicted(&self) -> bool {
        matches!(self.settled, Some(Ok(Settled::Conflict(_))))
    }

    fn take_error(&mut self) -> Option<PersistentError> {
        match self.settled.take() {
            Some(Err(error)) => Some(error),
            settled => {
                self.settled = settled;
                None
            }
        }
    }

    fn want_previous(&self) -> bool {
        self.write.want_previous
    }

    fn has_conditions(&self) -> bool {
        !self.write.conditions.is_empty()
    }

    fn name(&self) -> &str {
        &self.map.target.name
    }
}

/// Commits `parts` (one per map, of one store) as one write, and settles each in memory; hands
/// them back, each holding how it settled. Fails before anything is written if the parts'
/// stores differ or a part cannot be prepared (its values do not encode, say). Runs to
/// completion once handed over, even if the caller stops waiting.
///
/// An error that stops the whole write goes to the part itself when there is one (its
/// [`MapWrite::settled`]); with several, each part hears its words and the error is returned.
pub(super) async fn commit(parts: Vec<Box<dyn Part>>) -> (Vec<Box<dyn Part>>, Result<()>) {
    // Whole, from the first poll: a pipelined part's pending value and ticket must be let go by
    // its settling, refused or not.
    run_to_completion(commit_whole(parts)).await
}

async fn commit_whole(mut parts: Vec<Box<dyn Part>>) -> (Vec<Box<dyn Part>>, Result<()>) {
    let mixed = parts
        .iter()
        .find(|part| !part.store().same(parts[0].store()))
        .map(|other| PersistentError::MixedStorage {
            first: parts[0].store().describe(),
            second: other.store().describe(),
        });
    if let Some(mixed) = mixed {
        let failed = fail(&mut parts, mixed).await;
        return (parts, failed);
    }
    let prepared = parts
        .iter()
        .map(|part| part.prepare())
        .collect::<Result<Vec<_>>>();
    let prepared = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            let failed = fail(&mut parts, error).await;
            return (parts, failed);
        }
    };
    let store = Store::strongest(parts.iter().map(|part| part.store()));
    let want_previous = parts.iter().any(|part| part.want_previous());
    let answers = {
        let mut call = std::pin::pin!(store.commit(prepared, want_previous));
        // The first poll hands the write over (for stores that pipeline, in the stripes'
        // order); then the keys' next writes may go.
        let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        parts.iter_mut().for_each(|part| part.handed_over());
        match first {
            Poll::Ready(answers) => answers,
            Poll::Pending => call.await,
        }
    };
    let unconditional = !parts.iter().any(|part| part.has_conditions());
    let outcome = match answers {
        Ok(answers)
            if unconditional && answers.iter().any(|a| matches!(a, Answer::Conflict { .. })) =>
        {
            let error = PersistentError::Backend(
                format!(
                    "the storage of {:?} answered a write without conditions with a conflict; \
                     memory was left as it was",
                    parts[0].name()
                )
                .into(),
            );
            fail(&mut parts, error).await
        }
        Ok(answers) if answers.len() == parts.len() => {
            for (part, answer) in parts.iter_mut().zip(answers) {
                part.settle(Ok(answer)).await;
            }
            Ok(())
        }
        Ok(_) => {
            let error = PersistentError::Backend(
                "the storage answered a write with the wrong number of parts".into(),
            );
            fail(&mut parts, error).await
        }
        Err(error) => fail(&mut parts, error).await,
    };
    (parts, outcome)
}

/// Settles every part as refused by `error` (nothing was written), letting their turns go: a
/// lone part takes the error itself.
async fn fail(parts: &mut [Box<dyn Part>], error: PersistentError) -> Result<()> {
    if let [part] = parts {
        part.handed_over();
        part.settle(Err(error)).await;
        return Ok(());
    }
    for part in parts.iter_mut() {
        part.handed_over();
        part.settle(Err(PersistentError::Backend(error.to_string().into())))
            .await;
    }
    Err(error)
}

/// Commits one map's write and settles it in memory: what memory took, or why nothing was
/// written.
pub(super) async fn commit_one<K, V, B>(write: MapWrite<K, V, B>) -> Result<Settled<V>>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    commit_pipelined(write).await.0
}

/// [`commit_one`], and for a pipelined write the number of tickets of its stripe handed out
/// when it settled.
pub(super) async fn commit_pipelined<K, V, B>(write: MapWrite<K, V, B>) -> (Result<Settled<V>>, u64)
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    let (mut parts, _) = commit(vec![Box::new(write)]).await;
    let write = parts[0]
        .as_any_mut()
        .downcast_mut::<MapWrite<K, V, B>>()
        .expect("the part committed is the one given");
    let settled = write.settled.take().expect("a committed part has settled");
    (settled, write.issued_when_settled)
}
