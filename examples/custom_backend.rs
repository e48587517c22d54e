//! A storage backend of your own: a map kept in a JSON file, which is replaced atomically on
//! every write.
//!
//! `cargo run --example custom_backend` keeps a small inventory in `custom_backend.json` in the
//! current directory (or the file given as the first argument). Run it twice: the second run
//! loads what the first wrote.
//!
//! A backend implements [`StorageBackend`]'s three methods (`load_all`, `save`, `delete`) with
//! `#[async_trait::async_trait]`, exactly in the shape persistent-map 0.1.3 documented, and the
//! map does the rest. This one:
//!
//! - stores a JSON array of `{"key": ..., "value": ...}` entries, sorted by key, so the file is
//!   easy to read and to diff; keys need only `Serialize`, not `PersistentKey`;
//! - never leaves a half-written file: each write goes to a temporary file beside it, which is
//!   synced to disk and then renamed over the old one, and the directory is synced so that the
//!   rename survives a power cut too. A crash at any moment leaves the old file or the new one;
//! - returns `Ok` only once the new file is on disk, and on `Err` keeps the old file;
//! - does its file I/O on tokio's blocking threads, never on the async workers;
//! - also overrides the optional `apply_batch`, so `insert_many` is one all-or-nothing write.
//!
//! It rewrites the whole file on each write: fine for hundreds of entries; beyond that, SQLite.
//! And it serves one process: it does not lock the file against another writer.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::hash::Hash;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use persistent_map::{BatchOp, PersistentError, PersistentMap, Result, StorageBackend};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

/// A [`StorageBackend`] that keeps a map in one JSON file. Clones share the file.
#[derive(Debug, Clone)]
pub struct JsonFileBackend {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    /// What the file holds, as last read or written; `None` until it is first read. Holding
    /// the lock is also what makes writes take turns.
    entries: Mutex<Option<Entries>>,
}

/// The entries by their key's JSON text, which orders the file.
type Entries = BTreeMap<String, Entry>;

/// One entry of the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    key: Value,
    value: Value,
}

/// One write in the file's terms: a key's JSON text and its new entry (`None` deletes it).
type Edit = (String, Option<Entry>);

impl JsonFileBackend {
    /// A backend on the file at `path`. Nothing is read or created until the map loads or
    /// writes; a missing file is an empty map.
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            shared: Arc::new(Shared {
                path: path.as_ref().to_path_buf(),
                entries: Mutex::new(None),
            }),
        }
    }

    /// The JSON file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Reads the file, and keeps what it holds as the copy that writes start from.
    async fn read(&self) -> Result<Entries> {
        let shared = Arc::clone(&self.shared);
        run_blocking(move || {
            let mut copy = shared.lock();
            let entries = read_file(&shared.path)?;
            *copy = Some(entries.clone());
            Ok(entries)
        })
        .await
    }

    /// Applies `edits` to a copy of the entries, replaces the file with the result, and only
    /// then keeps the result as the backend's copy: on error nothing changed.
    async fn write(&self, edits: Vec<Edit>) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        run_blocking(move || {
            let mut copy = shared.lock();
            let mut entries = match copy.as_ref() {
                Some(entries) => entries.clone(),
                // Written to before the first load: start from the file, not from nothing.
                None => read_file(&shared.path)?,
            };
            for (key, entry) in edits {
                match entry {
                    Some(entry) => entries.insert(key, entry),
                    None => entries.remove(&key),
                };
            }
            let list: Vec<&Entry> = entries.values().collect();
            let mut json = serde_json::to_vec_pretty(&list)?;
            json.push(b'\n');
            replace_file(&shared.path, &json)
                .map_err(|error| with_path(error, "cannot write", &shared.path))?;
            *copy = Some(entries);
            Ok(())
        })
        .await
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Option<Entries>> {
        // A panic while the lock was held cannot have left a half-made copy behind: the copy
        // is replaced only by a finished one.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl<K, V> StorageBackend<K, V> for JsonFileBackend
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load_all(&self) -> Result<HashMap<K, V>, PersistentError> {
        let entries = self.read().await?;
        entries
            .into_iter()
            .map(|(key_text, entry)| {
                let bad_entry = |what: &str, error: serde_json::Error| {
                    let file = self.path().display();
                    let message = format!("{file}: the {what} of the entry {key_text} {error}");
                    PersistentError::Backend(message.into())
                };
                let key =
                    serde_json::from_value(entry.key).map_err(|error| bad_entry("key", error))?;
                let value = serde_json::from_value(entry.value)
                    .map_err(|error| bad_entry("value", error))?;
                Ok((key, value))
            })
            .collect()
    }

    async fn save(&self, key: K, value: V) -> Result<(), PersistentError> {
        self.write(vec![save_edit(&key, &value)?]).await
    }

    async fn delete(&self, key: &K) -> Result<(), PersistentError> {
        self.write(vec![delete_edit(key)?]).await
    }

    // Optional: without this, the map's batches would be written one file at a time.
    async fn apply_batch(&self, ops: &[BatchOp<K, V>]) -> Result<(), PersistentError> {
        let edits = ops
            .iter()
            .map(|op| match op {
                BatchOp::Save(key, value) => save_edit(key, value),
                BatchOp::Delete(key) => delete_edit(key),
            })
            .collect::<Result<Vec<Edit>>>()?;
        self.write(edits).await
    }
}

