//! Scans: a map's stored entries in the order of their key text, read from storage a page at a
//! time, so that a table larger than memory is never held in memory at once.

use crate::{MapKey, MapValue};
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use super::PersistentMap;
use crate::{Result, StorageBackend};

/// Entries a page holds unless told otherwise ([`Scan::page_size`]).
const PAGE: usize = 1024;

/// A scan of a map's stored entries in the byte order of their key text (the key's `Display`
/// text, as the SQLite and PostgreSQL backends store it), a page at a time: made by
/// [`PersistentMap::scan`], [`scan_prefix`](PersistentMap::scan_prefix) and their
/// [`CachedMap`](crate::CachedMap) namesakes.
///
/// Each page is one read of storage (on SQLite, one `SELECT` through the primary key's index,
/// on a read-only connection of its own), and holds at most [`page_size`](Self::page_size)
/// entries: memory holds one page, whatever the size of the table. Pages are read when asked
/// for, each from where the last one ended, so:
///
/// - every key stored from the first page to the last is visited exactly once, in its place;
/// - a key written or removed while the scan runs may or may not be, and never twice;
/// - values are storage's as each page is read: what other processes committed is there
///   without a [refresh](PersistentMap::refresh);
/// - an entry whose time to live has passed is left out;
/// - memory is neither read nor changed: a scan of a [`CachedMap`](crate::CachedMap) does not
///   push its hot entries out.
///
/// The key order is that of the text, byte by byte: `"item:10"` comes before `"item:9"`, and
/// the number 10 before 9 (zero-pad numbers in keys that should sort as numbers).
///
/// ```
/// use persistent_map::{sqlite::SqliteBackend, PersistentMap};
///
/// # persistent_map::__private::run_example(Box::pin(async {
/// # let dir = tempfile::tempdir()?;
/// let map: PersistentMap<String, u32, SqliteBackend> =
///     PersistentMap::open(dir.path().join("app.db")).await?;
/// map.insert_many([("b".into(), 2), ("a".into(), 1), ("c".into(), 3)]).await?;
///
/// let mut scan = map.scan().page_size(2);
/// let mut seen = Vec::new();
/// while let Some(page) = scan.next_page().await? {
///     assert!(page.len() <= 2);
///     seen.extend(page);
/// }
/// assert_eq!(seen, [("a".into(), 1), ("b".into(), 2), ("c".into(), 3)]);
/// # Ok(()) }));
/// ```
pub struct Scan<K, V, B> {
    backend: Arc<B>,
    prefix: String,
    page_size: usize,
    /// Where the next page starts: after this key text (`None`: from the first).
    after: Option<String>,
    /// No page comes after those read.
    done: bool,
    /// What is left of the page read last, for [`next`](Self::next).
    page: VecDeque<(K, V)>,
    entries: PhantomData<fn() -> (K, V)>,
}

impl<K, V, B> PersistentMap<K, V, B>
where
    K: MapKey + ToString,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// Every stored entry, in the order of the key text, a page at a time (see [`Scan`]):
    /// the streaming form of [`iter`](Self::iter), which copies the whole map at once.
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, PersistentMap};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let map: PersistentMap<u64, String, SqliteBackend> =
    ///     PersistentMap::open(dir.path().join("app.db")).await?;
    /// map.insert_many((0..3).map(|i| (i, format!("item {i}")))).await?;
    /// let mut scan = map.scan();
    /// let mut count = 0;
    /// while let Some((key, value)) = scan.next().await? {
    ///     assert_eq!(value, format!("item {key}"));
    ///     count += 1;
    /// }
    /// assert_eq!(count, 3);
    /// # Ok(()) }));
    /// ```
    pub fn scan(&self) -> Scan<K, V, B> {
        self.scan_prefix("")
    }

    /// The stored entries whose key text starts with `prefix`, in the order of the key text, a
    /// page at a time (see [`Scan`]), as sled's `scan_prefix`: with a derived key, the leading
    /// fields and their separator (`"acme:"` for every session of tenant `acme`).
    ///
    /// The derive escapes a separator inside a field, so `"acme:"` is never the start of a key
    /// of another tenant (`acme:x` is written `acme\:x:…`).
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, PersistentKey, PersistentMap};
    ///
    /// #[derive(PersistentKey, Clone, PartialEq, Eq, Hash, Debug, serde::Serialize, serde::Deserialize)]
    /// struct SessionKey { tenant: String, user: u64 }
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let sessions: PersistentMap<SessionKey, String, SqliteBackend> =
    ///     PersistentMap::open(dir.path().join("app.db")).await?;
    /// let key = |tenant: &str, user| SessionKey { tenant: tenant.into(), user };
    /// sessions.insert_many([
    ///     (key("acme", 1), "a1".into()),
    ///     (key("acme", 2), "a2".into()),
    ///     (key("acme:x", 3), "x3".into()),
    ///     (key("globex", 1), "g1".into()),
    /// ]).await?;
    ///
    /// let mut acme = sessions.scan_prefix("acme:");
    /// let mut users = Vec::new();
    /// while let Some((key, _)) = acme.next().await? {
    ///     users.push(key.user);
    /// }
    /// assert_eq!(users, [1, 2]);
    /// # Ok(()) }));
    /// ```
    pub fn scan_prefix(&self, prefix: impl Into<String>) -> Scan<K, V, B> {
        Scan {
            backend: Arc::clone(&self.backend),
            prefix: prefix.into(),
            page_size: PAGE,
            after: None,
            done: false,
            page: VecDeque::new(),
            entries: PhantomData,
        }
    }
}

