//! The task that owns a connection, shared by every backend of the process on that server and
//! database (see `registry.rs`): it commits writes in groups, serves loads and reads of the
//! change log, and reconnects when the connection is lost.
//!
//! Everything goes through one task because a transaction owns its connection: a read sent by
//! another task in the middle of it would run inside it.
//!
//! Writes that queue while a commit runs are committed together in the next transaction (group
//! commit), whatever their tables: see `commit.rs` for what one commit does. The transaction also
//! logs the keys it wrote and sends the `NOTIFY` that wakes the other instances, so both happen
//! if and only if it commits.
//!
//! When the connection breaks, the work in hand is retried on a new connection until the
//! reconnect timeout. A commit whose answer was lost is not simply sent again: the new
//! connection first asks the server whether that transaction committed (`txid_status`), and
//! only if it did not is the commit tried again, its conditions checked anew. An attempt that
//! gets no answer within the operation timeout is not retried: its connection is dropped and the
//! work fails, saying whether the commit's outcome is unknown (the maps then reload at their
//! next refresh). Meanwhile the task keeps reconnecting on its own, so an idle instance hears
//! the fleet again soon; the maps then catch up from the change log.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::{pin_mut, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;

use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;

use super::commit::{self, Begun, Committed, Decided, Plan, Request, Step};
use super::connect::{
    self, describe_error, Endpoint, Live, OpenFailure, ServerSession, TableSql, TableStatements,
    Target,
};
use super::expiry;
use super::link::Link;
use super::log::{self, LogRead};
use super::notify::{self, Changes, Listeners};
use crate::{PersistentError, Result};

/// A write as the session executes it: key text and JSON text, already encoded.
#[derive(Debug)]
pub(super) enum RawOp {
    /// `expires_at`: the deadline in Unix milliseconds (`None`: never), replacing the key's.
    Upsert {
        key: String,
        value: String,
        expires_at: Option<i64>,
    },
    Delete {
        key: String,
    },
    /// Deletes the key's row only if it has expired (read under the key's lock at the
    /// committing instance's clock); a live row, or one an earlier write of the group
    /// replaced, is left alone.
    Sweep {
        key: String,
    },
    DeleteAll,
}

impl RawOp {
    pub(super) fn key(&self) -> Option<&str> {
        match self {
            RawOp::Upsert { key, .. } | RawOp::Delete { key } | RawOp::Sweep { key } => Some(key),
            RawOp::DeleteAll => None,
        }
    }
}

/// One caller's writes to one table: committed together, only if every condition holds. A
/// request is one or more of them, of different tables (a transaction across maps), and all of
/// its parts are committed together or none is.
#[derive(Debug)]
pub(super) struct Write {
    /// Key texts and the JSON that must be stored under each (`None`: nothing).
    pub(super) conditions: Vec<(String, Option<String>)>,
    pub(super) ops: Vec<RawOp>,
    /// Report what each op's key held just before it.
    pub(super) want_previous: bool,
    /// The writing map's id, logged with its keys (0: nobody in particular).
    pub(super) origin: i64,
    /// A stored JSON text as the value type would write what it decodes to (`None`: it does
    /// not decode), so that a condition compares what a value means, not how it was spelled.
    pub(super) canonical: fn(&str) -> Option<String>,
}

impl Default for Write {
    fn default() -> Self {
        Self {
            conditions: Vec::new(),
            ops: Vec::new(),
            want_previous: false,
            origin: 0,
            canonical: |_| None,
        }
    }
}

/// What a request (one [`Write`] per table it writes) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    Applied {
        /// Per part, with its `want_previous`: per op, the JSON its key held just before it.
        previous: Vec<Option<Vec<Option<String>>>>,
    },
    /// A condition of some part did not hold and nothing was written, in any part: per part,
    /// per condition, what is stored.
    Conflict { current: Vec<Vec<Option<Current>>> },
}

/// A stored value as a conflict reports it: its JSON text and its deadline (Unix ms).
pub(super) type Current = (String, Option<i64>);

/// A request's share for one backend's table.
pub(super) type Part = (Arc<Attached>, Write);

/// A stored row as read: key text, the value's JSON text (`None` for SQL `NULL`) and its
/// deadline (`expires_at`, Unix milliseconds; `None`: never).
pub(super) type RawRow = (String, Option<String>, Option<i64>);

/// A backend as the session knows it: its table, and where its news and counts go.
#[derive(Debug)]
pub(super) struct Attached {
    pub(super) sql: Arc<TableSql>,
    pub(super) target: Arc<Target>,
    pub(super) changes: Arc<Changes>,
    pub(super) counters: Arc<Counters>,
}

/// What the session is asked to do, each for one backend (`table`).
pub(super) enum Command {
    /// Set the backend's table up on the connection: create or check it, record or check its
    /// key layout, listen on its channel. Kept attached across reconnections.
    Attach {
        table: Arc<Attached>,
        done: oneshot::Sender<Result<()>>,
    },
    /// Commit the writes of `parts` (one per table) all together or not at all, in one
    /// transaction, possibly shared with other requests.
    Write {
        parts: Vec<Part>,
        done: oneshot::Sender<Result<Outcome>>,
    },
    /// Stream every row into `rows`.
    Load {
        table: Arc<Attached>,
        rows: mpsc::Sender<Scanned>,
    },
    /// Read the live rows of these keys.
    LoadKeys {
        table: Arc<Attached>,
        keys: Vec<String>,
        done: oneshot::Sender<Result<Vec<RawRow>>>,
    },
    /// Read the keys of at most `limit` expired rows, oldest deadline first.
    ExpiredKeys {
        table: Arc<Attached>,
        limit: i64,
        done: oneshot::Sender<Result<Vec<String>>>,
    },
    /// Read the table's revision.
    Revision {
        table: Arc<Attached>,
        done: oneshot::Sender<Result<i64>>,
    },
    /// Read the table's log after revision `since`, leaving out what `origin` wrote, with the
    /// rows of the keys it names.
    ReadLog {
        table: Arc<Attached>,
        since: i64,
        origin: i64,
        done: oneshot::Sender<Result<LogRead>>,
    },
    /// Answer once every command sent before this one is done.
    Flush { done: oneshot::Sender<()> },
}

/// What a load sends back.
pub(super) enum Scanned {
    Rows(Vec<RawRow>),
    Failed(PersistentError),
    Finished,
}

/// Counts of one backend, for [`super::PostgresBackend::stats`].
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) commits: AtomicU64,
    pub(super) writes: AtomicU64,
    pub(super) conflicts: AtomicU64,
    pub(super) reconnects: AtomicU64,
    pub(super) rows_read: AtomicU64,
}

/// How long to wait for a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Timeouts {
    /// How long work waits for a lost connection to come back before it fails.
    pub(super) reconnect: Duration,
    /// How long one attempt at some work may wait for the server's answers.
    pub(super) operation: Duration,
}

/// One caller's writes, each with its backend, and where to answer it.
type WriteRequest = (Vec<Part>, oneshot::Sender<Result<Outcome>>);

/// How long a group waits for the writers it expects: well under a commit, so a straggler costs
/// less than the commit it joins saves.
const GROUP_WAIT: Duration = Duration::from_micros(200);

