//! Reads on connections of their own: the rows of a few keys (a cached map's miss, a refresh's
//! changed keys) and the pages of a scan in key order. Each runs on tokio's blocking pool with a
//! read-only connection from a small pool, so it never waits behind the file's writer thread,
//! never holds it up, and never runs on a tokio worker. (`:memory:` has no other connection:
//! there the writer thread reads.)
//!
//! The statements select `*`: SQLite prepares a statement again when the schema changes, and
//! `*` then takes in the column `expires_at` that a table's first write with a time to live
//! adds. Which rows are live is decided here, as the SQL of `expiry.rs` decides it, so a
//! cached statement never serves an expired row as live.

use std::collections::HashMap;
use std::hash::Hash;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row};
use serde::de::DeserializeOwned;

use super::load::{describe, text_of};
use super::open::Reader;
use super::writer::Writer;
use crate::backends::decode::{decode_key, decode_value, not_text, Column};
use crate::{Deadline, PersistentError, Result, ScanPage};

/// Idle connections kept for the next reads; more may be open while many reads run at once.
const IDLE: usize = 8;

/// The read-only connections of one backend's file.
pub(super) struct Readers {
    writer: Arc<Writer>,
    idle: Mutex<Vec<Connection>>,
}

/// What the closure of a read returns: SQLite's error, or what it made of the rows (an error
/// naming the table and the key).
type Read<T> = rusqlite::Result<Result<T>>;