impl<K, V, B> Scan<K, V, B>
where
    K: MapKey + ToString,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// The scan with pages of at most `entries` entries (at least 1; 1,024 unless set).
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert_many([("a".into(), 1), ("b".into(), 2)]).await?;
    /// let mut scan = map.scan().page_size(1);
    /// assert_eq!(scan.next_page().await?, Some(vec![("a".into(), 1)]));
    /// assert_eq!(scan.next_page().await?, Some(vec![("b".into(), 2)]));
    /// assert_eq!(scan.next_page().await?, None);
    /// # Ok(()) }));
    /// ```
    #[must_use]
    pub fn page_size(mut self, entries: usize) -> Self {
        self.page_size = entries.max(1);
        self
    }

    /// The next page of entries, read from storage; `None` once every page has been read. A
    /// page is never empty: pages of rows that had all expired are read past.
    ///
    /// A [`next`](Self::next) before it may have taken entries of the page read last: the
    /// rest of that page comes first.
    ///
    /// On error (storage could not be read, a row no longer decodes: the error names the table
    /// and the key), the scan stays where it was, and asking again reads the same page again.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<u32, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert_many((0..5).map(|i| (i, i * i))).await?;
    /// let mut scan = map.scan().page_size(2);
    /// let mut pages = 0;
    /// while let Some(page) = scan.next_page().await? {
    ///     pages += 1;
    ///     assert!(!page.is_empty() && page.len() <= 2);
    /// }
    /// assert_eq!(pages, 3);
    /// # Ok(()) }));
    /// ```
    pub async fn next_page(&mut self) -> Result<Option<Vec<(K, V)>>> {
        if !self.page.is_empty() {
            return Ok(Some(self.page.drain(..).collect()));
        }
        while !self.done {
            let page = self
                .backend
                .scan_page(&self.prefix, self.after.as_deref(), self.page_size)
                .await?;
            self.done = page.resume_after.is_none();
            self.after = page.resume_after;
            if !page.entries.is_empty() {
                let entries = page.entries.into_iter();
                return Ok(Some(entries.map(|(key, value, _)| (key, value)).collect()));
            }
        }
        Ok(None)
    }

    /// The next entry; `None` once every entry has been visited. Reads a page from storage
    /// whenever the page read last is used up.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert("only".into(), 1).await?;
    /// let mut scan = map.scan();
    /// assert_eq!(scan.next().await?, Some(("only".into(), 1)));
    /// assert_eq!(scan.next().await?, None);
    /// # Ok(()) }));
    /// ```
    pub async fn next(&mut self) -> Result<Option<(K, V)>> {
        if self.page.is_empty() {
            match self.next_page().await? {
                Some(page) => self.page = page.into(),
                None => return Ok(None),
            }
        }
        Ok(self.page.pop_front())
    }
}

impl<K, V, B> fmt::Debug for Scan<K, V, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scan")
            .field("prefix", &self.prefix)
            .field("page_size", &self.page_size)
            .field("after", &self.after)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
