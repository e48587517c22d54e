//! Expiry in SQLite: the `expires_at` column, and sweeping expired rows.
//!
//! `expires_at INTEGER` holds a row's deadline in Unix milliseconds of the writer's wall clock
//! (`NULL`: never). It is added in place (`ALTER TABLE ... ADD COLUMN`) by the first write with
//! a time to live to the table, in that write's transaction, so a table that never uses one
//! keeps exactly persistent-map 0.1.3's two columns; and the table keeps persistent-map 0.1.3's
//! `key` and `value` columns and 0.1.3, which selects those two, still reads it. A partial
//! index over the rows that have a deadline (`persistent_map_expiry_<table>`) lets a sweep find
//! expired rows without scanning the table; rows without a deadline are not in it, so writes
//! that never use a TTL do not maintain it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, TransactionBehavior};

use super::writer::{log_keys, prune_log_oldest, RawOp, TableSql, Writer};
use crate::{Deadline, Result};

/// This process's wall clock in Unix milliseconds, as the column holds deadlines.
pub(super) fn now_sql() -> i64 {
    i64::try_from(crate::deadline::now_millis()).unwrap_or(i64::MAX)
}

/// A deadline as the column holds it.
pub(super) fn deadline_to_sql(deadline: Option<Deadline>) -> Option<i64> {
    deadline.map(|deadline| i64::try_from(deadline.unix_millis()).unwrap_or(i64::MAX))
}

/// The deadline in an `expires_at` cell. `NULL`, and anything that is not a positive integer
/// (written by another program), is no deadline.
pub(super) fn deadline_of(cell: ValueRef<'_>) -> Option<Deadline> {
    match cell {
        ValueRef::Integer(millis) => u64::try_from(millis)
            .ok()
            .and_then(Deadline::from_unix_millis),
        _ => None,
    }
}

fn index_name(table: &str) -> String {
    format!("persistent_map_expiry_{table}")
}

/// Whether `table` has the column `expires_at`.
pub(super) fn has_column(connection: &Connection, table: &str) -> rusqlite::Result<bool> {
    let mut statement = connection.prepare_cached(&format!("PRAGMA table_info(\"{table}\")"))?;
    let mut names = statement.query_map([], |row| row.get::<_, String>("name"))?;
    names.try_fold(false, |found, name| {
        Ok(found || name?.eq_ignore_ascii_case("expires_at"))
    })
}

/// Adds `expires_at` and its partial index to `table`, inside the caller's transaction.
pub(super) fn add_column(connection: &Connection, table: &str) -> rusqlite::Result<()> {
    connection.execute(
        &format!("ALTER TABLE \"{table}\" ADD COLUMN expires_at INTEGER"),
        [],
    )?;
    connection.execute(
        &format!(
            "CREATE INDEX IF NOT EXISTS \"{}\" ON \"{table}\" (expires_at) \
             WHERE expires_at IS NOT NULL",
            index_name(table)
        ),
        [],
    )?;
    Ok(())
}

/// How a `SELECT` on `table` reads deadlines and keeps out expired rows, whether or not the
/// table has the column: the column expression, and the condition that a row is live at the
/// time in the parameter `now_param` (`?1`, `?2`).
pub(super) fn live_rows_sql(
    connection: &Connection,
    table: &str,
    now_param: &str,
) -> rusqlite::Result<(&'static str, String)> {
    Ok(if has_column(connection, table)? {
        (
            "expires_at",
            format!("(expires_at IS NULL OR expires_at > {now_param})"),
        )
    } else {
        // The parameter is still bound: mention it.
        ("NULL", format!("{now_param} IS NOT NULL"))
    })
}

/// The writer's knowledge of which tables have `expires_at`, valid while the file's schema is
/// unchanged (`PRAGMA schema_version`). Until a table's first write with a time to live it has
/// no such column, and its writes use the SQL of persistent-map 0.1.3's two columns.
#[derive(Debug, Default)]
pub(super) struct ExpiryColumns {
    schema_version: Option<i64>,
    known: HashMap<String, bool>,
}

impl ExpiryColumns {
    /// Called at the start of each transaction: forgets what a schema change may have changed.
    pub(super) fn begin(&mut self, connection: &Connection) -> rusqlite::Result<()> {
        let version: i64 = connection
            .prepare_cached("PRAGMA schema_version")?
            .query_row([], |row| row.get(0))?;
        if self.schema_version != Some(version) {
            self.schema_version = Some(version);
            self.known.clear();
        }
        Ok(())
    }

    /// Whether `table` has the column, adding it first (in the open transaction) when `add`.
    pub(super) fn has_column(
        &mut self,
        connection: &Connection,
        table: &str,
        add: bool,
    ) -> rusqlite::Result<bool> {
        let known = match self.known.get(table) {
            Some(&known) => known,
            None => {
                let found = has_column(connection, table)?;
                self.known.insert(table.to_owned(), found);
                found
            }
        };
        if known || !add {
            return Ok(known);
        }
        add_column(connection, table)?;
        self.known.insert(table.to_owned(), true);
        // A rollback would undo the column and bring the version back: check again next time.
        self.schema_version = None;
        Ok(true)
    }
}

/// Rows one statement of a sweep deletes at most: the step at which a sweep looks at the time.
const SWEEP_STEP: usize = 64;

/// What one sweep transaction may cost, its commit included: a live write queued behind it
/// waits about this long, a few of its own commits.
const SWEEP_BUDGET: Duration = Duration::from_millis(2);

