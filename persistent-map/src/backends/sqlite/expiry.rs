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

use super::execute::run_statement;
use super::writer::{RawOp, SweepRequest, TableSql, Writer};
use super::Durability;
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
    deadline_of_millis(millis_of(cell))
}

/// An `expires_at` cell as Unix milliseconds; `None` as for [`deadline_of`].
pub(super) fn millis_of(cell: ValueRef<'_>) -> Option<i64> {
    match cell {
        ValueRef::Integer(millis) => Some(millis),
        _ => None,
    }
}

/// Unix milliseconds as the column holds them, as a deadline.
pub(super) fn deadline_of_millis(millis: Option<i64>) -> Option<Deadline> {
    millis
        .and_then(|millis| u64::try_from(millis).ok())
        .and_then(Deadline::from_unix_millis)
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

/// What a sweep in a transaction of its own may cost, its commit included: a live write that
/// arrives meanwhile waits about this long.
const SWEEP_BUDGET: Duration = Duration::from_millis(2);

/// A sweep in a transaction of its own makes way once its deletes have taken this long and
/// other work is queued on the writer, whatever its pace says.
const SWEEP_SLICE: Duration = Duration::from_millis(1);

/// The fewest rows a sweep transaction aims at, so that a slow disk does not stall the sweep.
const SWEEP_MIN_ROWS: usize = 16;

/// Rows one statement of a sweep riding on a commit of live writes deletes at most.
const RIDING_STEP: usize = 64;

/// What a sweep riding on a commit of live writes may add to it: a fraction of the commit's
/// own time (about half a millisecond here), so that a write never waits for a sweep longer
/// than for a share of its own commit.
const RIDING_BUDGET: Duration = Duration::from_micros(150);

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

    /// Aims the next transaction halfway between this one's size and the size that would have
    /// taken [`SWEEP_BUDGET`].
    fn learn(&self, rows: usize, took: Duration) {
        let fits = rows as f64 * SWEEP_BUDGET.as_secs_f64() / took.as_secs_f64().max(1e-6);
        let aim = (self.rows() as f64 + fits) / 2.0;
        self.rows
            .store((aim as usize).max(SWEEP_MIN_ROWS), Ordering::Relaxed);
    }
}

/// Deletes at most `limit` rows of `table` whose deadline has passed by the writer's clock, and
/// returns their keys once that is committed. The writer thread decides how (see
/// [`sweep_riding`] and [`sweep_alone`]): a sweep never holds a live write for long.
pub(super) async fn sweep(
    writer: &Writer,
    table: &Arc<TableSql>,
    limit: usize,
    origin: i64,
) -> Result<Vec<String>> {
    writer.sweep(Arc::clone(table), limit, origin).await
}

/// A sweep inside a commit of live writes, after them: deletes for at most about
/// [`RIDING_BUDGET`] (one step at least), under a savepoint, so that a sweep that fails is
/// undone alone and the writes still commit. The outer error fails the whole transaction: a
/// savepoint that could not be undone, or an error after which SQLite had ended it.
pub(super) fn sweep_riding(
    connection: &Connection,
    columns: &mut ExpiryColumns,
    request: &SweepRequest,
    id: i64,
) -> rusqlite::Result<rusqlite::Result<Vec<String>>> {
    if !columns.has_column(connection, &request.table.name, false)? {
        return Ok(Ok(Vec::new())); // No TTL was ever written to this table.
    }
    run_statement(connection, "SAVEPOINT persistent_map_sweep")?;
    let began = Instant::now();
    let enough = || began.elapsed() >= RIDING_BUDGET;
    match delete_expired(connection, request, request.limit, RIDING_STEP, id, &enough) {
        Ok(deleted) => {
            run_statement(connection, "RELEASE persistent_map_sweep")?;
            Ok(Ok(deleted))
        }
        // SQLite ended the whole transaction (a trigger's `RAISE(ROLLBACK)`, a full disk):
        // nothing to roll back to, and the writes must go again.
        Err(error) if connection.is_autocommit() => Err(error),
        Err(error) => {
            run_statement(connection, "ROLLBACK TO persistent_map_sweep")?;
            run_statement(connection, "RELEASE persistent_map_sweep")?;
            Ok(Err(error))
        }
    }
}

/// A sweep in a transaction of its own, for when no live write is coming: as many rows as
/// `pace` says fit in [`SWEEP_BUDGET`], cut short once [`SWEEP_SLICE`] has passed and
/// `work_queued()` says other work waits. Not synced: a sweep lost to a power cut only brings
/// back rows that are expired anyway, and the next synced commit syncs it.
pub(super) fn sweep_alone(
    connection: &mut Connection,
    synchronous: &mut Durability,
    request: &SweepRequest,
    id: i64,
    pace: &SweepPace,
    work_queued: &dyn Fn() -> bool,
) -> rusqlite::Result<Vec<String>> {
    if !has_column(connection, &request.table.name)? {
        return Ok(Vec::new()); // No TTL was ever written to this table.
    }
    let began = Instant::now();
    let limit = request.limit.min(pace.rows());
    let deleted = without_sync(connection, synchronous, |connection| {
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let enough = || began.elapsed() >= SWEEP_SLICE && work_queued();
        let deleted = delete_expired(&transaction, request, limit, SWEEP_STEP, id, &enough)?;
        if !deleted.is_empty() {
            transaction.commit()?;
        }
        Ok(deleted)
    })?;
    if !deleted.is_empty() {
        pace.learn(deleted.len(), began.elapsed());
    }
    Ok(deleted)
}

