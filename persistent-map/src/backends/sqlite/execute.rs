//! One transaction of the writer: executing a group's requests (the layout fence, the
//! conditions, the ops, their log rows), then the sweeps riding on it, then `COMMIT`.
//!
//! A write may carry conditions (what must be stored under some keys for it to go ahead): they
//! are checked inside the same `IMMEDIATE` transaction that writes, which holds the file's write
//! lock, so no other process can come in between; a condition compares what a value means
//! (`condition_holds`), not how it was spelled.

use std::sync::atomic::Ordering;

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use super::fence::LayoutFence;
use super::gather::Swept;
use super::known::Known;
use super::writer::{Counters, Outcome, RawOp, SweepRequest, TableSql, Write, WriteRequest};
use super::Durability;
use crate::backends::encode::condition_holds;

/// `rusqlite::Error` is not `Clone`; keep the SQLite code and message, which is what callers
/// match on and read.
pub(super) fn copy_error(error: &rusqlite::Error) -> rusqlite::Error {
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

pub(super) fn set_synchronous(
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
pub(super) fn commit(
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
        let swept = finish_transaction(connection, fence, sweeps, id)?;
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

/// The end of a group's transaction, after its writes: the sweeps riding on it, and `COMMIT`.
pub(super) fn finish_transaction(
    connection: &Connection,
    fence: &mut LayoutFence,
    sweeps: &[SweepRequest],
    id: i64,
) -> rusqlite::Result<Vec<Swept>> {
    let swept = sweeps
        .iter()
        .map(|sweep| {
            let swept =
                super::expiry::sweep_riding(connection, &mut fence.expiry_columns, sweep, id)?;
            if let Ok(keys) = &swept {
                fence.log_backlog.add(&sweep.table.name, keys.len());
            }
            Ok(swept)
        })
        .collect::<rusqlite::Result<Vec<Swept>>>()?;
    run_statement(connection, "COMMIT")?;
    Ok(swept)
}

pub(super) fn count_commit(counters: &Counters, requests: usize) {
    counters.commits.fetch_add(1, Ordering::Relaxed);
    counters
        .requests
        .fetch_add(requests as u64, Ordering::Relaxed);
}

/// One request inside the group's transaction: the layout checks, every part's conditions
/// (all read before anything is written, as a transaction's reads come before its writes),
/// then the ops and their log rows. A request whose check fails writes nothing and says why.
/// `known`: what the transaction's earlier requests read and wrote.
pub(super) fn execute(
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
                    let stored = stored.as_ref().map(|(json, _)| json.as_str());
                    condition_holds(stored, expected.as_deref(), part.canonical)
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
                            .map(|(json, _)| json)
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
        let logged = super::log::log_ops(connection, known, table, &part.ops, part.origin, id)?;
        fence.log_backlog.add(&table.name, logged);
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
) -> rusqlite::Result<Option<(String, Option<i64>)>> {
    if let Some(held) = known.held(&table.name, key, now) {
        return Ok(held.map(|(json, expires_at)| (json.to_owned(), expires_at)));
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
            // A cell that is not an integer (written by another program) is no deadline, as
            // loads read it.
            let deadline = match expiring {
                true => super::expiry::millis_of(row.get_ref(1)?),
                false => None,
            };
            Ok::<_, rusqlite::Error>((value, deadline))
        })
        .transpose()?;
    known.set(&table.name, key, held.clone());
    Ok(held)
}

pub(super) fn run_statement(connection: &Connection, sql: &str) -> rusqlite::Result<()> {
    connection.prepare_cached(sql)?.execute([]).map(drop)
}

/// Ends a failed transaction (a failed `COMMIT` can leave it open). If even the cached
/// `ROLLBACK` fails, a fresh one is tried: a connection left inside a transaction would fail
/// every later write.
pub(super) fn roll_back(connection: &Connection) {
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
