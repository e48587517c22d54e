//! The CSV backend (feature `csv_backend`): a map kept in one CSV file, read and written in
//! persistent-map 0.1.3's format, so that 0.1.3's files open as they are.
//!
//! ```
//! use persistent_map::{csv::CsvBackend, PersistentMap};
//!
//! # persistent_map::__private::run_example(Box::pin(async {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("data.csv");
//! // A file as persistent-map 0.1.3 wrote it: one `key,value` record per entry, no header.
//! std::fs::write(&path, "alice,30\nbob,25\n")?;
//! let map: PersistentMap<String, u32, CsvBackend> = PersistentMap::new(CsvBackend::new(&path)).await?;
//! assert_eq!(map.get("alice"), Some(30));
//! map.insert("carol".into(), 41).await?; // the file is replaced, durably, before this returns
//! assert_eq!(std::fs::read_to_string(&path)?, "alice,30\nbob,25\ncarol,41\n");
//! # Ok(()) }));
//! ```
//!
//! # The format
//!
//! No header row; each record is the key's text (its `Display`) followed by the value's
//! fields as the `csv` crate's serde support writes them: one field for a number, a string or
//! a bool, one per field for a struct, fields quoted only when they need it. Nested
//! sequences and maps cannot be written in CSV: such a value is refused with an error. A key
//! written twice (0.1.3 appended a record on every insert) keeps its last record.
//!
//! # Writes
//!
//! Every write (an insert, a remove, a batch) rewrites the whole file: the new contents go to
//! a temporary file beside it (`.NAME.tmp`), which is synced to disk and renamed over the
//! file, and the directory is synced. A write is acknowledged only after that, and a crash at
//! any point leaves the old file or the new one, whole, never a mix. Batches are all or
//! nothing. Records are written in the order of their key texts.
//!
//! The cost of a write grows with the file, so this backend suits small maps (settings, a
//! few thousand entries); use SQLite beyond that. One process at a time should write a file:
//! another process's writes are seen on [`load`](crate::PersistentMap::load) or
//! [`refresh`](crate::PersistentMap::refresh), and a write replaces the file with this
//! process's view of it.
//!
//! # Errors
//!
//! A file that cannot be read (bad UTF-8, a key that does not parse as the key type, a value
//! that does not deserialize) is refused as a whole with [`PersistentError::Csv`] naming the
//! path and the line, and left untouched.

mod file;

use crate::{MapKey, MapValue};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{de::DeserializeOwned, Serialize};

use crate::{BatchOp, PersistentError, Result, StorageBackend};

/// A [`StorageBackend`] that keeps a map in one CSV file, in persistent-map 0.1.3's format;
/// see the [module docs](self) for the format and the durability of writes.
///
/// ```
/// use persistent_map::{csv::CsvBackend, PersistentMap};
///
/// # persistent_map::__private::run_example(Box::pin(async {
/// # let dir = tempfile::tempdir()?;
/// let backend = CsvBackend::new(dir.path().join("scores.csv"));
/// let map: PersistentMap<u64, f64, _> = PersistentMap::new(backend).await?;
/// map.insert(7, 0.5).await?;
/// assert_eq!(std::fs::read_to_string(map.backend().path())?, "7,0.5\n");
/// # Ok(()) }));
/// ```
#[derive(Clone)]
pub struct CsvBackend {
    path: Arc<PathBuf>,
    /// The file's records by key text, encoded as written; `None` until the file is read.
    /// Held while a write replaces the file, so writes are applied one at a time.
    rows: Arc<Mutex<Option<Rows>>>,
}

type Rows = BTreeMap<String, Vec<u8>>;

/// One write to the file's records, its value already encoded.
enum RawOp {
    Upsert { key: String, record: Vec<u8> },
    Delete { key: String },
}

impl CsvBackend {
    /// A backend on the CSV file at `path`, as in 0.1.3. Nothing is opened yet: a missing file
    /// is an empty map, created (with its directory) on the first write.
    ///
    /// ```
    /// use persistent_map::csv::CsvBackend;
    ///
    /// let backend = CsvBackend::new("my_data.csv");
    /// assert_eq!(backend.path(), std::path::Path::new("my_data.csv"));
    /// ```
    pub fn new(path: impl AsRef<Path>) -> Self {
        CsvBackend {
            path: Arc::new(path.as_ref().to_path_buf()),
            rows: Arc::new(Mutex::new(None)),
        }
    }

