//! The `PersistentKey` trait: a key type that has a text form and a table of its own.

use std::borrow::Cow;
use std::error::Error;
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
/// Derive it (feature `derive`, on by default) rather than writing it by hand:
/// `#[derive(PersistentKey)]` writes `Display`, `FromStr` (with [`KeyParseError`] as its error)
/// and this trait's impl. `use persistent_map::PersistentKey;` brings both the trait and the
/// derive into scope.
///
/// ```
/// use persistent_map::PersistentKey;
///
/// #[derive(PersistentKey, Debug, PartialEq)]
/// struct SessionKey {
///     tenant: String,
///     user: u64,
/// }
///
/// let key = SessionKey { tenant: "acme".into(), user: 42 };
/// assert_eq!(key.to_string(), "acme:42");
/// assert_eq!("acme:42".parse::<SessionKey>()?, key);
/// assert_eq!(SessionKey::TABLE_NAME, "session_key");
/// # Ok::<(), persistent_map::KeyParseError>(())
/// ```
///
/// # The text form
///
/// The text is a file format: it is what the database holds, so it does not change between
/// releases. For every value, `k.to_string().parse()` gives back `k`, whatever the fields hold
/// (separators, backslashes, empty strings, unicode, nested keys).
///
/// | shape | example | text |
/// | --- | --- | --- |
/// | unit struct | `struct Singleton;` | the empty text |
/// | one field (newtype or named) | `UserId(7)` | the field's own text, unchanged: `7` |
/// | several fields | `SessionKey { tenant: "acme", user: 42 }` | the fields' texts joined by the separator: `acme:42` |
/// | unit variant | `Role::Admin` | the variant's name: `Admin` |
/// | variant with one field | `Label::Tag("a:b".into())` | name, separator, the field's text unchanged: `Tag:a:b` |
/// | variant with several fields | `Resource::Repo { org: 1, name: "x" }` | name, separator, fields as a struct writes them: `Repo:1:x` |
///
/// When several fields are joined, a backslash inside a field's text is written `\\` and the
/// separator is written `\:` (a backslash, then the separator), so any field text survives. A
/// variant with empty braces or parentheses (`A {}`, `A()`) is written as its bare name, like
/// a unit variant. An enum's text is parsed by reading the variant name up to the first
/// separator (names cannot contain it), then the rest as that variant's fields.
///
/// ```
/// use persistent_map::PersistentKey;
///
/// #[derive(PersistentKey, Debug, PartialEq)]
/// struct SessionKey {
///     tenant: String,
///     user: u64,
/// }
///
/// #[derive(PersistentKey, Debug, PartialEq)]
/// struct UserId(u64);
///
/// #[derive(PersistentKey, Debug, PartialEq)]
/// struct Singleton;
///
/// #[derive(PersistentKey, Debug, PartialEq)]
/// enum Resource {
///     Root,
///     Tag(String),
///     Repo { org: u64, name: String },
///     Session(SessionKey),
/// }
///
/// let tricky = SessionKey { tenant: r"a:b\c".into(), user: 42 };
/// assert_eq!(tricky.to_string(), r"a\:b\\c:42");
/// assert_eq!(tricky.to_string().parse::<SessionKey>()?, tricky);
///
/// assert_eq!(UserId(7).to_string(), "7");
/// assert_eq!(Singleton.to_string(), "");
/// assert_eq!(Resource::Root.to_string(), "Root");
/// assert_eq!(Resource::Tag("a:b".into()).to_string(), "Tag:a:b");
/// assert_eq!(Resource::Repo { org: 1, name: "x".into() }.to_string(), "Repo:1:x");
/// let nested = Resource::Session(SessionKey { tenant: "acme".into(), user: 42 });
/// assert_eq!(nested.to_string(), "Session:acme:42");
/// assert_eq!("Session:acme:42".parse::<Resource>()?, nested);
/// # Ok::<(), persistent_map::KeyParseError>(())
/// ```
///
/// Parsing is strict, so each key has exactly one text: a backslash must be followed by a
/// backslash or the separator, the field count must match, and a unit variant takes nothing
/// after its name. When every field type's own text is canonical (as `String`'s is),
/// `s.parse::<K>()?.to_string() == s` for every `s` that parses; a field type that accepts
/// several spellings of one value (`u64` accepts `+7` and `007`) keeps that freedom.
///
/// # Attributes
///
/// All under `#[persistent_key(...)]`:
///
/// | attribute | on | effect |
/// | --- | --- | --- |
/// | `table = "name"` | the type | the table name, instead of the type's name in snake_case |
/// | `separator = '/'` | the type | the separator, instead of `:` (any character but `\`) |
/// | `rename_all = "kebab-case"` | an enum | the case of every variant's text |
/// | `rename = "text"` | a variant | that variant's text (wins over `rename_all`) |
/// | `text = "display"` | the type | keep the type's own `Display` and `FromStr`; derive only `TABLE_NAME` |
/// | `crate = "path"` | the type | where to find this crate when it is renamed in `Cargo.toml` |
/// | `serde` | the type | also derive `Serialize` and `Deserialize`, as the key's text (see [Serde](#serde)) |
///
/// The default table name is the type's name in snake_case, taking a run of capitals as one
/// word: `SessionKey` → `session_key`, `HTTPRequestKey` → `http_request_key`, `V2Key` →
/// `v2_key`. A table name must be `[A-Za-z_][A-Za-z0-9_]*` and must not start with `sqlite_`
/// (in any case); any other name is a compile error on the attribute.
///
/// `rename_all` takes the case names serde uses: `lowercase`, `UPPERCASE`, `PascalCase`,
/// `camelCase`, `snake_case`, `SCREAMING_SNAKE_CASE`, `kebab-case`, `SCREAMING-KEBAB-CASE`. A
/// variant's name is split into words the same way as the table name (`GuestUser` →
/// `guest`, `user`; `HTTPProxy` → `http`, `proxy`) and the words are joined in that case.
///
/// ```
/// use persistent_map::PersistentKey;
///
/// #[derive(PersistentKey, Debug, PartialEq)]
/// #[persistent_key(table = "members", rename_all = "kebab-case")]
/// enum Role {
///     Admin,
///     GuestUser,
///     #[persistent_key(rename = "owner")]
///     SuperUser,
/// }
///
/// assert_eq!(Role::TABLE_NAME, "members");
/// assert_eq!(Role::GuestUser.to_string(), "guest-user");
/// assert_eq!(Role::SuperUser.to_string(), "owner");
/// assert_eq!("admin".parse::<Role>()?, Role::Admin);
///
/// #[derive(PersistentKey, Debug, PartialEq)]
/// #[persistent_key(separator = '/')]
/// struct FilePath {
///     bucket: String,
///     name: String,
/// }
///
/// let path = FilePath { bucket: "photos".into(), name: "2024/cat.png".into() };
/// assert_eq!(path.to_string(), r"photos/2024\/cat.png");
/// assert_eq!(FilePath::TABLE_NAME, "file_path");
/// # Ok::<(), persistent_map::KeyParseError>(())
/// ```
///
/// A type that already has a `Display` and `FromStr` of its own (whose error is a
/// `std::error::Error + Send + Sync + 'static`) derives only its table with
/// `text = "display"`:
///
/// ```
/// use std::fmt;
/// use std::str::FromStr;
///
/// use persistent_map::PersistentKey;
///
/// #[derive(PersistentKey, Debug, PartialEq)]
/// #[persistent_key(table = "orders", text = "display")]
/// struct OrderId(u32);
///
/// impl fmt::Display for OrderId {
///     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
///         write!(f, "order-{}", self.0)
///     }
/// }
///
/// impl FromStr for OrderId {
///     type Err = std::num::ParseIntError;
///
///     fn from_str(text: &str) -> Result<Self, Self::Err> {
///         text.trim_start_matches("order-").parse().map(OrderId)
///     }
/// }
///
/// assert_eq!(OrderId::TABLE_NAME, "orders");
/// assert_eq!(OrderId(7).to_string(), "order-7");
/// ```
///
/// A crate that depends on this one under another name says so with `crate`:
///
/// ```
/// # extern crate persistent_map as storage;
/// use storage::PersistentKey;
///
/// #[derive(PersistentKey)]
/// #[persistent_key(crate = "storage")]
/// struct UserId(u64);
///
/// assert_eq!(UserId(7).to_string(), "7");
/// ```
///
/// # Generic keys
///
/// A generic key type gets `Display`, `FromStr` and `PersistentKey` wherever its fields'
/// types have `Display` and `FromStr` (with an error that is `std::error::Error + Send + Sync +
/// 'static`); the derive adds those bounds to its impls.
///
/// ```
/// use persistent_map::PersistentKey;
///
/// #[derive(PersistentKey, Debug, PartialEq)]
/// struct Pair<A, B> {
///     left: A,
///     right: B,
/// }
///
/// let pair = Pair { left: 1u8, right: "x".to_string() };
/// assert_eq!(pair.to_string(), "1:x");
/// assert_eq!("1:x".parse::<Pair<u8, String>>()?, pair);
/// assert_eq!(<Pair<u8, String>>::TABLE_NAME, "pair");
/// # Ok::<(), persistent_map::KeyParseError>(())
/// ```
///
/// # Serde
///
/// A map's key type must be `Serialize` and `DeserializeOwned` (the
/// [`StorageBackend`](crate::StorageBackend) trait, kept from 0.1.3, asks for it), though the
/// SQLite and PostgreSQL backends store only its text. Rather than deriving serde's traits
/// too, ask for them with `#[persistent_key(serde)]`: they then go through the key's text, so
/// a key is the same string in JSON (and anywhere else serde writes it) as in the database.
///
/// It is opt-in, not automatic: the derive cannot see whether the type also derives or
/// implements serde's traits, and writing them unasked would clash with every key that
/// already derives them (as keys did before this attribute). Without either, the compiler
/// reports, where the key meets a map, that the type cannot key a map
/// ([`MapKey`](crate::MapKey)) and names this attribute.
///
/// ```
/// use persistent_map::{sqlite::SqliteBackend, PersistentKey, PersistentMap};
///
/// #[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash)]
/// #[persistent_key(serde)]
/// struct SessionKey {
///     tenant: String,
///     user: u64,
/// }
///
/// # persistent_map::__private::run_example(Box::pin(async {
/// let key = SessionKey { tenant: "acme".into(), user: 42 };
/// assert_eq!(serde_json::to_string(&key)?, r#""acme:42""#);
/// assert_eq!(serde_json::from_str::<SessionKey>(r#""acme:42""#)?, key);
/// let err = serde_json::from_str::<SessionKey>(r#""acme""#).unwrap_err();
/// assert!(err.to_string().contains("expected 2 fields"), "{err}");
///
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("app.db");
/// let map: PersistentMap<SessionKey, u32, SqliteBackend> = PersistentMap::open(&path).await?;
/// map.insert(key, 1).await?;
/// # Ok(()) }));
/// ```
///
/// # Keys from std
///
/// The std types that maps are commonly keyed by are keys already, so
/// `PersistentMap::<u64, _, SqliteBackend>::open(path)` works. Each type's text is its own
/// `Display`, read back by its own `FromStr`, and each has a table of its own:
///
/// | key type | table |
/// | --- | --- |
/// | `String` | `kv` (as [`SqliteBackend::new`](crate::sqlite::SqliteBackend::new) and persistent-map 0.1.3) |
/// | `u8`, `u16`, `u32`, `u64`, `u128`, `usize` | `std__u8`, `std__u16`, `std__u32`, `std__u64`, `std__u128`, `std__usize` |
/// | `i8`, `i16`, `i32`, `i64`, `i128`, `isize` | `std__i8`, `std__i16`, `std__i32`, `std__i64`, `std__i128`, `std__isize` |
/// | `NonZeroU8` … `NonZeroIsize` | `std__non_zero_u8` … `std__non_zero_isize` |
/// | `bool`, `char` | `std__bool`, `std__char` |
/// | `IpAddr`, `Ipv4Addr`, `Ipv6Addr`, `SocketAddr` | `std__ip_addr`, `std__ipv4_addr`, `std__ipv6_addr`, `std__socket_addr` |
///
/// The double underscore keeps these tables apart from derived ones: a derived key's default
/// table is its type's name in snake_case, whose words are joined by single underscores, so no
/// derived default name contains `__` (`struct U64` gets `u64`, never `std__u64`).
///
/// Their [`KEY_LAYOUT`](Self::KEY_LAYOUT) is empty (nothing recorded): the text is one value in
/// std's own format, which does not change between releases. Another key type reading such a
/// table either reads every key as written (a derived `struct UserId(u64)` writes the same text
/// as `u64`) or fails to load with
/// [`InvalidStoredKey`](crate::PersistentError::InvalidStoredKey); it cannot misparse.
///
/// ```
/// use std::net::Ipv4Addr;
///
/// use persistent_map::PersistentKey;
///
/// assert_eq!(u64::TABLE_NAME, "std__u64");
/// assert_eq!(char::TABLE_NAME, "std__char");
/// assert_eq!(Ipv4Addr::TABLE_NAME, "std__ipv4_addr");
/// assert_eq!(u64::KEY_LAYOUT, "");
/// ```
///
/// # Compile errors
///
/// Each of these is reported on the tokens that cause it: a union; a field whose type lacks
/// `Display` or `FromStr`; an invalid table name (given, or made from the type's name); an
/// unknown or repeated attribute; `serde` given a value; a backslash separator; a variant text
/// that contains the separator or a backslash; two variants with the same text; an enum with
/// no variants. A type with its own `Display` or `FromStr` and a derived text is a conflict
/// (E0119) that rustc reports as originating in the macro
/// `to_keep_your_own_Display_and_FromStr_add_persistent_key_text_display`: its name is the fix.
pub trait PersistentKey:
    fmt::Display + FromStr<Err: std::error::Error + Send + Sync + 'static>
{
    /// The table that holds this key type's entries: `[A-Za-z_][A-Za-z0-9_]*`, not starting
    /// with `sqlite_`.
    const TABLE_NAME: &'static str;

    /// How the key's text is laid out: for a derived key, the key format version, the separator
    /// and its fields (and variant texts) in order, e.g. `v1 separator ':' struct {tenant, user}`.
    ///
    /// [`SqliteBackend::for_key`](crate::sqlite::SqliteBackend::for_key) records it with the
    /// table and refuses to open a table recorded with another layout: keys written in one
    /// layout could be misparsed in another (swap two `String` fields and every key still
    /// parses, wrongly). Move stored keys to a new layout with
    /// [`migrate_keys`](crate::sqlite::migrate_keys). Empty, the default for hand-written keys
    /// and `text = "display"`, means "not described": never recorded nor checked.
    ///
    /// ```
    /// use persistent_map::PersistentKey;
    ///
    /// #[derive(PersistentKey)]
    /// struct SessionKey {
    ///     tenant: String,
    ///     user: u64,
    /// }
    ///
    /// #[derive(PersistentKey)]
    /// #[persistent_key(separator = '/')]
    /// enum Resource {
    ///     Repo { org: u64, name: String },
    ///     Tag(String),
    ///     Public,
    /// }
    ///
    /// assert_eq!(SessionKey::KEY_LAYOUT, "v1 separator ':' struct {tenant, user}");
    /// assert_eq!(Resource::KEY_LAYOUT, "v1 separator '/' enum {Repo {org, name}, Tag (1), Public}");
    /// assert_eq!(String::KEY_LAYOUT, "");
    /// ```
    const KEY_LAYOUT: &'static str = "";
}

