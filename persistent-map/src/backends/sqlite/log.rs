//! The change log: which keys each transaction wrote, so that the maps of other processes
//! re-read just those keys when they refresh.
//!
//! Every transaction of this crate logs each key it wrote in `persistent_map_log`, numbered in
//! commit order (SQLite commits one transaction at a time), with the writing map's id (its
//! origin: a map skips its own writes) and the writing connection's (`writer`). A key `NULL`
//! means "any key of the table": a clear, or a key migration.
//!
//! Each table keeps its newest [`ROWS_KEPT`] rows: a busy table prunes its own rows, never a
//! quiet table's. Pruning happens in short transactions of their own while the writer is idle
//! ([`prune_step`]), never inside a commit of live writes, and records in
//! `persistent_map_log_pruned` the newest number pruned per table: a follower whose place is
//! older than that reloads the table instead of trusting a list with holes.
//!
//! A map's place in that history is the last number it applied, with the file's
//! `PRAGMA data_version` at the time: the version moves when any other connection commits, so
//! when it moved and no other connection logged anything, a program that does not log (the
//! `sqlite3` shell, a script, an older version of this crate) committed, and the map reloads.
//! (When another process of this crate logged in the same interval, such a commit goes
//! unnoticed until the next one: `load` catches it.) [`since`] reads all of this in one read
//! transaction, so a prune committed meanwhile cannot hide rows from it.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};

use super::execute::run_statement;
use super::known::Known;
use super::writer::{RawOp, TableSql, Writer};
use crate::{ChangePosition, Result};

/// The log, its index by table, and the per-table prune marks.
pub(super) const CREATE: &str = "CREATE TABLE IF NOT EXISTS persistent_map_log \
     (seq INTEGER PRIMARY KEY, table_name TEXT NOT NULL, key TEXT, origin INTEGER NOT NULL, \
     writer INTEGER NOT NULL); \
     CREATE INDEX IF NOT EXISTS persistent_map_log_by_table \
     ON persistent_map_log (table_name, seq); \
     CREATE TABLE IF NOT EXISTS persistent_map_log_pruned \
     (table_name TEXT PRIMARY KEY NOT NULL, seq INTEGER NOT NULL)";

/// The name of the log's index by table, as `sqlite_master` has it.
pub(super) const BY_TABLE_INDEX: &str = "persistent_map_log_by_table";

/// Each table keeps about this many of its newest log rows; a map that fell further behind
/// reloads the table.
pub(super) const ROWS_KEPT: i64 = 65_536;

/// Log rows deleted per pruning transaction at most: a few milliseconds of work.
pub(super) const PRUNE_STEP: usize = 1024;

const INSERT: &str =
    "INSERT INTO persistent_map_log (table_name, key, origin, writer) VALUES (?1, ?2, ?3, ?4)";

/// Logs the keys `ops` wrote to `table` (a clear as "any key"), each once per origin in the
/// transaction `known` describes; returns how many rows it added.
pub(super) fn log_ops(
    connection: &Connection,
    known: &mut Known,
    table: &TableSql,
    ops: &[RawOp],
    origin: i64,
    writer: i64,
) -> rusqlite::Result<usize> {
    let mut insert = connection.prepare_cached(INSERT)?;
    let mut added = 0;
    for op in ops {
        let key = match op {
            RawOp::Upsert { key, .. } | RawOp::Delete { key } => Some(key.as_str()),
            RawOp::DeleteAll => None,
        };
        let first = match key {
            Some(key) => known.first_log(&table.name, key, origin),
            None => true,
        };
        if first {
            insert.execute((&table.name, key, origin, writer))?;
            added += 1;
        }
    }
    Ok(added)
}

/// Log rows this writer added per table since it last pruned the table. A table is due for
/// pruning once it added a step's worth; a table first seen is due at once, since rows may
/// have piled up in the file before this writer started.
#[derive(Debug, Default)]
pub(super) struct Backlog {
    added: HashMap<String, usize>,
}

impl Backlog {
    pub(super) fn add(&mut self, table: &str, rows: usize) {
        if rows == 0 {
            return;
        }
        match self.added.get_mut(table) {
            Some(added) => *added += rows,
            None => drop(self.added.insert(table.to_owned(), PRUNE_STEP.max(rows))),
        }
    }

    /// A table due for a prune step, if any.
    pub(super) fn due(&self) -> Option<String> {
        self.added
            .iter()
            .find(|(_, added)| **added >= PRUNE_STEP)
            .map(|(table, _)| table.clone())
    }