/// Adds what is queued to `group`, then, while the group is smaller than `expected`, lets the
/// writers just answered send again and takes what they send, for at most `window`
/// ([`GROUP_WAIT`], or [`HOLD_WAIT`] while a transaction is held open for them). Tokio's timers
/// count milliseconds, too coarse for the first, so it yields instead of sleeping; the second
/// sleeps until a request comes, since spinning while locks are held would take the CPU from
/// the writers it waits for (measured: a fleet's hot key). Stops at a command that is not a
/// write (kept in `next`).
async fn gather(
    commands: &mut mpsc::UnboundedReceiver<Command>,
    group: &mut Vec<WriteRequest>,
    next: &mut Option<Command>,
    expected: usize,
    window: Duration,
) {
    take_queued(commands, group, next);
    let deadline = Instant::now() + window;
    while group.len() < expected.min(MAX_GROUP_REQUESTS) && next.is_none() {
        if Instant::now() >= deadline {
            return;
        }
        if window >= HOLD_WAIT {
            match tokio::time::timeout_at(deadline.into(), commands.recv()).await {
                Ok(Some(Command::Write { parts, done })) => group.push((parts, done)),
                Ok(Some(other)) => *next = Some(other),
                Ok(None) | Err(_) => return,
            }
        } else {
            tokio::task::yield_now().await;
        }
        take_queued(commands, group, next);
    }
}

/// Moves queued writes into `group` without waiting, up to a command that is not a write.
fn take_queued(
    commands: &mut mpsc::UnboundedReceiver<Command>,
    group: &mut Vec<WriteRequest>,
    next: &mut Option<Command>,
) {
    while next.is_none() && group.len() < MAX_GROUP_REQUESTS {
        match commands.try_recv() {
            Ok(Command::Write { parts, done }) => group.push((parts, done)),
            Ok(other) => *next = Some(other),
            Err(_) => return,
        }
    }
}

/// How long a transaction left open after conflicts (see [`Session::held`]) waits for the
/// requests computed again: a few of the maps' turns (settling the conflict, running the
/// closure again, sending) for each request, well under a commit.
const HOLD_WAIT: Duration = Duration::from_millis(1);

/// How often requests that wait for rows locked by other sessions are tried again when no other
/// write comes to carry them.
const ROW_LOCK_RETRY: Duration = Duration::from_millis(20);

/// Write requests merged into one transaction at most.
const MAX_GROUP_REQUESTS: usize = 4096;
/// Rows per message of a load.
const CHUNK_ROWS: usize = 1024;
/// A transaction chosen as a deadlock victim (or a serialization failure) is retried this many
/// times before its error is returned.
const MAX_TRANSIENT_RETRIES: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(25);
/// A commit group that takes longer than this is logged as slow.
const SLOW_COMMIT: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Why one attempt at some work failed.
enum Failure {
    /// The connection broke: reconnect and try again.
    Connection(tokio_postgres::Error),
    /// The server aborted the transaction for a conflict with another one: try again.
    Transient(tokio_postgres::Error),
    /// The connection broke after part of the answer was handed over: not retried.
    BrokenMidway(tokio_postgres::Error),
    /// The server refused the work: trying again would fail the same way.
    Refused(PersistentError),
}

/// Why some work failed in the end.
enum Failed {
    /// No connection could be had before the reconnect timeout, or the server did not answer
    /// within the operation timeout: the reason, for a [`PersistentError::Connect`] to every
    /// request of the group.
    Unavailable(String),
    /// The server refused the work.
    Refused(PersistentError),
}

/// The session's state; runs in its own task until every handle is dropped.
pub(super) struct Session {
    endpoint: Endpoint,
    listeners: Arc<Listeners>,
    /// The connection's state, as the backends report it and refuse work by it.
    link: Arc<Link>,
    /// The backends whose tables the connection serves, kept across reconnections.
    attached: Vec<Weak<Attached>>,
    timeouts: Timeouts,
    live: Option<Live>,
    /// The number of the last connection attempt.
    generation: u64,
    backoff: Duration,
    /// Why the last connection attempt failed, or why the connection was lost.
    last_failure: String,
    /// Transactions committed, to prune the change log every so often.
    commits: u64,
    /// Requests left out of a commit because a row they write is locked by another session
    /// (see `commit::waiting_requests`), in the order they came, with since when they wait:
    /// they go first in the next group, until they have waited a quarter of the operation
    /// timeout (as long as `lock_timeout` would have let them).
    waiting: Vec<(WriteRequest, Instant)>,
    /// The rows (table and key) last found locked by other sessions, each logged once.
    locked_rows: HashSet<(String, String)>,
    /// The transaction the last commit left open (see [`Committed::Held`]): every request it
    /// decided conflicted with what another instance committed, and was answered; their maps
    /// compute them again from what is stored and send them within [`HOLD_WAIT`], to be
    /// committed in it. Rolled back if they do not come, or before any other work.
    held: Option<Box<Begun>>,
}

impl Session {
    /// Opens the first connection. Fails at once, rather than retrying, so that a wrong URL or
    /// an unreachable server is reported to the caller (as an error about `target`).
    pub(super) async fn connect(
        endpoint: Endpoint,
        timeouts: Timeouts,
        target: &Target,
        link: Arc<Link>,
    ) -> Result<Self> {
        let generation = 1;
        let listeners = Arc::new(Listeners::default());
        let timeout = endpoint.connect_timeout;
        let live = connect::open(&endpoint, &[], &listeners, &link, generation, timeout)
            .await
            .map_err(|failure| failure.into_error(target))?;
        Ok(Self {
            endpoint,
            listeners,
            link,
            attached: Vec::new(),
            timeouts,
            live: Some(live),
            generation,
            backoff: FIRST_BACKOFF,
            last_failure: String::new(),
            commits: 0,
            waiting: Vec::new(),
            locked_rows: HashSet::new(),
            held: None,
        })
    }

