//! Expiry in SQLite: the `expires_at` column, and sweeping expired rows.
//!
//! `expires_at INTEGER` holds a row's deadline in Unix milliseconds of the writer's wall clock
//! (`NULL`: never). It is added in place (`ALTER TABLE ... ADD COLUMN`) to a table that lacks it
//! the first time this version opens the table, so the table keeps persistent-map 0.1.3's
//! `key` and `value` columns and 0.1.3, which selects those two, still reads it. A partial
//! index over the rows that have a deadline (`persistent_map_expiry_<table>`) lets a sweep find
//! expired rows without scanning the table; rows without a deadline are not in it, so writes
//! that never use a TTL do not maintain it.

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

/// Adds `expires_at` and its partial index to `table` if `columns` (its `PRAGMA table_info`)
/// lack the column. Checked again inside an `IMMEDIATE` transaction, so two processes opening
/// the table at once do not both add it.
pub(super) fn add_expiry_column(
    connection: &mut Connection,
    table: &str,
    columns: &[(String, i64)],
) -> rusqlite::Result<()> {
    let has_column = |columns: &[(String, i64)]| {
        columns
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("expires_at"))
    };
    if has_column(columns) {
        return Ok(());
    }
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let columns = transaction
        .prepare(&format!("PRAGMA table_info(\"{table}\")"))?
        .query_map([], |row| Ok((row.get::<_, String>("name")?, 0)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if !has_column(&columns) {
        transaction.execute(
            &format!("ALTER TABLE \"{table}\" ADD COLUMN expires_at INTEGER"),
            [],
        )?;
        transaction.execute(
            &format!(
                "CREATE INDEX IF NOT EXISTS \"{}\" ON \"{table}\" (expires_at) \
                 WHERE expires_at IS NOT NULL",
                index_name(table)
            ),
            [],
        )?;
    }
    transaction.commit()
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
