//! The task that owns a backend's connection: it commits writes in groups, serves loads, and
//! reconnects when the connection is lost.
//!
//! Everything goes through one task because a transaction owns its connection: a read sent by
//! another task in the middle of it would run inside it.
//!
//! Writes that queue while a commit runs are committed together in the next transaction (group
//! commit): their rows are merged (the last write of a key wins) and upserted with one
//! statement. The transaction also sends the `NOTIFY`s that announce the change, so they are
//! delivered if and only if it commits.
//!
//! Instances writing the same keys must not deadlock (PostgreSQL would break the cycle only after
//! `deadlock_timeout`, a second by default). Row locks cannot be taken in one order across the
//! upsert and the delete statements, and a key not yet stored has no row to lock, so each
//! transaction first takes advisory locks in one global order: the table's lock in shared mode,
//! then one lock per key in ascending order. A clear, or a transaction of many keys, takes the
//! table's lock in exclusive mode instead. Every transaction then holds the locks of all the keys
//! it touches before it touches a row, so transactions of this crate wait for each other but
//! never in a cycle. A transaction that still deadlocks (with some other writer) is retried.
//!
//! When the connection breaks, the work in hand is retried on a new connection until the
//! reconnect timeout. A commit whose answer was lost is sent again: that sets the same rows to
//! the same values, but if the first one did commit, the second can put them back over a newer
//! write another instance committed in between (see the module docs of `postgres`, "Faults").
//! An attempt that gets no answer within the operation timeout is not retried: its connection is
//! dropped and the work fails, saying whether the commit's outcome is unknown. Meanwhile the task
//! keeps reconnecting on its own, so an idle instance hears the fleet again soon; once
//! reconnected it asks its map for a reload, since it could not hear what was committed in
//! between.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{pin_mut, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::connect::{self, describe_error, Endpoint, Live, TableSql, Target};
use super::log::{self, LogRead};
use super::notify::{self, Changes};
use crate::backends::encode::same_json;
use crate::{PersistentError, Result};

/// A write as the session executes it: key text and JSON text, already encoded.
#[derive(Debug)]
pub(super) enum RawOp {
    Upsert { key: String, value: String },
    Delete { key: String },
    DeleteAll,
}

impl RawOp {
    fn key(&self) -> Option<&str> {
        match self {
            RawOp::Upsert { key, .. } | RawOp::Delete { key } => Some(key),
            RawOp::DeleteAll => None,
        }
    }
}

/// One caller's writes: committed together, only if every condition holds.
#[derive(Debug, Default)]
pub(super) struct Write {
    /// Key texts and the JSON that must be stored under each (`None`: nothing).
    pub(super) conditions: Vec<(String, Option<String>)>,
    pub(super) ops: Vec<RawOp>,
    /// Report what each op's key held just before it.
    pub(super) want_previous: bool,
    /// The writing map's id, logged with its keys (0: nobody in particular).
    pub(super) origin: i64,
}

/// What a [`Write`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    Applied {
        /// With `want_previous`: per op, the JSON its key held just before it.
        previous: Option<Vec<Option<String>>>,
    },
    /// A condition did not hold and nothing was written: per condition, what is stored.
    Conflict { current: Vec<Option<String>> },
}

/// A stored row as read: key text and the value's JSON text (`None` for SQL `NULL`).
pub(super) type RawRow = (String, Option<String>);

/// What the session is asked to do.
pub(super) enum Command {
    /// Commit `write` in one transaction, possibly shared with other writes.
    Write {
        write: Write,
        done: oneshot::Sender<Result<Outcome>>,
    },
    /// Stream every row into `rows`.
    Load { rows: mpsc::Sender<Scanned> },
    /// Read the rows of these keys.
    LoadKeys {
        keys: Vec<String>,
        done: oneshot::Sender<Result<Vec<RawRow>>>,
    },
    /// Read the table's revision.
    Revision { done: oneshot::Sender<Result<i64>> },
    /// Read the log after revision `since`, leaving out what `origin` wrote.
    ReadLog {
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

/// Counts for [`super::PostgresBackend::stats`].
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) commits: AtomicU64,
    pub(super) writes: AtomicU64,
    pub(super) reconnects: AtomicU64,
    pub(super) rows_read: AtomicU64,
}

/// How long to wait for a server.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    /// How long work waits for a lost connection to come back before it fails.
    pub(super) reconnect: Duration,
    /// How long one attempt at some work may wait for the server's answers.
    pub(super) operation: Duration,
}

/// One caller's writes and where to answer it.
type WriteRequest = (Write, oneshot::Sender<Result<Outcome>>);

/// How long a group waits for the writers it expects: well under a commit, so a straggler costs
/// less than the commit it joins saves.
const GROUP_WAIT: Duration = Duration::from_micros(200);

/// Adds what is queued to `group`, then, while the group is smaller than `expected`, lets the
/// writers just acknowledged run (they share this runtime) and takes what they send, for at
/// most [`GROUP_WAIT`]. Tokio's timers count milliseconds, too coarse for this wait, so it
/// yields instead of sleeping. Stops at a command that is not a write (kept in `next`).
async fn gather(
    commands: &mut mpsc::UnboundedReceiver<Command>,
    group: &mut Vec<WriteRequest>,
    next: &mut Option<Command>,
    expected: usize,
) {
    take_queued(commands, group, next);
    let deadline = Instant::now() + GROUP_WAIT;
    while group.len() < expected.min(MAX_GROUP_REQUESTS) && next.is_none() {
        if Instant::now() >= deadline {
            return;
        }
        tokio::task::yield_now().await;
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
            Ok(Command::Write { write, done }) => group.push((write, done)),
            Ok(other) => *next = Some(other),
            Err(_) => return,
        }
    }
}

