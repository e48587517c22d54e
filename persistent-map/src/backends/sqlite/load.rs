//! Table setup and loading: rows are read on the writer thread and decoded by the caller.
//!
//! The writer thread only copies raw text into chunks; parsing keys and deserializing values
//! (user code, which may be slow or may panic) happens in the caller's task. The two overlap, so
//! a large table loads on two cores.

use std::str::FromStr;

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::writer::Writer;
use crate::backends::decode::{decode_key, decode_value, not_text, Column};
use crate::{PersistentError, Result};

/// Creates the table if it is missing, then checks that it has the columns this crate uses.
pub(super) async fn ensure_table(writer: &Writer, table: &str) -> Result<()> {
    let create = format!(
        "CREATE TABLE IF NOT EXISTS \"{table}\" (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)"
    );
    let table_info = format!("PRAGMA table_info(\"{table}\")");
    let columns = writer
        .run(move |connection| {
            connection.execute(&create, [])?;
            let mut statement = connection.prepare(&table_info)?;
            let columns = statement.query_map([], |row| {
                Ok((row.get::<_, String>("name")?, row.get::<_, i64>("pk")?))
            })?;
            columns.collect::<rusqlite::Result<Vec<_>>>()
        })
        .await?;
    check_columns(table, &columns)
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

/// Rows of raw text, copied out of SQLite in one buffer.
#[derive(Default)]
struct Chunk {
    text: String,
    /// Per row: where its key ends (its value starts) and where its value ends. A row starts
    /// where the previous one ends.
    bounds: Vec<(usize, usize)>,
}

impl Chunk {
    fn push(&mut self, key: &str, value: &str) {
        self.text.push_str(key);
        let key_end = self.text.len();
        self.text.push_str(value);
        self.bounds.push((key_end, self.text.len()));
    }

    fn rows(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut start = 0;
        self.bounds.iter().map(move |&(key_end, value_end)| {
            let row = (&self.text[start..key_end], &self.text[key_end..value_end]);
            start = value_end;
            row
        })
    }
}

/// What the writer thread sends while it scans a table.
enum Scanned {
    Rows(Chunk),
    /// A row whose key or value is not text, so it cannot even be handed to the decoder.
    NotText {
        key: String,
        column: Column,
        found: &'static str,
    },
    Failed(rusqlite::Error),
    /// Every row was sent. Carries the `PRAGMA data_version` read before the scan.
    Finished(i64),
}

const CHUNK_ROWS: usize = 1024;
const CHUNK_BYTES: usize = 256 * 1024;

/// Streams the table's rows, decoded as `K` and `V`, into `sink`. Returns the file's
/// `PRAGMA data_version` from before the scan, so that a later change by another connection
/// can be told apart.
pub(super) async fn load_each<K, V>(
    writer: &Writer,
    table: &str,
    sink: &mut (dyn FnMut(K, V) + Send),
) -> Result<i64>
where
    K: FromStr,
    <K as FromStr>::Err: std::error::Error + Send + Sync + 'static,
    V: DeserializeOwned,
{
    // Two chunks in flight: the thread reads the next while the caller decodes this one.
    let (sender, mut scanned) = mpsc::channel(2);
    let select = format!("SELECT key, value FROM \"{table}\"");
    writer.start(Box::new(move |connection| {
        scan(connection, &select, &sender);
    }))?;
    while let Some(message) = scanned.recv().await {
        match message {
            Scanned::Rows(chunk) => {
                for (key, value) in chunk.rows() {
                    sink(decode_key(table, key)?, decode_value(table, key, value)?);
                }
            }
            Scanned::NotText { key, column, found } => {
                return Err(not_text(table, key, column, found));
            }
            Scanned::Failed(source) => return Err(writer.sqlite_error(source)),
            Scanned::Finished(data_version) => return Ok(data_version),
        }
    }
    // The thread dropped the channel without saying it finished: it stopped mid-scan.
    Err(PersistentError::BackendClosed {
        path: writer.path().to_path_buf(),
    })
}

/// Reads the rows of `keys` (key texts) and decodes them; keys that are not stored are left out.
pub(super) async fn load_keys<K, V>(
    writer: &Writer,
    table: &str,
    keys: Vec<String>,
) -> Result<Vec<(K, V)>>
where
    K: FromStr,
    <K as FromStr>::Err: std::error::Error + Send + Sync + 'static,
    V: DeserializeOwned,
{
    let select = format!("SELECT value FROM \"{table}\" WHERE key = ?1");
    let rows = writer
        .run(move |connection| {
            let mut statement = connection.prepare_cached(&select)?;
            let mut rows = Vec::with_capacity(keys.len());
            for key in keys {
                let mut found = statement.query([&key])?;
                if let Some(row) = found.next()? {
                    let value = text_of(row.get_ref(0)?).map(str::to_owned);
                    rows.push((key, value));
                }
            }
            Ok(rows)
        })
        .await?;
    rows.into_iter()
        .map(|(key, value)| {
            let value =
                value.map_err(|found| not_text(table, key.clone(), Column::Value, found))?;
            Ok((decode_key(table, &key)?, decode_value(table, &key, &value)?))
        })
        .collect()
}

/// A row as stored: key text and value JSON text.
pub(super) type RawRow = (String, String);

/// Every row of `table`, as stored.
pub(super) async fn raw_rows(writer: &Writer, table: &str) -> Result<Vec<RawRow>> {
    let select = format!("SELECT key, value FROM \"{table}\"");
    let rows = writer
        .run(move |connection| {
            let mut statement = connection.prepare(&select)?;
            let mut rows = statement.query([])?;
            let mut raw = Vec::new();
            while let Some(row) = rows.next()? {
                let key = match text_of(row.get_ref(0)?) {
                    Ok(key) => key.to_owned(),
                    Err(found) => return Ok(Err((describe(row.get_ref(0)?), Column::Key, found))),
                };
                match text_of(row.get_ref(1)?) {
                    Ok(value) => raw.push((key, value.to_owned())),
                    Err(found) => return Ok(Err((key, Column::Value, found))),
                }
            }
            Ok(Ok(raw))
        })
        .await?;
    rows.map_err(|(key, column, found)| not_text(table, key, column, found))
}

/// `PRAGMA data_version` of the writer's connection: it changes when another connection (another
/// process) commits to the file, and only then.
pub(super) async fn data_version(writer: &Writer) -> Result<i64> {
    writer
        .run(|connection| connection.query_row("PRAGMA data_version", [], |row| row.get(0)))
        .await
}

/// Runs on the writer thread. Stops early, without error, when the caller stopped listening.
fn scan(connection: &Connection, select: &str, sender: &mpsc::Sender<Scanned>) {
    let data_version = match connection.query_row("PRAGMA data_version", [], |row| row.get(0)) {
        Ok(version) => version,
        Err(error) => {
            let _ = sender.blocking_send(Scanned::Failed(error));
            return;
        }
    };
    let outcome = match scan_rows(connection, select, sender) {
        Ok(ScanEnd::Finished) => Scanned::Finished(data_version),
        Ok(ScanEnd::CallerGone) => return,
        Ok(ScanEnd::NotText(message)) => message,
        Err(error) => Scanned::Failed(error),
    };
    let _ = sender.blocking_send(outcome);
}

enum ScanEnd {
    Finished,
    CallerGone,
    NotText(Scanned),
}

fn scan_rows(
    connection: &Connection,
    select: &str,
    sender: &mpsc::Sender<Scanned>,
) -> rusqlite::Result<ScanEnd> {
    let mut statement = connection.prepare_cached(select)?;
    let mut rows = statement.query([])?;
    let mut chunk = Chunk::default();
    while let Some(row) = rows.next()? {
        let key = match text_of(row.get_ref(0)?) {
            Ok(key) => key,
            Err(found) => {
                return Ok(ScanEnd::NotText(Scanned::NotText {
                    key: describe(row.get_ref(0)?),
                    column: Column::Key,
                    found,
                }))
            }
        };
        let value = match text_of(row.get_ref(1)?) {
            Ok(value) => value,
            Err(found) => {
                return Ok(ScanEnd::NotText(Scanned::NotText {
                    key: key.to_owned(),
                    column: Column::Value,
                    found,
                }))
            }
        };
        chunk.push(key, value);
        if chunk.bounds.len() >= CHUNK_ROWS || chunk.text.len() >= CHUNK_BYTES {
            if sender.blocking_send(Scanned::Rows(chunk)).is_err() {
                return Ok(ScanEnd::CallerGone);
            }
            chunk = Chunk::default();
        }
    }
    if !chunk.bounds.is_empty() && sender.blocking_send(Scanned::Rows(chunk)).is_err() {
        return Ok(ScanEnd::CallerGone);
    }
    Ok(ScanEnd::Finished)
}

/// The cell as text, or what it is instead.
fn text_of(cell: ValueRef<'_>) -> Result<&str, &'static str> {
    match cell {
        ValueRef::Text(bytes) => std::str::from_utf8(bytes).map_err(|_| "text that is not UTF-8"),
        ValueRef::Null => Err("NULL"),
        ValueRef::Integer(_) => Err("an integer"),
        ValueRef::Real(_) => Err("a real number"),
        ValueRef::Blob(_) => Err("a blob"),
    }
}

/// A key that is not text, written so that a user can find the row.
fn describe(cell: ValueRef<'_>) -> String {
    match cell {
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(number) => number.to_string(),
        ValueRef::Real(number) => number.to_string(),
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
            String::from_utf8_lossy(bytes).into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_rows_come_back_as_pushed() {
        let mut chunk = Chunk::default();
        let rows = [("a", "1"), ("", "\"\""), ("ключ", "{\"x\":[]}"), ("k", "")];
        for (key, value) in rows {
            chunk.push(key, value);
        }
        assert_eq!(chunk.rows().collect::<Vec<_>>(), rows);
    }

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
