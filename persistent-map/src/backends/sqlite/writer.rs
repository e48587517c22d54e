//! The thread that owns a database file's connection, and the handle that sends it work.
//!
//! Every map on one file sends its work here, so the file has one writer in this process: no
//! `database is locked` between our own maps, and one commit (one fsync) serves every write that
//! queued while the previous commit was syncing. The thread's loop gathers writes into groups
//! (`gather.rs`); each group is one transaction (`execute.rs`) that checks the key layouts
//! (`fence.rs`), the conditions and writes, logs the keys it wrote (`log.rs`) so that the maps
//! of other processes re-read just those keys, and carries the sweeps riding on it
//! (`expiry.rs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::inbox::Inbox;
use super::open::Reader;
use super::Durability;
use crate::map::Answer;
use crate::{PersistentError, Result};

/// A write as the writer executes it: key text and JSON value, already encoded.
#[derive(Debug)]
pub(crate) enum RawOp {
    /// `expires_at`: the deadline in Unix milliseconds (`None`: never), stored as is.
    Upsert {
        key: String,
        value: String,
        expires_at: Option<i64>,
    },
    Delete {
        key: String,
    },
    DeleteAll,
}

/// The SQL of one table, written once per backend rather than once per write.
#[derive(Debug)]
pub(crate) struct TableSql {
    pub(super) name: String,
    /// Upsert and select for a table without the column `expires_at` (never used a TTL).
    pub(super) upsert: String,
    pub(super) select: String,
    /// The same for a table with it: a save sets the deadline, an expired row is absent.
    pub(super) upsert_expiring: String,
    pub(super) select_expiring: String,
    pub(super) delete: String,
    pub(super) delete_all: String,
}

impl TableSql {
    /// `name` must have passed [`crate::validate_table_name`]; it is quoted anyway.
    pub(super) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            upsert: format!(
                "INSERT INTO \"{name}\" (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            ),
            select: format!("SELECT value FROM \"{name}\" WHERE key = ?1"),
            upsert_expiring: format!(
                "INSERT INTO \"{name}\" (key, value, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 expires_at = excluded.expires_at"
            ),
            // An expired row is absent to conditions and previous values.
            select_expiring: format!(
                "SELECT value, expires_at FROM \"{name}\" WHERE key = ?1 \
                 AND (expires_at IS NULL OR expires_at > ?2)"
            ),
            delete: format!("DELETE FROM \"{name}\" WHERE key = ?1"),
            delete_all: format!("DELETE FROM \"{name}\""),
        }
    }
}

/// The writes of one caller, to one table or (a transaction) several: committed together or
/// not at all, if all their conditions hold.
#[derive(Debug)]
pub(crate) struct Write {
    pub(crate) parts: Vec<WritePart>,
    /// Report what each op's key held before it.
    pub(crate) want_previous: bool,
    pub(crate) durability: Durability,
}

/// The share of a [`Write`] that goes to one table.
#[derive(Debug)]
pub(crate) struct WritePart {
    pub(crate) table: Arc<TableSql>,
    /// Key texts and the JSON that must be stored under each (`None`: nothing).
    pub(crate) conditions: Vec<(String, Option<String>)>,
    pub(crate) ops: Vec<RawOp>,
    /// The key layout the writing backend's key type has (empty: not checked).
    pub(crate) layout: &'static str,
    /// Which map wrote, as logged: a map skips its own writes when it catches up.
    pub(crate) origin: i64,
    /// A stored JSON text as the value type would write what it decodes to (`None`: it does
    /// not decode), so that a condition compares what a value means, not how it was spelled.
    pub(crate) canonical: fn(&str) -> Option<String>,
}

/// What storage holds under each condition's key: its JSON text and its deadline (Unix
/// milliseconds).
pub(crate) type Current = Vec<Option<(String, Option<i64>)>>;

/// What a [`Write`] did.
#[derive(Debug)]
pub(crate) enum Outcome {
    Applied {
        /// With `want_previous`: per part, per op, the JSON its key held just before it.
        previous: Option<Vec<Vec<Option<String>>>>,
    },
    /// A condition did not hold; nothing was written. Per part, per condition, what is
    /// stored: its JSON text and deadline.
    Conflict { current: Vec<Current> },
    /// Another process migrated `table` to another key layout (`stored`); nothing was
    /// written.
    LayoutChanged { table: String, stored: String },
}