/// Runs `work` with `synchronous = NORMAL`: in WAL mode a commit is then not synced (the next
/// synced commit syncs it), and it stays consistent. Then sets the level back to `synchronous`,
/// the writer's record of it; if that fails, the record says `Normal`, so that the next commit
/// sets the level it needs.
fn without_sync<T>(
    connection: &mut Connection,
    synchronous: &mut Durability,
    work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    let result = work(connection);
    match connection.pragma_update(None, "synchronous", synchronous.pragma_value()) {
        Ok(()) => result,
        Err(error) => {
            *synchronous = Durability::Normal;
            result.and(Err(error))
        }
    }
}

/// Deletes rows of the request's table whose deadline has passed (one clock reading for all),
/// `step` rows per statement, until `limit` rows (at most the request's) are deleted, none is
/// left, or `enough()` says so after a step; logs their keys (other processes' refreshes re-read
/// them, and tell their subscribers). In the caller's transaction.
fn delete_expired(
    connection: &Connection,
    request: &SweepRequest,
    limit: usize,
    step: usize,
    id: i64,
    enough: &dyn Fn() -> bool,
) -> rusqlite::Result<Vec<String>> {
    let table = &request.table;
    let limit = limit.min(request.limit);
    let mut delete = connection.prepare_cached(&format!(
        "DELETE FROM \"{name}\" WHERE key IN (SELECT key FROM \"{name}\" \
         WHERE expires_at <= ?1 LIMIT ?2) RETURNING key",
        name = table.name
    ))?;
    let now = now_sql();
    let mut deleted = Vec::new();
    loop {
        // Another program's table may hold a key twice and so lose more rows than asked.
        let step = step.min(limit.saturating_sub(deleted.len()));
        let before = deleted.len();
        let rows = i64::try_from(step).unwrap_or(i64::MAX);
        let keys = delete.query_map((now, rows), |row| row.get::<_, String>(0))?;
        for key in keys {
            deleted.push(key?);
        }
        if deleted.len() - before < step || deleted.len() >= limit || enough() {
            break;
        }
    }
    if deleted.is_empty() {
        return Ok(deleted);
    }
    let ops: Vec<RawOp> = deleted
        .into_iter()
        .map(|key| RawOp::Delete { key })
        .collect();
    super::log::log_ops(
        connection,
        &mut super::known::Known::default(),
        table,
        &ops,
        request.origin,
        id,
    )?;
    Ok(ops
        .into_iter()
        .filter_map(|op| match op {
            RawOp::Delete { key } => Some(key),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::super::SqliteBackend;
    use crate::{PersistentMap, StorageBackend};

    type Map = PersistentMap<String, u64, SqliteBackend>;

    /// Enough that a sweep riding on a commit cannot delete them all within its budget.
    const EXPIRED: usize = 2000;

    /// A file whose table holds `EXPIRED` rows that expired an hour ago (so the map loads none
    /// and its background sweep stops after the round it makes as it opens), `setup` run on
    /// it, and the map on it. With `warm`, the map then commits twice, so that the writer knows
    /// no other connection writes and gathers its groups with their transaction open.
    async fn expired_rows(dir: &tempfile::TempDir, setup: &str, warm: bool) -> Map {
        let path = dir.path().join("sweep.db");
        let connection = rusqlite::Connection::open(&path).unwrap();
        connection
            .execute_batch(
                "CREATE TABLE kv (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL, \
                 expires_at INTEGER);",
            )
            .unwrap();
        connection.execute_batch(setup).unwrap();
        let map: Map = PersistentMap::open(&path).await.unwrap();
        // The round the map sweeps as it opens, with nothing expired: only the test's own
        // sweeps meet the rows.
        let began = std::time::Instant::now();
        while map.backend().writer.paths_taken().0 == 0 {
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "no sweep on open"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut connection = connection;
        let transaction = connection.transaction().unwrap();
        let an_hour_ago = super::now_sql() - 3_600_000;
        for i in 0..EXPIRED {
            transaction
                .execute(
                    "INSERT INTO kv VALUES (?1, '1', ?2)",
                    (format!("old-{i:04}"), an_hour_ago),
                )
                .unwrap();
        }
        transaction.commit().unwrap();
        drop(connection);
        assert!(map.is_empty());
        if warm {
            for i in 0..2 {
                map.insert(format!("warm-{i}"), i).await.unwrap();
            }
        }
        map
    }

    async fn sweep_kv(map: &Map) -> crate::Result<Vec<String>> {
        StorageBackend::<String, u64>::sweep_expired(map.backend(), EXPIRED, 7).await
    }

    fn rows(map: &Map) -> usize {
        let connection = rusqlite::Connection::open(map.backend().writer.path()).unwrap();
        connection
            .query_row("SELECT count(*) FROM kv", [], |row| row.get::<_, i64>(0))
            .unwrap() as usize
    }

    /// Queues a sweep and `writes` inserts behind a held writer thread, so that they are taken
    /// as one group, then lets the writer go; returns the sweep's result once the inserts are
    /// done (each must succeed).
    async fn sweep_with_writes(map: &Map, writes: u64) -> crate::Result<Vec<String>> {
        let (release, held) = mpsc::channel::<()>();
        map.backend()
            .writer
            .start(Box::new(move |_| {
                let _ = held.recv();
            }))
            .unwrap();
        let sweep = {
            let map = map.clone();
            tokio::spawn(async move { sweep_kv(&map).await })
        };
        let inserts: Vec<_> = (0..writes)
            .map(|i| {
                let map = map.clone();
                tokio::spawn(async move { map.insert(format!("live-{i}"), i).await })
            })
            .collect();
        // All of them are queued behind the held writer well before this.
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(release);
        let swept = sweep.await.unwrap();
        for insert in inserts {
            insert.await.unwrap().unwrap();
        }
        swept
    }

    /// A sweep queued with live writes is done inside their commit (one transaction for all,
    /// none of the sweep's own) and deletes a bounded share of the expired rows there, whether
    /// the group was gathered first (`warm` false) or with its transaction open.
    async fn a_sweep_rides_on_the_commit_of_live_writes(warm: bool) {
        let dir = tempfile::tempdir().unwrap();
        let map = expired_rows(&dir, "", warm).await;
        let commits = map.backend().stats().commits;
        let (alone, gathering) = map.backend().writer.paths_taken();
        let swept = sweep_with_writes(&map, 3).await.unwrap();
        assert_eq!(map.backend().stats().commits, commits + 1);
        assert_eq!(
            map.backend().writer.paths_taken(),
            (alone, gathering + u64::from(warm)),
            "(sweeps alone, groups gathered with the transaction open)"
        );
        assert!(
            (super::RIDING_STEP..EXPIRED).contains(&swept.len()),
            "a sweep riding on a commit deletes one step at least and not everything \
             ({} of {EXPIRED})",
            swept.len()
        );
        assert_eq!(
            rows(&map),
            EXPIRED - swept.len() + 3 + if warm { 2 } else { 0 }
        );
        assert_eq!(map.get("live-2"), Some(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sweep_rides_on_a_group_gathered_first() {
        a_sweep_rides_on_the_commit_of_live_writes(false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sweep_rides_on_a_group_gathered_with_its_transaction_open() {
        a_sweep_rides_on_the_commit_of_live_writes(true).await;
    }

    /// A sweep that fails inside a commit of live writes fails alone: the writes commit (in one
    /// commit: not retried each alone), every expired row is still stored, and the sweep
    /// reports the error. `raise` is how a trigger refuses the delete: `ABORT` undoes the
    /// statement (the savepoint undoes the sweep), `ROLLBACK` ends the whole transaction (the
    /// writes go again without the sweep).
    async fn a_sweep_that_fails_in_a_shared_commit_fails_alone(raise: &str, warm: bool) {
        let dir = tempfile::tempdir().unwrap();
        let trigger = format!(
            "CREATE TRIGGER keep BEFORE DELETE ON kv \
             BEGIN SELECT RAISE({raise}, 'rows of kv are kept'); END;"
        );
        let map = expired_rows(&dir, &trigger, warm).await;
        let commits = map.backend().stats().commits;
        let (alone, _) = map.backend().writer.paths_taken();
        let error = sweep_with_writes(&map, 3).await.unwrap_err();
        assert!(
            error.to_string().contains("rows of kv are kept"),
            "the sweep's error says why: {error}"
        );
        assert_eq!(
            map.backend().stats().commits,
            commits + 1,
            "the writes were committed together"
        );
        assert_eq!(
            map.backend().writer.paths_taken().0,
            alone,
            "no sweep ran alone"
        );
        let warmed = if warm { 2 } else { 0 };
        assert_eq!(rows(&map), EXPIRED + 3 + warmed);
        assert_eq!(map.len(), 3 + warmed);
        // Alone, too, it fails and deletes nothing.
        assert!(sweep_kv(&map).await.is_err());
        assert_eq!(rows(&map), EXPIRED + 3 + warmed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sweep_undone_by_its_savepoint_fails_alone() {
        a_sweep_that_fails_in_a_shared_commit_fails_alone("ABORT", false).await;
        a_sweep_that_fails_in_a_shared_commit_fails_alone("ABORT", true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sweep_that_ends_the_transaction_fails_alone() {
        a_sweep_that_fails_in_a_shared_commit_fails_alone("ROLLBACK", false).await;
        a_sweep_that_fails_in_a_shared_commit_fails_alone("ROLLBACK", true).await;
    }
}
