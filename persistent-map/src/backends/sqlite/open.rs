//! Opening a database file: checks before SQLite touches it, connection settings, and the
//! registry that gives each file one writer per process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::writer::Writer;
use crate::{PersistentError, Result};

/// Writers by canonical path. Entries are weak so that a file's writer stops once its last
/// backend is dropped.
static WRITERS: Mutex<Option<HashMap<PathBuf, Weak<Writer>>>> = Mutex::new(None);

/// Returns the writer of the file at `path`, starting it if this process has none.
///
/// Blocking: call it off the async worker threads.
pub(super) fn writer_for(path: &Path, busy_timeout: Duration) -> Result<Arc<Writer>> {
    if path.as_os_str() == ":memory:" {
        // A private in-memory database per backend: there is no file to share, nor to read
        // from another connection.
        return start_writer(path, None, busy_timeout);
    }
    check_path(path)?;
    let canonical = canonical_path(path)?;
    let mut writers = WRITERS.lock().unwrap_or_else(PoisonError::into_inner);
    let writers = writers.get_or_insert_with(HashMap::new);
    if let Some(writer) = writers.get(&canonical).and_then(Weak::upgrade) {
        return Ok(writer);
    }
    let writer = start_writer(path, Some(canonical.clone()), busy_timeout)?;
    writers.retain(|_, writer| writer.strong_count() > 0);
    writers.insert(canonical, Arc::downgrade(&writer));
    Ok(writer)
}

fn start_writer(
    path: &Path,
    canonical: Option<PathBuf>,
    busy_timeout: Duration,
) -> Result<Arc<Writer>> {
    let connection = connect(path, busy_timeout)?;
    let reader = canonical.map(|path| Reader { path, busy_timeout });
    let writer = Writer::spawn(connection, path.to_path_buf(), reader)
        .map_err(|error| open_failure(path, "cannot start the writer thread", error))?;
    tracing::info!(path = %path.display(), ?busy_timeout, "opened SQLite database");
    Ok(Arc::new(writer))
}

/// How to open another connection to a writer's file, for reading: loads scan on one of their
/// own instead of holding up the writer (see `load.rs`).
#[derive(Debug, Clone)]
pub(super) struct Reader {
    path: PathBuf,
    busy_timeout: Duration,
}

impl Reader {
    /// The file's canonical path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// A read-only connection to the file. Blocking: call it off the async worker threads.
    pub(super) fn connect(&self) -> rusqlite::Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(&self.path, flags)?;
        connection.busy_timeout(self.busy_timeout)?;
        Ok(connection)
    }
}

/// Refuses a path that cannot be a database file: empty, a directory, or in a directory that
/// is missing or not a directory. Only asks the file system about the path (`stat`); it never
/// opens the file, so it cannot drop the locks SQLite holds on it in this process (closing any
/// descriptor of a file drops every POSIX lock the process holds on it). Whether the file is a
/// database is SQLite's to say, when it first reads it.
fn check_path(path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(open_error(path, "the path is empty"));
    }
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => Err(open_error(path, "it is a directory")),
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => check_parent_dir(path),
        Err(error) => Err(open_failure(path, "cannot read its metadata", error)),
    }
}

fn check_parent_dir(path: &Path) -> Result<()> {
    let parent = parent_dir(path);
    match std::fs::metadata(parent) {
        Ok(metadata) if metadata.is_dir() => Ok(()),
        Ok(_) => Err(open_error(
            path,
            &format!("{} is not a directory", parent.display()),
        )),
        Err(error) => Err(open_failure(
            path,
            &format!("its directory {} cannot be used", parent.display()),
            error,
        )),
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// The same file reached by different spellings (`./a.db`, `a.db`, a symlinked directory) must
/// map to one writer. The file itself may not exist yet, so canonicalize its directory.
fn canonical_path(path: &Path) -> Result<PathBuf> {
    if let Ok(canonical) = std::fs::canonicalize(path) {
        return Ok(canonical);
    }
    let directory = std::fs::canonicalize(parent_dir(path))
        .map_err(|error| open_failure(path, "cannot resolve its directory", error))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| open_error(path, "the path does not name a file"))?;
    Ok(directory.join(file_name))
}

/// Opens the connection with this crate's settings: WAL, `synchronous=FULL` until a request asks
/// for less, and a busy timeout for other processes that write the same file; the file is set
/// up (checked before anything changes) as `setup.rs` says.
fn connect(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags)
        .map_err(|error| open_failure(path, "SQLite cannot open it", error))?;
    // First, so that switching the journal mode also waits for another process's write.
    connection
        .busy_timeout(busy_timeout)
        .map_err(|error| open_failure(path, "SQLite cannot set the busy timeout", error))?;
    super::setup::set_up_file(&connection).map_err(|error| match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => PersistentError::NotADatabase {
            path: path.to_path_buf(),
        },
        Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
            open_failure(path, super::setup::DAMAGED, error)
        }
        _ => open_failure(path, "SQLite cannot set it up", error),
    })?;
    // Each table keeps a few statements cached (upsert, delete, select) beside the shared
    // BEGIN/COMMIT/ROLLBACK: room for a few dozen tables before the cache evicts.
    connection.set_prepared_statement_cache_capacity(128);
    Ok(connection)
}

fn open_error(path: &Path, reason: &str) -> PersistentError {
    PersistentError::Open {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
        source: None,
    }
}

/// An open that failed for `reason`, caused by `source`; with a hint of what to do when the
/// cause is one a user can act on (permissions, a missing directory).
fn open_failure(
    path: &Path,
    reason: &str,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> PersistentError {
    let source = source.into();
    let reason = match hint(path, &*source) {
        Some(hint) => format!("{reason}; {hint}"),
        None => reason.to_owned(),
    };
    PersistentError::Open {
        path: path.to_path_buf(),
        reason,
        source: Some(source),
    }
}

/// What to do about `cause`, if it is clear.
fn hint(path: &Path, cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    let name = path
        .file_name()
        .map_or_else(String::new, |name| name.to_string_lossy().into_owned());
    let permissions = format!(
        "check that this process may read and write the file and its directory: SQLite also \
         creates {name}-wal and {name}-shm beside it"
    );
    if let Some(io) = cause.downcast_ref::<std::io::Error>() {
        return match io.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                Some(permissions)
            }
            std::io::ErrorKind::NotFound => Some("create the directory first".to_owned()),
            _ => None,
        };
    }
    let sqlite = cause.downcast_ref::<rusqlite::Error>()?;
    match sqlite.sqlite_error_code()? {
        rusqlite::ErrorCode::ReadOnly
        | rusqlite::ErrorCode::CannotOpen
        | rusqlite::ErrorCode::PermissionDenied => Some(permissions),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_error_says_its_cause_and_what_to_do() {
        let path = Path::new("/srv/app/data.db");
        let readonly = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
            Some("attempt to write a readonly database".into()),
        );
        let message = open_failure(path, "SQLite cannot set it up", readonly).to_string();
        assert!(
            message.contains("attempt to write a readonly database"),
            "{message}"
        );
        assert!(message.contains("data.db-wal and data.db-shm"), "{message}");
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let message = open_failure(path, "cannot read its metadata", denied).to_string();
        assert!(message.contains("permission denied"), "{message}");
        assert!(message.contains("may read and write"), "{message}");
    }
}