/// A sweep transaction makes way once its deletes have taken this long and other work is
/// queued on the writer, whatever its pace says.
const SWEEP_SLICE: Duration = Duration::from_millis(1);

/// The fewest rows a sweep transaction aims at, so that a slow disk does not stall the sweep.
const SWEEP_MIN_ROWS: usize = 16;

/// How many rows a sweep transaction on a file deletes, learned from the last ones so that one
/// costs about [`SWEEP_BUDGET`]. Deleting is the smaller part: committing writes every page the
/// rows touched (a row's key index page is anywhere in the index) and now and then makes SQLite
/// checkpoint the log, so time spent deleting alone says little about what live writes wait.
#[derive(Debug)]
pub(super) struct SweepPace {
    rows: AtomicUsize,
}

impl Default for SweepPace {
    fn default() -> Self {
        Self {
            rows: AtomicUsize::new(SWEEP_STEP),
        }
    }
}

impl SweepPace {
    fn rows(&self) -> usize {
        self.rows.load(Ordering::Relaxed)
    }

    /// A transaction deleted `rows` in `took`: aim at what fits the budget at that rate,
    /// halfway from the old aim so that one checkpoint does not swing it.
    fn learn(&self, rows: usize, took: Duration) {
        let fits = rows as f64 * SWEEP_BUDGET.as_secs_f64() / took.as_secs_f64().max(1e-6);
        let aim = (self.rows() as f64 + fits) / 2.0;
        self.rows
            .store((aim as usize).max(SWEEP_MIN_ROWS), Ordering::Relaxed);
    }
}

/// Deletes up to `limit` rows of `table` whose deadline has passed on the writer's clock, in
/// one transaction on the writer thread (between groups of live writes), logs their keys as
/// written by `origin`, and returns them.
///
/// The transaction is bounded by its cost as well as by `limit`: it deletes as many rows as the
/// file's [`SweepPace`] says fit [`SWEEP_BUDGET`], [`SWEEP_STEP`] at a time, and stops early
/// after [`SWEEP_SLICE`] if other work is queued; so it may return fewer than `limit` keys with
/// more rows expired, and the caller sweeps until a call returns none. It also deletes as many
/// of the change log's oldest rows as it adds, so that the log of a mass expiry is not left to
/// one long prune in a commit of live writes.
pub(super) async fn sweep(
    writer: &Writer,
    table: &Arc<TableSql>,
    limit: usize,
    origin: i64,
) -> Result<Vec<String>> {
    let table = Arc::clone(table);
    let id = writer.id();
    let work_queued = writer.work_queued();
    let pace = Arc::clone(writer.sweep_pace());
    writer
        .run(move |connection| {
            if !has_column(connection, &table.name)? {
                return Ok(Vec::new()); // No TTL was ever written to this table.
            }
            let began = Instant::now();
            let limit = limit.min(pace.rows());
            let deleted = without_sync(connection, |connection| {
                sweep_once(connection, &table, limit, origin, id, &work_queued)
            })?;
            if !deleted.is_empty() {
                pace.learn(deleted.len(), began.elapsed());
            }
            Ok(deleted)
        })
        .await
}

/// Runs `work` with commits that are not synced, then puts back the writer's level. A sweep
/// need not be durable: a row whose deletion a crash loses is still expired, is not loaded,
/// and is swept again; the next synced commit syncs the sweep's anyway. Not waiting for the
/// disk shortens what live writes queued behind the sweep wait for.
fn without_sync<T>(
    connection: &mut Connection,
    work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let level: i64 = connection.pragma_query_value(None, "synchronous", |row| row.get(0))?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    let result = work(connection);
    connection.pragma_update(None, "synchronous", level)?;
    result
}

/// One sweep transaction of at most `limit` rows (see [`sweep`]).
fn sweep_once(
    connection: &mut Connection,
    table: &TableSql,
    limit: usize,
    origin: i64,
    id: i64,
    work_queued: &dyn Fn() -> bool,
) -> rusqlite::Result<Vec<String>> {
    let began = Instant::now();
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let deleted = {
        let mut delete = transaction.prepare_cached(&format!(
            "DELETE FROM \"{name}\" WHERE key IN (SELECT key FROM \"{name}\" \
             WHERE expires_at <= ?1 LIMIT ?2) RETURNING key",
            name = table.name
        ))?;
        let now = now_sql();
        let mut deleted = Vec::new();
        loop {
            let step = SWEEP_STEP.min(limit - deleted.len());
            let before = deleted.len();
            let rows = i64::try_from(step).unwrap_or(i64::MAX);
            let keys = delete.query_map((now, rows), |row| row.get::<_, String>(0))?;
            for key in keys {
                deleted.push(key?);
            }
            let done = deleted.len() - before < step || deleted.len() >= limit;
            if done || (began.elapsed() >= SWEEP_SLICE && work_queued()) {
                break deleted;
            }
        }
    };
    if deleted.is_empty() {
        return Ok(deleted);
    }
    let ops: Vec<RawOp> = deleted
        .into_iter()
        .map(|key| RawOp::Delete { key })
        .collect();
    log_keys(&transaction, table, &ops, origin, id)?;
    prune_log_oldest(&transaction, ops.len())?;
    transaction.commit()?;
    Ok(ops
        .into_iter()
        .filter_map(|op| match op {
            RawOp::Delete { key } => Some(key),
            _ => None,
        })
        .collect())
}