/// Write requests merged into one transaction at most.
const MAX_GROUP_REQUESTS: usize = 4096;
/// Rows per message of a load.
const CHUNK_ROWS: usize = 1024;
/// A transaction of more keys than this locks the whole table instead of each key: the server's
/// lock table is shared and bounded (`max_locks_per_transaction`).
const MAX_KEY_LOCKS: usize = 256;
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
    sql: Arc<TableSql>,
    target: Arc<Target>,
    changes: Arc<Changes>,
    counters: Arc<Counters>,
    timeouts: Timeouts,
    live: Option<Live>,
    /// The number of the last connection attempt.
    generation: u64,
    backoff: Duration,
    /// Why the last connection attempt failed, or why the connection was lost.
    last_failure: String,
}

impl Session {
    /// Opens the first connection (creating the table if missing). Fails at once, rather than
    /// retrying, so that a wrong URL or an unreachable server is reported to the caller.
    pub(super) async fn connect(
        endpoint: Endpoint,
        sql: Arc<TableSql>,
        target: Arc<Target>,
        changes: Arc<Changes>,
        counters: Arc<Counters>,
        timeouts: Timeouts,
    ) -> Result<Self> {
        let generation = 1;
        let timeout = endpoint.connect_timeout;
        let live = connect::open(&endpoint, &sql, &changes, generation, timeout, true)
            .await
            .map_err(|failure| failure.into_error(&target))?;
        changes.connected(generation);
        tracing::info!(table = %target.table, host = %target.host, "connected to PostgreSQL");
        Ok(Self {
            endpoint,
            sql,
            target,
            changes,
            counters,
            timeouts,
            live: Some(live),
            generation,
            backoff: FIRST_BACKOFF,
            last_failure: String::new(),
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
        loop {
            if group.is_empty() {
                let command = match next.take() {
                    Some(command) => command,
                    None => match self.next_command(&mut commands).await {
                        Some(command) => command,
                        None => return,
                    },
                };
                match command {
                    Command::Write { write, done } => group.push((write, done)),
                    other => {
                        self.serve(other).await;
                        continue;
                    }
                }
            }
            gather(&mut commands, &mut group, &mut next, expected).await;
            let committed = std::mem::take(&mut group);
            let results = self.commit_group(&committed).await;
            take_queued(&mut commands, &mut group, &mut next);
            expected = committed.len() + group.len();
            for ((_, done), result) in committed.into_iter().zip(results) {
                let _ = done.send(result);
            }
        }
    }

    /// Serves a command that is not a write.
    async fn serve(&mut self, command: Command) {
        match command {
            Command::Write { .. } => unreachable!("`run` gathers every write into a group"),
            Command::Load { rows } => self.load(&rows).await,
            Command::LoadKeys { keys, done } => {
                let result = self.load_keys(&keys).await;
                let _ = done.send(result);
            }
            Command::Revision { done } => {
                let result = self.revision().await;
                let _ = done.send(result);
            }
            Command::ReadLog {
                since,
                origin,
                done,
            } => {
                let result = self.read_log(since, origin).await;
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
                    () = live.closed() => self.drop_connection("the connection was closed".to_owned()),
                },
                None => tokio::select! {
                    biased;
                    command = commands.recv() => return command,
                    () = tokio::time::sleep(self.backoff) => {
                        if !self.reconnect(self.endpoint.connect_timeout).await {
                            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                },
            }
        }
    }

    /// Commits a group of write requests in one transaction and answers each. If the shared
    /// transaction is refused, each request is tried in a transaction of its own, so that one
    /// bad request fails alone and the others still commit.
    ///
    /// A server that cannot be reached or does not answer fails the whole group at once: trying
    /// the requests one by one would make each wait as long again.
    async fn commit_group(&mut self, group: &[WriteRequest]) -> Vec<Result<Outcome>> {
        let writes: Vec<&Write> = group.iter().map(|(write, _)| write).collect();
        match self.commit(&writes).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(Failed::Unavailable(reason)) => group
                .iter()
                .map(|_| Err(self.target.connect_error(reason.clone())))
                .collect(),
            Err(Failed::Refused(error)) if group.len() == 1 => vec![Err(error)],
            Err(Failed::Refused(error)) => {
                tracing::warn!(
                    table = %self.target.table,
                    requests = group.len(),
                    error = %error,
                    "a group commit was refused; committing its requests one by one"
                );
                let mut results = Vec::with_capacity(group.len());
                let mut unavailable: Option<String> = None;
                for write in writes {
                    if let Some(reason) = &unavailable {
                        results.push(Err(self.target.connect_error(reason.clone())));
                        continue;
                    }
                    results.push(match self.commit(&[write]).await {
                        Ok(mut outcomes) => Ok(outcomes.remove(0)),
                        Err(Failed::Unavailable(reason)) => {
                            let error = self.target.connect_error(reason.clone());
                            unavailable = Some(reason);
                            Err(error)
                        }
                        Err(Failed::Refused(error)) => Err(error),
                    });
                }
                results
            }
        }
    }

    /// One transaction serving `writes`: lock, read what the conditions and previous values
    /// need, decide each write in order, then clear, upsert, delete, log, announce, commit.
    async fn commit(&mut self, writes: &[&Write]) -> std::result::Result<Vec<Outcome>, Failed> {
        let plan = Plan::new(writes, &self.sql.name);
        if plan.is_empty() {
            return Ok(writes.iter().map(|write| evaluate_alone(write)).collect());
        }
        let prune = self
            .counters
            .commits
            .load(Ordering::Relaxed)
            .is_multiple_of(log::PRUNE_EVERY_COMMITS);
        let work = Work::Commit {
            plan: &plan,
            prune,
            sent: None,
        };
        let start = Instant::now();
        let (outcomes, summary) = match self.retrying(work).await? {
            Loaded::Committed(outcomes, summary) => (outcomes, summary),
            _ => unreachable!("a commit answers with its outcomes"),
        };
        let elapsed = start.elapsed();
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters
            .writes
            .fetch_add(writes.len() as u64, Ordering::Relaxed);
        let table = &self.target.table;
        let requests = writes.len();
        let Summary {
            rows,
            cleared,
            conflicts,
        } = summary;
        tracing::debug!(table = %table, requests, rows, cleared, conflicts, elapsed = ?elapsed, "commit");
        if elapsed > SLOW_COMMIT {
            tracing::warn!(table = %table, requests, rows, elapsed = ?elapsed, "slow commit");
        }
        Ok(outcomes)
    }

    /// Streams every row to `rows`, in chunks.
    async fn load(&mut self, rows: &mpsc::Sender<Scanned>) {
        let work = Work::Load {
            rows,
            sent_any: false,
            count: 0,
        };
        let start = Instant::now();
        let last = match self.retrying(work).await {
            Ok(Loaded::Streamed(count)) => {
                self.counters
                    .rows_read
                    .fetch_add(count as u64, Ordering::Relaxed);
                tracing::debug!(table = %self.target.table, rows = count, elapsed = ?start.elapsed(), "load");
                Scanned::Finished
            }
            Ok(_) => unreachable!("a load streams its rows"),
            Err(failed) => Scanned::Failed(self.error_of(failed)),
        };
        let _ = rows.send(last).await;
    }

    async fn load_keys(&mut self, keys: &[String]) -> Result<Vec<RawRow>> {
        let work = Work::LoadKeys { keys };
        let start = Instant::now();
        let found = match self.retrying(work).await {
            Ok(Loaded::Rows(found)) => found,
            Ok(_) => unreachable!("a key load returns its rows"),
            Err(failed) => return Err(self.error_of(failed)),
        };
        self.counters
            .rows_read
            .fetch_add(found.len() as u64, Ordering::Relaxed);
        tracing::debug!(table = %self.target.table, keys = keys.len(), rows = found.len(), elapsed = ?start.elapsed(), "load keys");
        Ok(found)
    }

    async fn revision(&mut self) -> Result<i64> {
        match self.retrying(Work::Revision).await {
            Ok(Loaded::Revision(rev)) => Ok(rev),
            Ok(_) => unreachable!("a revision read returns the revision"),
            Err(failed) => Err(self.error_of(failed)),
        }
    }

    async fn read_log(&mut self, since: i64, origin: i64) -> Result<LogRead> {
        let start = Instant::now();
        let read = match self.retrying(Work::ReadLog { since, origin }).await {
            Ok(Loaded::Log(read)) => read,
            Ok(_) => unreachable!("a log read returns the log"),
            Err(failed) => return Err(self.error_of(failed)),
        };
        tracing::debug!(table = %self.target.table, since, rev = read.rev, keys = read.keys.len(), elapsed = ?start.elapsed(), "read the change log");
        Ok(read)
    }

    /// Runs `work` on the connection, reconnecting and trying again while the connection
    /// breaks, until the reconnect timeout. An attempt the server does not finish answering
    /// within the operation timeout is not tried again: its connection is dropped (the server
    /// may be stuck with it) and the work fails.
    async fn retrying(&mut self, mut work: Work<'_>) -> std::result::Result<Loaded, Failed> {
        let deadline = Instant::now() + self.timeouts.reconnect;
        let mut transient_retries = 0;
        loop {
            self.connect_before(deadline).await?;
            let live = self
                .live
                .as_mut()
                .expect("connect_before returns Ok only with a live connection");
            let attempt = work.attempt(live, &self.sql, &self.target);
            let Ok(attempted) = tokio::time::timeout(self.timeouts.operation, attempt).await else {
                return Err(self.timed_out(&work));
            };
            match attempted {
                Ok(loaded) => return Ok(loaded),
                Err(Failure::Refused(error)) => return Err(Failed::Refused(error)),
                Err(Failure::Transient(error)) => {
                    transient_retries += 1;
                    tracing::warn!(
                        table = %self.target.table,
                        retry = transient_retries,
                        error = %describe_error(&error),
                        "the server aborted a transaction for a conflict; retrying"
                    );
                    if transient_retries > MAX_TRANSIENT_RETRIES {
                        return Err(Failed::Refused(self.target.postgres_error(error)));
                    }
                }
                Err(Failure::BrokenMidway(error)) => {
                    self.drop_connection(describe_error(&error));
                    return Err(Failed::Refused(self.target.postgres_error(error)));
                }
                Err(Failure::Connection(error)) => {
                    self.drop_connection(describe_error(&error));
                    if Instant::now() >= deadline {
                        return Err(Failed::Unavailable(self.unreachable_reason()));
                    }
                    tracing::warn!(
                        table = %self.target.table,
                        commit_answer_lost = work.commit_sent(),
                        "retrying on a new connection"
                    );
                }
            }
        }
    }

    /// The attempt at `work` got no answer in time: drops the connection and says what that
    /// means for the work.
    fn timed_out(&mut self, work: &Work<'_>) -> Failed {
        let timeout = self.timeouts.operation;
        let outcome_unknown = work.commit_sent();
        tracing::warn!(
            table = %self.target.table,
            timeout = ?timeout,
            outcome_unknown,
            "no answer within the operation timeout; dropping the connection"
        );
        self.drop_connection(format!(
            "no answer within the operation timeout of {timeout:?}"
        ));
        if outcome_unknown {
            // The map keeps its old value; a reload shows what happened. (The log cannot: a
            // commit that did happen is logged as the map's own.)
            tracing::warn!(table = %self.target.table, "forcing a reload: a commit's outcome is unknown");
            self.changes.reload_later();
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
                "no answer within the operation timeout of {timeout:?}; the read was abandoned \
                 with the connection"
            ),
        })
    }

