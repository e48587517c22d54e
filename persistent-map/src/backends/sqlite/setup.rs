//! Making a file and a map's table ready, checked before anything in the file changes.
//!
//! Opening reads before it writes: the schema first (a file that is not a database is refused
//! having only been read), then what the open would change. Only if something must change (the
//! journal mode, the crate's own tables, a map's missing table, a layout not yet recorded) does
//! it write, and a file that already holds pages is first checked with `PRAGMA quick_check`, so
//! a damaged file is refused left byte for byte as it was rather than written into. A file this
//! crate has set up before, and a table it has opened before, open without writing anything.
//!
//! What the first open of a file (persistent-map 0.1.3's included) changes in it: the journal
//! mode becomes WAL (so `-wal` and `-shm` files appear beside it while it is open), and the
//! crate's own tables appear: `persistent_map_log` (and its index), `persistent_map_log_pruned`
//! and `persistent_map_tables`. The map's table and its rows are left as they are.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::log;
use super::writer::Writer;
use crate::{PersistentError, Result};

/// The crate's record of each table's key layout (see `layout.rs`).
pub(super) const CREATE_LAYOUTS: &str = "CREATE TABLE IF NOT EXISTS persistent_map_tables \
     (table_name TEXT PRIMARY KEY NOT NULL, key_layout TEXT NOT NULL)";

/// The crate's own tables and indexes, as `sqlite_master` names them.
const OWN_OBJECTS: [&str; 4] = [
    "persistent_map_log",
    log::BY_TABLE_INDEX,
    "persistent_map_log_pruned",
    "persistent_map_tables",
];

/// Makes a freshly opened connection's file ready: WAL and the crate's own tables, checked
/// first if they are missing. `synchronous=FULL` until a write asks for less.
pub(super) fn set_up_file(connection: &Connection) -> rusqlite::Result<()> {
    // Reads the header and the schema: a file that is not a database fails here, unchanged.
    let present: i64 = connection.query_row(
        "SELECT count(*) FROM sqlite_master WHERE name IN (?1, ?2, ?3, ?4)",
        OWN_OBJECTS,
        |row| row.get(0),
    )?;
    let mode: String = connection.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
    let is_wal = mode.eq_ignore_ascii_case("wal");
    if !is_wal || present < OWN_OBJECTS.len() as i64 {
        check_integrity(connection)?;
        if !is_wal {
            connection.pragma_update(None, "journal_mode", "WAL")?;
        }
        connection.execute_batch(&format!(
            "BEGIN IMMEDIATE; {}; {CREATE_LAYOUTS}; COMMIT",
            log::CREATE
        ))?;
    }
    connection.pragma_update(None, "synchronous", "FULL")
}