    /// Serves `commands` until every sender is dropped.
    ///
    /// Writes are committed in groups, as SQLite's writer does: what queued during a commit
    /// joins the next one, and a group also waits briefly for the writers just acknowledged
    /// (see [`gather`]), so that 16 writers taking turns share one commit instead of settling
    /// into two alternating groups of 8.
    pub(super) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut group: Vec<WriteRequest> = Vec::new();
        // A command that is not a write, found while gathering: it is served after the group.
        let mut next: Option<Command> = None;
        // Writers acknowledged by the last commit plus those already queued for the next one.
        let mut expected = 0;
        let mut queued_before_answers = false;
        let mut answered_while_held = 0;
        loop {
            if group.is_empty() {
                let command = match next.take() {
                    Some(command) => Some(command),
                    None => match self.next_work(&mut commands).await {
                        Some(command) => command,
                        None => return,
                    },
                };
                match command {
                    Some(Command::Write { parts, done }) => group.push((parts, done)),
                    Some(other) => {
                        self.release_held().await;
                        self.serve(other).await;
                        continue;
                    }
                    None => {}
                }
            }
            let mut waited = self.take_waiting(&mut group);
            if group.is_empty() {
                continue;
            }
            let window = match self.held {
                // Requests queued before the held transaction's conflicts were answered are
                // not the ones computed again, and on a hot key those wait for them: they go
                // at once (on the key they conflict too, decided without a round trip).
                Some(_) if queued_before_answers => Duration::ZERO,
                Some(_) => HOLD_WAIT,
                None => GROUP_WAIT,
            };
            gather(&mut commands, &mut group, &mut next, expected, window).await;
            waited.resize(group.len(), None);
            let committed = std::mem::take(&mut group);
            let results = self.commit_group(&committed).await;
            take_queued(&mut commands, &mut group, &mut next);
            queued_before_answers = !group.is_empty();
            // While a transaction is held, every request it answered is to come again.
            answered_while_held = match self.held {
                Some(_) => answered_while_held + committed.len(),
                None => 0,
            };
            expected = committed.len().max(answered_while_held) + group.len();
            let settled = committed.into_iter().zip(waited).zip(results);
            for ((request, waited), result) in settled {
                match result {
                    Some(result) => {
                        let _ = request.1.send(result);
                    }
                    None => self
                        .waiting
                        .push((request, waited.unwrap_or_else(Instant::now))),
                }
            }
            if self.waiting.is_empty() {
                self.forget_locked_rows();
            }
        }
    }

    /// Waits for the next command: `Some(None)` if none came in time for the work that cannot
    /// wait long (a held transaction, which is then rolled back; requests waiting for locked
    /// rows, to try again); `None` once every sender is dropped.
    async fn next_work(
        &mut self,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Option<Option<Command>> {
        let wait = match (&self.held, self.waiting.is_empty()) {
            (Some(_), _) => HOLD_WAIT,
            (None, false) => ROW_LOCK_RETRY,
            (None, true) => return self.next_command(commands).await.map(Some),
        };
        match tokio::time::timeout(wait, self.next_command(commands)).await {
            Ok(command) => command.map(Some),
            Err(_elapsed) => {
                self.release_held().await;
                Some(None)
            }
        }
    }

    /// Puts the requests that wait for rows locked by other sessions at the head of `group`
    /// (they came first), failing those that have waited long enough; returns, for the head of
    /// the group, since when each has waited.
    fn take_waiting(&mut self, group: &mut Vec<WriteRequest>) -> Vec<Option<Instant>> {
        let patience = self.timeouts.operation / 4;
        let mut still = Vec::with_capacity(self.waiting.len());
        let mut since = Vec::with_capacity(self.waiting.len());
        for (request, waited) in std::mem::take(&mut self.waiting) {
            if waited.elapsed() < patience {
                still.push(request);
                since.push(Some(waited));
                continue;
            }
            let error = self.row_locked_error(&request.0, waited.elapsed());
            let _ = request.1.send(Err(error));
        }
        group.splice(0..0, still);
        since
    }

    /// The error of a request that waited `waited` for rows another session kept locked,
    /// naming them (or, for a request that waited behind another write of its keys, its keys).
    fn row_locked_error(&self, parts: &[Part], waited: Duration) -> PersistentError {
        let keys: Vec<(&str, &str)> = parts
            .iter()
            .flat_map(|(table, write)| {
                let checked = write.conditions.iter().map(|(key, _)| key.as_str());
                let written = write.ops.iter().filter_map(RawOp::key);
                checked
                    .chain(written)
                    .map(|key| (table.sql.name.as_str(), key))
            })
            .collect();
        let locked: Vec<&(&str, &str)> = keys
            .iter()
            .filter(|(table, key)| {
                self.locked_rows
                    .contains(&((*table).to_owned(), (*key).to_owned()))
            })
            .collect();
        let (table, key) = locked
            .first()
            .copied()
            .or(keys.first())
            .copied()
            .unwrap_or_default();
        tracing::warn!(table = %table, key = %key, waited = ?waited, "a row stayed locked by another session; its write fails");
        PersistentError::Backend(
            format!(
                "PostgreSQL at {}, table {table:?}: the row of key {key:?} stayed locked by \
                 another session for {waited:?} (lock timeout); the write was not committed",
                self.endpoint.host
            )
            .into(),
        )
    }

    /// Logs the rows found locked by other sessions that were not known to be.
    fn note_locked_rows(&mut self, locked: Vec<(String, String)>) {
        for row in locked {
            if !self.locked_rows.contains(&row) {
                let (table, key) = &row;
                tracing::warn!(table = %table, key = %key, "the row of a key is locked by another session: its writes wait, the other keys' go on");
                self.locked_rows.insert(row);
            }
        }
    }

    /// No request waits any more: the rows last found locked are free, or their writes failed.
    fn forget_locked_rows(&mut self) {
        for (table, key) in self.locked_rows.drain() {
            tracing::info!(table = %table, key = %key, "no write waits for the row another session locked any more");
        }
    }

    /// Serves a command that is not a write.
    async fn serve(&mut self, command: Command) {
        match command {
            Command::Write { .. } => unreachable!("`run` gathers every write into a group"),
            Command::Attach { table, done } => {
                let result = self.attach(table).await;
                let _ = done.send(result);
            }
            Command::Load { table, rows } => self.load(&table, &rows).await,
            Command::LoadKeys { table, keys, done } => {
                let result = self.load_keys(&table, &keys).await;
                let _ = done.send(result);
            }
            Command::ExpiredKeys { table, limit, done } => {
                let result = match self
                    .retrying(Work::ExpiredKeys {
                        table: &table,
                        limit,
                    })
                    .await
                {
                    Ok(Loaded::Keys(keys)) => Ok(keys),
                    Ok(_) => unreachable!("a read of expired keys returns keys"),
                    Err(failed) => Err(error_of(&table.target, failed)),
                };
                let _ = done.send(result);
            }
            Command::Revision { table, done } => {
                let result = match self.retrying(Work::Revision { table: &table }).await {
                    Ok(Loaded::Revision(rev)) => Ok(rev),
                    Ok(_) => unreachable!("a revision read returns the revision"),
                    Err(failed) => Err(error_of(&table.target, failed)),
                };
                let _ = done.send(result);
            }
            Command::ReadLog {
                table,
                since,
                origin,
                done,
            } => {
                let result = self.read_log(&table, since, origin).await;
                let _ = done.send(result);
            }
            Command::Flush { done } => {
                let _ = done.send(());
            }
        }
    }

    /// Waits for the next command. Meanwhile notices a lost connection and reconnects, with
    /// growing pauses between failed attempts.
    async fn next_command(
        &mut self,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Option<Command> {
        loop {
            match &mut self.live {
                Some(live) => tokio::select! {
                    biased;
                    command = commands.recv() => return command,
                    () = live.closed() => self.drop_connection("the connection was closed".to_owned(), false),
                },
                None => tokio::select! {
                    biased;
                    command = commands.recv() => return command,
                    () = tokio::time::sleep(self.backoff) => {
                        // While reconnecting, an attempt ends by the time the connection counts
                        // as down, so that work queued meanwhile waits no longer than that.
                        let left = self
                            .link
                            .wait_for_connection_until()
                            .saturating_duration_since(Instant::now());
                        let timeout = match left.is_zero() {
                            true => self.endpoint.connect_timeout,
                            false => self.endpoint.connect_timeout.min(left),
                        };
                        if !self.reconnect(timeout).await {
                            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                },
            }
        }
    }

    /// Sets `table` up on the connection and keeps it attached.
    async fn attach(&mut self, table: Arc<Attached>) -> Result<()> {
        let shared = self.live_tables().next().is_some();
        match self.retrying(Work::Attach { table: &table }).await {
            Ok(_) => {}
            Err(failed) => return Err(error_of(&table.target, failed)),
        }
        self.listeners.add(&table.sql.name, &table.changes);
        self.attached.retain(|attached| attached.strong_count() > 0);
        self.attached.push(Arc::downgrade(&table));
        let target = &table.target;
        tracing::info!(table = %target.table, host = %target.host, shared, "connected to PostgreSQL");
        Ok(())
    }

    /// The backends still attached.
    fn live_tables(&self) -> impl Iterator<Item = Arc<Attached>> + '_ {
        self.attached.iter().filter_map(Weak::upgrade)
    }

    /// Commits a group of write requests in one transaction and answers each. If the shared
    /// transaction is refused, its halves are tried apart, in order, and theirs in turn, so
    /// that a bad request fails alone (after about twice the logarithm of the group's size in
    /// transactions) and the others still commit.
    ///
    /// A server that cannot be reached or does not answer fails the rest of the group at once:
    /// trying the requests apart would make each wait as long again. A request whose result is
    /// `None` was left out: it waits for a row that another session holds locked, and so does
    /// every request after it that was not committed yet (a key's writes are committed in the
    /// order they came).
    async fn commit_group(&mut self, group: &[WriteRequest]) -> Vec<Option<Result<Outcome>>> {
        let requests: Vec<&[Part]> = group.iter().map(|(parts, _)| parts.as_slice()).collect();
        let mut results: Vec<Option<Result<Outcome>>> = Vec::with_capacity(requests.len());
        let mut ranges = std::collections::VecDeque::new();
        ranges.push_back(0..requests.len());
        let (mut unavailable, mut waiting) = (None::<String>, false);
        while let Some(range) = ranges.pop_front() {
            let part = &requests[range.clone()];
            if let Some(reason) = &unavailable {
                let failed = |parts: &&[Part]| first_target(parts).connect_error(reason.clone());
                results.extend(part.iter().map(|parts| Some(Err(failed(parts)))));
                continue;
            }
            if waiting {
                results.extend(part.iter().map(|_| None));
                continue;
            }
            match self.commit(part).await {
                Ok(outcomes) => {
                    waiting = outcomes.iter().any(Option::is_none);
                    results.extend(outcomes.into_iter().map(|outcome| outcome.map(Ok)));
                }
                Err(Failed::Unavailable(reason)) => {
                    let failed =
                        |parts: &&[Part]| first_target(parts).connect_error(reason.clone());
                    results.extend(part.iter().map(|parts| Some(Err(failed(parts)))));
                    unavailable = Some(reason);
                }
                Err(Failed::Refused(error)) if part.len() == 1 => results.push(Some(Err(error))),
                Err(Failed::Refused(error)) => {
                    tracing::warn!(
                        table = %first_target(part[0]).table,
                        requests = part.len(),
                        error = %error,
                        "a group commit was refused; committing its halves apart"
                    );
                    let middle = range.start + part.len() / 2;
                    ranges.push_front(middle..range.end);
                    ranges.push_front(range.start..middle);
                }
            }
        }
        results
    }

    /// One transaction serving `requests` (see `commit.rs`), and what it did counted and logged
    /// for each table and backend.
    async fn commit(
        &mut self,
        requests: &[&[Part]],
    ) -> std::result::Result<Vec<Option<Outcome>>, Failed> {
        let named: Vec<Request<'_>> = requests
            .iter()
            .map(|parts| {
                parts
                    .iter()
                    .map(|(table, write)| (table.sql.name.as_str(), write))
                    .collect()
            })
            .collect();
        let plan = Plan::new(&named);
        if plan.is_empty() {
            return Ok(plan.trivial().outcomes);
        }
        let work = Work::Commit {
            target: first_target(requests[0]),
            plan: &plan,
            prune: self.commits.is_multiple_of(log::PRUNE_EVERY_COMMITS),
            sent: None,
            held: self.held.take(),
        };
        let start = Instant::now();
        let decided = match self.retrying(work).await? {
            Loaded::Committed(decided) => decided,
            Loaded::Held(decided, begun) => {
                self.held = Some(begun);
                decided
            }
            _ => unreachable!("a commit answers with what it decided"),
        };
        let elapsed = start.elapsed();
        let wake_writers = self
            .commits
            .is_multiple_of(notify::WAKE_WRITERS_EVERY_COMMITS);
        self.commits += 1;
        count_commit(requests, &decided.outcomes);
        self.note_locked_rows(decided.locked);
        for (table, rev, writes) in &decided.announced {
            let sole_writer = sole_writer(requests, table).filter(|_| !wake_writers);
            self.listeners.committed(table, (*rev, writes), sole_writer);
        }
        for (table, summary) in &decided.tables {
            let commit::Summary {
                requests,
                rows,
                cleared,
                conflicts,
            } = *summary;
            tracing::debug!(table = %table, requests, rows, cleared, conflicts, elapsed = ?elapsed, "commit");
            if elapsed > SLOW_COMMIT {
                tracing::warn!(table = %table, requests, rows, elapsed = ?elapsed, "slow commit");
            }
        }
        Ok(decided.outcomes)
    }

    /// Streams every row of `table` to `rows`, in chunks.
    async fn load(&mut self, table: &Attached, rows: &mpsc::Sender<Scanned>) {
        let work = Work::Load {
            table,
            rows,
            sent_any: false,
            count: 0,
        };
        let start = Instant::now();
        let last = match self.retrying(work).await {
            Ok(Loaded::Streamed(count)) => {
                table
                    .counters
                    .rows_read
                    .fetch_add(count as u64, Ordering::Relaxed);
                tracing::debug!(table = %table.target.table, rows = count, elapsed = ?start.elapsed(), "load");
                Scanned::Finished
            }
            Ok(_) => unreachable!("a load streams its rows"),
            Err(failed) => Scanned::Failed(error_of(&table.target, failed)),
        };
        let _ = rows.send(last).await;
    }

    async fn load_keys(&mut self, table: &Attached, keys: &[String]) -> Result<Vec<RawRow>> {
        let start = Instant::now();
        let found = match self.retrying(Work::LoadKeys { table, keys }).await {
            Ok(Loaded::Rows(found)) => found,
            Ok(_) => unreachable!("a key load returns its rows"),
            Err(failed) => return Err(error_of(&table.target, failed)),
        };
        table
            .counters
            .rows_read
            .fetch_add(found.len() as u64, Ordering::Relaxed);
        tracing::debug!(table = %table.target.table, keys = keys.len(), rows = found.len(), elapsed = ?start.elapsed(), "load keys");
        Ok(found)
    }

    async fn read_log(&mut self, table: &Attached, since: i64, origin: i64) -> Result<LogRead> {
        let start = Instant::now();
        let work = Work::ReadLog {
            table,
            since,
            origin,
        };
        let read = match self.retrying(work).await {
            Ok(Loaded::Log(read)) => read,
            Ok(_) => unreachable!("a log read returns the log"),
            Err(failed) => return Err(error_of(&table.target, failed)),
        };
        let rows = read.keys.iter().filter(|(_, row)| row.is_some()).count();
        table
            .counters
            .rows_read
            .fetch_add(rows as u64, Ordering::Relaxed);
        tracing::debug!(table = %table.target.table, since, rev = read.rev, keys = read.keys.len(), rows, elapsed = ?start.elapsed(), "read the change log");
        Ok(read)
    }

    /// Runs `work` on the connection, reconnecting and trying again while the connection
    /// breaks, until the reconnect timeout counted from the loss. An attempt the server does not
    /// finish answering within the operation timeout is not tried again: its connection is
    /// dropped, its server session ended from a new connection (the server may still hold its
    /// locks), and the work fails.
    async fn retrying(&mut self, mut work: Work<'_>) -> std::result::Result<Loaded, Failed> {
        let mut transient_retries = 0;
        loop {
            self.connect_before().await?;
            let Some(attempted) = self.attempt(&mut work).await else {
                return Err(self.timed_out(&work));
            };
            match attempted {
                Ok(loaded) => return Ok(loaded),
                Err(Failure::Refused(error)) => return Err(Failed::Refused(error)),
                Err(Failure::Transient(error)) => {
                    transient_retries += 1;
                    tracing::warn!(
                        table = %work.table(),
                        retry = transient_retries,
                        error = %describe_error(&error),
                        "the server aborted a transaction for a conflict; retrying"
                    );
                    if transient_retries > MAX_TRANSIENT_RETRIES {
                        return Err(Failed::Refused(work.target().postgres_error(error)));
                    }
                }
                Err(Failure::BrokenMidway(error)) => {
                    self.drop_connection(describe_error(&error), false);
                    return Err(Failed::Refused(work.target().postgres_error(error)));
                }
                Err(Failure::Connection(error)) => {
                    self.drop_connection(describe_error(&error), false);
                    tracing::warn!(
                        table = %work.table(),
                        commit_answer_lost = work.commit_sent(),
                        "retrying on a new connection"
                    );
                }
            }
        }
    }

    /// One attempt at `work` on the live connection, marked in flight on the link (stalled,
    /// and logged so, once unanswered for half the operation timeout); `None` if it had no
    /// answer within the operation timeout.
    async fn attempt(
        &mut self,
        work: &mut Work<'_>,
    ) -> Option<std::result::Result<Loaded, Failure>> {
        let live = self
            .live
            .as_mut()
            .expect("connect_before returns Ok only with a live connection");
        let (link, attached) = (&self.link, &self.attached);
        let attempt = work.attempt(live);
        tokio::pin!(attempt);
        link.sent();
        let stall_after = link.stall_after();
        let answered = tokio::select! {
            biased;
            attempted = &mut attempt => Some(attempted),
            () = tokio::time::sleep(stall_after) => {
                link.log_change(|| table_names(attached));
                let left = self.timeouts.operation.saturating_sub(stall_after);
                tokio::time::timeout(left, &mut attempt).await.ok()
            }
        };
        link.answered();
        if answered.is_some() {
            link.log_change(|| table_names(attached));
        }
        answered
    }

    /// The attempt at `work` got no answer in time: drops the connection (the link is down at
    /// once: new work fails until a reconnection succeeds), ends its server session from a new
    /// connection, and says what that means for the work.
    fn timed_out(&mut self, work: &Work<'_>) -> Failed {
        let timeout = self.timeouts.operation;
        let outcome_unknown = work.commit_sent();
        tracing::warn!(
            table = %work.table(),
            timeout = ?timeout,
            outcome_unknown,
            "no answer within the operation timeout; dropping the connection"
        );
        if let Some(live) = &self.live {
            tokio::spawn(connect::end_stuck_session(
                self.endpoint.config.clone(),
                self.endpoint.tls.clone(),
                self.endpoint.connect_timeout,
                self.endpoint.host.clone(),
                live.server_session.clone(),
            ));
        }
        self.drop_connection(
            format!("the server did not answer within the operation timeout of {timeout:?}"),
            true,
        );
        if let (true, Work::Commit { plan, .. }) = (outcome_unknown, work) {
            // The maps keep their old values; a reload shows what happened. (The log cannot: a
            // commit that did happen is logged as the writing map's own.)
            for table in plan.tables() {
                tracing::warn!(table = %table, "forcing a reload: a commit's outcome is unknown");
                self.listeners.reload_later(table);
            }
        }
        Failed::Unavailable(match work {
            Work::Commit { .. } if outcome_unknown => format!(
                "the commit got no answer within the operation timeout of {timeout:?}, so \
                 whether the write was committed is unknown; the map keeps its old value and \
                 reloads the table at its next refresh"
            ),
            Work::Commit { .. } => format!(
                "no answer within the operation timeout of {timeout:?}; the write was not \
                 committed (its transaction was abandoned with the connection)"
            ),
            _ => format!(
                "no answer within the operation timeout of {timeout:?}; the work was abandoned \
                 with the connection"
            ),
        })
    }

    /// Makes sure there is a connection, trying until the reconnect timeout after the loss;
    /// fails at once if the link is down.
    async fn connect_before(&mut self) -> std::result::Result<(), Failed> {
        while self.live.is_none() {
            if let Some(refusal) = self.link.refusal() {
                return Err(Failed::Unavailable(refusal));
            }
            let deadline = self.link.wait_for_connection_until();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failed::Unavailable(self.unreachable_reason()));
            }
            if self
                .reconnect(self.endpoint.connect_timeout.min(left))
                .await
            {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failed::Unavailable(self.unreachable_reason()));
            }
            tokio::time::sleep(self.backoff.min(left)).await;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
        Ok(())
    }

    /// One attempt at a new connection, of at most `timeout`, serving every attached table.
    /// What was committed meanwhile is in the change log: the maps are woken to read it.
    async fn reconnect(&mut self, timeout: Duration) -> bool {
        self.generation += 1;
        let attached: Vec<Arc<Attached>> = self.live_tables().collect();
        let mut tables: HashMap<&str, Arc<TableSql>> = HashMap::new();
        for table in &attached {
            tables.insert(&table.sql.name, Arc::clone(&table.sql));
        }
        let tables: Vec<Arc<TableSql>> = tables.into_values().collect();
        let opened = connect::open(
            &self.endpoint,
            &tables,
            &self.listeners,
            &self.link,
            self.generation,
            timeout,
        )
        .await;
        let opened = match opened {
            Ok(live) => {
                self.live = Some(live);
                self.backoff = FIRST_BACKOFF;
                self.link.connected(self.generation);
                self.link.log_change(|| table_names(&self.attached));
                self.listeners.connection_changed();
                for table in &attached {
                    table.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                true
            }
            Err(failure) => {
                self.last_failure = failure.to_string();
                self.link.reconnect_failed(&self.last_failure);
                tracing::warn!(host = %self.endpoint.host, tables = %table_names(&self.attached), generation = self.generation, error = %self.last_failure, "a reconnect attempt failed");
                false
            }
        };
        self.link.log_change(|| table_names(&self.attached));
        opened
    }

    /// Rolls back the transaction held open, if any, freeing its locks.
    async fn release_held(&mut self) {
        if self.held.take().is_none() {
            return;
        }
        if let Some(live) = &self.live
            && let Err(error) = live.client.query(&live.statements.rollback, &[]).await
        {
            self.drop_connection(describe_error(&error), false);
        }
    }

    /// Forgets the connection, lost for `reason` (`unanswered`: the server stopped answering).
    fn drop_connection(&mut self, reason: String, unanswered: bool) {
        self.held = None;
        self.live = None;
        self.backoff = FIRST_BACKOFF;
        self.link.lost(self.generation, &reason, unanswered);
        self.listeners.connection_changed();
        self.last_failure = reason;
        self.link.log_change(|| table_names(&self.attached));
    }

    fn unreachable_reason(&self) -> String {
        format!(
            "the connection was lost and could not be re-established within {:?} ({})",
            self.timeouts.reconnect, self.last_failure
        )
    }
}

/// The tables a connection serves, for its events: `a,b,c`.
fn table_names(attached: &[Weak<Attached>]) -> String {
    let mut names: Vec<String> = attached
        .iter()
        .filter_map(Weak::upgrade)
        .map(|table| table.sql.name.clone())
        .collect();
    names.sort_unstable();
    names.dedup();
    names.join(",")
}

/// Whose errors a request reports: its first part's backend. (A request has a part: the
/// backend sends one, and a transaction only parts that check or write something.)
fn first_target(parts: &[Part]) -> &Target {
    &parts.first().expect("a request has a part").0.target
}

/// The backend that made every part of `requests` on `table`, if one did.
fn sole_writer<'r>(requests: &[&'r [Part]], table: &str) -> Option<&'r Changes> {
    let mut writers = requests
        .iter()
        .copied()
        .flatten()
        .filter(|(attached, _)| attached.sql.name == table)
        .map(|(attached, _)| &attached.changes);
    let first = writers.next()?;
    writers
        .all(|other| Arc::ptr_eq(other, first))
        .then_some(&**first)
}

