//! Loading: rows are read (and partly decoded) on a thread and connection of
//! their own, and stored by the caller, the two at once, so a large table loads on two cores
//! without holding up the file's writer.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::str::FromStr;

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::writer::Writer;
use crate::backends::decode::{decode_key, decode_value, not_text, Column};
use crate::{Deadline, PersistentError, Result};

/// An entry as loaded: key, value, deadline.
type Loaded<K, V> = (K, V, Option<Deadline>);

/// What the scanning thread sends while it scans a table.
enum Scanned<K, V> {
    /// Rows the writer decoded.
    Entries(Vec<Loaded<K, V>>),
    /// Rows for the caller to decode: sent when the caller has nothing else to do.
    Rows(RawChunk),
    Failed(PersistentError),
    /// Decoding a row panicked (in the key's `FromStr` or the value's `Deserialize`): the
    /// panic is resumed in the caller's task, where it would have happened had it decoded there.
    Panicked(Box<dyn Any + Send>),
    /// Every row was sent.
    Finished,
}

/// Rows as stored, copied out of SQLite into one buffer.
#[derive(Default)]
struct RawChunk {
    text: String,
    /// Per row: where its key ends (its value starts) and where its value ends. A row starts
    /// where the previous one ends.
    bounds: Vec<(usize, usize)>,
    /// Per row, its deadline.
    deadlines: Vec<Option<Deadline>>,
}

impl RawChunk {
    fn push(&mut self, key: &str, value: &str, deadline: Option<Deadline>) {
        self.text.push_str(key);
        let key_end = self.text.len();
        self.text.push_str(value);
        self.bounds.push((key_end, self.text.len()));
        self.deadlines.push(deadline);
    }

    fn rows(&self) -> impl Iterator<Item = (&str, &str, Option<Deadline>)> {
        let mut start = 0;
        self.bounds
            .iter()
            .zip(&self.deadlines)
            .map(move |(&(key_end, value_end), &deadline)| {
                let row = (
                    &self.text[start..key_end],
                    &self.text[key_end..value_end],
                    deadline,
                );
                start = value_end;
                row
            })
    }
}

/// Rows per message: large enough that the channel costs nothing per row, small enough that
/// the rows in flight cost nothing in memory.
const CHUNK_ROWS: usize = 1024;

/// Streams the table's live rows, decoded as `K` and `V`, with their deadlines, into `sink`;
/// a row whose deadline has passed on this process's clock is not loaded.
///
/// A scanning thread (a blocking-pool thread with a read-only connection of its own; the writer
/// thread for `:memory:`) reads the rows and the caller's task puts them into `sink` (the map);
/// decoding them (the key's `FromStr`, the value's JSON) is shared: the scanning thread decodes
/// a chunk when the caller is still busy with earlier ones, and leaves it to the caller when the
/// caller is waiting. So a large table loads on two cores, and the only copy of the rows is the
/// one being built.
pub(super) async fn load_each<K, V>(
    writer: &Writer,
    table: &str,
    sink: &mut (dyn FnMut(K, V, Option<Deadline>) + Send),
) -> Result<()>
where
    K: FromStr + ToString + Send + 'static,
    <K as FromStr>::Err: std::error::Error + Send + Sync + 'static,
    V: DeserializeOwned + Send + 'static,
{
    // Two chunks in flight: the scanning thread decodes the next while the caller stores this one.
    let (sender, mut scanned) = mpsc::channel(2);
    let table_name = table.to_owned();
    let path = writer.path().to_path_buf();
    match writer.reader() {
        // The scan waits whenever the caller is slow to take its chunks (or stops polling): on a
        // connection and thread of its own, that holds up nobody else. On the writer thread it
        // would hold up every write to the file, even the caller's own (a deadlock).
        Some(reader) => {
            let reader = reader.clone();
            drop(crate::tasks::spawn_blocking(move || {
                match reader.connect() {
                    Ok(connection) => scan_and_report(&connection, &table_name, path, &sender),
                    Err(source) => {
                        let failed = PersistentError::Sqlite { path, source };
                        let _ = sender.blocking_send(Scanned::Failed(failed));
                    }
                }
            }));
        }
        // `:memory:`: no other connection sees the database, so the writer scans.
        None => writer.start(Box::new(move |connection| {
            scan_and_report(connection, &table_name, path, &sender);
        }))?,
    }
    while let Some(message) = scanned.recv().await {
        match message {
            Scanned::Entries(entries) => {
                for (key, value, deadline) in entries {
                    sink(key, value, deadline);
                }
            }
            Scanned::Rows(chunk) => {
                for (key, value, deadline) in chunk.rows() {
                    let value = decode_value(table, key, value)?;
                    sink(decode_key(table, key)?, value, deadline);
                }
            }
            Scanned::Failed(error) => return Err(error),
            Scanned::Panicked(panic) => std::panic::resume_unwind(panic),
            Scanned::Finished => return Ok(()),
        }
    }
    // The thread dropped the channel without saying it finished: it stopped mid-scan.
    Err(PersistentError::BackendClosed {
        path: writer.path().to_path_buf(),
    })
}

