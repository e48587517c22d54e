//! The change stream: what a map's subscribers hear, after each change is committed.

use std::fmt;
use std::sync::OnceLock;

use tokio::sync::broadcast;

/// One committed change of a map, as heard by a [`Subscription`].
///
/// ```
/// use persistent_map::Change;
///
/// let change: Change<String, u32> = Change::Inserted { key: "a".into(), value: 1 };
/// assert_eq!(change.key(), Some(&"a".to_string()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change<K, V> {
    /// `key` now holds `value` (inserted or overwritten).
    Inserted {
        /// The key written.
        key: K,
        /// Its new value.
        value: V,
    },
    /// `key` was removed.
    Removed {
        /// The key removed.
        key: K,
    },
    /// Only the deadline of `key`'s entry changed ([`expire`](crate::PersistentMap::expire),
    /// [`persist`](crate::PersistentMap::persist)): its value is as it was.
    DeadlineChanged {
        /// The key whose deadline changed.
        key: K,
        /// When its entry expires now (`None`: never).
        deadline: Option<crate::Deadline>,
    },
    /// `key` reached its deadline and was swept: its entry was already absent to every read
    /// from that instant; this says it is now gone from memory and storage too.
    Expired {
        /// The key that expired.
        key: K,
    },
    /// Every entry was removed ([`PersistentMap::clear`](crate::PersistentMap::clear)).
    Cleared,
    /// The map was reloaded from storage wholesale ([`PersistentMap::load`](crate::PersistentMap::load),
    /// or a refresh that could not tell which keys changed): re-read what you mirror.
    Reloaded,
}

impl<K, V> Change<K, V> {
    /// The key this change is about, if it is about one key.
    pub fn key(&self) -> Option<&K> {
        match self {
            Change::Inserted { key, .. }
            | Change::Removed { key }
            | Change::Expired { key }
            | Change::DeadlineChanged { key, .. } => Some(key),
            Change::Cleared | Change::Reloaded => None,
        }
    }
}

/// Why [`Subscription::recv`] returned no change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The subscriber fell behind and this many changes were dropped for it; the next `recv`
    /// returns the oldest change still kept. Re-read the map to catch up.
    #[error("the subscriber lagged behind and missed {0} changes")]
    Lagged(u64),
    /// The map was dropped: no change will come.
    #[error("the map was dropped")]
    Closed,
}

/// A receiver of a map's committed changes; made by
/// [`PersistentMap::subscribe`](crate::PersistentMap::subscribe).
///
/// Each change arrives after it is committed and applied to the map, and the changes of one key
/// arrive in commit order. Writers never wait for a subscriber: one that falls more than
/// [`CHANGE_BUFFER`] changes behind is told so by [`RecvError::Lagged`].
pub struct Subscription<K, V> {
    receiver: broadcast::Receiver<Change<K, V>>,
}

/// How many changes a map keeps for its slowest subscriber.
pub const CHANGE_BUFFER: usize = 1024;

impl<K: Clone, V: Clone> Subscription<K, V> {
    /// Waits for the next change.
    ///
    /// ```
    /// use persistent_map::{in_memory::InMemoryBackend, Change, PersistentMap};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// let mut changes = map.subscribe();
    /// map.insert("a".into(), 1).await?;
    /// map.remove(&"a".into()).await?;
    /// assert_eq!(changes.recv().await.unwrap(), Change::Inserted { key: "a".into(), value: 1 });
    /// assert_eq!(changes.recv().await.unwrap(), Change::Removed { key: "a".into() });
    /// # Ok(()) }));
    /// ```
    pub async fn recv(&mut self) -> Result<Change<K, V>, RecvError> {
        self.receiver.recv().await.map_err(|error| match error {
            broadcast::error::RecvError::Lagged(missed) => RecvError::Lagged(missed),
            broadcast::error::RecvError::Closed => RecvError::Closed,
        })
    }

    /// Returns the next change if one is waiting, without waiting.
    ///
    /// ```
    /// use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// let mut changes = map.subscribe();
    /// assert_eq!(changes.try_recv(), Ok(None));
    /// # Ok(()) }));
    /// ```
    pub fn try_recv(&mut self) -> Result<Option<Change<K, V>>, RecvError> {
        match self.receiver.try_recv() {
            Ok(change) => Ok(Some(change)),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => Err(RecvError::Lagged(missed)),
            Err(broadcast::error::TryRecvError::Closed) => Err(RecvError::Closed),
        }
    }
}

impl<K, V> fmt::Debug for Subscription<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("pending", &self.receiver.len())
            .finish()
    }
}

/// The sending side, made on first subscription so that a map nobody watches pays nothing.
pub(crate) struct ChangeFeed<K, V> {
    sender: OnceLock<broadcast::Sender<Change<K, V>>>,
}

impl<K: Clone, V: Clone> ChangeFeed<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            sender: OnceLock::new(),
        }
    }

    pub(crate) fn subscribe(&self) -> Subscription<K, V> {
        let sender = self
            .sender
            .get_or_init(|| broadcast::channel(CHANGE_BUFFER).0);
        Subscription {
            receiver: sender.subscribe(),
        }
    }

    /// Whether anyone has ever subscribed: until then, callers skip cloning keys and values for
    /// nobody. (Counting the receivers instead would race: one that subscribes between the check
    /// and the change would miss a change applied after it subscribed. Only the map's very
    /// first subscription can still meet a change in flight, which it may or may not hear.)
    pub(crate) fn is_watched(&self) -> bool {
        self.sender.get().is_some()
    }

    pub(crate) fn publish(&self, change: Option<Change<K, V>>) {
        if let (Some(change), Some(sender)) = (change, self.sender.get()) {
            // Having no receiver (any more) is not an error: the change is simply not heard.
            let _ = sender.send(change);
        }
    }
}
