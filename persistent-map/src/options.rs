//! One step from a path or a URL to a map with options: [`SqliteOptions`] and
//! [`PostgresOptions`], in the manner of rusqlite's `Connection::open_with_flags` and sqlx's
//! `PoolOptions`.
//!
//! They are a front for the backends' own builders ([`SqliteBackend::builder`],
//! [`PostgresBackend::builder`](crate::postgres::PostgresBackend::builder)): each option is
//! handed to the builder as it is, so the two cannot disagree on a default.

use crate::{MapKey, MapValue};
#[cfg(feature = "sqlite")]
use std::path::Path;
use std::time::Duration;

#[cfg(feature = "sqlite")]
use crate::sqlite::{Durability, SqliteBackend};
use crate::{PersistentKey, PersistentMap, Result};

/// Options for a map on a SQLite file, opened in one step by [`open`](Self::open) or
/// [`PersistentMap::open_with`].
///
/// Every option left unset keeps the default of [`SqliteBackend::builder`]: the key type's
/// table ([`K::TABLE_NAME`](PersistentKey::TABLE_NAME), its layout recorded and checked),
/// [`Durability::Full`], a 5 second busy timeout.
///
/// ```
/// use persistent_map::sqlite::{Durability, SqliteBackend};
/// use persistent_map::{PersistentMap, SqliteOptions};
///
/// # persistent_map::__private::run_example(Box::pin(async {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("app.db");
/// let options = SqliteOptions::new().table("visits").durability(Durability::Normal);
/// let map: PersistentMap<String, u32, SqliteBackend> = options.open(&path).await?;
/// map.insert("home".into(), 7).await?;
/// assert_eq!(map.backend().table(), "visits");
/// assert_eq!(map.backend().durability(), Durability::Normal);
/// # Ok(()) }));
/// ```
#[cfg(feature = "sqlite")]
#[derive(Debug, Clone, Default)]
#[must_use = "options do nothing until `.open(path).await`"]
pub struct SqliteOptions {
    table: Option<String>,
    durability: Option<Durability>,
    busy_timeout: Option<Duration>,
}

#[cfg(feature = "sqlite")]
impl SqliteOptions {
    /// Options that keep every default.
    ///
    /// ```
    /// let options = persistent_map::SqliteOptions::new();
    /// # let _ = options;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The table to store the map in, instead of the key type's
    /// ([`SqliteBuilder::table`](crate::sqlite::SqliteBuilder::table)). The key type's layout
    /// is still recorded and checked.
    ///
    /// ```
    /// let options = persistent_map::SqliteOptions::new().table("orders");
    /// # let _ = options;
    /// ```
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }

    /// How durable a write must be before it is acknowledged
    /// ([`SqliteBuilder::durability`](crate::sqlite::SqliteBuilder::durability)).
    ///
    /// ```
    /// use persistent_map::{sqlite::Durability, SqliteOptions};
    /// let options = SqliteOptions::new().durability(Durability::Normal);
    /// # let _ = options;
    /// ```
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = Some(durability);
        self
    }

    /// How long a commit waits for another process's write lock
    /// ([`SqliteBuilder::busy_timeout`](crate::sqlite::SqliteBuilder::busy_timeout)).
    ///
    /// ```
    /// use std::time::Duration;
    /// let options = persistent_map::SqliteOptions::new().busy_timeout(Duration::from_secs(30));
    /// # let _ = options;
    /// ```
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = Some(timeout);
        self
    }

    /// Opens (or creates) the database at `path` and loads the map, with these options.
    ///
    /// Fails as [`SqliteBuilder::open`](crate::sqlite::SqliteBuilder::open) and
    /// [`PersistentMap::new`] do, changing nothing stored.
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, PersistentMap, SqliteOptions};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let map: PersistentMap<String, u32, SqliteBackend> =
    ///     SqliteOptions::new().open(dir.path().join("app.db")).await?;
    /// assert_eq!(map.backend().table(), "kv"); // the table of `String` keys
    /// # Ok(()) }));
    /// ```
    pub async fn open<K, V>(
        self,
        path: impl AsRef<Path>,
    ) -> Result<PersistentMap<K, V, SqliteBackend>>
    where
        K: PersistentKey + MapKey,
        V: MapValue,
    {
        let mut builder = SqliteBackend::builder(path).key::<K>();
        if let Some(table) = self.table {
            builder = builder.table(table);
        }
        if let Some(durability) = self.durability {
            builder = builder.durability(durability);
        }
        if let Some(timeout) = self.busy_timeout {
            builder = builder.busy_timeout(timeout);
        }
        PersistentMap::new(builder.open().await?).await
    }
}