    /// The file this backend keeps its map in.
    ///
    /// ```
    /// let backend = persistent_map::csv::CsvBackend::new("data/users.csv");
    /// assert_eq!(backend.path().file_name().unwrap(), "users.csv");
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies `ops` to the file's records and replaces the file, on a blocking thread; on
    /// error the file and the records are as they were.
    async fn write(&self, ops: Vec<RawOp>, clear: bool) -> Result<()> {
        let path = Arc::clone(&self.path);
        let rows = Arc::clone(&self.rows);
        run_blocking(move || {
            let mut cached = rows.lock().unwrap_or_else(PoisonError::into_inner);
            let mut next = match (&*cached, clear) {
                (_, true) => Rows::new(),
                (Some(current), false) => current.clone(),
                (None, false) => file::rows_of(&path, &file::read(&path)?)?,
            };
            for op in ops {
                match op {
                    RawOp::Upsert { key, record } => drop(next.insert(key, record)),
                    RawOp::Delete { key } => drop(next.remove(&key)),
                }
            }
            file::replace(
                &path,
                &next.values().flatten().copied().collect::<Vec<u8>>(),
            )?;
            *cached = Some(next);
            Ok(())
        })
        .await
    }

    fn encode<K: ToString, V: Serialize>(&self, op: &BatchOp<K, V>) -> Result<RawOp> {
        Ok(match op {
            BatchOp::Save(key, value) => {
                let key = key.to_string();
                let record = file::encode(&self.path, &key, value)?;
                RawOp::Upsert { key, record }
            }
            BatchOp::Delete(key) => RawOp::Delete {
                key: key.to_string(),
            },
        })
    }
}

impl fmt::Debug for CsvBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsvBackend")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Every entry of the file, decoded: a key whose text appears twice keeps its last record.
fn decode<K, V>(path: &Path, lines: &[file::Line]) -> Result<Vec<(K, V)>>
where
    K: FromStr<Err: std::error::Error>,
    V: Serialize + DeserializeOwned,
{
    let mut entries: BTreeMap<&str, (K, V)> = BTreeMap::new();
    for line in lines {
        let text = line.record.get(0).unwrap_or_default();
        let key = text.parse::<K>().map_err(|error| {
            file::csv_error(
                path,
                Some(line.number),
                format!("key {text:?} does not parse: {error}"),
            )
        })?;
        let (_, value) = line
            .record
            .deserialize::<(String, V)>(None)
            .map_err(|error| {
                file::csv_error(
                    path,
                    Some(line.number),
                    format!(
                        "value of key {text:?} does not deserialize: {}",
                        file::describe(&error)
                    ),
                )
            })?;
        // The csv crate ignores fields beyond the value's; they would be lost on the next write.
        let fields = file::field_count(&file::encode(path, text, &value)?);
        if line.record.len() != fields {
            return Err(file::csv_error(
                path,
                Some(line.number),
                format!(
                    "value of key {text:?} does not deserialize: the record has {} fields, but \
                     a key and its value make {fields}",
                    line.record.len()
                ),
            ));
        }
        entries.insert(text, (key, value));
    }
    Ok(entries.into_values().collect())
}

/// Runs file work on tokio's blocking threads, off the async workers.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    crate::tasks::run_blocking(work).await?
}

#[async_trait::async_trait]
impl<K, V> StorageBackend<K, V> for CsvBackend
where
    K: MapKey + ToString + FromStr,
    <K as FromStr>::Err: std::error::Error + Send + Sync + 'static,
    V: MapValue,
{
    /// Reads and decodes the whole file; a damaged file is an error naming the line, and
    /// nothing is changed.
    async fn load_all(&self) -> Result<HashMap<K, V>, PersistentError> {
        let path = Arc::clone(&self.path);
        let rows = Arc::clone(&self.rows);
        run_blocking(move || {
            let lines = file::read(&path)?;
            let entries = decode::<K, V>(&path, &lines)?;
            *rows.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(file::rows_of(&path, &lines)?);
            Ok(entries.into_iter().collect())
        })
        .await
    }

    /// Returns once the file holding the new value has replaced the old one on disk.
    async fn save(&self, key: K, value: V) -> Result<(), PersistentError> {
        let op = self.encode(&BatchOp::Save(key, value))?;
        self.write(vec![op], false).await
    }

    /// Returns once the file without `key` has replaced the old one on disk.
    async fn delete(&self, key: &K) -> Result<(), PersistentError> {
        let key = key.to_string();
        self.write(vec![RawOp::Delete { key }], false).await
    }

    /// Applies every write in one replacement of the file: all or nothing.
    async fn apply_batch(&self, ops: &[BatchOp<K, V>]) -> Result<(), PersistentError> {
        let ops = ops
            .iter()
            .map(|op| self.encode(op))
            .collect::<Result<Vec<_>>>()?;
        self.write(ops, false).await
    }

    /// Replaces the file with an empty one.
    async fn clear(&self) -> Result<(), PersistentError> {
        self.write(Vec::new(), true).await
    }
}