/// Counts a commit for each backend it served: per backend, the parts of its requests that
/// were applied (acknowledged writes) and refused by a condition (conflicts), and one commit
/// if the transaction carried a write of its. Requests left to wait count as neither.
fn count_commit(requests: &[&[Part]], outcomes: &[Option<Outcome>]) {
    /// A backend, and its applied and refused parts.
    type Served<'r> = (*const Attached, &'r Attached, u64, u64);
    let mut served: Vec<Served<'_>> = Vec::new();
    for (parts, outcome) in requests.iter().copied().zip(outcomes) {
        let Some(outcome) = outcome else { continue };
        let applied = matches!(outcome, Outcome::Applied { .. });
        for (table, _) in parts {
            let id: *const Attached = Arc::as_ptr(table);
            let index = match served.iter().position(|(seen, ..)| *seen == id) {
                Some(index) => index,
                None => {
                    served.push((id, &**table, 0, 0));
                    served.len() - 1
                }
            };
            let (_, _, writes, conflicts) = &mut served[index];
            *(if applied { writes } else { conflicts }) += 1;
        }
    }
    for (_, table, writes, conflicts) in served {
        let counters = &table.counters;
        if writes > 0 {
            counters.commits.fetch_add(1, Ordering::Relaxed);
        }
        counters.writes.fetch_add(writes, Ordering::Relaxed);
        counters.conflicts.fetch_add(conflicts, Ordering::Relaxed);
    }
}