    /// A prune step of `table` deleted `deleted` rows (or failed: `None`, tried again later,
    /// after more rows).
    pub(super) fn pruned(&mut self, table: &str, deleted: Option<usize>) {
        if let Some(added) = self.added.get_mut(table)
            && deleted.is_none_or(|deleted| deleted < PRUNE_STEP)
        {
            *added = 0;
        }
    }
}

/// Deletes up to [`PRUNE_STEP`] of `table`'s oldest log rows beyond its [`ROWS_KEPT`] newest,
/// in a transaction of its own, and marks them pruned; returns how many it deleted (fewer than
/// the step: nothing more to prune).
pub(super) fn prune_step(connection: &Connection, table: &str) -> rusqlite::Result<usize> {
    run_statement(connection, "BEGIN IMMEDIATE")?;
    let pruned = prune_in_transaction(connection, table);
    match pruned {
        Ok(deleted) => run_statement(connection, "COMMIT").map(|()| deleted),
        Err(error) => {
            let _ = run_statement(connection, "ROLLBACK");
            Err(error)
        }
    }
}

fn prune_in_transaction(connection: &Connection, table: &str) -> rusqlite::Result<usize> {
    let cutoff: Option<i64> = connection
        .prepare_cached(
            "SELECT seq FROM persistent_map_log WHERE table_name = ?1 \
             ORDER BY seq DESC LIMIT 1 OFFSET ?2",
        )?
        .query_row((table, ROWS_KEPT), |row| row.get(0))
        .optional()?;
    let Some(cutoff) = cutoff else {
        return Ok(0);
    };
    let newest_pruned: Option<i64> = connection
        .prepare_cached(
            "DELETE FROM persistent_map_log WHERE seq IN \
             (SELECT seq FROM persistent_map_log WHERE table_name = ?1 AND seq <= ?2 \
              ORDER BY seq LIMIT ?3) \
             RETURNING seq",
        )?
        .query_map((table, cutoff, PRUNE_STEP as i64), |row| row.get(0))?
        .try_fold(None, |newest: Option<i64>, seq| {
            seq.map(|seq: i64| Some(newest.map_or(seq, |newest| newest.max(seq))))
        })?;
    let Some(newest_pruned) = newest_pruned else {
        return Ok(0);
    };
    let deleted = connection.changes() as usize;
    connection
        .prepare_cached(
            "INSERT INTO persistent_map_log_pruned (table_name, seq) VALUES (?1, ?2) \
             ON CONFLICT (table_name) DO UPDATE SET seq = max(seq, excluded.seq)",
        )?
        .execute((table, newest_pruned))?;
    Ok(deleted)
}

/// Where the file's history stands, for one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Place {
    /// The newest log row's number (0: none).
    seq: i64,
    /// The writer connection's `PRAGMA data_version`.
    data_version: i64,
}

impl Place {
    pub(super) fn to_position(self) -> ChangePosition {
        let high = u128::from(self.seq as u64) << 64;
        ChangePosition::new(high | u128::from(self.data_version as u64))
    }

    pub(super) fn from_position(position: ChangePosition) -> Self {
        let bits = position.get();
        Self {
            seq: (bits >> 64) as u64 as i64,
            data_version: bits as u64 as i64,
        }
    }
}

/// What the log says changed in a table since a place.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Logged {
    /// These key texts (written by other backends than the asking one), possibly none.
    Keys(Vec<String>),
    /// Anything may have changed.
    Unknown,
}

/// Where the file's history stands now.
pub(super) async fn place(writer: &Writer) -> Result<Place> {
    writer.run(|connection| current(connection)).await
}

fn current(connection: &Connection) -> rusqlite::Result<Place> {
    let data_version = connection
        .prepare_cached("PRAGMA data_version")?
        .query_row([], |row| row.get(0))?;
    let seq = connection
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM persistent_map_log")?
        .query_row([], |row| row.get(0))?;
    Ok(Place { seq, data_version })
}

/// What changed in `table` after `since`, written by backends other than `origin`, and the
/// place to ask from next time: read in one read transaction.
pub(super) async fn since(
    writer: &Writer,
    table: &str,
    origin: i64,
    since: Option<Place>,
) -> Result<(Logged, Place)> {
    let table = table.to_owned();
    let me = writer.id();
    writer
        .run(move |connection| {
            run_statement(connection, "BEGIN")?;
            let read = read_since(connection, &table, origin, me, since);
            // A read transaction: ending it cannot fail in a way that matters to what was read.
            let _ = run_statement(connection, "COMMIT");
            read
        })
        .await
}