    /// Makes sure there is a connection, trying until `deadline`.
    async fn connect_before(&mut self, deadline: Instant) -> std::result::Result<(), Failed> {
        while self.live.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
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

    /// One attempt at a new connection, of at most `timeout`. Once it is listening, the map is
    /// told to reload: what was committed while no connection listened was not heard.
    async fn reconnect(&mut self, timeout: Duration) -> bool {
        self.generation += 1;
        let opened = connect::open(
            &self.endpoint,
            &self.sql,
            &self.changes,
            self.generation,
            timeout,
            false,
        )
        .await;
        let table = &self.target.table;
        match opened {
            Ok(live) => {
                self.live = Some(live);
                self.backoff = FIRST_BACKOFF;
                self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                self.changes.connected(self.generation);
                tracing::info!(table = %table, host = %self.target.host, generation = self.generation, "reconnected to PostgreSQL; the maps catch up from the change log");
                true
            }
            Err(failure) => {
                self.last_failure = failure.to_string();
                tracing::debug!(table = %table, error = %self.last_failure, "a reconnect attempt failed");
                false
            }
        }
    }

    fn drop_connection(&mut self, reason: String) {
        tracing::warn!(table = %self.target.table, host = %self.target.host, reason = %reason, "lost the connection to PostgreSQL");
        self.live = None;
        self.backoff = FIRST_BACKOFF;
        self.changes.lost(self.generation, reason.clone());
        self.last_failure = reason;
    }

    fn unreachable_reason(&self) -> String {
        format!(
            "the connection was lost and could not be re-established within {:?} ({})",
            self.timeouts.reconnect, self.last_failure
        )
    }

    fn error_of(&self, failed: Failed) -> PersistentError {
        match failed {
            Failed::Unavailable(reason) => self.target.connect_error(reason),
            Failed::Refused(error) => error,
        }
    }
}

/// What a successful attempt read.
enum Loaded {
    /// A commit's outcomes, one per write, and what it did.
    Committed(Vec<Outcome>, Summary),
    /// The rows of the keys asked for.
    Rows(Vec<RawRow>),
    /// How many rows a load streamed.
    Streamed(usize),
    Revision(i64),
    Log(LogRead),
}

/// What a commit did, for its log line.
#[derive(Debug, Clone, Copy)]
struct Summary {
    rows: usize,
    cleared: bool,
    conflicts: usize,
}

/// A commit whose `COMMIT` was sent: what it decided, and its transaction id, to ask the
/// server whether it committed if the answer is lost.
struct Sent {
    txid: i64,
    outcomes: Vec<Outcome>,
    summary: Summary,
}

/// Work for the connection that can be tried again on a new one.
enum Work<'a> {
    Commit {
        plan: &'a Plan<'a>,
        /// Also prune the change log (in bounded batches).
        prune: bool,
        /// Set once `COMMIT` was sent: if its answer is lost, the next attempt first asks the
        /// server whether that transaction committed, so that a commit is never made twice.
        sent: Option<Sent>,
    },
    /// Streams every row into `rows`. A connection lost before the first chunk went out is
    /// retried; after that the receiver has part of the table, so the load fails instead.
    Load {
        rows: &'a mpsc::Sender<Scanned>,
        sent_any: bool,
        count: usize,
    },
    LoadKeys {
        keys: &'a [String],
    },
    Revision,
    ReadLog {
        since: i64,
        origin: i64,
    },
}

