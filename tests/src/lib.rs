//! Helpers shared by the integration tests: temporary databases, a second SQLite client that
//! reads what a map wrote, and a backend that refuses writes on demand.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use persistent_map::{BatchOp, PersistentError, Result, StorageBackend};
use serde::{de::DeserializeOwned, Serialize};

/// A fresh directory (removed on drop) and the path of a database file inside it.
pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("test.db");
    (dir, path)
}

/// Every `(key, value)` row of `table`, read by a separate SQLite connection, sorted by key.
pub fn stored_rows(path: &Path, table: &str) -> Vec<(String, String)> {
    let connection =
        rusqlite::Connection::open(path).expect("open the database as a second client");
    let mut statement = connection
        .prepare(&format!("SELECT key, value FROM \"{table}\" ORDER BY key"))
        .expect("prepare the SELECT");
    let rows = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("run the SELECT");
    rows.collect::<rusqlite::Result<_>>()
        .expect("read the rows")
}

/// The result of `PRAGMA integrity_check` on the file.
pub fn integrity_check(path: &Path) -> String {
    let connection = rusqlite::Connection::open(path).expect("open the database");
    connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("run the integrity check")
}

/// Wraps a backend and refuses every write while its switch is on, as a full disk would.
#[derive(Debug, Clone)]
pub struct Refusing<B> {
    pub inner: B,
    refuse: Arc<AtomicBool>,
}

impl<B> Refusing<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            refuse: Arc::new(AtomicBool::new(false)),
        }
    }

    /// From now on, refuse writes (`true`) or pass them through (`false`).
    pub fn refuse(&self, refuse: bool) {
        self.refuse.store(refuse, Ordering::SeqCst);
    }

    fn check(&self) -> Result<()> {
        if self.refuse.load(Ordering::SeqCst) {
            Err(PersistentError::Io(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "refused: the disk is full",
            )))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl<K, V, B> StorageBackend<K, V> for Refusing<B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        self.inner.load_all().await
    }

    async fn save(&self, key: K, value: V) -> Result<()> {
        self.check()?;
        self.inner.save(key, value).await
    }

    async fn delete(&self, key: &K) -> Result<()> {
        self.check()?;
        self.inner.delete(key).await
    }

    async fn apply_batch(&self, ops: &[BatchOp<K, V>]) -> Result<()> {
        self.check()?;
        self.inner.apply_batch(ops).await
    }
}