fn error_of(target: &Target, failed: Failed) -> PersistentError {
    match failed {
        Failed::Unavailable(reason) => target.connect_error(reason),
        Failed::Refused(error) => error,
    }
}

/// What a successful attempt read.
enum Loaded {
    /// What a commit decided.
    Committed(Decided),
    /// What a commit decided, nothing but conflicts, its transaction left open.
    Held(Decided, Box<Begun>),
    /// The table is set up on the connection.
    Attached,
    /// The rows of the keys asked for.
    Rows(Vec<RawRow>),
    /// The keys of expired rows.
    Keys(Vec<String>),
    /// How many rows a load streamed.
    Streamed(usize),
    Revision(i64),
    Log(LogRead),
}

/// A commit whose `COMMIT` was sent: what it decided, and its transaction id, to ask the
/// server whether it committed if the answer is lost.
struct Sent {
    txid: i64,
    decided: Decided,
    /// The server session it was sent on, ended if the transaction is still in progress there.
    server_session: ServerSession,
}

/// Work for the connection that can be tried again on a new one.
enum Work<'a> {
    Commit {
        /// Whose errors a refused commit reports (its first request's backend).
        target: &'a Target,
        plan: &'a Plan<'a>,
        /// Also prune the change log (in bounded batches).
        prune: bool,
        /// Set once `COMMIT` was sent: if its answer is lost, the next attempt first asks the
        /// server whether that transaction committed, so that a commit is never made twice.
        sent: Option<Sent>,
        /// A transaction left open by the previous commit (see [`Committed::Held`]): used if it
        /// covers this plan, else rolled back first.
        held: Option<Box<Begun>>,
    },
    Attach {
        table: &'a Attached,
    },
    /// Streams every row into `rows`. A connection lost before the first chunk went out is
    /// retried; after that the receiver has part of the table, so the load fails instead.
    Load {
        table: &'a Attached,
        rows: &'a mpsc::Sender<Scanned>,
        sent_any: bool,
        count: usize,
    },
    LoadKeys {
        table: &'a Attached,
        keys: &'a [String],
    },
    ExpiredKeys {
        table: &'a Attached,
        limit: i64,
    },
    Revision {
        table: &'a Attached,
    },
    ReadLog {
        table: &'a Attached,
        since: i64,
        origin: i64,
    },
}