pub(super) struct WriteRequest {
    pub(super) write: Write,
    pub(super) done: oneshot::Sender<rusqlite::Result<Outcome>>,
}

pub(super) type Job = Box<dyn FnOnce(&mut Connection) + Send>;

pub(super) enum Command {
    Write(WriteRequest),
    /// Anything else that needs the connection (table setup, loads), run between commits.
    Run(Job),
    /// Delete expired rows: in the next commit of live writes, or alone if none is coming.
    Sweep(SweepRequest),
}

/// A request to delete at most `limit` expired rows of `table`, logged under `origin`; answered
/// with the keys deleted once that is committed (see `expiry.rs`).
pub(super) struct SweepRequest {
    pub(super) table: Arc<TableSql>,
    pub(super) limit: usize,
    pub(super) origin: i64,
    pub(super) done: oneshot::Sender<rusqlite::Result<Vec<String>>>,
}

/// The handle to a file's writer thread. The thread stops, and closes the connection, once the
/// last handle is dropped and the queued work is done.
pub(crate) struct Writer {
    inbox: Arc<Inbox<Command>>,
    path: PathBuf,
    /// How to read the file on a connection of one's own (`None` for `:memory:`).
    reader: Option<Reader>,
    counters: Arc<Counters>,
    /// This connection's id in the change log's `writer` column.
    id: i64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("path", &self.path)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Drop for Writer {
    /// The last handle is gone: the thread finishes what is queued, closes the connection and
    /// stops.
    fn drop(&mut self) {
        self.inbox.close();
    }
}

/// What the writer thread has done, for [`super::SqliteBackend::stats`].
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) commits: AtomicU64,
    pub(super) requests: AtomicU64,
    /// Sweeps run in a transaction of their own, and groups committed with their transaction
    /// open while they gathered: for tests to tell which way the writer went.
    pub(super) sweeps_alone: AtomicU64,
    pub(super) gathering: AtomicU64,
}

