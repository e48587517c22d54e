//! The crate's error type.

use std::path::PathBuf;

/// `: cause` for an error with a cause, nothing for one without.
fn describe_cause(source: &Option<Box<dyn std::error::Error + Send + Sync>>) -> String {
    source
        .as_ref()
        .map(|source| format!(" ({source})"))
        .unwrap_or_default()
}

/// A specialized `Result` whose error defaults to [`PersistentError`].
///
/// ```
/// fn parse_port(text: &str) -> persistent_map::Result<u16> {
///     Ok(serde_json::from_str(text)?)
/// }
/// assert_eq!(parse_port("8080").unwrap(), 8080);
/// assert!(parse_port("\"x\"").is_err());
/// ```
pub type Result<T, E = PersistentError> = std::result::Result<T, E>;

/// Everything that can go wrong in a map or a backend.
///
/// Each message carries the context needed to act on it: the path that could not be opened, the
/// table and raw key of a stored row that no longer parses, the table and the key's text of a
/// value that cannot be stored, the rejected table name.
///
/// `From<std::io::Error>` and `From<serde_json::Error>` let a custom backend use `?`:
///
/// ```
/// use persistent_map::PersistentError;
///
/// fn read_config(path: &str) -> persistent_map::Result<serde_json::Value> {
///     let text = std::fs::read_to_string(path)?;
///     Ok(serde_json::from_str(&text)?)
/// }
/// let err = read_config("/no/such/file.json").unwrap_err();
/// assert!(matches!(err, PersistentError::Io(_)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistentError {
    /// An I/O error from a custom backend (or any `std::io::Error` met with `?`).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// A value (or key) could not be serialized or deserialized as JSON.
    #[error("JSON error: {0}")]
    Serde(#[from] serde_json::Error),

    /// The database file could not be opened or prepared. The message says why, with the
    /// operating system's or SQLite's own words when there are some (also the error's
    /// `source`), and what to do where that is clear.
    #[error("cannot open database {}: {reason}{}", path.display(), describe_cause(.source))]
    Open {
        /// The path as given by the caller.
        path: PathBuf,
        /// What went wrong.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// The file exists but is not a database of this backend; it was left untouched.
    #[error("{} is not a SQLite database (its header does not start with \"SQLite format 3\"); the file was left untouched", path.display())]
    NotADatabase {
        /// The path as given by the caller.
        path: PathBuf,
    },

    /// A table name that is not `[A-Za-z_][A-Za-z0-9_]*` or that starts with `sqlite_`.
    #[error("invalid table name {name:?}: {reason}")]
    InvalidTableName {
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// The table exists but does not have the `key` and `value` columns this crate stores.
    #[error("table {table:?} exists but is not a persistent-map table: {reason}")]
    IncompatibleTable {
        /// The table.
        table: String,
        /// What differs.
        reason: String,
    },

    /// The table's keys were written by a key type laid out differently from the one opening
    /// it (see [`PersistentKey::KEY_LAYOUT`](crate::PersistentKey::KEY_LAYOUT)); reading them
    /// could misparse. Nothing was changed.
    #[error(
        "table {table:?} holds keys laid out as `{stored}`, but the key type opening it is laid \
         out as `{expected}`; move the stored keys with persistent_map::sqlite::migrate_keys, or \
         open the table with the key type that wrote it"
    )]
    IncompatibleKeyLayout {
        /// The table.
        table: String,
        /// The layout recorded when the table was written.
        stored: String,
        /// The layout of the key type that tried to open it.
        expected: String,
    },

    /// The operation needs no map to be open on the table in this process, and one is (a key
    /// migration would leave it writing the old layout). Nothing was changed.
    #[error(
        "table {table:?} of {} is open in a map in this process; drop the maps on it first, \
         then try again (nothing was changed)",
        path.display()
    )]
    TableInUse {
        /// The table.
        table: String,
        /// The database file, as given.
        path: PathBuf,
    },

    /// A read-modify-write ([`update`](crate::PersistentMap::update), a
    /// [`transaction`](crate::transaction), ...) found the key changed by another writer at
    /// every one of its attempts, and gave up. Nothing was written by this call; memory holds
    /// what storage held at the last attempt.
    #[error(
        "table {table:?}: key {key} changed under every one of {attempts} attempts of a \
         read-modify-write; nothing was written by this call (another writer keeps changing it)"
    )]
    KeepsChanging {
        /// The table (or store).
        table: String,
        /// The key, as JSON.
        key: String,
        /// How many attempts were made.
        attempts: usize,
    },

    /// A transaction touched maps that live in different storage (two SQLite files, a file
    /// and an in-memory store), which no single commit can cover. Nothing was written.
    #[error(
        "a transaction can only commit maps of one storage, and this one touched maps of {first} \
         and of {second}; nothing was written"
    )]
    MixedStorage {
        /// The storage of the first map.
        first: String,
        /// The storage of a map that differs.
        second: String,
    },

    /// Two entries would end up under one key (a key migration that maps two old keys to the
    /// same new one). Nothing was changed.
    #[error(
        "table {table:?}: two entries would be stored under the key {key:?}; nothing was changed"
    )]
    DuplicateKey {
        /// The table.
        table: String,
        /// The key text both entries would have.
        key: String,
    },

    /// Two stored entries load as the same key: at least one of them is not written the way the
    /// key type writes its keys (`01` where the key type writes `1`). Loading would let one
    /// hide the other, and later writes would reach only one, so the map refuses to open.
    /// Nothing was changed: fix or delete one of the rows.
    #[error(
        "two stored entries load as the same key {key}: one of them is not written the way the \
         key type writes it; fix or delete one of the rows"
    )]
    AmbiguousStoredKey {
        /// The key, as JSON.
        key: String,
    },

    /// A value that cannot be stored (a NaN or infinite float, which JSON cannot hold, or a
    /// `Serialize` impl that fails). The write was refused; nothing was stored or changed.
    #[error("table {table:?}: value of key {key:?} cannot be stored: {source}")]
    InvalidValue {
        /// The table the write was for.
        table: String,
        /// The key's text, as it would have been stored.
        key: String,
        /// Why the value could not be serialized.
        #[source]
        source: serde_json::Error,
    },

    /// A stored key no longer parses as the map's key type. Nothing was changed on disk.
    ///
    /// The message ends with what to do: rewrite or delete the row, or open the table with
    /// the key type that wrote it.
    #[error(
        "table {table:?}: stored key {key:?} does not parse: {source}{}",
        stored_key_fix(source.as_ref())
    )]
    InvalidStoredKey {
        /// The table holding the row.
        table: String,
        /// The raw key text as stored.
        key: String,
        /// The key type's parse error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A stored value no longer deserializes as the map's value type. Nothing was changed on disk.
    #[error("table {table:?}: value of key {key:?} does not deserialize: {source}")]
    InvalidStoredValue {
        /// The table holding the row.
        table: String,
        /// The raw key text as stored.
        key: String,
        /// Why the value was rejected.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An error reported by SQLite.
    #[cfg(feature = "sqlite")]
    #[error("SQLite error on {}: {source}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },

    /// A PostgreSQL server could not be reached: the connection string does not parse, the
    /// server did not answer within the connect timeout, refused the connection or the login,
    /// or a lost connection could not be re-established within the reconnect timeout.
    #[cfg(feature = "postgres")]
    #[error("cannot connect to PostgreSQL at {host}: {reason}")]
    Connect {
        /// The server as `host:port` (comma-separated if several were given); never the password.
        host: String,
        /// What went wrong.
        reason: String,
    },

    /// A PostgreSQL connection string that cannot be used: it does not parse, names an unknown
    /// `sslmode`, or its `sslrootcert` cannot be read. Nothing was connected to.
    #[cfg(feature = "postgres")]
    #[error("invalid PostgreSQL connection string: {reason}")]
    Config {
        /// What is wrong with it; never the password.
        reason: String,
    },

    /// An error reported by PostgreSQL for the work on a table.
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL error at {host} on table {table:?}: {}", crate::backends::postgres::describe_error(.source))]
    Postgres {
        /// The server as `host:port`.
        host: String,
        /// The table the work was for.
        table: String,
        /// tokio-postgres's error (PostgreSQL's own, when the server refused).
        #[source]
        source: tokio_postgres::Error,
    },

    /// The backend's worker is gone (its thread stopped), so the write was not done.
    #[error("the storage backend for {} has shut down; the write was not done", path.display())]
    BackendClosed {
        /// The database file the worker served.
        path: PathBuf,
    },

    /// A write with a time to live was made on a map whose backend does not store deadlines
    /// ([`StorageBackend::supports_expiry`](crate::StorageBackend::supports_expiry) is
    /// `false`: the CSV backend, and custom backends unless they opt in; SQLite and
    /// PostgreSQL store them). Nothing was written.
    #[error("this backend does not store expiry deadlines, so a write with a time to live was refused; nothing was written")]
    ExpiryUnsupported,

    /// A batch that the backend could not apply atomically failed part-way, and undoing it
    /// failed too.
    ///
    /// From `apply_batch`: the first `applied` writes were done, the rest were not. From the
    /// map: the map then tried to restore what those writes replaced; where that failed, memory
    /// took the batch's writes, so memory still equals storage, but the batch was not all or
    /// nothing. Only backends that rely on the default
    /// [`StorageBackend::apply_batch`](crate::StorageBackend::apply_batch) report this.
    #[error("batch failed after {applied} of its writes were applied: {source}")]
    PartialBatch {
        /// How many writes, from the start of the batch, were applied.
        applied: usize,
        /// Why the next write failed.
        #[source]
        source: Box<PersistentError>,
    },

    /// A CSV file (feature `csv_backend`) could not be read or written: a line that is not a
    /// record of this map (its key or value does not parse), or a value that CSV cannot hold.
    /// A damaged file is refused as a whole and left untouched.
    #[cfg(feature = "csv_backend")]
    #[error("CSV file {}{}: {reason}", path.display(), line.map(|line| format!(", line {line}")).unwrap_or_default())]
    Csv {
        /// The file.
        path: PathBuf,
        /// The line (from 1) where the file went wrong, when it was being read.
        line: Option<u64>,
        /// What went wrong, naming the key's text where one is concerned.
        reason: String,
    },

    /// A constructor or a write of [`blocking::PersistentMap`](crate::blocking::PersistentMap)
    /// was called on a thread that runs async code (inside a tokio runtime), where blocking
    /// would stall every task of that runtime, or deadlock it. Nothing was done: use the async
    /// [`PersistentMap`](crate::PersistentMap) there (a map already open:
    /// [`as_async`](crate::blocking::PersistentMap::as_async); to open one: its async
    /// constructor).
    ///
    /// ```
    /// use persistent_map::{blocking::PersistentMap, in_memory::InMemoryBackend, PersistentError};
    ///
    /// let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    /// let err = runtime
    ///     .block_on(async { PersistentMap::<u32, u32, _>::new(InMemoryBackend::new()) })
    ///     .unwrap_err();
    /// assert!(matches!(err, PersistentError::BlockingInAsyncContext { operation: "new" }));
    /// assert!(err.to_string().contains("`persistent_map::PersistentMap::new(..).await`"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[error(
        "persistent_map::blocking::PersistentMap::{operation} was called inside an async \
         runtime, where it would block the runtime's thread; nothing was done. {}, or call it \
         from a thread of your own",
        blocking_alternative(operation)
    )]
    BlockingInAsyncContext {
        /// The method that was called (`new`, `open`, `insert`, `remove`, ...).
        operation: &'static str,
    },

    /// An error from a custom backend that fits no other variant.
    #[error("{0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// What to do about a stored key that does not parse, unless its error already says it.