impl<'a> Work<'a> {
    /// One attempt.
    async fn attempt(&mut self, live: &mut Live) -> std::result::Result<Loaded, Failure> {
        let target = self.target();
        match self {
            Work::Commit {
                plan,
                prune,
                sent,
                held,
                ..
            } => {
                if let Some(begun) = held.take() {
                    if begun.covers(plan, live) {
                        let on_commit_sent = remember_sent(sent, live);
                        let finished =
                            commit::finish(live, plan, *begun, *prune, false, on_commit_sent).await;
                        return match finished {
                            Ok(Committed::Done(decided)) => {
                                *sent = None;
                                Ok(Loaded::Committed(decided))
                            }
                            Ok(_) => unreachable!("a held transaction is finished, not held again"),
                            Err(error) => Err(classify(target)(error)),
                        };
                    }
                    rollback(live, target).await?;
                }
                if let Some(earlier) = sent.take() {
                    let committed = transaction_committed(live, &earlier, target).await?;
                    let txid = earlier.txid;
                    if committed {
                        tracing::info!(table = %target.table, txid, "a commit whose answer was lost had committed: its writes are acknowledged with what it decided");
                        return Ok(Loaded::Committed(earlier.decided));
                    }
                    tracing::warn!(table = %target.table, txid, "a commit whose answer was lost had not committed: trying it again, its conditions checked anew");
                }
                add_missing_columns(live, plan, target).await?;
                let mut relayouts = 0;
                loop {
                    let on_commit_sent = remember_sent(sent, live);
                    let committed =
                        commit::commit_once(live, plan, *prune, true, on_commit_sent).await;
                    match committed {
                        Ok(Committed::Done(decided)) => {
                            *sent = None;
                            return Ok(Loaded::Committed(decided));
                        }
                        Ok(Committed::Held(decided, begun)) => {
                            return Ok(Loaded::Held(decided, Box::new(begun)));
                        }
                        Ok(Committed::LayoutChanged(with_column)) => {
                            relayouts += 1;
                            relayout(live, &plan.tables(), &with_column, relayouts, target).await?;
                            // A table that lost the column must get it back for a deadline.
                            add_missing_columns(live, plan, target).await?;
                        }
                        Err(error) => return Err(classify(target)(error)),
                    }
                }
            }
            Work::Attach { table } => {
                connect::attach(live, &table.sql, true)
                    .await
                    .map_err(|failure| match failure {
                        OpenFailure::Statement(error) => classify(target)(error),
                        OpenFailure::Rejected(error) => Failure::Refused(error),
                        OpenFailure::Unreachable(reason) => {
                            Failure::Refused(target.connect_error(reason))
                        }
                    })?;
                Ok(Loaded::Attached)
            }
            Work::Load {
                table,
                rows,
                sent_any,
                count,
            } => {
                *count = 0;
                scan(live, &table.sql.name, rows, sent_any, count, target).await?;
                Ok(Loaded::Streamed(*count))
            }
            Work::LoadKeys { table, keys } => {
                let now = expiry::now_sql();
                let found = read_checked(
                    live,
                    &table.sql.name,
                    target,
                    |statements| Some(&statements.select_keys),
                    &[keys, &now],
                )
                .await?;
                let mut rows = Vec::with_capacity(found.len());
                for row in &found {
                    // The fourth column: whether the row has expired.
                    if !row.try_get::<_, bool>(3).map_err(classify(target))? {
                        rows.push(raw_row(row).map_err(classify(target))?);
                    }
                }
                Ok(Loaded::Rows(rows))
            }
            Work::ExpiredKeys { table, limit } => {
                let now = expiry::now_sql();
                // A table without the column has no statement: nothing has a deadline.
                let found = read_checked(
                    live,
                    &table.sql.name,
                    target,
                    |statements| statements.sweep_candidates.as_ref(),
                    &[&now, limit],
                )
                .await?;
                columns_of(&found)
                    .map(Loaded::Keys)
                    .map_err(classify(target))
            }
            Work::Revision { table } => {
                let row = live
                    .client
                    .query_one(&live.statements.revision, &[&table.sql.name])
                    .await
                    .map_err(classify(target))?;
                Ok(Loaded::Revision(row.try_get(0).map_err(classify(target))?))
            }
            Work::ReadLog {
                table,
                since,
                origin,
            } => {
                let (limit, now) = (log::MAX_CATCH_UP_ROWS, expiry::now_sql());
                let params: [&(dyn ToSql + Sync); 5] =
                    [&table.sql.name, since, origin, &limit, &now];
                // One statement, which also says whether the table has the column `expires_at`
                // (see `log::since`): the catch-up after another instance's commit is one
                // round trip. Statements prepared for the other layout read again, checked.
                let statements = live.table(&table.sql.name);
                let expiring = statements.expiring;
                let mut rows = live
                    .client
                    .query(&statements.read_log, &params)
                    .await
                    .map_err(classify(target))?;
                let layout_held = rows
                    .iter()
                    .all(|row| row.try_get::<_, bool>(7).is_ok_and(|has| has == expiring));
                if !layout_held {
                    rows = read_checked(
                        live,
                        &table.sql.name,
                        target,
                        |statements| Some(&statements.read_log),
                        &params,
                    )
                    .await?;
                }
                read_log(&rows).map(Loaded::Log).map_err(classify(target))
            }
        }
    }