/// Why a key text could not be parsed back into its derived key type.
///
/// It names the key type, the variant and field where the text went wrong (when it did inside
/// one), the offending text, and what was expected there. When a field's own `FromStr` failed,
/// [`source`](Error::source) is that field's error.
///
/// ```
/// use std::error::Error;
///
/// use persistent_map::{KeyParseError, PersistentKey};
///
/// #[derive(PersistentKey, Debug)]
/// struct SessionKey {
///     tenant: String,
///     user: u64,
/// }
///
/// let err: KeyParseError = "acme:x".parse::<SessionKey>().unwrap_err();
/// assert_eq!(err.type_name(), "SessionKey");
/// assert_eq!(err.field(), Some("user"));
/// assert_eq!(err.text(), "x");
/// assert_eq!(err.expected(), "a valid `u64`");
/// assert_eq!(err.to_string(), r#"cannot parse SessionKey field `user` from "x": expected a valid `u64`"#);
/// assert!(err.source().unwrap().is::<std::num::ParseIntError>());
///
/// let err = "acme".parse::<SessionKey>().unwrap_err();
/// assert_eq!(err.to_string(), r#"cannot parse SessionKey from "acme": expected 2 fields separated by `:`"#);
/// ```
#[derive(Debug)]
pub struct KeyParseError {
    type_name: &'static str,
    variant: Option<&'static str>,
    field: Option<&'static str>,
    text: String,
    expected: Cow<'static, str>,
    source: Option<Box<dyn Error + Send + Sync + 'static>>,
}

