//! The thread that owns a database file's connection and commits writes in groups.
//!
//! Every map on one file sends its work here, so the file has one writer in this process: no
//! `database is locked` between our own maps, and one commit (one fsync) serves every write that
//! queued while the previous commit was syncing. While no other connection commits to the file,
//! a group's transaction begins with its first write and executes each write as it arrives, so
//! that only `COMMIT` is left once the group is complete; a file other processes write to gets
//! the group gathered first, so that its write lock is held only for the commit. Sweeps of
//! expired rows ride on these commits (see `expiry.rs`).
//!
//! A write may carry conditions (what must be stored under some keys for it to go ahead): they
//! are checked inside the same `IMMEDIATE` transaction that writes, which holds the file's write
//! lock, so no other process can come in between. Each transaction also logs the keys it wrote
//! (`persistent_map_log`), so that the maps of other processes re-read just those keys, and
//! checks that no other process migrated a table's key layout under a typed writer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::inbox::{Inbox, Popped};
use super::known::Known;
use super::open::Reader;
use super::Durability;
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
    select: String,
    /// The same for a table with it: a save sets the deadline, an expired row is absent.
    pub(super) upsert_expiring: String,
    select_expiring: String,
    delete: String,
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
}

/// What a [`Write`] did.
#[derive(Debug)]
pub(crate) enum Outcome {
    Applied {
        /// With `want_previous`: per part, per op, the JSON its key held just before it.
        previous: Option<Vec<Vec<Option<String>>>>,
    },
    /// A condition did not hold; nothing was written. Per part, per condition, what is
    /// stored.
    Conflict { current: Vec<Vec<Option<String>>> },
    /// Another process migrated `table` to another key layout (`stored`); nothing was
    /// written.
    LayoutChanged { table: String, stored: String },
}

struct WriteRequest {
    write: Write,
    done: oneshot::Sender<rusqlite::Result<Outcome>>,
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

enum Command {
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

/// Requests merged into one transaction at most; bounds the work one fsync waits for.
const MAX_GROUP_REQUESTS: usize = 4096;

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
struct Counters {
    commits: AtomicU64,
    requests: AtomicU64,
    /// Sweeps run in a transaction of their own, and groups committed with their transaction
    /// open while they gathered: for tests to tell which way the writer went.
    sweeps_alone: AtomicU64,
    gathering: AtomicU64,
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
                    serve(connection, &thread_inbox, &thread_counters, id);
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