impl Work<'_> {
    /// One attempt.
    async fn attempt(
        &mut self,
        live: &mut Live,
        sql: &TableSql,
        target: &Target,
    ) -> std::result::Result<Loaded, Failure> {
        match self {
            Work::Commit { plan, prune, sent } => {
                if let Some(earlier) = sent.take() {
                    if transaction_committed(live, earlier.txid, target).await? {
                        return Ok(Loaded::Committed(earlier.outcomes, earlier.summary));
                    }
                }
                let (outcomes, summary) =
                    commit_once(live, plan, *prune, sql, target, sent).await?;
                Ok(Loaded::Committed(outcomes, summary))
            }
            Work::Load {
                rows,
                sent_any,
                count,
            } => {
                *count = 0;
                scan(live, rows, sent_any, count, target).await?;
                Ok(Loaded::Streamed(*count))
            }
            Work::LoadKeys { keys } => select_keys(live, keys, target).await.map(Loaded::Rows),
            Work::Revision => {
                let row = live
                    .client
                    .query_one(&live.statements.revision, &[&sql.name])
                    .await
                    .map_err(classify(target))?;
                Ok(Loaded::Revision(row.try_get(0).map_err(classify(target))?))
            }
            Work::ReadLog { since, origin } => read_log(live, &sql.name, *since, *origin, target)
                .await
                .map(Loaded::Log),
        }
    }

    fn commit_sent(&self) -> bool {
        matches!(self, Work::Commit { sent: Some(_), .. })
    }
}