    /// Whose errors this work reports.
    fn target(&self) -> &'a Target {
        match *self {
            Work::Commit { target, .. } => target,
            Work::Attach { table }
            | Work::Load { table, .. }
            | Work::LoadKeys { table, .. }
            | Work::ExpiredKeys { table, .. }
            | Work::Revision { table }
            | Work::ReadLog { table, .. } => &table.target,
        }
    }

    /// The table this work is about (a commit's first), for logging.
    fn table(&self) -> &str {
        &self.target().table
    }

    fn commit_sent(&self) -> bool {
        matches!(self, Work::Commit { sent: Some(_), .. })
    }
}

/// What to do as a commit's `COMMIT` goes out on `live`: remember it in `sent`, to ask the
/// server about it if the answer is lost.
fn remember_sent<'s>(sent: &'s mut Option<Sent>, live: &Live) -> impl FnOnce(i64, &Decided) + 's {
    let server_session = live.server_session.clone();
    move |txid, decided| {
        *sent = Some(Sent {
            txid,
            decided: decided.clone(),
            server_session,
        });
    }
}

/// Ends the transaction open on `live`, freeing its locks.
async fn rollback(live: &Live, target: &Target) -> std::result::Result<(), Failure> {
    live.client
        .query(&live.statements.rollback, &[])
        .await
        .map(drop)
        .map_err(classify(target))
}

/// Whether the transaction of `sent`, whose `COMMIT` was sent on a connection since lost,
/// committed. While the server still runs it (it has not noticed the lost connection yet), ends
/// that old session, which settles the transaction one way or the other, and asks again.
async fn transaction_committed(
    live: &mut Live,
    sent: &Sent,
    target: &Target,
) -> std::result::Result<bool, Failure> {
    let mut ended_old_session = false;
    loop {
        let row = live
            .client
            .query_one(&live.statements.transaction_status, &[&sent.txid])
            .await
            .map_err(classify(target))?;
        let status: Option<String> = row.try_get(0).map_err(classify(target))?;
        match status.as_deref() {
            Some("committed") => return Ok(true),
            Some("in progress") if !ended_old_session => {
                sent.server_session
                    .terminate_through(&live.client)
                    .await
                    .map_err(classify(target))?;
                ended_old_session = true;
            }
            Some("in progress") => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => return Ok(false),
        }
    }
}

/// What the change log statement (`log::since`) returned: the revision row, the keys others
/// logged after the position, and the table's live rows under them, in one snapshot.
fn read_log(rows: &[tokio_postgres::Row]) -> std::result::Result<LogRead, tokio_postgres::Error> {
    let mut read = LogRead::default();
    for row in rows {
        read.known = true;
        read.rev = row.try_get(0)?;
        read.pruned = row.try_get(1)?;
        let Some(logged) = row.try_get::<_, Option<i64>>(2)? else {
            continue; // the revision row alone: nothing logged
        };
        read.rows += logged;
        let stored = match row.try_get::<_, Option<String>>(4)? {
            Some(key) => Some((key, row.try_get(5)?, row.try_get(6)?)),
            None => None,
        };
        read.keys.push((row.try_get(3)?, stored));
    }
    Ok(read)
}

/// Makes `table`'s statements on `live` those of the layout it has (`with_column`: the tables
/// that have the column `expires_at`). A layout that keeps changing under the work (which only
/// a program adding and dropping the column over and over could cause) fails it.
async fn relayout(
    live: &mut Live,
    tables: &[&str],
    with_column: &[String],
    attempt: u32,
    target: &Target,
) -> std::result::Result<(), Failure> {
    if attempt > MAX_RELAYOUTS {
        return Err(Failure::Refused(PersistentError::Backend(
            format!(
                "the columns of table {:?} at {} kept changing while it was being used",
                target.table, target.host
            )
            .into(),
        )));
    }
    for table in tables {
        if !live.layout_matches(table, with_column) {
            let expiring = !live.table(table).expiring;
            tracing::debug!(table = %table, expiring, "the table's columns changed; preparing its statements again");
            connect::reprepare_table(live, table, expiring)
                .await
                .map_err(classify(target))?;
        }
    }
    Ok(())
}

