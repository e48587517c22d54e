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
use std::sync::Arc;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, TransactionBehavior};

use super::writer::{log_keys, RawOp, TableSql, Writer};
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

/// Deletes up to `limit` rows of `table` whose deadline has passed on the writer's clock, in
/// one transaction on the writer thread (between groups of live writes), logs their keys as
/// written by `origin`, and returns them.
pub(super) async fn sweep(
    writer: &Writer,
    table: &Arc<TableSql>,
    limit: usize,
    origin: i64,
) -> Result<Vec<String>> {
    let table = Arc::clone(table);
    let id = writer.id();
    writer
        .run(move |connection| {
            if !has_column(connection, &table.name)? {
                return Ok(Vec::new()); // No TTL was ever written to this table.
            }
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let deleted = {
                let mut delete = transaction.prepare_cached(&format!(
                    "DELETE FROM \"{name}\" WHERE key IN (SELECT key FROM \"{name}\" \
                     WHERE expires_at <= ?1 LIMIT ?2) RETURNING key",
                    name = table.name
                ))?;
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                let keys = delete.query_map((now_sql(), limit), |row| row.get::<_, String>(0))?;
                keys.collect::<rusqlite::Result<Vec<String>>>()?
            };
            if deleted.is_empty() {
                return Ok(deleted);
            }
            let ops: Vec<RawOp> = deleted
                .into_iter()
                .map(|key| RawOp::Delete { key })
                .collect();
            log_keys(&transaction, &table, &ops, origin, id)?;
            transaction.commit()?;
            Ok(ops
                .into_iter()
                .filter_map(|op| match op {
                    RawOp::Delete { key } => Some(key),
                    _ => None,
                })
                .collect())
        })
        .await
}