    /// [`write`](Self::write), with a table migrated to another layout reported as the error
    /// [`PersistentError::IncompatibleKeyLayout`].
    pub(crate) async fn write_checked(&self, write: Write) -> Result<Outcome> {
        let expected: Vec<(String, &'static str)> = write
            .parts
            .iter()
            .map(|part| (part.table.name.clone(), part.layout))
            .collect();
        match self.write(write).await? {
            Outcome::LayoutChanged { table, stored } => {
                let expected = expected
                    .into_iter()
                    .find(|(name, _)| *name == table)
                    .map_or("", |(_, layout)| layout);
                Err(PersistentError::IncompatibleKeyLayout {
                    table,
                    stored,
                    expected: expected.to_owned(),
                })
            }
            outcome => Ok(outcome),
        }
    }

    /// Commits a transaction's `parts` at `durability`: `None` if every condition held and
    /// everything was written, else what each part's condition keys hold (nothing was written).
    pub(crate) async fn commit(
        &self,
        parts: Vec<WritePart>,
        durability: Durability,
    ) -> Result<Option<Vec<Vec<Option<String>>>>> {
        let write = Write {
            parts,
            want_previous: false,
            durability,
        };
        match self.write_checked(write).await? {
            Outcome::Applied { .. } => Ok(None),
            Outcome::Conflict { current } => Ok(Some(current)),
            Outcome::LayoutChanged { .. } => unreachable!("`write_checked` makes it an error"),
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

/// The writer thread's loop.
///
/// Group commit: every write that queued while a commit was syncing goes into the next
/// transaction. Just committing what is queued would split concurrent writers into a large group
/// and a small one (the first writer back after its acknowledgement would be committed almost
/// alone), so the loop also waits, briefly and without spinning, for the writers it has just
/// acknowledged: with 16 tasks writing in turn, each commit then serves all 16. A lone
/// sequential writer is never made to wait: it is the only one expected back.
fn serve(mut connection: Connection, queue: &Inbox<Command>, counters: &Counters, id: i64) {
    let _abandon_on_exit = AbandonOnExit(queue);
    let mut synchronous = Durability::Full;
    let mut fence = LayoutFence::default();
    // How many rows a sweep in a transaction of its own deletes, learned from the last ones.
    let pace = super::expiry::SweepPace::default();
    let mut intake = Intake {
        queue,
        group: Vec::new(),
        sweeps: Vec::new(),
        next: None,
        expected: 0,
    };
    loop {
        if intake.group.is_empty() && intake.sweeps.is_empty() {
            if let Some(job) = intake.next.take() {
                job(&mut connection);
                continue;
            }
            match queue.pop(None) {
                Popped::Item(Command::Write(request)) => intake.group.push(request),
                Popped::Item(Command::Sweep(request)) => intake.sweeps.push(request),
                Popped::Item(Command::Run(job)) => {
                    job(&mut connection);
                    continue;
                }
                Popped::TimedOut | Popped::Closed => return,
            }
        }
        if intake.group.is_empty() {
            // Only sweeps so far: wait for the writes they could ride on, once.
            intake.gather(|_| true);
            intake.expected = 0;
        } else {
            intake.take_queued();
        }
        if intake.group.is_empty() {
            // No live write to ride on: each sweep runs in a transaction of its own, until
            // work arrives; then the sweeps left ride on it.
            let mut waiting = std::mem::take(&mut intake.sweeps).into_iter();
            for request in waiting.by_ref() {
                counters.sweeps_alone.fetch_add(1, Ordering::Relaxed);
                let swept = super::expiry::sweep_alone(
                    &mut connection,
                    &mut synchronous,
                    &request,
                    id,
                    &pace,
                    &|| queue.has_queued(),
                );
                let _ = request.done.send(swept);
                if queue.has_queued() {
                    break;
                }
            }
            intake.sweeps.extend(waiting);
            continue;
        }
        let began = Instant::now();
        let (committed, riding, results, swept) = if fence.alone {
            commit_gathering(
                &mut connection,
                &mut synchronous,
                &mut fence,
                &mut intake,
                counters,
                id,
            )
        } else {
            // Another connection writes to the file too: gather first, so that the file's
            // write lock is held only for the commit.
            intake.gather(|_| true);
            let committed = std::mem::take(&mut intake.group);
            let riding = std::mem::take(&mut intake.sweeps);
            let (results, swept) = commit_group(
                &mut connection,
                &mut synchronous,
                &mut fence,
                &committed,
                &riding,
                counters,
                id,
            );
            (committed, riding, results, swept)
        };
        trace_group(&committed, &results, began.elapsed());
        // What is queued now came from writers other than those about to be acknowledged.
        intake.take_queued();
        intake.expected = committed.len() + intake.group.len();
        for (request, result) in committed.into_iter().zip(results) {
            let _ = request.done.send(result);
        }
        match swept {
            Some(swept) => {
                for (request, result) in riding.into_iter().zip(swept) {
                    let _ = request.done.send(result);
                }
            }
            // The shared transaction failed: they go again, with the next commit or alone.
            None => intake.sweeps.extend(riding),
        }
    }
}

/// What the writer thread has taken from its inbox and not yet done.
struct Intake<'q> {
    queue: &'q Inbox<Command>,
    /// The writes of the next commit.
    group: Vec<WriteRequest>,
    /// Sweeps waiting for a commit to ride on (or to run alone if no write comes).
    sweeps: Vec<SweepRequest>,
    /// A command that is not a write, found while gathering a group: it runs after the group.
    next: Option<Job>,
    /// Writers acknowledged by the last commit plus those already queued for the next one.
    expected: usize,
}

/// How long a group waits for the writers it expects. Well under a commit's fsync, so a
/// straggler costs less than the commit it joins saves.
const GROUP_WAIT: Duration = Duration::from_micros(200);

impl Intake<'_> {
    /// Adds what is queued to the group, then waits up to [`GROUP_WAIT`] for more while the
    /// group is smaller than expected. Stops at a command that is not a write (kept in
    /// `next`), or when `arrived`, shown the group after each arrival, says `false`.
    fn gather(&mut self, mut arrived: impl FnMut(&[WriteRequest]) -> bool) {
        self.take_queued();
        if !arrived(&self.group) {
            return;
        }
        let deadline = Instant::now() + GROUP_WAIT;
        while self.group.len() < self.expected.min(MAX_GROUP_REQUESTS) && self.next.is_none() {
            match self.queue.pop(Some(deadline)) {
                Popped::Item(Command::Write(request)) => self.group.push(request),
                Popped::Item(Command::Sweep(request)) => self.sweeps.push(request),
                Popped::Item(Command::Run(job)) => self.next = Some(job),
                Popped::TimedOut | Popped::Closed => return,
            }
            self.take_queued();
            if !arrived(&self.group) {
                return;
            }
        }
    }

    /// Moves queued writes and sweeps in without waiting, up to a command that is neither.
    fn take_queued(&mut self) {
        while self.next.is_none() && self.group.len() < MAX_GROUP_REQUESTS {
            match self.queue.try_pop() {
                Some(Command::Write(request)) => self.group.push(request),
                Some(Command::Sweep(request)) => self.sweeps.push(request),
                Some(Command::Run(job)) => self.next = Some(job),
                None => return,
            }
        }
    }
}

/// What a group's commit answers: the writes and their results, and the sweeps that rode on it
/// and theirs (`None`: they did not run).
type Committed = (
    Vec<WriteRequest>,
    Vec<SweepRequest>,
    Vec<rusqlite::Result<Outcome>>,
    Option<Vec<Swept>>,
);

/// Commits the intake's group with its transaction open while the group gathers: each write
/// is executed as it arrives, so that once the group is complete only the commit is left. For
/// a file no other connection writes to: this holds the file's write lock for up to
/// [`GROUP_WAIT`] longer. Writes that want a stronger durability than the group's first stay
/// in the intake for the next group.
fn commit_gathering(
    connection: &mut Connection,
    synchronous: &mut Durability,
    fence: &mut LayoutFence,
    intake: &mut Intake<'_>,
    counters: &Counters,
    id: i64,
) -> Committed {
    let level = intake
        .group
        .iter()
        .map(|request| request.write.durability)
        .max()
        .unwrap_or_default();
    let mut open = match OpenGroup::begin(connection, synchronous, fence, level) {
        Ok(open) => open,
        Err(error) => {
            // Busy most likely: another connection writes, so gather first from now on.
            fence.alone = false;
            // Busy, or the file refuses: as for a shared commit that could not begin, every
            // write of the group hears why, and the sweeps wait for the next commit.
            tracing::warn!(requests = intake.group.len(), %error, "SQLite refused a whole commit group");
            let results = intake
                .group
                .iter()
                .map(|_| Err(copy_error(&error)))
                .collect();
            return (std::mem::take(&mut intake.group), Vec::new(), results, None);
        }
    };
    counters.gathering.fetch_add(1, Ordering::Relaxed);
    let mut stopped_at = None;
    intake.gather(|group| {
        stopped_at = open.catch_up(connection, fence, group, id);
        // After a failed statement the group goes the slow way: no use holding the lock.
        stopped_at.is_none() && open.failed.is_none()
    });
    let carried = stopped_at.map_or_else(Vec::new, |at| intake.group.split_off(at));
    let committed = std::mem::replace(&mut intake.group, carried);
    let riding = std::mem::take(&mut intake.sweeps);
    let (results, swept) = match open.finish(connection, fence, &riding, counters, id) {
        Ok((outcomes, swept)) => (outcomes.into_iter().map(Ok).collect(), Some(swept)),
        // A statement or the commit failed: the group goes again the slow way, shared and
        // then each write alone.
        Err(_) => commit_group(
            connection,
            synchronous,
            fence,
            &committed,
            &riding,
            counters,
            id,
        ),
    };
    (committed, riding, results, swept)
}

/// A group's transaction, open while the group gathers.
struct OpenGroup {
    level: Durability,
    known: Known,
    outcomes: Vec<Outcome>,
    /// A statement failed: nothing more is executed, and the transaction is rolled back.
    failed: Option<rusqlite::Error>,
}

impl OpenGroup {
    /// Sets the connection's durability to `level` and begins the transaction.
    fn begin(
        connection: &Connection,
        synchronous: &mut Durability,
        fence: &mut LayoutFence,
        level: Durability,
    ) -> rusqlite::Result<Self> {
        // SQLite cannot change it inside a transaction.
        set_synchronous(connection, synchronous, level)?;
        run_statement(connection, "BEGIN IMMEDIATE")?;
        if let Err(error) = fence.begin(connection) {
            roll_back(connection);
            return Err(error);
        }
        Ok(Self {
            level,
            known: Known::default(),
            outcomes: Vec::new(),
            failed: None,
        })
    }

    /// Executes the writes of `group` not executed yet, in order. Returns the index of the
    /// first that wants a stronger durability than the transaction's, which must wait for
    /// the next one.
    fn catch_up(
        &mut self,
        connection: &Connection,
        fence: &mut LayoutFence,
        group: &[WriteRequest],
        id: i64,
    ) -> Option<usize> {
        while self.failed.is_none() && self.outcomes.len() < group.len() {
            let request = &group[self.outcomes.len()];
            if request.write.durability > self.level {
                return Some(self.outcomes.len());
            }
            match execute(connection, fence, &mut self.known, &request.write, id) {
                Ok(outcome) => self.outcomes.push(outcome),
                Err(error) => self.failed = Some(error),
            }
        }
        None
    }

    /// Runs `sweeps` after the writes and commits; on any failure rolls back.
    fn finish(
        self,
        connection: &Connection,
        fence: &mut LayoutFence,
        sweeps: &[SweepRequest],
        counters: &Counters,
        id: i64,
    ) -> rusqlite::Result<(Vec<Outcome>, Vec<Swept>)> {
        let committed = match self.failed {
            Some(error) => Err(error),
            None => finish_transaction(connection, fence, sweeps, counters, id),
        };
        match committed {
            Ok(swept) => {
                count_commit(counters, self.outcomes.len());
                Ok((self.outcomes, swept))
            }
            Err(error) => {
                roll_back(connection);
                Err(error)
            }
        }
    }
}

/// A commit that takes longer than this is worth a warning: the writes in it waited that long.
const SLOW_COMMIT: Duration = Duration::from_secs(1);

/// One `debug` event per commit group (a `warn` when it was slow), with fields, not text.
fn trace_group(group: &[WriteRequest], results: &[rusqlite::Result<Outcome>], elapsed: Duration) {
    let requests = group.len();
    let failed = results.iter().filter(|result| result.is_err()).count();
    let conflicts = results
        .iter()
        .filter(|result| matches!(result, Ok(Outcome::Conflict { .. })))
        .count();
    let tables = group
        .iter()
        .flat_map(|request| &request.write.parts)
        .map(|part| part.table.name.as_str())
        .collect::<std::collections::BTreeSet<_>>();
    if elapsed >= SLOW_COMMIT {
        tracing::warn!(
            requests,
            failed,
            conflicts,
            ?tables,
            ?elapsed,
            "slow SQLite commit"
        );
    } else {
        tracing::debug!(
            requests,
            failed,
            conflicts,
            ?tables,
            ?elapsed,
            "SQLite commit"
        );
    }
}

/// However the writer thread ends (a panic included), its inbox takes no more work and drops
/// what is queued, so every caller hears `BackendClosed` rather than waiting for ever. (After a
/// normal end the inbox is already closed and empty.)
struct AbandonOnExit<'a>(&'a Inbox<Command>);

impl Drop for AbandonOnExit<'_> {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// Commits `group` in one transaction and returns each request's result, and the result of
/// each of `sweeps` that rode on it (`None`: they did not run, and go again). If the shared
/// transaction fails, it is tried again without the sweeps, then each request in a transaction
/// of its own, so that one bad sweep or request fails alone and the others still commit.
fn commit_group(
    connection: &mut Connection,
    synchronous: &mut Durability,
    fence: &mut LayoutFence,
    group: &[WriteRequest],
    sweeps: &[SweepRequest],
    counters: &Counters,
    id: i64,
) -> (Vec<rusqlite::Result<Outcome>>, Option<Vec<Swept>>) {
    let wanted = group
        .iter()
        .map(|request| request.write.durability)
        .max()
        .unwrap_or_default();
    if let Err(error) = set_synchronous(connection, synchronous, wanted) {
        // Committing at a weaker level than asked would break the promise: commit nothing.
        return (
            group.iter().map(|_| Err(copy_error(&error))).collect(),
            None,
        );
    }
    let mut error = match commit(connection, fence, group, sweeps, counters, id) {
        Ok((outcomes, swept)) => return (outcomes.into_iter().map(Ok).collect(), Some(swept)),
        Err(error) => error,
    };
    if !sweeps.is_empty() && !refuses_every_request(&error) {
        // A sweep can fail so that SQLite ends the whole transaction (a trigger's
        // `RAISE(ROLLBACK)`): the writes go again without the sweeps, which hear the error if
        // the writes then commit.
        match commit(connection, fence, group, &[], counters, id) {
            Ok((outcomes, _)) => {
                let swept = sweeps.iter().map(|_| Err(copy_error(&error))).collect();
                return (outcomes.into_iter().map(Ok).collect(), Some(swept));
            }
            Err(again) => error = again,
        }
    }
    let results = if group.len() == 1 {
        vec![Err(error)]
    } else if refuses_every_request(&error) {
        // A busy, locked, full, read-only or failing file refuses every request alike: retrying
        // each alone would only wait out the busy timeout once per request.
        tracing::warn!(requests = group.len(), %error, "SQLite refused a whole commit group");
        group.iter().map(|_| Err(copy_error(&error))).collect()
    } else {
        tracing::warn!(
            requests = group.len(),
            %error,
            "a shared SQLite commit failed; retrying each write alone"
        );
        group
            .iter()
            .map(|request| {
                commit(
                    connection,
                    fence,
                    std::slice::from_ref(request),
                    &[],
                    counters,
                    id,
                )
                .map(|(mut outcomes, _)| outcomes.remove(0))
            })
            .collect()
    };
    (results, None)
}

/// What a sweep deleted: the keys, or why it could not.
type Swept = rusqlite::Result<Vec<String>>;

fn refuses_every_request(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        error.sqlite_error_code(),
        Some(
            DatabaseBusy
                | DatabaseLocked
                | DiskFull
                | ReadOnly
                | SystemIoFailure
                | DatabaseCorrupt
                | NotADatabase
                | OutOfMemory
                | CannotOpen
        )
    )
}

/// `rusqlite::Error` is not `Clone`; keep the SQLite code and message, which is what callers
/// match on and read.
fn copy_error(error: &rusqlite::Error) -> rusqlite::Error {
    match error {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

fn set_synchronous(
    connection: &Connection,
    current: &mut Durability,
    wanted: Durability,
) -> rusqlite::Result<()> {
    if *current != wanted {
        connection.pragma_update(None, "synchronous", wanted.pragma_value())?;
        *current = wanted;
    }
    Ok(())
}

/// One transaction holding every op of `requests`, then as many expired rows as `sweeps` may
/// delete in a bounded time; rolled back (by the transaction's drop) if any write's statement
/// or the commit fails. A sweep that fails is undone alone (a savepoint) and reports its error.
///
/// `BEGIN`, `COMMIT` and `ROLLBACK` are cached statements: rusqlite's `Transaction` parses and
/// prepares them anew for every transaction, which cost a few microseconds of every commit.
fn commit(
    connection: &mut Connection,
    fence: &mut LayoutFence,
    requests: &[WriteRequest],
    sweeps: &[SweepRequest],
    counters: &Counters,
    id: i64,
) -> rusqlite::Result<(Vec<Outcome>, Vec<Swept>)> {
    run_statement(connection, "BEGIN IMMEDIATE")?;
    let mut known = Known::default();
    let committed = fence.begin(connection).and_then(|()| {
        let outcomes = requests
            .iter()
            .map(|request| execute(connection, fence, &mut known, &request.write, id))
            .collect::<rusqlite::Result<Vec<Outcome>>>()?;
        let swept = finish_transaction(connection, fence, sweeps, counters, id)?;
        Ok((outcomes, swept))
    });
    match committed {
        Ok(committed) => {
            count_commit(counters, requests.len());
            Ok(committed)
        }
        Err(error) => {
            roll_back(connection);
            Err(error)
        }
    }
}

/// The end of a group's transaction, after its writes: the sweeps riding on it, the log's
/// pruning now and then, and `COMMIT`.
fn finish_transaction(
    connection: &Connection,
    fence: &mut LayoutFence,
    sweeps: &[SweepRequest],
    counters: &Counters,
    id: i64,
) -> rusqlite::Result<Vec<Swept>> {
    let swept = sweeps
        .iter()
        .map(|sweep| super::expiry::sweep_riding(connection, &mut fence.expiry_columns, sweep, id))
        .collect::<rusqlite::Result<Vec<Swept>>>()?;
    if counters
        .commits
        .load(Ordering::Relaxed)
        .is_multiple_of(PRUNE_EVERY_COMMITS)
    {
        prune_log(connection)?;
    }
    run_statement(connection, "COMMIT")?;
    Ok(swept)
}

fn count_commit(counters: &Counters, requests: usize) {
    counters.commits.fetch_add(1, Ordering::Relaxed);
    counters
        .requests
        .fetch_add(requests as u64, Ordering::Relaxed);
}

/// One request inside the group's transaction: the layout checks, every part's conditions
/// (all read before anything is written, as a transaction's reads come before its writes),
/// then the ops and their log rows. A request whose check fails writes nothing and says why.
/// `known`: what the transaction's earlier requests read and wrote.
fn execute(
    connection: &Connection,
    fence: &mut LayoutFence,
    known: &mut Known,
    write: &Write,
    id: i64,
) -> rusqlite::Result<Outcome> {
    for part in &write.parts {
        if let Some(stored) = fence.changed(connection, &part.table.name, part.layout)? {
            let table = part.table.name.clone();
            return Ok(Outcome::LayoutChanged { table, stored });
        }
    }
    // The writer's wall clock decides what has expired, once for the whole request.
    let now = super::expiry::now_sql();
    let mut expiring = Vec::with_capacity(write.parts.len());
    for part in &write.parts {
        let with_deadline = part.ops.iter().any(|op| {
            matches!(
                op,
                RawOp::Upsert {
                    expires_at: Some(_),
                    ..
                }
            )
        });
        expiring.push(fence.expiry_columns.has_column(
            connection,
            &part.table.name,
            with_deadline,
        )?);
    }
    if write.parts.iter().any(|part| !part.conditions.is_empty()) {
        let mut holds = true;
        let mut current = Vec::with_capacity(write.parts.len());
        for (part, &expiring) in write.parts.iter().zip(&expiring) {
            let stored = part
                .conditions
                .iter()
                .map(|(key, _)| stored_value(connection, known, &part.table, expiring, key, now))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            holds &= part
                .conditions
                .iter()
                .zip(&stored)
                .all(|((_, expected), stored)| {
                    crate::backends::encode::same_json(stored.as_deref(), expected.as_deref())
                });
            current.push(stored);
        }
        if !holds {
            return Ok(Outcome::Conflict { current });
        }
    }
    let mut previous = Vec::with_capacity(write.parts.len());
    for (part, &expiring) in write.parts.iter().zip(&expiring) {
        let table = &part.table;
        if write.want_previous {
            let mut before = Vec::with_capacity(part.ops.len());
            for op in &part.ops {
                before.push(match op {
                    RawOp::Upsert { key, .. } | RawOp::Delete { key } => {
                        stored_value(connection, known, table, expiring, key, now)?
                    }
                    RawOp::DeleteAll => None,
                });
                execute_ops(connection, table, expiring, std::slice::from_ref(op))?;
            }
            previous.push(before);
        } else {
            execute_ops(connection, table, expiring, &part.ops)?;
        }
        remember_ops(known, table, expiring, &part.ops);
        if log_everything(&part.ops) {
            log_keys(connection, table, &part.ops, part.origin, id)?;
        } else {
            let mut insert = connection.prepare_cached(INSERT_LOG)?;
            for op in &part.ops {
                if let RawOp::Upsert { key, .. } | RawOp::Delete { key } = op
                    && known.first_log(&table.name, key, part.origin)
                {
                    insert.execute((&table.name, key, part.origin, id))?;
                }
            }
        }
    }
    Ok(Outcome::Applied {
        previous: write.want_previous.then_some(previous),
    })
}

/// What `ops` (just executed) left `table` holding, for the transaction's later requests.
fn remember_ops(known: &mut Known, table: &TableSql, expiring: bool, ops: &[RawOp]) {
    for op in ops {
        match op {
            RawOp::Upsert {
                key,
                value,
                expires_at,
            } => {
                // A table without the column stores no deadline.
                let deadline = expires_at.filter(|_| expiring);
                known.set(&table.name, key, Some((value.clone(), deadline)));
            }
            RawOp::Delete { key } => known.set(&table.name, key, None),
            RawOp::DeleteAll => known.forget_values(&table.name),
        }
    }
}

/// The JSON stored under `key`, if any and not expired at `now` (Unix milliseconds), from what
/// the transaction already knows or else from the table. A value that is not text (written by
/// another program) is read as the text SQLite makes of it, so that a condition on it fails
/// rather than errs.
fn stored_value(
    connection: &Connection,
    known: &mut Known,
    table: &TableSql,
    expiring: bool,
    key: &str,
    now: i64,
) -> rusqlite::Result<Option<String>> {
    if let Some(held) = known.held(&table.name, key, now) {
        return Ok(held.map(str::to_owned));
    }
    let mut select;
    let mut found = if expiring {
        select = connection.prepare_cached(&table.select_expiring)?;
        select.query((key, now))?
    } else {
        select = connection.prepare_cached(&table.select)?;
        select.query([key])?
    };
    let held = found
        .next()?
        .map(|row| {
            let value = match row.get_ref(0)? {
                ValueRef::Text(text) | ValueRef::Blob(text) => {
                    String::from_utf8_lossy(text).into_owned()
                }
                ValueRef::Integer(number) => number.to_string(),
                ValueRef::Real(number) => number.to_string(),
                ValueRef::Null => "null".to_owned(),
            };
            let deadline = if expiring { row.get(1)? } else { None };
            Ok::<_, rusqlite::Error>((value, deadline))
        })
        .transpose()?;
    let value = held.as_ref().map(|(value, _)| value.clone());
    known.set(&table.name, key, held);
    Ok(value)
}

/// The log of which keys each transaction wrote, read by the other processes' maps when they
/// refresh (see `changes.rs`). A key `NULL` means "any key of the table".
///
/// `origin` is the writing map's id, `writer` the writing connection's (one per file per
/// process): a reader that sees the file's data version move with no row from another
/// connection knows that a program that does not log committed.
pub(super) const CREATE_LOG: &str = "CREATE TABLE IF NOT EXISTS persistent_map_log \
     (seq INTEGER PRIMARY KEY, table_name TEXT NOT NULL, key TEXT, origin INTEGER NOT NULL, \
     writer INTEGER NOT NULL)";

/// A write of more keys than this logs one "any key" row instead: a reader then reloads the
/// table, which for a batch that large costs about what re-reading its keys would.
pub(super) const MAX_LOGGED_KEYS: usize = 1024;

/// The log keeps about this many of its newest rows; a map that fell further behind reloads.
const LOG_ROWS_KEPT: i64 = 65_536;

/// How often (in commits) the log's oldest rows are deleted, inside a commit that is made
/// anyway.
const PRUNE_EVERY_COMMITS: u64 = 1024;

const INSERT_LOG: &str =
    "INSERT INTO persistent_map_log (table_name, key, origin, writer) VALUES (?1, ?2, ?3, ?4)";

/// Whether `ops` are logged as one "any key" row rather than key by key.
fn log_everything(ops: &[RawOp]) -> bool {
    ops.len() > MAX_LOGGED_KEYS || ops.iter().any(|op| matches!(op, RawOp::DeleteAll))
}

pub(super) fn log_keys(
    connection: &Connection,
    table: &TableSql,
    ops: &[RawOp],
    origin: i64,
    writer: i64,
) -> rusqlite::Result<()> {
    let mut insert = connection.prepare_cached(INSERT_LOG)?;
    if log_everything(ops) {
        insert.execute((&table.name, None::<&str>, origin, writer))?;
        return Ok(());
    }
    for op in ops {
        if let RawOp::Upsert { key, .. } | RawOp::Delete { key } = op {
            insert.execute((&table.name, key, origin, writer))?;
        }
    }
    Ok(())
}

fn prune_log(connection: &Connection) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "DELETE FROM persistent_map_log \
             WHERE seq <= (SELECT max(seq) FROM persistent_map_log) - ?1",
        )?
        .execute([LOG_ROWS_KEPT])
        .map(drop)
}

/// Deletes up to `at_most` of the log's oldest rows beyond the [`LOG_ROWS_KEPT`] newest: for a
/// transaction that logs many keys and must stay short (a sweep), so that it pays for its own
/// log rows as it goes instead of leaving them to one long prune inside a commit of live
/// writes.
pub(super) fn prune_log_oldest(connection: &Connection, at_most: usize) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "DELETE FROM persistent_map_log \
             WHERE seq <= min((SELECT max(seq) FROM persistent_map_log) - ?1, \
                              (SELECT min(seq) FROM persistent_map_log) + ?2 - 1)",
        )?
        .execute((LOG_ROWS_KEPT, i64::try_from(at_most).unwrap_or(i64::MAX)))
        .map(drop)
}