/// A row as stored: key text, value JSON text, deadline (Unix milliseconds).
pub(super) type RawRow = (String, String, Option<i64>);

/// Every live row of `table`, as stored.
pub(super) async fn raw_rows(writer: &Writer, table: &str) -> Result<Vec<RawRow>> {
    let name = table.to_owned();
    let rows = writer
        .run(move |connection| {
            let (deadline, live) = super::expiry::live_rows_sql(connection, &name, "?1")?;
            let select = format!("SELECT key, value, {deadline} FROM \"{name}\" WHERE {live}");
            let mut statement = connection.prepare(&select)?;
            let mut rows = statement.query([super::expiry::now_sql()])?;
            let mut raw = Vec::new();
            while let Some(row) = rows.next()? {
                let key = match text_of(row.get_ref(0)?) {
                    Ok(key) => key.to_owned(),
                    Err(found) => return Ok(Err((describe(row.get_ref(0)?), Column::Key, found))),
                };
                match text_of(row.get_ref(1)?) {
                    Ok(value) => raw.push((key, value.to_owned(), row.get(2)?)),
                    Err(found) => return Ok(Err((key, Column::Value, found))),
                }
            }
            Ok(Ok(raw))
        })
        .await?;
    rows.map_err(|(key, column, found)| not_text(table, key, column, found))
}

/// The number of rows of `table` (`SELECT count(*)`, a few milliseconds per million rows).
pub(super) async fn count(writer: &Writer, table: &str) -> Result<usize> {
    let count = format!("SELECT count(*) FROM \"{table}\"");
    let rows: i64 = writer
        .run(move |connection| connection.query_row(&count, [], |row| row.get(0)))
        .await?;
    Ok(usize::try_from(rows).unwrap_or(0))
}

/// The scanning thread's part of a load: scan, then send how it ended. A panic while decoding is
/// caught here and sent to the caller, so that it does not take the thread down (for `:memory:`,
/// the file's writer thread).
fn scan_and_report<K, V>(
    connection: &Connection,
    table: &str,
    path: PathBuf,
    sender: &mpsc::Sender<Scanned<K, V>>,
) where
    K: FromStr + ToString,
    <K as FromStr>::Err: std::error::Error + Send + Sync + 'static,
    V: DeserializeOwned,
{
    let outcome = catch_unwind(AssertUnwindSafe(|| scan(connection, table, sender)));
    let last = match outcome {
        Ok(Ok(ScanEnd::Finished)) => Scanned::Finished,
        Ok(Ok(ScanEnd::CallerGone)) => return,
        Ok(Err(ScanError::Sqlite(source))) => {
            Scanned::Failed(PersistentError::Sqlite { path, source })
        }
        Ok(Err(ScanError::Row(error))) => Scanned::Failed(error),
        Err(panic) => Scanned::Panicked(panic),
    };
    let _ = sender.blocking_send(last);
}

/// A chunk being filled on the scanning thread, raw or decoded.
enum Chunk<K, V> {
    Raw(RawChunk),
    Decoded(Vec<Loaded<K, V>>),
}

impl<K, V> Chunk<K, V> {
    /// Raw if the caller has nothing queued (it is waiting: let it decode), else decoded here.
    fn new(sender: &mpsc::Sender<Scanned<K, V>>) -> Self {
        if sender.capacity() == sender.max_capacity() {
            Chunk::Raw(RawChunk::default())
        } else {
            Chunk::Decoded(Vec::with_capacity(CHUNK_ROWS))
        }
    }

    fn len(&self) -> usize {
        match self {
            Chunk::Raw(raw) => raw.bounds.len(),
            Chunk::Decoded(entries) => entries.len(),
        }
    }

    fn into_message(self) -> Scanned<K, V> {
        match self {
            Chunk::Raw(raw) => Scanned::Rows(raw),
            Chunk::Decoded(entries) => Scanned::Entries(entries),
        }
    }
}

enum ScanEnd {
    Finished,
    /// The caller stopped listening (its load was dropped): nothing more to do.
    CallerGone,
}

enum ScanError {
    Sqlite(rusqlite::Error),
    /// A row that does not decode; the error names the table and the key.
    Row(PersistentError),
}

impl From<rusqlite::Error> for ScanError {
    fn from(error: rusqlite::Error) -> Self {
        ScanError::Sqlite(error)
    }
}