impl Writer {
    /// Starts the thread that will own `connection`.
    pub(super) fn spawn(
        connection: Connection,
        path: PathBuf,
        reader: Option<Reader>,
    ) -> std::io::Result<Self> {
        let inbox = Arc::new(Inbox::new());
        let counters = Arc::new(Counters::default());
        let id = new_writer_id();
        let (thread_inbox, thread_counters) = (Arc::clone(&inbox), Arc::clone(&counters));
        // The thread reports to the `tracing` subscriber of whoever opened the file.
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        std::thread::Builder::new()
            .name("persistent-map-sqlite".into())
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    super::gather::serve(connection, &thread_inbox, &thread_counters, id);
                });
            })?;
        Ok(Self {
            inbox,
            path,
            reader,
            counters,
            id,
        })
    }

    /// (committed transactions, write requests acknowledged) since the thread started.
    pub(super) fn counts(&self) -> (u64, u64) {
        (
            self.counters.commits.load(Ordering::Relaxed),
            self.counters.requests.load(Ordering::Relaxed),
        )
    }

    /// (sweeps run alone, groups committed while gathering) since the thread started.
    #[cfg(test)]
    pub(super) fn paths_taken(&self) -> (u64, u64) {
        (
            self.counters.sweeps_alone.load(Ordering::Relaxed),
            self.counters.gathering.load(Ordering::Relaxed),
        )
    }

    /// How to open a reading connection of one's own to the file, unless it is `:memory:`.
    pub(super) fn reader(&self) -> Option<&Reader> {
        self.reader.as_ref()
    }

    /// This connection's id in the change log.
    pub(super) fn id(&self) -> i64 {
        self.id
    }

    /// The database file, as the first opener named it.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Commits `write` in one transaction (possibly shared with other requests) and resolves
    /// once it is durable at its durability.
    pub(super) async fn write(&self, write: Write) -> Result<Outcome> {
        let (done, committed) = oneshot::channel();
        self.send(Command::Write(WriteRequest { write, done }))?;
        match committed.await {
            Ok(result) => result.map_err(|source| self.sqlite_error(source)),
            Err(_) => Err(self.closed()),
        }
    }

    /// Commits a write's `parts` at `durability`, in one transaction (possibly shared with
    /// other requests), if every condition holds; what storage did with each part. A table
    /// migrated to another layout under a typed writer is the error
    /// [`PersistentError::IncompatibleKeyLayout`].
    pub(crate) async fn commit(
        &self,
        parts: Vec<WritePart>,
        durability: Durability,
        want_previous: bool,
    ) -> Result<Vec<Answer>> {
        let layouts: Vec<(String, &'static str)> = parts
            .iter()
            .map(|part| (part.table.name.clone(), part.layout))
            .collect();
        let write = Write {
            parts,
            want_previous,
            durability,
        };
        match self.write(write).await? {
            Outcome::Applied { previous } => Ok(match previous {
                Some(previous) => previous
                    .into_iter()
                    .map(|previous| Answer::Applied {
                        previous: Some(previous),
                    })
                    .collect(),
                None => layouts
                    .iter()
                    .map(|_| Answer::Applied { previous: None })
                    .collect(),
            }),
            Outcome::Conflict { current } => Ok(current
                .into_iter()
                .map(|current| Answer::Conflict {
                    current: current
                        .into_iter()
                        .map(|now| {
                            now.map(|(json, at)| (json, super::expiry::deadline_of_millis(at)))
                        })
                        .collect(),
                })
                .collect()),
            Outcome::LayoutChanged { table, stored } => {
                let expected = layouts
                    .into_iter()
                    .find(|(name, _)| *name == table)
                    .map_or("", |(_, layout)| layout);
                Err(PersistentError::IncompatibleKeyLayout {
                    table,
                    stored,
                    expected: expected.to_owned(),
                })
            }
        }
    }

    /// Runs `job` on the writer thread, after the work queued before it.
    pub(super) async fn run<T, F>(&self, job: F) -> Result<T>
    where
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (done, finished) = oneshot::channel();
        self.send(Command::Run(Box::new(move |connection| {
            // The caller may have stopped waiting; then nobody needs the result.
            let _ = done.send(job(connection));
        })))?;
        finished
            .await
            .map_err(|_| self.closed())?
            .map_err(|source| self.sqlite_error(source))
    }

    /// Deletes at most `limit` expired rows of `table` (fewer when live writes are waiting),
    /// logged under `origin`, and returns their keys once that is committed: inside the next
    /// commit of live writes, which then pays only a bounded share of its time for it, or in a
    /// transaction of its own when no write is coming.
    pub(super) async fn sweep(
        &self,
        table: Arc<TableSql>,
        limit: usize,
        origin: i64,
    ) -> Result<Vec<String>> {
        let (done, swept) = oneshot::channel();
        self.send(Command::Sweep(SweepRequest {
            table,
            limit,
            origin,
            done,
        }))?;
        swept
            .await
            .map_err(|_| self.closed())?
            .map_err(|source| self.sqlite_error(source))
    }

    /// Queues `job` without waiting for it (it reports through channels of its own).
    pub(super) fn start(&self, job: Job) -> Result<()> {
        self.send(Command::Run(job))
    }

    pub(super) fn sqlite_error(&self, source: rusqlite::Error) -> PersistentError {
        PersistentError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn send(&self, command: Command) -> Result<()> {
        self.inbox.push(command).map_err(|_| self.closed())
    }

    fn closed(&self) -> PersistentError {
        PersistentError::BackendClosed {
            path: self.path.clone(),
        }
    }
}

/// A number for a writing connection in the change log, different for every connection
/// opened (in this process and, with overwhelming likelihood, in any other), and never 0
/// (which `migrate_keys` logs as).
fn new_writer_id() -> i64 {
    use std::hash::{BuildHasher, RandomState};
    static STARTED: AtomicU64 = AtomicU64::new(0);
    let started = STARTED.fetch_add(1, Ordering::Relaxed);
    let hash = RandomState::new()
        .hash_one((std::process::id(), started))
        .max(1);
    i64::from_ne_bytes(hash.to_ne_bytes())
}