impl KeyParseError {
    /// An error about `text`, in the variant `variant` of `type_name` when that is `Some`.
    pub(crate) fn new(
        type_name: &'static str,
        variant: Option<&'static str>,
        text: &str,
        expected: impl Into<Cow<'static, str>>,
    ) -> Self {
        KeyParseError {
            type_name,
            variant,
            field: None,
            text: text.to_owned(),
            expected: expected.into(),
            source: None,
        }
    }

    /// Places the error in `field`, whose own parse failed with `source`.
    pub(crate) fn in_field(
        mut self,
        field: &'static str,
        source: Box<dyn Error + Send + Sync + 'static>,
    ) -> Self {
        self.field = Some(field);
        self.source = Some(source);
        self
    }

    /// The name of the key type, as written in its definition (`SessionKey`).
    pub fn type_name(&self) -> &str {
        self.type_name
    }

    /// The enum variant whose text was wrong, by its Rust name, if the error is inside one.
    pub fn variant(&self) -> Option<&str> {
        self.variant
    }

    /// The field whose text did not parse (its name, or its index for a tuple field), if the
    /// error is inside one.
    pub fn field(&self) -> Option<&str> {
        self.field
    }

    /// The offending text: the field's text (unescaped) when a field did not parse, else the
    /// text of the key (or of the variant's fields) that was being split.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What was expected instead, as the message words it: ``2 fields separated by `:` ``,
    /// `one of Admin, Member, guest-user`, ``a valid `u64` ``, ``nothing after `Admin` ``, ...
    pub fn expected(&self) -> &str {
        &self.expected
    }
}

impl fmt::Display for KeyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot parse {}", self.type_name)?;
        if let Some(variant) = self.variant {
            write!(f, "::{variant}")?;
        }
        if let Some(field) = self.field {
            write!(f, " field `{field}`")?;
        }
        write!(f, " from {:?}: expected {}", self.text, self.expected)
    }
}

impl Error for KeyParseError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn Error + 'static))
    }
}
