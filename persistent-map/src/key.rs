//! The `PersistentKey` trait: a key type that has a text form and a table of its own.

use std::fmt;
use std::str::FromStr;

/// A key type with a stable text form and a table of its own.
///
/// The text form (`Display` out, `FromStr` back in) is what the SQLite backend stores in the
/// `key TEXT` column, so the two must be exact inverses. `TABLE_NAME` is the table a map of this
/// key type uses by default ([`SqliteBackend::for_key`](crate::sqlite::SqliteBackend::for_key),
/// [`PersistentMap::open`](crate::PersistentMap::open)), so maps of different key types can share
/// one database file.
///
/// Derive it (feature `derive`, on by default) rather than writing it by hand.
pub trait PersistentKey:
    fmt::Display + FromStr<Err: std::error::Error + Send + Sync + 'static>
{
    /// The table that holds this key type's entries: `[A-Za-z_][A-Za-z0-9_]*`, not starting
    /// with `sqlite_`.
    const TABLE_NAME: &'static str;
}

/// `String` keys live in the table `kv`, as [`SqliteBackend::new`](crate::sqlite::SqliteBackend::new)
/// and persistent-map 0.1.3 store them.
impl PersistentKey for String {
    const TABLE_NAME: &'static str = "kv";
}

/// Why a key text could not be parsed back into its key type.
///
/// Placeholder until the derive issue fills it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyParseError {
    message: String,
}

impl fmt::Display for KeyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for KeyParseError {}