/// Makes `table` ready for a map: creates it if missing and records `layout` if none is recorded
/// (checking the file first, as [`set_up_file`] does), then checks its columns and that the
/// recorded layout is `layout` (an empty layout, a hand-written key text, is neither recorded
/// nor checked).
pub(super) async fn set_up_table(writer: &Writer, table: &str, layout: &'static str) -> Result<()> {
    let name = table.to_owned();
    let (columns, recorded) = writer
        .run(move |connection| {
            let mut read = read_table(connection, &name, layout)?;
            if read.0.is_empty() || (!layout.is_empty() && read.1.is_none()) {
                if read.0.is_empty() {
                    check_integrity(connection)?;
                }
                // Immediate: a transaction that reads and then writes would be refused at once
                // (not after the busy timeout) when another process writes meanwhile.
                let transaction =
                    connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
                transaction.execute(
                    &format!(
                        "CREATE TABLE IF NOT EXISTS \"{name}\" \
                         (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)"
                    ),
                    [],
                )?;
                // Read again inside the transaction: another process may have come first.
                read = read_table(&transaction, &name, layout)?;
                if !layout.is_empty() && read.1.is_none() {
                    transaction.execute(
                        "INSERT INTO persistent_map_tables (table_name, key_layout) VALUES (?1, ?2)",
                        (&name, layout),
                    )?;
                }
                transaction.commit()?;
            }
            Ok(read)
        })
        .await
        .map_err(damaged_as_open_error)?;
    check_columns(table, &columns)?;
    match recorded {
        Some(recorded) if recorded != layout => Err(PersistentError::IncompatibleKeyLayout {
            table: table.to_owned(),
            stored: recorded,
            expected: layout.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// A table's columns (name, place in the primary key; none: no such table) and, if `layout` is
/// to be checked, the layout recorded for it.
type TableRead = (Vec<(String, i64)>, Option<String>);

fn read_table(connection: &Connection, table: &str, layout: &str) -> rusqlite::Result<TableRead> {
    let mut statement = connection.prepare(&format!("PRAGMA table_info(\"{table}\")"))?;
    let columns = statement
        .query_map([], |row| Ok((row.get("name")?, row.get("pk")?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let recorded = if layout.is_empty() {
        None
    } else {
        connection
            .query_row(
                "SELECT key_layout FROM persistent_map_tables WHERE table_name = ?1",
                [table],
                |row| row.get(0),
            )
            .optional()?
    };
    Ok((columns, recorded))
}

fn check_columns(table: &str, columns: &[(String, i64)]) -> Result<()> {
    let incompatible = |reason: String| PersistentError::IncompatibleTable {
        table: table.to_owned(),
        reason,
    };
    let key_is_primary_key = columns
        .iter()
        .any(|(name, pk)| name.eq_ignore_ascii_case("key") && *pk == 1);
    let primary_key_columns = columns.iter().filter(|(_, pk)| *pk > 0).count();
    if !key_is_primary_key || primary_key_columns != 1 {
        let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
        return Err(incompatible(format!(
            "it needs a column `key` that is its whole primary key; its columns are {names:?}"
        )));
    }
    if !columns
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("value"))
    {
        return Err(incompatible("it has no column `value`".to_owned()));
    }
    Ok(())
}

/// Refuses a file that holds pages and fails SQLite's `PRAGMA quick_check` (an empty file has
/// nothing to damage), with SQLite's first finding, as a `SQLITE_CORRUPT` error.
fn check_integrity(connection: &Connection) -> rusqlite::Result<()> {
    let pages: i64 = connection.query_row("PRAGMA page_count", [], |row| row.get(0))?;
    if pages == 0 {
        return Ok(());
    }
    let first: String = connection.query_row("PRAGMA quick_check(1)", [], |row| row.get(0))?;
    if first == "ok" {
        return Ok(());
    }
    Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
        Some(format!("PRAGMA quick_check found: {first}")),
    ))
}

/// Whether SQLite found the file damaged (by [`check_integrity`] or on its own).
pub(super) fn is_damaged(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseCorrupt)
}

/// A damaged file as the open error it is; other errors as they are.
fn damaged_as_open_error(error: PersistentError) -> PersistentError {
    match error {
        PersistentError::Sqlite { path, source } if is_damaged(&source) => PersistentError::Open {
            reason: DAMAGED.to_owned(),
            path,
            source: Some(source.into()),
        },
        error => error,
    }
}

/// What an open that refused a damaged file says.
pub(super) const DAMAGED: &str =
    "the file is damaged, so nothing was changed in it (restore it from a backup, or recover it with the sqlite3 tool's `.recover`)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_without_key_primary_key_are_rejected() {
        let columns = |list: &[(&str, i64)]| {
            list.iter()
                .map(|(name, pk)| (name.to_string(), *pk))
                .collect::<Vec<_>>()
        };
        assert!(check_columns("t", &columns(&[("key", 1), ("value", 0)])).is_ok());
        for bad in [
            columns(&[("key", 0), ("value", 0)]),
            columns(&[("id", 1), ("key", 0), ("value", 0)]),
            columns(&[("key", 1), ("other", 2), ("value", 0)]),
            columns(&[("key", 1), ("data", 0)]),
        ] {
            let err = check_columns("t", &bad).unwrap_err();
            assert!(err.to_string().contains("\"t\""), "{err}");
        }
    }
}