fn stored_key_fix(source: &(dyn std::error::Error + 'static)) -> &'static str {
    if source.is::<NonCanonicalKey>() {
        ""
    } else {
        "; rewrite the row's key as the map's key type writes it, delete the row, or open the \
         table with the key type that wrote it"
    }
}

/// A stored key text that parses, but is not the text its key writes (`007` for the number
/// 7): the source of [`PersistentError::InvalidStoredKey`], which says what to do itself.
#[derive(Debug, thiserror::Error)]
#[error(
    "it parses as the key whose text is {own:?}, so writes of that key would not reach this \
     row; rewrite the row's key as {own:?} or delete the row"
)]
pub(crate) struct NonCanonicalKey {
    /// The text the parsed key writes.
    pub(crate) own: String,
}

/// Where a blocking method refused inside a runtime sends its caller: a map already open
/// has its async map; a constructor has the async map's own constructor.
fn blocking_alternative(operation: &str) -> String {
    let constructor = match operation {
        "new" | "open_backend" => "new",
        "open" | "open_with" | "open_postgres" | "open_postgres_with" => operation,
        _ => return "Use the async PersistentMap there (`.as_async()`)".to_owned(),
    };
    format!("Open the async map there instead (`persistent_map::PersistentMap::{constructor}(..).await`)")
}
