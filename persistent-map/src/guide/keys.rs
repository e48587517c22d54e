//! Keys and tables: keys from std, your own structs and enums as keys, their text on disk, and
//! several maps in one file.
//!
//! A key type is a [`PersistentKey`](trait@crate::PersistentKey): a `Display`/`FromStr` pair
//! that are exact inverses (the text is what the `key TEXT` column holds) and a table name, so
//! that each key type gets a table of its own. The trait's docs are the reference: the [text
//! form](trait@crate::PersistentKey#the-text-form) of every shape, every
//! [attribute](trait@crate::PersistentKey#attributes), [serde](trait@crate::PersistentKey#serde)
//! and the [compile errors](trait@crate::PersistentKey#compile-errors).
//!
//! # Keys from std
//!
//! The integers (`u64`, `i32`, ..., and their `NonZero` forms), `String`, `bool`, `char` and
//! the IP and socket addresses are keys as they are, each in a table of its own: `kv` for
//! `String` (as in persistent-map 0.1.3), else `std__` and the type's name in snake_case
//! (`std__u64`, `std__char`, `std__ip_addr`). The double underscore keeps them apart from
//! derived keys' default tables, whose words are joined by single underscores.
//!
//! ```
//! # use persistent_map::{sqlite::SqliteBackend, PersistentMap};
//! # persistent_map::__private::run_example(Box::pin(async {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//! let users: PersistentMap<u64, String, SqliteBackend> = PersistentMap::open(&path).await?;
//! let by_letter: PersistentMap<char, u64, SqliteBackend> = PersistentMap::open(&path).await?;
//! assert_eq!(users.backend().table(), "std__u64");
//! assert_eq!(by_letter.backend().table(), "std__char");
//! # Ok(()) }));
//! ```
//!
//! # Derived keys
//!
//! `#[derive(PersistentKey)]` (from `use persistent_map::PersistentKey;`, feature `derive`, on by
//! default) gives a struct or enum `Display`, `FromStr` and a table name. The text is stored
//! on disk, so its format is stable:
//!
//! | key | text |
//! | --- | --- |
//! | `SessionKey { tenant: "acme".into(), user: 42 }` | `acme:42`: fields in order, joined by `:` |
//! | `SessionKey { tenant: "a:b".into(), user: 42 }` | `a\:b:42`: a separator (or `\`) inside a field is escaped, so every text parses back |
//! | `UserId(7)`, a struct with one field | `7`: the field's own text |
//! | `Role::Admin`, a unit variant | `Admin` |
//! | `Resource::Repo { org: 1, name: "x".into() }` | `Repo:1:x`: the variant's name, then its fields |
//!
//! The table is `#[persistent_key(table = "sessions")]`, or else the type's name in snake_case
//! (`SessionKey` → `session_key`); `separator`, `rename`, `rename_all`, `text = "display"` (keep
//! your own `Display` and `FromStr`) and `crate` are attributes too. A stored text that does not
//! parse is an error that names the table and the key ([`KeyParseError`](crate::KeyParseError)
//! says what was expected), and the row is kept.
//!
//! ```
//! use persistent_map::{sqlite::SqliteBackend, PersistentKey, PersistentMap};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
//! #[persistent_key(table = "sessions")]
//! struct SessionKey {
//!     tenant: String,
//!     user: u64,
//! }
//!
//! # persistent_map::__private::run_example(Box::pin(async {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//! let key = SessionKey { tenant: "a:b".into(), user: 42 };
//! assert_eq!(key.to_string(), r"a\:b:42");
//! let sessions: PersistentMap<SessionKey, u64, SqliteBackend> = PersistentMap::open(&path).await?;
//! sessions.insert(key.clone(), 1).await?; // the row `a\:b:42 | 1` of the table `sessions`
//! assert_eq!(sessions.get(&key), Some(1));
//! # Ok(()) }));
//! ```
//!
//! A key type needs no serde derive of its own: `#[persistent_key(serde)]` derives `Serialize`
//! and `Deserialize` through the key's text, so the key is the same string in JSON as in the
//! database. It is opt-in, because the derive cannot see serde impls the type already has, and
//! writing them unasked would clash with every key that derives serde's traits itself. With
//! neither, the compiler says where the key meets a map that the type cannot key a map
//! ([`MapKey`](crate::MapKey)) and names this attribute. Likewise a type that writes its own
//! `Display` or `FromStr` without `text = "display"` gets a conflict (E0119) that rustc says
//! "originates in the macro `to_keep_your_own_Display_and_FromStr_add_persistent_key_text_display`".
//!
//! ```
//! use persistent_map::PersistentKey;
//!
//! #[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash)]
//! #[persistent_key(serde)]
//! struct SessionKey {
//!     tenant: String,
//!     user: u64,
//! }
//!
//! let key = SessionKey { tenant: "acme".into(), user: 42 };
//! assert_eq!(serde_json::to_string(&key)?, r#""acme:42""#);
//! # Ok::<(), serde_json::Error>(())
//! ```
//!
//! # Several maps in one file
//!
//! Each key type has its own table, so maps of different key types share a file, and
//! [`SqliteOptions::table`](crate::SqliteOptions::table) (or
//! [`SqliteBackend::with_table`](crate::sqlite::SqliteBackend::with_table)) puts two maps of
//! one key type in two tables. Maps on different tables of one file can be written
//! concurrently without `database is locked` errors: in each process one writer thread per
//! file commits for all of them, and a commit serves every table it touches. A
//! [transaction](super::writes#transactions) can span them.
//!
//! ```
//! # use persistent_map::{sqlite::SqliteBackend, PersistentMap, SqliteOptions};
//! # persistent_map::__private::run_example(Box::pin(async {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//! let names: PersistentMap<u64, String, SqliteBackend> = PersistentMap::open(&path).await?;
//! let emails: PersistentMap<u64, String, SqliteBackend> =
//!     PersistentMap::open_with(&path, SqliteOptions::new().table("emails")).await?;
//! let (a, b) = tokio::join!(
//!     names.insert(7, "Ada".into()),
//!     emails.insert(7, "ada@example.com".into()),
//! );
//! assert_eq!((a?, b?), (None, None));
//! # Ok(()) }));
//! ```
//!
//! # Layouts
//!
//! A derived key type's layout (its shape, field names and separator:
//! [`KEY_LAYOUT`](crate::PersistentKey::KEY_LAYOUT)) is recorded for its table in
//! `persistent_map_tables` by the first open, and every open checks it: opening a table with a
//! key type laid out differently from the one that wrote it is
//! [`PersistentError::IncompatibleKeyLayout`](crate::PersistentError::IncompatibleKeyLayout),
//! not a silent misreading. [`sqlite::migrate_keys`](crate::sqlite::migrate_keys) moves the
//! stored keys of a table to a new key type, in one transaction. Keys from std record no layout
//! (their text is one value), and neither does a key with `text = "display"`.
//!
//! A stored key text that parses but is not the key's own text (`007` for the number 7) is
//! refused on load rather than aliased to another row's key.