/// Keeps typed writers from writing keys in a layout that another process has since migrated
/// the table away from (`migrate_keys`). Checking `persistent_map_tables` costs a query, so a
/// table's layout is checked again only after another connection committed to the file
/// (`PRAGMA data_version` moved); in this process `migrate_keys` refuses while a map on the
/// table is open.
#[derive(Default)]
struct LayoutFence {
    /// `data_version` when `confirmed` was last valid.
    checked_at: Option<i64>,
    /// (table, layout) pairs found recorded since (a few: one per table and key type).
    confirmed: Vec<(String, &'static str)>,
    /// Which tables have the column `expires_at`, as of the schema this transaction sees.
    /// (Kept here because it is checked at the same moments, for the same reason: another
    /// process may change a table under this writer.)
    expiry_columns: super::expiry::ExpiryColumns,
    /// Whether no other connection had committed to the file between this one's last two
    /// transactions: then a group may hold the file's write lock while it gathers.
    alone: bool,
}

impl LayoutFence {
    /// Called at the start of each transaction.
    fn begin(&mut self, connection: &Connection) -> rusqlite::Result<()> {
        let version: i64 = connection
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |row| row.get(0))?;
        self.alone = self.checked_at == Some(version);
        if self.checked_at != Some(version) {
            self.checked_at = Some(version);
            self.confirmed.clear();
        }
        self.expiry_columns.begin(connection)
    }