/// Whether transaction `txid`, whose `COMMIT` was sent on a connection since lost, committed.
/// While the server still runs it (it has not noticed the lost connection yet), asks again.
async fn transaction_committed(
    live: &mut Live,
    txid: i64,
    target: &Target,
) -> std::result::Result<bool, Failure> {
    loop {
        let row = live
            .client
            .query_one(&live.statements.transaction_status, &[&txid])
            .await
            .map_err(classify(target))?;
        let status: Option<String> = row.try_get(0).map_err(classify(target))?;
        match status.as_deref() {
            Some("committed") => return Ok(true),
            Some("in progress") => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => return Ok(false),
        }
    }
}

/// What a group of writes needs from the table before it can decide: the locks to take and
/// the keys to read.
struct Plan<'a> {
    writes: &'a [&'a Write],
    /// The keys' advisory locks in the order to take them, or `None` for the table's lock in
    /// exclusive mode (a clear, or too many keys to lock one by one).
    key_locks: Option<Vec<i32>>,
    /// The keys whose stored values the conditions and previous values need.
    read_keys: Vec<&'a str>,
}

impl<'a> Plan<'a> {
    fn new(writes: &'a [&'a Write], table: &str) -> Self {
        let mut locked: Vec<&str> = Vec::new();
        let mut read: Vec<&str> = Vec::new();
        let mut cleared = false;
        for write in writes {
            let conditions = write.conditions.iter().map(|(key, _)| key.as_str());
            locked.extend(conditions.clone());
            read.extend(conditions);
            for op in &write.ops {
                match op.key() {
                    Some(key) => {
                        locked.push(key);
                        if write.want_previous {
                            read.push(key);
                        }
                    }
                    None => cleared = true,
                }
            }
        }
        read.sort_unstable();
        read.dedup();
        let key_locks = (!cleared && locked.len() <= MAX_KEY_LOCKS).then(|| {
            let mut locks: Vec<i32> = locked.iter().map(|key| lock_id(table, Some(key))).collect();
            locks.sort_unstable();
            locks.dedup();
            locks
        });
        Self {
            writes,
            key_locks,
            read_keys: read,
        }
    }

    /// Nothing to check and nothing to write.
    fn is_empty(&self) -> bool {
        self.writes
            .iter()
            .all(|write| write.ops.is_empty() && write.conditions.is_empty())
    }
}

/// The outcome of a write that neither checks nor writes anything.
fn evaluate_alone(write: &Write) -> Outcome {
    Outcome::Applied {
        previous: write.want_previous.then(Vec::new),
    }
}

/// The table as the writes of a group see it, one after the other: what was read, under what
/// the earlier writes of the group did.
struct Simulated<'a> {
    stored: HashMap<String, String>,
    written: HashMap<&'a str, Option<&'a str>>,
    cleared: bool,
}

impl<'a> Simulated<'a> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.written.get(key) {
            Some(value) => *value,
            None if self.cleared => None,
            None => self.stored.get(key).map(String::as_str),
        }
    }

    fn apply(&mut self, op: &'a RawOp) {
        match op {
            RawOp::Upsert { key, value } => {
                self.written.insert(key, Some(value));
            }
            RawOp::Delete { key } => {
                self.written.insert(key, None);
            }
            RawOp::DeleteAll => {
                self.written.clear();
                self.cleared = true;
            }
        }
    }
}