#[cfg(feature = "sqlite")]
impl<K, V> PersistentMap<K, V, SqliteBackend>
where
    K: PersistentKey + MapKey,
    V: MapValue,
{
    /// Opens (or creates) the SQLite database at `path` and loads the map, with `options`: the
    /// same as `options.open(path)`, in the manner of rusqlite's `open_with_flags`.
    ///
    /// ```
    /// use persistent_map::sqlite::{Durability, SqliteBackend};
    /// use persistent_map::{PersistentMap, SqliteOptions};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("app.db");
    /// let map: PersistentMap<String, u32, SqliteBackend> =
    ///     PersistentMap::open_with(&path, SqliteOptions::new().durability(Durability::Normal))
    ///         .await?;
    /// map.insert("visits".into(), 1).await?;
    /// # Ok(()) }));
    /// ```
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        options.open(path).await
    }
}

/// Options for a map on a PostgreSQL database, connected in one step by
/// [`connect`](Self::connect) or [`PersistentMap::open_postgres_with`].
///
/// Every option left unset keeps the default of
/// [`PostgresBackend::builder`](crate::postgres::PostgresBackend::builder): the key type's
/// table ([`K::TABLE_NAME`](PersistentKey::TABLE_NAME)), the URL's connect timeout (else 5
/// seconds), a 10 second reconnect timeout, a 10 second operation timeout.
///
/// ```no_run
/// use std::time::Duration;
///
/// use persistent_map::{postgres::PostgresBackend, PersistentMap, PostgresOptions};
///
/// # persistent_map::__private::run_example(Box::pin(async {
/// let map: PersistentMap<u64, String, PostgresBackend> = PostgresOptions::new()
///     .table("visits")
///     .connect_timeout(Duration::from_secs(2))
///     .connect("postgres://postgres@127.0.0.1:5432/test")
///     .await?;
/// map.insert(7, "seven".into()).await?;
/// # Ok(()) }));
/// ```
#[cfg(feature = "postgres")]
#[derive(Debug, Clone, Default)]
#[must_use = "options do nothing until `.connect(url).await`"]
pub struct PostgresOptions {
    table: Option<String>,
    connect_timeout: Option<Duration>,
    reconnect_timeout: Option<Duration>,
    operation_timeout: Option<Duration>,
    lock_class: Option<i32>,
}