/// Runs on the scanning thread: reads every row, decodes it (or leaves that to the caller),
/// and sends the rows in chunks.
fn scan<K, V>(
    connection: &Connection,
    table: &str,
    sender: &mpsc::Sender<Scanned<K, V>>,
) -> Result<ScanEnd, ScanError>
where
    K: FromStr + ToString,
    <K as FromStr>::Err: std::error::Error + Send + Sync + 'static,
    V: DeserializeOwned,
{
    let (deadline, live) = super::expiry::live_rows_sql(connection, table, "?1")?;
    let mut statement = connection.prepare_cached(&format!(
        "SELECT key, value, {deadline} FROM \"{table}\" WHERE {live}"
    ))?;
    let mut rows = statement.query([super::expiry::now_sql()])?;
    let mut chunk = Chunk::new(sender);
    while let Some(row) = rows.next()? {
        let key = text_of(row.get_ref(0)?).map_err(|found| {
            let key = describe(row.get_ref(0).unwrap_or(ValueRef::Null));
            ScanError::Row(not_text(table, key, Column::Key, found))
        })?;
        let value = text_of(row.get_ref(1)?).map_err(|found| {
            ScanError::Row(not_text(table, key.to_owned(), Column::Value, found))
        })?;
        let deadline = super::expiry::deadline_of(row.get_ref(2)?);
        match &mut chunk {
            Chunk::Raw(raw) => raw.push(key, value, deadline),
            Chunk::Decoded(entries) => entries.push(
                decode_key(table, key)
                    .and_then(|decoded| Ok((decoded, decode_value(table, key, value)?, deadline)))
                    .map_err(ScanError::Row)?,
            ),
        }
        if chunk.len() == CHUNK_ROWS {
            let full = std::mem::replace(&mut chunk, Chunk::new(sender));
            if sender.blocking_send(full.into_message()).is_err() {
                return Ok(ScanEnd::CallerGone);
            }
        }
    }
    if chunk.len() > 0 && sender.blocking_send(chunk.into_message()).is_err() {
        return Ok(ScanEnd::CallerGone);
    }
    Ok(ScanEnd::Finished)
}

/// The cell as text, or what it is instead.
pub(super) fn text_of(cell: ValueRef<'_>) -> Result<&str, &'static str> {
    match cell {
        ValueRef::Text(bytes) => std::str::from_utf8(bytes).map_err(|_| "text that is not UTF-8"),
        ValueRef::Null => Err("NULL"),
        ValueRef::Integer(_) => Err("an integer"),
        ValueRef::Real(_) => Err("a real number"),
        ValueRef::Blob(_) => Err("a blob"),
    }
}

/// A key that is not text, written so that a user can find the row.
pub(super) fn describe(cell: ValueRef<'_>) -> String {
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

    /// Parses any text, except that it panics on `boom`.
    #[derive(Debug)]
    struct Fragile(String);

    impl FromStr for Fragile {
        type Err = std::convert::Infallible;
        fn from_str(text: &str) -> Result<Self, Self::Err> {
            assert_ne!(text, "boom", "Fragile cannot parse boom");
            Ok(Fragile(text.to_owned()))
        }
    }

    impl std::fmt::Display for Fragile {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    #[test]
    fn a_panic_while_decoding_on_the_scanning_thread_is_sent_to_the_caller() {
        let connection = Connection::open_in_memory().unwrap();
        connection
            .execute_batch(
                "CREATE TABLE t (key TEXT PRIMARY KEY, value TEXT, expires_at INTEGER);
                 INSERT INTO t (key, value) VALUES ('boom', '1');",
            )
            .unwrap();
        let (sender, mut received) = mpsc::channel::<Scanned<Fragile, u32>>(2);
        // A chunk is waiting for the caller, so the scanning thread decodes the next one itself.
        sender.try_send(Scanned::Entries(Vec::new())).unwrap();
        scan_and_report(&connection, "t", PathBuf::from("test.db"), &sender);
        assert!(matches!(received.try_recv(), Ok(Scanned::Entries(entries)) if entries.is_empty()));
        let Ok(Scanned::Panicked(panic)) = received.try_recv() else {
            panic!("the writer's panic was not sent to the caller");
        };
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("Fragile cannot parse boom"), "{message}");
        // The connection is as usable as before.
        let rows: i64 = connection
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 1);
    }

    #[test]
    fn raw_chunk_rows_come_back_as_pushed() {
        let mut chunk = RawChunk::default();
        let soon = Deadline::from_unix_millis(7);
        let rows = [
            ("a", "1", None),
            ("", "\"\"", soon),
            ("ключ", "{\"x\":[]}", None),
            ("k", "", soon),
        ];
        for (key, value, deadline) in rows {
            chunk.push(key, value, deadline);
        }
        assert_eq!(chunk.rows().collect::<Vec<_>>(), rows);
    }
}