/// Decides each write of `writes` in order against `stored` (the rows read under the locks):
/// a write whose conditions hold is applied (and seen by the writes after it), one whose
/// conditions fail writes nothing. Returns the outcomes and the ops to commit with their
/// writers' origins.
fn evaluate<'a>(
    writes: &[&'a Write],
    stored: HashMap<String, String>,
) -> (Vec<Outcome>, Vec<(&'a RawOp, i64)>) {
    let mut table = Simulated {
        stored,
        written: HashMap::new(),
        cleared: false,
    };
    let mut outcomes = Vec::with_capacity(writes.len());
    let mut applied = Vec::new();
    for write in writes {
        let holds = write
            .conditions
            .iter()
            .all(|(key, expected)| same_json(table.get(key), expected.as_deref()));
        if !holds {
            let current = write
                .conditions
                .iter()
                .map(|(key, _)| table.get(key).map(str::to_owned))
                .collect();
            outcomes.push(Outcome::Conflict { current });
            continue;
        }
        let mut previous = write
            .want_previous
            .then(|| Vec::with_capacity(write.ops.len()));
        for op in &write.ops {
            if let Some(previous) = &mut previous {
                previous.push(op.key().and_then(|key| table.get(key).map(str::to_owned)));
            }
            table.apply(op);
            applied.push((op, write.origin));
        }
        outcomes.push(Outcome::Applied { previous });
    }
    (outcomes, applied)
}

type Step<'s> = (&'s tokio_postgres::Statement, Vec<&'s (dyn ToSql + Sync)>);

/// Sends `steps` in order without waiting for each answer (one round trip for all of them),
/// and returns their rows. Each is sent when its future is first polled, and `try_join_all`
/// polls them in order.
async fn pipeline(
    client: &tokio_postgres::Client,
    steps: &[Step<'_>],
    target: &Target,
) -> std::result::Result<Vec<Vec<tokio_postgres::Row>>, Failure> {
    futures_util::future::try_join_all(
        steps
            .iter()
            .map(|(statement, params)| client.query(*statement, params)),
    )
    .await
    .map_err(classify(target))
}

/// One attempt at a commit, in two round trips: `BEGIN`, the locks (the table's, then the
/// keys' in order), the transaction's id and the rows the writes depend on; then, once each
/// write is decided, the writes, the log, the announcement and `COMMIT`. (If a statement of the
/// second trip fails, the server turns the `COMMIT` after it into a rollback.)
async fn commit_once(
    live: &mut Live,
    plan: &Plan<'_>,
    prune: bool,
    sql: &TableSql,
    target: &Target,
    sent: &mut Option<Sent>,
) -> std::result::Result<(Vec<Outcome>, Summary), Failure> {
    let channel = sql.name.as_str();
    let (client, statements) = (&live.client, &live.statements);
    let table_lock = lock_id(channel, None);
    let mut steps: Vec<Step<'_>> = Vec::with_capacity(5);
    steps.push((&statements.begin, vec![]));
    match &plan.key_locks {
        Some(key_locks) => {
            steps.push((&statements.lock_table_shared, vec![&table_lock]));
            steps.push((&statements.lock_keys, vec![key_locks]));
        }
        None => steps.push((&statements.lock_table, vec![&table_lock])),
    }
    steps.push((&statements.transaction_id, vec![]));
    if !plan.read_keys.is_empty() {
        steps.push((&statements.select_keys, vec![&plan.read_keys]));
    }
    let mut answers = match pipeline(client, &steps, target).await {
        Ok(answers) => answers,
        Err(failure) => {
            // The transaction is open and failed: end it (on a broken connection this fails
            // at once, and does not matter).
            let _ = client.query(&statements.rollback, &[]).await;
            return Err(failure);
        }
    };
    let stored: HashMap<String, String> = if plan.read_keys.is_empty() {
        HashMap::new()
    } else {
        let rows = answers.pop().unwrap_or_default();
        rows.iter()
            .map(|row| {
                let (key, value) = raw_row(row)?;
                // A SQL NULL (written by another program) compares as JSON `null`.
                Ok((key, value.unwrap_or_else(|| "null".to_owned())))
            })
            .collect::<std::result::Result<_, tokio_postgres::Error>>()
            .map_err(classify(target))?
    };
    let txid: i64 = answers
        .pop()
        .and_then(|rows| rows.into_iter().next())
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(classify(target))?
        .unwrap_or_default();

    let (outcomes, applied) = evaluate(plan.writes, stored);
    let rows = Rows::merge(applied);
    let summary = Summary {
        rows: rows.upsert_keys.len() + rows.delete_keys.len(),
        cleared: rows.cleared,
        conflicts: outcomes
            .iter()
            .filter(|outcome| matches!(outcome, Outcome::Conflict { .. }))
            .count(),
    };
    let (log_keys, log_origins) = rows.logged();
    let payloads: Vec<&str> = vec![notify::CHANGED];
    let mut steps: Vec<Step<'_>> = Vec::with_capacity(7);
    if !rows.is_empty() {
        if rows.cleared {
            steps.push((&statements.delete_all, vec![]));
        }
        if !rows.upsert_keys.is_empty() {
            steps.push((
                &statements.upsert,
                vec![&rows.upsert_keys, &rows.upsert_values],
            ));
        }
        if !rows.delete_keys.is_empty() {
            steps.push((&statements.delete, vec![&rows.delete_keys]));
        }
        if prune {
            steps.push((
                &statements.prune_log,
                vec![&channel, &log::REVISIONS_KEPT, &log::PRUNE_BATCH_ROWS],
            ));
        }
        steps.push((&statements.notify, vec![&channel, &payloads]));
        // Last: the revision row's lock orders the table's commits, so hold it briefly.
        steps.push((&statements.log, vec![&channel, &log_keys, &log_origins]));
    }
    steps.push((&statements.commit, vec![]));
    *sent = Some(Sent {
        txid,
        outcomes: outcomes.clone(),
        summary,
    });
    pipeline(client, &steps, target).await?;
    *sent = None;
    Ok((outcomes, summary))
}

/// The revision row and the log rows others wrote after `since`, in one statement (one
/// snapshot).
async fn read_log(
    live: &mut Live,
    table: &str,
    since: i64,
    origin: i64,
    target: &Target,
) -> std::result::Result<LogRead, Failure> {
    let limit = log::MAX_CATCH_UP_ROWS;
    let rows = live
        .client
        .query(
            &live.statements.read_log,
            &[&table, &since, &origin, &limit],
        )
        .await
        .map_err(classify(target))?;
    let mut read = LogRead::default();
    for row in &rows {
        let columns = (|| {
            Ok::<_, tokio_postgres::Error>((
                row.try_get::<_, i64>(0)?,
                row.try_get::<_, i64>(1)?,
                row.try_get::<_, Option<i64>>(2)?,
                row.try_get::<_, Option<String>>(3)?,
            ))
        })()
        .map_err(classify(target))?;
        let (rev, pruned, logged_rev, key) = columns;
        read.known = true;
        read.rev = rev;
        read.pruned = pruned;
        if logged_rev.is_some() {
            read.keys.push(key);
        }
    }
    Ok(read)
}

async fn scan(
    live: &mut Live,
    rows: &mpsc::Sender<Scanned>,
    sent_any: &mut bool,
    count: &mut usize,
    target: &Target,
) -> std::result::Result<(), Failure> {
    let stream = live
        .client
        .query_raw(&live.statements.select_all, std::iter::empty::<String>())
        .await
        .map_err(classify(target))?;
    pin_mut!(stream);
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

async fn select_keys(
    live: &mut Live,
    keys: &[String],
    target: &Target,
) -> std::result::Result<Vec<RawRow>, Failure> {
    let found = live
        .client
        .query(&live.statements.select_keys, &[&keys])
        .await
        .map_err(classify(target))?;
    found
        .iter()
        .map(raw_row)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(classify(target))
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
            // Class 08 (connection exception) and 57P01-57P05 (the server ending the session:
            // `pg_terminate_backend`, shutdown, restart).
            Some(code) if code.code().starts_with("08") || code.code().starts_with("57P") => {
                Failure::Connection(error)
            }
            _ => Failure::Refused(target.postgres_error(error)),
        }
    }
}

fn raw_row(row: &tokio_postgres::Row) -> std::result::Result<RawRow, tokio_postgres::Error> {
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// What a set of writes does to the table, merged: the last write of each key wins.
#[derive(Debug, Default, PartialEq)]
struct Rows<'a> {
    /// Every row is deleted first.
    cleared: bool,
    /// The origin of the clear, if any.
    cleared_by: i64,
    /// Sorted by key bytes, as are `delete_keys`.
    upsert_keys: Vec<&'a str>,
    upsert_values: Vec<&'a str>,
    delete_keys: Vec<&'a str>,
    /// Who wrote each key last: the origins of `upsert_keys`, then of `delete_keys`.
    origins: Vec<i64>,
}

impl<'a> Rows<'a> {
    /// Merges `ops`, each with the origin of the map that wrote it.
    fn merge(ops: impl IntoIterator<Item = (&'a RawOp, i64)>) -> Self {
        let mut rows = Rows::default();
        let mut last: BTreeMap<&'a str, (Option<&'a str>, i64)> = BTreeMap::new();
        for (op, origin) in ops {
            match op {
                RawOp::Upsert { key, value } => {
                    last.insert(key, (Some(value), origin));
                }
                RawOp::Delete { key } => {
                    last.insert(key, (None, origin));
                }
                RawOp::DeleteAll => {
                    rows.cleared = true;
                    rows.cleared_by = origin;
                    last.clear();
                }
            }
        }
        let mut delete_origins = Vec::new();
        for (key, (value, origin)) in last {
            match value {
                Some(value) => {
                    rows.upsert_keys.push(key);
                    rows.upsert_values.push(value);
                    rows.origins.push(origin);
                }
                None => {
                    rows.delete_keys.push(key);
                    delete_origins.push(origin);
                }
            }
        }
        rows.origins.extend(delete_origins);
        rows
    }

    fn is_empty(&self) -> bool {
        !self.cleared && self.upsert_keys.is_empty() && self.delete_keys.is_empty()
    }

    /// The change log's rows for these writes: each key with the origin that wrote it last,
    /// or one `NULL` key ("anything") for a clear or too many keys.
    fn logged(&self) -> (Vec<Option<&'a str>>, Vec<i64>) {
        let keys = self.upsert_keys.len() + self.delete_keys.len();
        if self.cleared || keys > log::MAX_LOGGED_KEYS {
            // One writer's: skipped by that writer, whose memory has it all. Several writers'
            // (a clear followed by another map's writes): nobody's, so every map reloads.
            let mut writers = self.origins.iter().copied();
            let writers = writers
                .by_ref()
                .chain(self.cleared.then_some(self.cleared_by));
            let mut writers = writers.peekable();
            let first = writers.peek().copied().unwrap_or(0);
            let origin = if writers.all(|origin| origin == first) {
                first
            } else {
                0
            };
            return (vec![None], vec![origin]);
        }
        let keys = self.upsert_keys.iter().chain(&self.delete_keys);
        (keys.map(|key| Some(*key)).collect(), self.origins.clone())
    }
}

/// The advisory lock of `table` (`key` `None`) or of one of its keys: FNV-1a of their bytes.
/// Two keys that share a lock only wait for each other.
fn lock_id(table: &str, key: Option<&str>) -> i32 {
    let separator: &[u8] = if key.is_some() { &[0] } else { &[] };
    let bytes = table
        .as_bytes()
        .iter()
        .chain(separator)
        .chain(key.unwrap_or_default().as_bytes());
    let hash = bytes.fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    });
    i32::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(key: &str, value: &str) -> RawOp {
        RawOp::Upsert {
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }

    fn delete(key: &str) -> RawOp {
        RawOp::Delete {
            key: key.to_owned(),
        }
    }

    fn by(origin: i64, ops: &[RawOp]) -> Vec<(&RawOp, i64)> {
        ops.iter().map(|op| (op, origin)).collect()
    }

    #[test]
    fn merged_rows_keep_the_last_write_of_each_key_sorted_by_key() {
        let ops = [
            upsert("b", "1"),
            upsert("a", "2"),
            delete("b"),
            upsert("c", "3"),
            upsert("a", "4"),
            delete("d"),
        ];
        let rows = Rows::merge(by(7, &ops));
        assert_eq!(rows.upsert_keys, ["a", "c"]);
        assert_eq!(rows.upsert_values, ["4", "3"]);
        assert_eq!(rows.delete_keys, ["b", "d"]);
        assert!(!rows.cleared);
        let (keys, origins) = rows.logged();
        assert_eq!(keys, [Some("a"), Some("c"), Some("b"), Some("d")]);
        assert_eq!(origins, [7, 7, 7, 7]);
    }

    #[test]
    fn each_key_is_logged_with_its_last_writer_and_a_clear_as_anything() {
        let (first, second) = ([upsert("a", "1"), upsert("b", "1")], [upsert("a", "2")]);
        let rows = Rows::merge(by(1, &first).into_iter().chain(by(2, &second)));
        assert_eq!(rows.logged(), (vec![Some("a"), Some("b")], vec![2, 1]));

        let ops = [upsert("a", "1"), RawOp::DeleteAll, upsert("b", "2")];
        let rows = Rows::merge(by(3, &ops));
        assert!(rows.cleared);
        assert_eq!(rows.upsert_keys, ["b"]);
        assert!(rows.delete_keys.is_empty());
        assert_eq!(rows.logged(), (vec![None], vec![3]));

        // A clear and another map's write after it: every map must reload, the clearer too.
        let (clear, later) = ([RawOp::DeleteAll], [upsert("c", "1")]);
        let rows = Rows::merge(by(3, &clear).into_iter().chain(by(4, &later)));
        assert_eq!(rows.logged(), (vec![None], vec![0]));
    }

    #[test]
    fn key_locks_are_sorted_and_distinct_and_many_keys_or_a_clear_lock_the_table() {
        let write = Write {
            conditions: vec![("a".into(), None)],
            ops: vec![upsert("b", "1"), delete("a"), upsert("c", "2")],
            ..Write::default()
        };
        let writes = [&write];
        let locks = Plan::new(&writes, "t").key_locks.unwrap();
        assert_eq!(locks.len(), 3);
        assert!(locks.windows(2).all(|pair| pair[0] < pair[1]), "{locks:?}");
        assert_ne!(lock_id("t", Some("a")), lock_id("u", Some("a")));
        assert_ne!(lock_id("t", Some("")), lock_id("t", None));

        let many = Write {
            ops: (0..=MAX_KEY_LOCKS)
                .map(|i| delete(&i.to_string()))
                .collect(),
            ..Write::default()
        };
        assert_eq!(Plan::new(&[&many], "t").key_locks, None);
        let clear = Write {
            ops: vec![RawOp::DeleteAll],
            ..Write::default()
        };
        assert_eq!(Plan::new(&[&clear], "t").key_locks, None);
    }

    #[test]
    fn keys_sort_by_their_bytes() {
        let ops = [
            upsert("é", "1"),
            upsert("z", "2"),
            upsert("Z", "3"),
            upsert("", "4"),
        ];
        assert_eq!(Rows::merge(by(0, &ops)).upsert_keys, ["", "Z", "z", "é"]);
        assert!(Rows::merge(by(0, &[])).is_empty());
    }

    fn bump(key: &str, from: Option<&str>, to: &str) -> Write {
        Write {
            conditions: vec![(key.to_owned(), from.map(str::to_owned))],
            ops: vec![upsert(key, to)],
            want_previous: false,
            origin: 1,
        }
    }

    #[test]
    fn the_writes_of_a_group_see_the_ones_before_them() {
        let stored = HashMap::from([("n".to_owned(), "1".to_owned())]);
        let (first, second, stale) = (
            bump("n", Some("1"), "2"),
            bump("n", Some("2"), "3"),
            bump("n", Some("1"), "9"),
        );
        let (outcomes, applied) = evaluate(&[&first, &second, &stale], stored);
        assert_eq!(outcomes[0], Outcome::Applied { previous: None });
        assert_eq!(outcomes[1], Outcome::Applied { previous: None });
        assert_eq!(
            outcomes[2],
            Outcome::Conflict {
                current: vec![Some("3".to_owned())]
            }
        );
        assert_eq!(applied.len(), 2);
        assert_eq!(Rows::merge(applied).upsert_values, ["3"]);
    }

    #[test]
    fn previous_values_and_json_comparison_follow_the_simulated_table() {
        let stored = HashMap::from([("a".to_owned(), r#"{"x": 1, "y": 2}"#.to_owned())]);
        let insert = Write {
            ops: vec![upsert("a", "5"), delete("a"), upsert("b", "6")],
            want_previous: true,
            ..Write::default()
        };
        let absent_now = Write {
            conditions: vec![("a".into(), None)],
            ops: vec![RawOp::DeleteAll, upsert("c", "1")],
            want_previous: true,
            ..Write::default()
        };
        let (outcomes, _) = evaluate(&[&insert, &absent_now], stored.clone());
        assert_eq!(
            outcomes[0],
            Outcome::Applied {
                previous: Some(vec![
                    Some(r#"{"x": 1, "y": 2}"#.into()),
                    Some("5".into()),
                    None
                ])
            }
        );
        assert_eq!(
            outcomes[1],
            Outcome::Applied {
                previous: Some(vec![None, None])
            }
        );
        let reordered = bump("a", Some(r#"{"y":2,"x":1}"#), "7");
        let (outcomes, _) = evaluate(&[&reordered], stored);
        assert_eq!(outcomes[0], Outcome::Applied { previous: None });
    }
}