fn save_edit<K: Serialize, V: Serialize>(key: &K, value: &V) -> Result<Edit> {
    let key = serde_json::to_value(key)?;
    let value = serde_json::to_value(value)?;
    Ok((serde_json::to_string(&key)?, Some(Entry { key, value })))
}

fn delete_edit<K: Serialize>(key: &K) -> Result<Edit> {
    let key = serde_json::to_value(key)?;
    Ok((serde_json::to_string(&key)?, None))
}

/// Runs blocking file work on tokio's blocking threads.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|join_error| PersistentError::Backend(join_error.into()))?
}

fn read_file(path: &Path) -> Result<Entries> {
    let json = match fs::read(path) {
        Ok(json) => json,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Entries::new()),
        Err(error) => return Err(with_path(error, "cannot read", path).into()),
    };
    let list: Vec<Entry> = serde_json::from_slice(&json).map_err(|error| {
        let message = format!(
            "{} is not a list of {{\"key\", \"value\"}} entries: {error}",
            path.display()
        );
        PersistentError::Backend(message.into())
    })?;
    list.into_iter()
        .map(|entry| Ok((serde_json::to_string(&entry.key)?, entry)))
        .collect()
}

/// Replaces the file at `path` with `contents` such that a crash at any moment leaves either
/// the old file or the new one, never a mix.
fn replace_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    // Beside the file, so that the rename stays within one file system (and so is atomic).
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(file_name);
    temporary_name.push(".tmp");
    let temporary = path.with_file_name(temporary_name);

    let written = File::create(&temporary).and_then(|mut file| {
        file.write_all(contents)?;
        // The new contents must be on disk before the rename makes them the file.
        file.sync_all()
    });
    if let Err(error) = written.and_then(|()| fs::rename(&temporary, path)) {
        // Best effort: a leftover temporary file is never read, and the next write replaces it.
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    // The rename is an update of the directory: sync it, or a power cut could undo the rename.
    // Should this fail, the new file is in place but perhaps not yet durable; the write is
    // reported as failed, and a later load sees whichever file survived.
    sync_directory_of(path)
}

#[cfg(unix)]
fn sync_directory_of(path: &Path) -> io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(directory)?.sync_all()
}

/// Other systems cannot open a directory as a file to sync it; there the rename is atomic but
/// may not yet be durable when the write returns.
#[cfg(not(unix))]
fn sync_directory_of(_path: &Path) -> io::Result<()> {
    Ok(())
}

fn with_path(error: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{doing} {}: {error}", path.display()))
}

/// Where stock is kept. As a key of this backend it is written as JSON,
/// `{"bin":1,"warehouse":"berlin"}`, so it needs only serde's derives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
struct Slot {
    warehouse: String,
    bin: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Stock {
    item: String,
    count: u32,
}

fn slot(warehouse: &str, bin: u32) -> Slot {
    Slot {
        warehouse: warehouse.into(),
        bin,
    }
}

fn stock(item: &str, count: u32) -> Stock {
    Stock {
        item: item.into(),
        count,
    }
}

type Inventory = PersistentMap<Slot, Stock, JsonFileBackend>;

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let path = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .unwrap_or("custom_backend.json".into()),
    );
    println!("file: {}", std::path::absolute(&path)?.display());
    let inventory: Inventory = PersistentMap::new(JsonFileBackend::new(&path)).await?;

    if inventory.is_empty() {
        println!("no inventory yet: stocking three bins in one atomic write");
        inventory
            .insert_many([
                (slot("berlin", 1), stock("bolts", 100)),
                (slot("berlin", 2), stock("nuts", 250)),
                (slot("lisbon", 1), stock("hinges", 10)),
            ])
            .await?;
        let dropped = inventory.remove(&slot("lisbon", 1)).await?;
        println!("lisbon bin 1 cleared out: {dropped:?}");
    } else {
        println!("loaded {} bins written by an earlier run", inventory.len());
    }

    let bolts = slot("berlin", 1);
    let restocked = inventory
        .update(&bolts, |old| {
            let count = old.map_or(0, |old| old.count);
            Some(stock("bolts", count + 50))
        })
        .await?;
    if let Some(restocked) = restocked {
        println!(
            "delivered 50 bolts: berlin bin 1 now holds {}",
            restocked.count
        );
    }
    drop(inventory);

    let reopened: Inventory = PersistentMap::new(JsonFileBackend::new(&path)).await?;
    let mut bins: Vec<(Slot, Stock)> = reopened.iter().collect();
    bins.sort_by(|(a, _), (b, _)| a.cmp(b));
    println!("reopened {}:", path.display());
    for (slot, stock) in bins {
        println!(
            "  {} bin {}: {} {}",
            slot.warehouse, slot.bin, stock.count, stock.item
        );
    }
    Ok(())
}