#[cfg(feature = "postgres")]
impl PostgresOptions {
    /// Options that keep every default.
    ///
    /// ```
    /// let options = persistent_map::PostgresOptions::new();
    /// # let _ = options;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The table to store the map in, instead of the key type's
    /// ([`PostgresBuilder::table`](crate::postgres::PostgresBuilder::table)).
    ///
    /// ```
    /// let options = persistent_map::PostgresOptions::new().table("orders");
    /// # let _ = options;
    /// ```
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }

    /// How long one connection attempt may take
    /// ([`PostgresBuilder::connect_timeout`](crate::postgres::PostgresBuilder::connect_timeout)).
    ///
    /// ```
    /// use std::time::Duration;
    /// let options = persistent_map::PostgresOptions::new().connect_timeout(Duration::from_secs(2));
    /// # let _ = options;
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// How long work waits for a lost connection to come back
    /// ([`PostgresBuilder::reconnect_timeout`](crate::postgres::PostgresBuilder::reconnect_timeout)).
    ///
    /// ```
    /// use std::time::Duration;
    /// let options = persistent_map::PostgresOptions::new().reconnect_timeout(Duration::from_secs(60));
    /// # let _ = options;
    /// ```
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = Some(timeout);
        self
    }

    /// How long one attempt at some work may wait for the server, and from it the session's
    /// server-side limits (`lock_timeout`, `statement_timeout`,
    /// `idle_in_transaction_session_timeout`, keepalives)
    /// ([`PostgresBuilder::operation_timeout`](crate::postgres::PostgresBuilder::operation_timeout)).
    ///
    /// ```
    /// use std::time::Duration;
    /// let options = persistent_map::PostgresOptions::new().operation_timeout(Duration::from_secs(4));
    /// # let _ = options;
    /// ```
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = Some(timeout);
        self
    }

    /// The first of the three classes of the crate's advisory locks, the same in every
    /// instance
    /// ([`PostgresBuilder::advisory_lock_classes`](crate::postgres::PostgresBuilder::advisory_lock_classes);
    /// default 28781).
    ///
    /// ```
    /// let options = persistent_map::PostgresOptions::new().advisory_lock_classes(0x4d50);
    /// # let _ = options;
    /// ```
    pub fn advisory_lock_classes(mut self, first: i32) -> Self {
        self.lock_class = Some(first);
        self
    }

    /// Connects to the database at `url` and loads the map, with these options.
    ///
    /// Fails as [`PostgresBuilder::connect`](crate::postgres::PostgresBuilder::connect) and
    /// [`PersistentMap::new`] do, changing nothing stored.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use persistent_map::{postgres::PostgresBackend, PersistentMap, PostgresOptions};
    ///
    /// # fn main() {
    /// # let main: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> = Box::pin(async {
    /// let err = PostgresOptions::new()
    ///     .connect_timeout(Duration::from_millis(500))
    ///     .connect::<u64, String>("postgres://postgres@127.0.0.1:1/test")
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.to_string().starts_with("cannot connect to PostgreSQL at 127.0.0.1:1"), "{err}");
    /// # });
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(main)
    /// # }
    /// ```
    pub async fn connect<K, V>(
        self,
        url: &str,
    ) -> Result<PersistentMap<K, V, crate::postgres::PostgresBackend>>
    where
        K: PersistentKey + MapKey,
        V: MapValue,
    {
        let mut builder = crate::postgres::PostgresBackend::builder(url).table(K::TABLE_NAME);
        if let Some(table) = self.table {
            builder = builder.table(table);
        }
        if let Some(timeout) = self.connect_timeout {
            builder = builder.connect_timeout(timeout);
        }
        if let Some(timeout) = self.reconnect_timeout {
            builder = builder.reconnect_timeout(timeout);
        }
        if let Some(timeout) = self.operation_timeout {
            builder = builder.operation_timeout(timeout);
        }
        if let Some(first) = self.lock_class {
            builder = builder.advisory_lock_classes(first);
        }
        PersistentMap::new(builder.connect().await?).await
    }
}

#[cfg(feature = "postgres")]
impl<K, V> PersistentMap<K, V, crate::postgres::PostgresBackend>
where
    K: PersistentKey + MapKey,
    V: MapValue,
{
    /// Connects to the PostgreSQL database at `url` and loads the map, with `options`: the same
    /// as `options.connect(url)`.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// use persistent_map::{postgres::PostgresBackend, PersistentMap, PostgresOptions};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let options = PostgresOptions::new().reconnect_timeout(Duration::from_secs(60));
    /// let map: PersistentMap<String, u32, PostgresBackend> =
    ///     PersistentMap::open_postgres_with("postgres://postgres@127.0.0.1:5432/test", options)
    ///         .await?;
    /// map.insert("a".to_string(), 1).await?;
    /// # Ok(()) }));
    /// ```
    pub async fn open_postgres_with(url: &str, options: PostgresOptions) -> Result<Self> {
        options.connect(url).await
    }
}