impl Readers {
    pub(super) fn new(writer: Arc<Writer>) -> Self {
        Self {
            writer,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // Every change to the list is one `Vec` call.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `read` with a read-only connection on the blocking pool, or on the writer thread for
    /// `:memory:`.
    async fn run<T, F>(self: &Arc<Self>, read: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Read<T> + Send + 'static,
        T: Send + 'static,
    {
        let Some(reader) = self.writer.reader() else {
            return self.writer.run(move |connection| read(connection)).await?;
        };
        let readers = Arc::clone(self);
        let reader = reader.clone();
        let path = reader.path().to_path_buf();
        let read = crate::tasks::run_blocking(move || readers.read_with(&reader, read)).await?;
        read.map_err(|source| PersistentError::Sqlite { path, source })?
    }

    /// Runs `read` with an idle connection, or a new one; keeps it for the next read after.
    fn read_with<T>(&self, reader: &Reader, read: impl FnOnce(&Connection) -> Read<T>) -> Read<T> {
        let idle = self.idle().pop();
        let connection = match idle {
            Some(connection) => connection,
            None => {
                let connection = reader.connect()?;
                connection.set_prepared_statement_cache_capacity(32);
                connection
            }
        };
        let read = read(&connection);
        let mut idle = self.idle();
        if idle.len() < IDLE {
            idle.push(connection);
        }
        read
    }

    /// The live rows of `keys` in `table`, decoded, with their deadlines; a key not stored (or
    /// expired) is left out.
    pub(super) async fn rows_of<K, V>(
        self: &Arc<Self>,
        table: &str,
        keys: &[K],
    ) -> Result<HashMap<K, (V, Option<Deadline>)>>
    where
        K: Eq + Hash + Clone + ToString + Send + 'static,
        V: DeserializeOwned + Send + 'static,
    {
        let table = table.to_owned();
        let keys = keys.to_vec();
        self.run(move |connection| {
            let mut select =
                connection.prepare_cached(&format!("SELECT * FROM \"{table}\" WHERE key = ?1"))?;
            let now = crate::deadline::now_millis();
            let mut found = HashMap::with_capacity(keys.len());
            for key in keys {
                let text = key.to_string();
                let mut rows = select.query([&text])?;
                let Some(row) = rows.next()? else {
                    continue;
                };
                let deadline = row.get_ref("expires_at").ok();
                if !is_live(deadline, now) {
                    continue;
                }
                let value = match value_of(row, &table, &text)? {
                    Ok(value) => value,
                    Err(error) => return Ok(Err(error)),
                };
                found.insert(key, (value, deadline.and_then(super::expiry::deadline_of)));
            }
            Ok(Ok(found))
        })
        .await
    }

    /// Up to `limit` rows of `table` whose key text starts with `prefix`, in the order of the
    /// key text, after the key text `after` (from the first, without it): the live ones
    /// decoded, and where to go on from.
    pub(super) async fn page<K, V>(
        self: &Arc<Self>,
        table: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage<K, V>>
    where
        K: FromStr + ToString + Send + 'static,
        <K as FromStr>::Err: std::error::Error + Send + Sync + 'static,
        V: DeserializeOwned + Send + 'static,
    {
        let table = table.to_owned();
        let prefix = prefix.to_owned();
        let (bound, compare) = match after {
            Some(after) => (after.to_owned(), ">"),
            None => (prefix.clone(), ">="),
        };
        let limit = limit.max(1);
        self.run(move |connection| {
            let mut select = connection.prepare_cached(&format!(
                "SELECT * FROM \"{table}\" WHERE key {compare} ?1 ORDER BY key LIMIT ?2"
            ))?;
            let mut rows = select.query((&bound, i64::try_from(limit).unwrap_or(i64::MAX)))?;
            let now = crate::deadline::now_millis();
            let mut entries = Vec::new();
            let mut read = 0;
            let mut last = None;
            while let Some(row) = rows.next()? {
                let cell = row.get_ref("key")?;
                let key = match text_of(cell) {
                    Ok(key) => key,
                    Err(found) => {
                        return Ok(Err(not_text(&table, describe(cell), Column::Key, found)));
                    }
                };
                if !key.starts_with(&prefix) {
                    return Ok(Ok(ScanPage::new(entries, None)));
                }
                read += 1;
                let deadline = row.get_ref("expires_at").ok();
                if is_live(deadline, now) {
                    let value = value_of(row, &table, key)?;
                    match decode_key::<K>(&table, key).and_then(|key| Ok((key, value?))) {
                        Ok((key, value)) => entries.push((
                            key,
                            value,
                            deadline.and_then(super::expiry::deadline_of),
                        )),
                        Err(error) => return Ok(Err(error)),
                    }
                }
                last = Some(key.to_owned());
            }
            let resume_after = last.filter(|_| read == limit);
            Ok(Ok(ScanPage::new(entries, resume_after)))
        })
        .await
    }

    /// How many live rows `table` has: one `SELECT count(*)`.
    pub(super) async fn count_live(self: &Arc<Self>, table: &str) -> Result<usize> {
        let table = table.to_owned();
        self.run(move |connection| {
            let (_, live) = super::expiry::live_rows_sql(connection, &table, "?1")?;
            let count: i64 = connection.query_row(
                &format!("SELECT count(*) FROM \"{table}\" WHERE {live}"),
                [super::expiry::now_sql()],
                |row| row.get(0),
            )?;
            Ok(Ok(usize::try_from(count).unwrap_or(0)))
        })
        .await
    }
}

/// The value of `row` (under the key text `key` of `table`), decoded.
fn value_of<V: DeserializeOwned>(row: &Row<'_>, table: &str, key: &str) -> Read<V> {
    Ok(match text_of(row.get_ref("value")?) {
        Ok(json) => decode_value(table, key, json),
        Err(found) => Err(not_text(table, key.to_owned(), Column::Value, found)),
    })
}

/// Whether a row whose `expires_at` cell is `deadline` (`None`: the table has no such column)
/// is live at `now` (Unix milliseconds), as `expires_at IS NULL OR expires_at > now` says.
fn is_live(deadline: Option<ValueRef<'_>>, now: u64) -> bool {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    match deadline {
        None | Some(ValueRef::Null) => true,
        Some(ValueRef::Integer(millis)) => millis > now,
        // SQLite compares a real number as a number, and holds text and blobs above every one.
        Some(ValueRef::Real(millis)) => millis > now as f64,
        Some(ValueRef::Text(_) | ValueRef::Blob(_)) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A statement prepared before a table gains `expires_at` sees the column after: `*` is
    /// expanded again when SQLite prepares the statement anew for the changed schema.
    #[test]
    fn a_cached_select_of_every_column_sees_a_column_added_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode=WAL;
                 CREATE TABLE t (key TEXT PRIMARY KEY, value TEXT);
                 INSERT INTO t VALUES ('k', '1');",
            )
            .unwrap();
        let reader = Connection::open(&path).unwrap();
        let read = |connection: &Connection| {
            let mut select = connection
                .prepare_cached("SELECT * FROM t WHERE key = ?1")
                .unwrap();
            let mut rows = select.query(["k"]).unwrap();
            let row = rows.next().unwrap().unwrap();
            match row.get_ref("expires_at") {
                Ok(ValueRef::Integer(millis)) => Some(millis),
                _ => None,
            }
        };
        assert_eq!(read(&reader), None);
        writer
            .execute_batch(
                "ALTER TABLE t ADD COLUMN expires_at INTEGER;
                 UPDATE t SET expires_at = 5;",
            )
            .unwrap();
        assert_eq!(read(&reader), Some(5));
        assert!(!is_live(Some(ValueRef::Integer(5)), 5));
        assert!(is_live(Some(ValueRef::Integer(6)), 5));
        assert!(is_live(None, u64::MAX));
    }
}
