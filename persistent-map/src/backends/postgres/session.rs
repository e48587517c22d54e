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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{pin_mut, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::connect::{self, describe_error, Endpoint, Live, TableSql, Target};
use super::notify::{self, Changes};
use crate::{PersistentError, Result};

/// A write as the session executes it: key text and JSON text, already encoded.
#[derive(Debug)]
pub(super) enum RawOp {
    Upsert { key: String, value: String },
    Delete { key: String },
    DeleteAll,
}

/// A stored row as read: key text and the value's JSON text (`None` for SQL `NULL`).
pub(super) type RawRow = (String, Option<String>);

/// What the session is asked to do.
pub(super) enum Command {
    /// Commit `ops` in one transaction, possibly shared with other writes.
    Write {
        ops: Vec<RawOp>,
        done: oneshot::Sender<Result<()>>,
    },
    /// Stream every row into `rows`.
    Load { rows: mpsc::Sender<Scanned> },
    /// Read the rows of these keys.
    LoadKeys {
        keys: Vec<String>,
        done: oneshot::Sender<Result<Vec<RawRow>>>,
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
type WriteRequest = (Vec<RawOp>, oneshot::Sender<Result<()>>);

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
            Ok(Command::Write { ops, done }) => group.push((ops, done)),
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
        changes.connected(generation, false);
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
                    Command::Write { ops, done } => group.push((ops, done)),
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
    async fn commit_group(&mut self, group: &[WriteRequest]) -> Vec<Result<()>> {
        let all_ops = group.iter().flat_map(|(ops, _)| ops);
        match self.commit(&Rows::merge(all_ops), group.len()).await {
            Ok(()) => group.iter().map(|_| Ok(())).collect(),
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
                for (ops, _) in group {
                    if let Some(reason) = &unavailable {
                        results.push(Err(self.target.connect_error(reason.clone())));
                        continue;
                    }
                    results.push(match self.commit(&Rows::merge(ops), 1).await {
                        Ok(()) => Ok(()),
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

    /// One transaction serving `requests` write requests: clear, upsert, delete, announce,
    /// commit.
    async fn commit(
        &mut self,
        rows: &Rows<'_>,
        requests: usize,
    ) -> std::result::Result<(), Failed> {
        if rows.is_empty() {
            return Ok(());
        }
        let payloads = rows.payloads();
        let work = Work::Commit {
            rows,
            payloads: &payloads,
            commit_sent: false,
        };
        let start = Instant::now();
        self.retrying(work).await?;
        let elapsed = start.elapsed();
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters
            .writes
            .fetch_add(requests as u64, Ordering::Relaxed);
        let table = &self.target.table;
        let changed = rows.upsert_keys.len() + rows.delete_keys.len();
        tracing::debug!(table = %table, requests, rows = changed, cleared = rows.cleared, elapsed = ?elapsed, "commit");
        if elapsed > SLOW_COMMIT {
            tracing::warn!(table = %table, requests, rows = changed, elapsed = ?elapsed, "slow commit");
        }
        Ok(())
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
                tracing::debug!(table = %self.target.table, rows = count, elapsed = ?start.elapsed(), "load");
                Scanned::Finished
            }
            Ok(Loaded::Rows(_)) => unreachable!("a load streams its rows"),
            Err(failed) => Scanned::Failed(self.error_of(failed)),
        };
        let _ = rows.send(last).await;
    }

    async fn load_keys(&mut self, keys: &[String]) -> Result<Vec<RawRow>> {
        let work = Work::LoadKeys { keys };
        let start = Instant::now();
        let found = match self.retrying(work).await {
            Ok(Loaded::Rows(found)) => found,
            Ok(Loaded::Streamed(_)) => unreachable!("a key load returns its rows"),
            Err(failed) => return Err(self.error_of(failed)),
        };
        tracing::debug!(table = %self.target.table, keys = keys.len(), rows = found.len(), elapsed = ?start.elapsed(), "load keys");
        Ok(found)
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
            // The map keeps its old value; the reload after reconnecting shows what happened.
            self.changes.reload_later();
        }
        Failed::Unavailable(match work {
            Work::Commit { .. } if outcome_unknown => format!(
                "the commit got no answer within the operation timeout of {timeout:?}, so \
                 whether the write was committed is unknown; the map keeps its old value and \
                 reloads the table on its first refresh after reconnecting"
            ),
            Work::Commit { .. } => format!(
                "no answer within the operation timeout of {timeout:?}; the write was not \
                 committed (its transaction was abandoned with the connection)"
            ),
            Work::Load { .. } | Work::LoadKeys { .. } => format!(
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
                self.changes.connected(self.generation, true);
                tracing::info!(table = %table, host = %self.target.host, generation = self.generation, "reconnected to PostgreSQL");
                tracing::warn!(table = %table, "forcing a reload: announcements made while disconnected were missed");
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
    /// The rows of the keys asked for (none for a commit).
    Rows(Vec<RawRow>),
    /// How many rows a load streamed.
    Streamed(usize),
}

/// Work for the connection that can be tried again on a new one.
enum Work<'a> {
    Commit {
        rows: &'a Rows<'a>,
        payloads: &'a [String],
        /// `COMMIT` was sent by the last attempt: if its answer is lost, so is the outcome.
        commit_sent: bool,
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
            Work::Commit {
                rows,
                payloads,
                commit_sent,
            } => {
                *commit_sent = false;
                commit_once(live, rows, &sql.name, payloads, target, commit_sent).await?;
                Ok(Loaded::Rows(Vec::new()))
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
        }
    }

    fn commit_sent(&self) -> bool {
        matches!(
            self,
            Work::Commit {
                commit_sent: true,
                ..
            }
        )
    }
}

async fn commit_once(
    live: &mut Live,
    rows: &Rows<'_>,
    channel: &str,
    payloads: &[String],
    target: &Target,
    commit_sent: &mut bool,
) -> std::result::Result<(), Failure> {
    let transaction = live.client.transaction().await.map_err(classify(target))?;
    let statements = &live.statements;
    let table_lock = lock_id(channel, None);
    let key_locks = rows.key_locks(channel);
    let mut steps: Vec<(&tokio_postgres::Statement, Vec<&(dyn ToSql + Sync)>)> =
        Vec::with_capacity(6);
    match &key_locks {
        Some(key_locks) => {
            steps.push((&statements.lock_table_shared, vec![&table_lock]));
            steps.push((&statements.lock_keys, vec![key_locks]));
        }
        None => steps.push((&statements.lock_table, vec![&table_lock])),
    }
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
    steps.push((&statements.notify, vec![&channel, &payloads]));
    // Sent in order without waiting for each answer: one round trip for all of them.
    futures_util::future::try_join_all(
        steps
            .iter()
            .map(|(statement, params)| transaction.execute(*statement, params)),
    )
    .await
    .map_err(classify(target))?;
    *commit_sent = true;
    transaction.commit().await.map_err(classify(target))
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
    /// Sorted by key bytes, as are `delete_keys`.
    upsert_keys: Vec<&'a str>,
    upsert_values: Vec<&'a str>,
    delete_keys: Vec<&'a str>,
}

impl<'a> Rows<'a> {
    fn merge(ops: impl IntoIterator<Item = &'a RawOp>) -> Self {
        let mut cleared = false;
        let mut last: BTreeMap<&'a str, Option<&'a str>> = BTreeMap::new();
        for op in ops {
            match op {
                RawOp::Upsert { key, value } => {
                    last.insert(key, Some(value));
                }
                RawOp::Delete { key } => {
                    last.insert(key, None);
                }
                RawOp::DeleteAll => {
                    cleared = true;
                    last.clear();
                }
            }
        }
        let mut rows = Rows {
            cleared,
            ..Rows::default()
        };
        for (key, value) in last {
            match value {
                Some(value) => {
                    rows.upsert_keys.push(key);
                    rows.upsert_values.push(value);
                }
                None => rows.delete_keys.push(key),
            }
        }
        rows
    }

    fn is_empty(&self) -> bool {
        !self.cleared && self.upsert_keys.is_empty() && self.delete_keys.is_empty()
    }

    /// The advisory locks to take, in this order, before touching the rows: one per key
    /// (sorted, so that every instance takes them in the same order), or `None` for the table's
    /// lock in exclusive mode, for a clear or a transaction of too many keys to lock one by one.
    fn key_locks(&self, table: &str) -> Option<Vec<i32>> {
        let keys = self.upsert_keys.len() + self.delete_keys.len();
        if self.cleared || keys > MAX_KEY_LOCKS {
            return None;
        }
        let mut locks: Vec<i32> = self
            .upsert_keys
            .iter()
            .chain(&self.delete_keys)
            .map(|key| lock_id(table, Some(key)))
            .collect();
        locks.sort_unstable();
        locks.dedup();
        Some(locks)
    }

    /// The `NOTIFY` payloads announcing these rows.
    fn payloads(&self) -> Vec<String> {
        let changed = self.upsert_keys.len() + self.delete_keys.len();
        let keys = self.upsert_keys.iter().chain(&self.delete_keys).copied();
        notify::payloads(self.cleared, ExactLen(keys, changed))
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

/// An iterator whose length is known although its type does not say so (a `Chain`).
struct ExactLen<I>(I, usize);

impl<I: Iterator> Iterator for ExactLen<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let item = self.0.next()?;
        self.1 -= 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.1, Some(self.1))
    }
}

impl<I: Iterator> ExactSizeIterator for ExactLen<I> {}

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
        let rows = Rows::merge(&ops);
        assert_eq!(rows.upsert_keys, ["a", "c"]);
        assert_eq!(rows.upsert_values, ["4", "3"]);
        assert_eq!(rows.delete_keys, ["b", "d"]);
        assert!(!rows.cleared);
        assert_eq!(rows.payloads(), ["k:a", "k:c", "k:b", "k:d"]);
    }

    #[test]
    fn a_clear_drops_earlier_writes_and_announces_a_reload() {
        let ops = [upsert("a", "1"), RawOp::DeleteAll, upsert("b", "2")];
        let rows = Rows::merge(&ops);
        assert!(rows.cleared);
        assert_eq!(rows.upsert_keys, ["b"]);
        assert!(rows.delete_keys.is_empty());
        assert_eq!(rows.payloads(), [notify::RELOAD]);
    }

    #[test]
    fn key_locks_are_sorted_and_distinct_and_many_keys_lock_the_table() {
        let ops = [upsert("b", "1"), delete("a"), upsert("c", "2")];
        let locks = Rows::merge(&ops).key_locks("t").unwrap();
        assert_eq!(locks.len(), 3);
        assert!(locks.windows(2).all(|pair| pair[0] < pair[1]), "{locks:?}");
        assert_ne!(lock_id("t", Some("a")), lock_id("u", Some("a")));
        assert_ne!(lock_id("t", Some("")), lock_id("t", None));

        let many: Vec<RawOp> = (0..=MAX_KEY_LOCKS)
            .map(|i| delete(&i.to_string()))
            .collect();
        assert_eq!(Rows::merge(&many).key_locks("t"), None);
        assert_eq!(Rows::merge(&[RawOp::DeleteAll]).key_locks("t"), None);
    }

    #[test]
    fn keys_sort_by_their_bytes() {
        let ops = [
            upsert("é", "1"),
            upsert("z", "2"),
            upsert("Z", "3"),
            upsert("", "4"),
        ];
        assert_eq!(Rows::merge(&ops).upsert_keys, ["", "Z", "z", "é"]);
        assert!(Rows::merge(&[]).is_empty());
    }
}