/// Gives the column `expires_at` to each table of `plan` that a request saves a deadline to and
/// whose statements on `live` are those of a table without it.
async fn add_missing_columns(
    live: &mut Live,
    plan: &Plan<'_>,
    target: &Target,
) -> std::result::Result<(), Failure> {
    for table in plan.tables_with_deadlines() {
        if !live.table(table).expiring {
            let lock = commit::lock_id(table, None);
            expiry::add_column(live, table, lock)
                .await
                .map_err(classify(target))?;
        }
    }
    Ok(())
}

/// How many times a piece of work is redone for a table's layout changing under it.
const MAX_RELAYOUTS: u32 = 4;

/// The statement a checked read runs, of the table's current statements (`None`: nothing to
/// read in this layout).
type ReadStatement = fn(&TableStatements) -> Option<&Statement>;

/// Runs `statement` with `params` on `table` in a transaction that first locks the table
/// against schema changes (`ACCESS SHARE`) and reads its layout, all in one round trip. If the
/// layout is not the one `table`'s statements were prepared for, prepares them again and reads
/// again, so that an expired row never reads as live through statements prepared before the
/// table had the column `expires_at`.
async fn read_checked(
    live: &mut Live,
    table: &str,
    target: &Target,
    statement: ReadStatement,
    params: &[&(dyn ToSql + Sync)],
) -> std::result::Result<Vec<tokio_postgres::Row>, Failure> {
    let mut attempt = 0;
    loop {
        let tables: &[&str] = &[table];
        let answers = {
            let (statements, table_statements) = (&live.statements, live.table(table));
            let mut steps: Vec<Step<'_>> = vec![
                (&statements.begin, vec![]),
                (&table_statements.lock_shared, vec![]),
                (&statements.expiry_columns, vec![&tables]),
            ];
            if let Some(statement) = statement(table_statements) {
                steps.push((statement, params.to_vec()));
            }
            steps.push((&statements.commit, vec![]));
            commit::pipeline(&live.client, &steps).await
        };
        let mut answers = match answers {
            Ok(answers) => answers,
            Err(error) => {
                let _ = live.client.query(&live.statements.rollback, &[]).await;
                return Err(classify(target)(error));
            }
        };
        let with_column = columns_of(&answers[2]).map_err(classify(target))?;
        if live.layout_matches(table, &with_column) {
            return Ok(match answers.len() {
                5 => answers.swap_remove(3),
                _ => Vec::new(),
            });
        }
        attempt += 1;
        relayout(live, tables, &with_column, attempt, target).await?;
    }
}

/// The table names an `expiry_columns` statement returned.
fn columns_of(
    rows: &[tokio_postgres::Row],
) -> std::result::Result<Vec<String>, tokio_postgres::Error> {
    rows.iter().map(|row| row.try_get(0)).collect()
}

/// Streams the live rows of `table` in a transaction that first locks the table against schema
/// changes and checks its layout (as [`read_checked`] does), preparing its statements again if
/// the layout changed.
async fn scan(
    live: &mut Live,
    table: &str,
    rows: &mpsc::Sender<Scanned>,
    sent_any: &mut bool,
    count: &mut usize,
    target: &Target,
) -> std::result::Result<(), Failure> {
    let mut attempt = 0;
    loop {
        let tables: &[&str] = &[table];
        let checked = {
            let statements = &live.statements;
            let steps: Vec<Step<'_>> = vec![
                (&statements.begin, vec![]),
                (&live.table(table).lock_shared, vec![]),
                (&statements.expiry_columns, vec![&tables]),
            ];
            match commit::pipeline(&live.client, &steps).await {
                Ok(answers) => columns_of(&answers[2]),
                Err(error) => Err(error),
            }
        };
        let result = match checked {
            Ok(with_column) if !live.layout_matches(table, &with_column) => {
                let _ = live.client.query(&live.statements.rollback, &[]).await;
                attempt += 1;
                relayout(live, tables, &with_column, attempt, target).await?;
                continue;
            }
            Ok(_) => scan_locked(live, table, rows, sent_any, count, target).await,
            Err(error) => Err(classify(target)(error)),
        };
        if result.is_err() {
            let _ = live.client.query(&live.statements.rollback, &[]).await;
        }
        return result;
    }
}

/// The scan itself, inside the transaction [`scan`] opened; commits it at the end.
async fn scan_locked(
    live: &mut Live,
    table: &str,
    rows: &mpsc::Sender<Scanned>,
    sent_any: &mut bool,
    count: &mut usize,
    target: &Target,
) -> std::result::Result<(), Failure> {
    let now = expiry::now_sql();
    let stream = live
        .client
        .query_raw(&live.table(table).select_all, [now])
        .await
        .map_err(classify(target))?;
    {
        pin_mut!(stream);
        read_rows(stream, rows, sent_any, count, target).await?;
    }
    // The stream is dropped (any rows it still had are discarded): end the transaction.
    live.client
        .query(&live.statements.commit, &[])
        .await
        .map_err(classify(target))?;
    Ok(())
}

/// Sends the rows of `stream` to `rows` in chunks, until it ends or the receiver stops
/// listening.
async fn read_rows(
    mut stream: std::pin::Pin<&mut tokio_postgres::RowStream>,
    rows: &mpsc::Sender<Scanned>,
    sent_any: &mut bool,
    count: &mut usize,
    target: &Target,
) -> std::result::Result<(), Failure> {
    let mut chunk = Vec::with_capacity(CHUNK_ROWS);
    while let Some(row) = stream.next().await {
        let row = row.map_err(|error| {
            if *sent_any {
                Failure::BrokenMidway(error)
            } else {
                classify(target)(error)
            }
        })?;
        chunk.push(raw_row(&row).map_err(classify(target))?);
        *count += 1;
        if chunk.len() == CHUNK_ROWS {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_ROWS));
            if rows.send(Scanned::Rows(full)).await.is_err() {
                return Ok(()); // The receiver stopped listening.
            }
            *sent_any = true;
        }
    }
    if !chunk.is_empty() {
        let _ = rows.send(Scanned::Rows(chunk)).await;
    }
    Ok(())
}

/// Sorts a tokio-postgres error into what to do about it.
fn classify(target: &Target) -> impl Fn(tokio_postgres::Error) -> Failure + '_ {
    move |error| {
        let lost = error.is_closed()
            || std::error::Error::source(&error).is_some_and(|cause| cause.is::<std::io::Error>());
        match error.code() {
            _ if lost => Failure::Connection(error),
            Some(code)
                if *code == SqlState::T_R_DEADLOCK_DETECTED
                    || *code == SqlState::T_R_SERIALIZATION_FAILURE =>
            {
                Failure::Transient(error)
            }
            // Class 08 (connection exception), 57P01-57P05 (the server ending the session:
            // `pg_terminate_backend`, shutdown, restart) and 25P03 (it ended a session idle in a
            // transaction for too long).
            Some(code)
                if code.code().starts_with("08")
                    || code.code().starts_with("57P")
                    || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT =>
            {
                Failure::Connection(error)
            }
            _ => Failure::Refused(target.postgres_error(error)),
        }
    }
}

fn raw_row(row: &tokio_postgres::Row) -> std::result::Result<RawRow, tokio_postgres::Error> {
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}