    /// The layout recorded for `table` if it is not `layout`; `None` if it is (or none is
    /// recorded, or the writer has no layout to check).
    fn changed(
        &mut self,
        connection: &Connection,
        table: &str,
        layout: &'static str,
    ) -> rusqlite::Result<Option<String>> {
        let confirmed = |(name, confirmed): &(String, &str)| name == table && *confirmed == layout;
        if layout.is_empty() || self.confirmed.iter().any(confirmed) {
            return Ok(None);
        }
        let recorded: Option<String> = connection
            .prepare_cached("SELECT key_layout FROM persistent_map_tables WHERE table_name = ?1")?
            .query_row([table], |row| row.get(0))
            .optional()?;
        match recorded {
            Some(recorded) if recorded != layout => Ok(Some(recorded)),
            _ => {
                self.confirmed.push((table.to_owned(), layout));
                Ok(None)
            }
        }
    }
}

pub(super) fn run_statement(connection: &Connection, sql: &str) -> rusqlite::Result<()> {
    connection.prepare_cached(sql)?.execute([]).map(drop)
}

/// Ends a failed transaction (a failed `COMMIT` can leave it open). If even the cached
/// `ROLLBACK` fails, a fresh one is tried: a connection left inside a transaction would fail
/// every later write.
fn roll_back(connection: &Connection) {
    if connection.is_autocommit() {
        return;
    }
    if run_statement(connection, "ROLLBACK").is_err() {
        let _ = connection.execute_batch("ROLLBACK");
    }
}

/// Executes `ops` on `table`; `expiring`: it has the column `expires_at`, which saves set.
fn execute_ops(
    connection: &Connection,
    table: &TableSql,
    expiring: bool,
    ops: &[RawOp],
) -> rusqlite::Result<()> {
    let mut upsert = None;
    let mut delete = None;
    for op in ops {
        match op {
            RawOp::Upsert {
                key,
                value,
                expires_at,
            } => {
                let sql = if expiring {
                    &table.upsert_expiring
                } else {
                    &table.upsert
                };
                let statement = match &mut upsert {
                    Some(statement) => statement,
                    None => upsert.insert(connection.prepare_cached(sql)?),
                };
                if expiring {
                    statement.execute((key, value, expires_at))?;
                } else {
                    statement.execute((key, value))?;
                }
            }
            RawOp::Delete { key } => {
                let statement = match &mut delete {
                    Some(statement) => statement,
                    None => delete.insert(connection.prepare_cached(&table.delete)?),
                };
                statement.execute([key])?;
            }
            RawOp::DeleteAll => {
                connection.execute(&table.delete_all, [])?;
            }
        }
    }
    Ok(())
}