fn read_since(
    connection: &Connection,
    table: &str,
    origin: i64,
    me: i64,
    since: Option<Place>,
) -> rusqlite::Result<(Logged, Place)> {
    let now = current(connection)?;
    let Some(since) = since else {
        return Ok((Logged::Unknown, now));
    };
    let pruned: i64 = connection
        .prepare_cached("SELECT seq FROM persistent_map_log_pruned WHERE table_name = ?1")?
        .query_row([table], |row| row.get(0))
        .optional()?
        .unwrap_or(0);
    // Rows the place has not seen were pruned, or the log was emptied by hand.
    if since.seq < pruned || since.seq > now.seq {
        return Ok((Logged::Unknown, now));
    }
    if now.data_version != since.data_version {
        // Another connection committed. If none logged anything since, it was a program that
        // does not log, and what it changed is unknown.
        let logged_by_others: i64 = connection
            .prepare_cached(
                "SELECT count(*) FROM persistent_map_log \
                 WHERE seq > ?1 AND seq <= ?2 AND writer <> ?3",
            )?
            .query_row((since.seq, now.seq, me), |row| row.get(0))?;
        if logged_by_others == 0 {
            return Ok((Logged::Unknown, now));
        }
    }
    let mut select = connection.prepare_cached(
        "SELECT key FROM persistent_map_log \
         WHERE table_name = ?1 AND seq > ?2 AND seq <= ?3 AND origin <> ?4",
    )?;
    let mut rows = select.query((table, since.seq, now.seq, origin))?;
    let mut keys = Vec::new();
    while let Some(row) = rows.next()? {
        match row.get::<_, Option<String>>(0)? {
            Some(key) => keys.push(key),
            None => return Ok((Logged::Unknown, now)),
        }
    }
    keys.sort_unstable();
    keys.dedup();
    Ok((Logged::Keys(keys), now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_survives_its_position() {
        for place in [
            Place {
                seq: 0,
                data_version: 1,
            },
            Place {
                seq: 123_456_789,
                data_version: i64::MAX,
            },
        ] {
            assert_eq!(Place::from_position(place.to_position()), place);
        }
    }

    fn log_of(tables: &[(&str, usize)]) -> Connection {
        let connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(CREATE).unwrap();
        for &(table, rows) in tables {
            for key in 0..rows {
                connection
                    .execute(INSERT, (table, key.to_string(), 1, 1))
                    .unwrap();
            }
        }
        connection
    }

    fn rows_of(connection: &Connection, table: &str) -> i64 {
        connection
            .query_row(
                "SELECT count(*) FROM persistent_map_log WHERE table_name = ?1",
                [table],
                |row| row.get(0),
            )
            .unwrap()
    }

    #[test]
    fn a_busy_table_prunes_only_its_own_rows_a_step_at_a_time() {
        let busy = ROWS_KEPT as usize + PRUNE_STEP + 10;
        let connection = log_of(&[("quiet", 3), ("busy", busy)]);
        assert_eq!(prune_step(&connection, "busy").unwrap(), PRUNE_STEP);
        assert_eq!(prune_step(&connection, "busy").unwrap(), 10);
        assert_eq!(prune_step(&connection, "busy").unwrap(), 0);
        assert_eq!(rows_of(&connection, "busy"), ROWS_KEPT);
        assert_eq!(prune_step(&connection, "quiet").unwrap(), 0);
        assert_eq!(rows_of(&connection, "quiet"), 3);
        // The mark is the newest row pruned: the quiet table's three came first.
        let mark: i64 = connection
            .query_row(
                "SELECT seq FROM persistent_map_log_pruned WHERE table_name = 'busy'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(mark, 3 + (PRUNE_STEP + 10) as i64);
    }

    #[test]
    fn a_place_older_than_what_was_pruned_reads_as_unknown_and_newer_ones_as_keys() {
        let connection = log_of(&[("busy", ROWS_KEPT as usize + 5), ("quiet", 2)]);
        let before = current(&connection).unwrap();
        prune_step(&connection, "busy").unwrap();
        let old = Place {
            seq: 2,
            data_version: before.data_version,
        };
        let read = |place| {
            read_since(&connection, "busy", 0, 1, Some(place))
                .unwrap()
                .0
        };
        assert_eq!(read(old), Logged::Unknown);
        // The quiet table's followers are not pushed into a reload by the busy table's prune.
        let quiet = read_since(&connection, "quiet", 0, 1, Some(old)).unwrap().0;
        assert_eq!(quiet, Logged::Keys(vec!["0".into(), "1".into()]));
        let recent = Place {
            seq: ROWS_KEPT,
            data_version: before.data_version,
        };
        let newest: Vec<String> = (65_536..=65_540).map(|key: i32| key.to_string()).collect();
        assert_eq!(read(recent), Logged::Keys(newest));
    }
}
