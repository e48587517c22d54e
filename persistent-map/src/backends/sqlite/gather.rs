//! The writer thread's loop: gathering writes into groups, one transaction each.
//!
//! Group commit: every write that queued while a commit was syncing goes into the next
//! transaction. While no other connection commits to the file, a group's transaction begins
//! with its first write and executes each write as it arrives, so that only `COMMIT` is left
//! once the group is complete; a file other processes write to gets the group gathered first,
//! so that its write lock is held only for the commit. Sweeps of expired rows ride on these
//! commits (see `expiry.rs`), and the change log is pruned while nothing is queued (`log.rs`).
//! A shared commit that fails is retried without its sweeps, then write by write, so that one
//! bad write fails alone.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::execute::{
    commit, copy_error, count_commit, execute, finish_transaction, roll_back, run_statement,
    set_synchronous,
};
use super::fence::LayoutFence;
use super::inbox::{Inbox, Popped};
use super::known::Known;
use super::writer::{Command, Counters, Job, Outcome, SweepRequest, WriteRequest};
use super::Durability;

/// Requests merged into one transaction at most; bounds the work one fsync waits for.
const MAX_GROUP_REQUESTS: usize = 4096;

/// The writer thread's loop.
///
/// Group commit: every write that queued while a commit was syncing goes into the next
/// transaction. Just committing what is queued would split concurrent writers into a large group
/// and a small one (the first writer back after its acknowledgement would be committed almost
/// alone), so the loop also waits, briefly and without spinning, for the writers it has just
/// acknowledged: with 16 tasks writing in turn, each commit then serves all 16. A lone
/// sequential writer is never made to wait: it is the only one expected back.
pub(super) fn serve(
    mut connection: Connection,
    queue: &Inbox<Command>,
    counters: &Counters,
    id: i64,
) {
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
            if !queue.has_queued() && prune_a_step(&connection, &mut fence.log_backlog) {
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
                if let Ok(keys) = &swept {
                    fence.log_backlog.add(&request.table.name, keys.len());
                }
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

/// With nothing queued: prunes one step of the change log of a table due for it (see
/// `log.rs`), off the commit path of live writes; returns whether it did.
fn prune_a_step(connection: &Connection, backlog: &mut super::log::Backlog) -> bool {
    let Some(table) = backlog.due() else {
        return false;
    };
    let pruned = super::log::prune_step(connection, &table);
    if let Err(error) = &pruned {
        tracing::debug!(%table, %error, "pruning the change log failed; tried again later");
    }
    backlog.pruned(&table, pruned.ok());
    true
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
            None => finish_transaction(connection, fence, sweeps, id),
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
pub(super) type Swept = rusqlite::Result<Vec<String>>;

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
