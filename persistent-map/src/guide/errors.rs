//! Errors: what can go wrong, what the message names, and what it tells you to do.
//!
//! Every fallible call returns [`PersistentError`](crate::PersistentError), a
//! `#[non_exhaustive]` enum with one variant per kind of failure, and
//! [`Result<T>`](crate::Result) is `Result<T, PersistentError>`. A failed write changed nothing:
//! not storage, not memory. Bad input is an error, never a panic, and never costs stored data.
//!
//! # What a message holds
//!
//! Each message carries what you need to find the problem: the path that could not be opened,
//! the table and the stored key of a row that no longer parses, the table and the key's text
//! of a value that cannot be stored, the rejected table name, the PostgreSQL host (never the
//! password). Where what to do is clear, the message ends with it:
//!
//! | error | when | the message says to |
//! | --- | --- | --- |
//! | [`Open`](crate::PersistentError::Open) | a SQLite file cannot be opened or set up | check that the process may read and write the file and its directory (SQLite also creates `app.db-wal` and `app.db-shm`), or create the directory first; the operating system's or SQLite's own words are the error's `source` |
//! | [`NotADatabase`](crate::PersistentError::NotADatabase) | the file is not a SQLite database | nothing: it says the file was left untouched |
//! | [`InvalidStoredKey`](crate::PersistentError::InvalidStoredKey) | a stored key no longer parses as the key type | rewrite the row's key as the key type writes it, delete the row, or open the table with the key type that wrote it; for a text that parses but is not the key's own (`007` for 7), rewrite it as the key's own text or delete the row |
//! | [`InvalidStoredValue`](crate::PersistentError::InvalidStoredValue) | a stored value no longer deserializes | (names the table, the key and serde's reason) |
//! | [`AmbiguousStoredKey`](crate::PersistentError::AmbiguousStoredKey) | two stored rows load as one key | fix or delete one of the rows |
//! | [`IncompatibleKeyLayout`](crate::PersistentError::IncompatibleKeyLayout) | the table was written by a key type laid out differently | move the keys with `sqlite::migrate_keys`, or open the table with the key type that wrote it ([`keys`](super::keys#layouts)) |
//! | [`TableInUse`](crate::PersistentError::TableInUse) | a key migration while a map of this process is open on the table | drop the maps on it first, then try again |
//! | [`InvalidValue`](crate::PersistentError::InvalidValue) | a value JSON cannot hold (a NaN or infinite float) or whose `Serialize` fails | (names the table and the key; nothing was stored) |
//! | [`KeepsChanging`](crate::PersistentError::KeepsChanging) | a read-modify-write or transaction conflicted at each of its 1,000 attempts | (names the table and the key; nothing was written by the call) |
//! | [`MixedStorage`](crate::PersistentError::MixedStorage) | a transaction over maps of two files, databases or connections | (names both; nothing was written) |
//! | [`ExpiryUnsupported`](crate::PersistentError::ExpiryUnsupported) | a write with a time to live on a backend that stores no deadlines (CSV) | (nothing was written) |
//! | [`BlockingInAsyncContext`](crate::PersistentError::BlockingInAsyncContext) | a [blocking](super::blocking_api) call inside an async runtime | use the async map there: `.as_async()` for a map already open, or the async constructor it names |
//!
//! With the feature `postgres`, `Connect` (the server cannot be reached; names the host and,
//! for TLS, the check that failed), `Config` (a connection string that cannot be used) and
//! `Postgres` (the server refused; names the host and the table, with PostgreSQL's own
//! message) join them; a commit left without an answer fails with an error saying that its
//! outcome is unknown ([`postgresql`](super::postgresql#faults)).
//!
//! ```
//! use persistent_map::{sqlite::SqliteBackend, PersistentError, PersistentMap};
//!
//! # persistent_map::__private::run_example(Box::pin(async {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//! let map: PersistentMap<u64, String, SqliteBackend> = PersistentMap::open(&path).await?;
//! map.insert(7, "seven".into()).await?;
//! drop(map);
//!
//! // Another program stores a key that is no number in the table of `u64` keys.
//! rusqlite::Connection::open(&path)?
//!     .execute("INSERT INTO std__u64 (key, value) VALUES ('seven', '\"7\"')", [])?;
//!
//! let err = PersistentMap::<u64, String, SqliteBackend>::open(&path).await.unwrap_err();
//! assert!(matches!(&err, PersistentError::InvalidStoredKey { table, key, .. }
//!     if table == "std__u64" && key == "seven"));
//! assert!(err.to_string().contains("delete the row"), "{err}"); // what to do
//! # Ok(()) }));
//! ```
//!
//! # Transactions: your own reasons to abort
//!
//! A [`transaction`](crate::transaction) body aborts by returning `Err`, with an error type of
//! yours: [`TransactionError<A>`](crate::TransactionError) carries any reason `A` beside the
//! commit's own failure (`Abort(reason)` or `Storage(PersistentError)`), or use an enum of
//! your own with a `From<PersistentError>`. See [`writes`](super::writes#transactions).
