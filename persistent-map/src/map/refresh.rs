//! Catching up with what others wrote: another process on the same SQLite file, another
//! instance on PostgreSQL, another backend on the same table.

use crate::{MapKey, MapValue};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::PersistentMap;
use crate::completion::run_to_completion;
use crate::{ChangePosition, Deadline, ExternalChanges, PersistentError, Result, StorageBackend};

impl<K, V, B> PersistentMap<K, V, B>
where
    K: MapKey,
    V: MapValue,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// Catches up with changes that others (another process on the same SQLite file, another
    /// instance on PostgreSQL) made to the storage, and returns whether it re-read anything
    /// (a backend that cannot tell what changed re-reads everything, every time).
    ///
    /// Cheap when nothing changed, and it costs what changed: the map keeps its place in the
    /// backend's history of changes ([`StorageBackend::changes_since`]) and re-reads only the
    /// keys written since (the PostgreSQL backend reads their values with the log, in one
    /// statement). The SQLite backend logs the keys each commit writes, so another
    /// process's writes cost a re-read of those keys (a clear, a reload of the table), and a
    /// write to another table costs nothing; a commit by a program that is not persistent-map
    /// (`sqlite3`, a script), or falling more than 65,536 logged keys of the table behind, makes
    /// it reload the table.
    /// Backends that cannot tell reload every time.
    ///
    /// Handles on the same table in this process share their entries, so they never need a
    /// refresh to see each other's writes. The place is kept by the map and replaced only once
    /// what was read has been applied, so a refresh that fails or is dropped part-way loses
    /// nothing: the next one reads the same changes again.
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, PersistentMap};
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("app.db");
    /// let map: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path).await?;
    /// assert!(!map.refresh().await?);
    ///
    /// // Another process (here: another SQLite connection) writes the file.
    /// rusqlite::Connection::open(&path)?.execute("INSERT INTO kv VALUES ('other', '5')", [])?;
    /// assert!(map.refresh().await?);
    /// assert_eq!(map.get("other"), Some(5));
    /// # Ok(()) }));
    /// ```
    pub async fn refresh(&self) -> Result<bool> {
        self.catch_up(false).await
    }

    /// [`refresh`](Self::refresh); with `heard`, from what the backend has already heard if it
    /// can answer that way ([`StorageBackend::changes_heard`]).
    async fn catch_up(&self, heard: bool) -> Result<bool> {
        let _one_at_a_time = self.shared.refreshing.lock().await;
        let since = self.shared.position();
        let turns = self.shared.key_locks.turns_ended();
        let answered = heard
            .then(|| self.backend.changes_heard(since, self.shared.id))
            .flatten();
        let (changes, next) = match answered {
            Some(answer) => answer,
            None => self.backend.changes_since(since, self.shared.id).await?,
        };
        match changes {
            ExternalChanges::None => {
                self.shared.set_position(next);
                Ok(false)
            }
            ExternalChanges::Unknown => {
                if since.is_some() {
                    // The backend keeps a history but could not say what changed (a clear, a
                    // large batch, a writer that does not log): the whole table is re-read.
                    tracing::warn!(entries = self.len(), "refresh reloads the whole table");
                }
                self.load().await.map(|()| true)
            }
            ExternalChanges::Keys(keys) => {
                let refreshed = self.refresh_keys(keys, None, next).await;
                self.start_sweeping();
                refreshed
            }
            ExternalChanges::Entries(entries) => {
                let (keys, values) = entries.into_iter().unzip();
                let refreshed = self.refresh_keys(keys, Some((values, turns)), next).await;
                self.start_sweeping();
                refreshed
            }
        }
    }

    /// Makes memory hold what storage holds under `keys`, under their turns, then moves the
    /// map's place in the backend's history to `next`.
    ///
    /// `read` is what the backend read under the keys together with the changes (one value per
    /// key), and the count of turns ended before it was asked. It is applied as it is unless a
    /// turn ended since: that may have been a write of this map, committed after the read and
    /// already in memory, which the read would then put an older value over (and which the
    /// change log never reports back to its writer). Then, as without `read`, the keys are read
    /// now, while their turns are held.
    async fn refresh_keys(
        &self,
        keys: Vec<K>,
        read: Option<ReadWithChanges<V>>,
        next: Option<ChangePosition>,
    ) -> Result<bool> {
        let guard = self.shared.key_locks.lock_many(&keys).await;
        let shared = Arc::clone(&self.shared);
        let backend = Arc::clone(&self.backend);
        run_to_completion(async move {
            let _guard = guard;
            let applied: Vec<_> = match read {
                Some((values, turns)) if shared.key_locks.turns_ended() == turns => {
                    keys.into_iter().zip(values).collect()
                }
                _ => {
                    // A cached map need not read a key it does not hold, unless a subscriber
                    // is to hear what the key holds now.
                    let keys: Vec<K> = match shared.changes.is_watched() {
                        true => keys,
                        false => keys
                            .into_iter()
                            .filter(|key| shared.entries.knows(key))
                            .collect(),
                    };
                    let mut stored = match keys.is_empty() {
                        true => Default::default(),
                        false => backend.load_keys_expiring(&keys).await?,
                    };
                    keys.into_iter()
                        .map(|key| {
                            let value = stored.remove(&key);
                            (key, value)
                        })
                        .collect()
                }
            };
            for (key, value) in applied {
                shared.apply_refreshed(key, value);
            }
            shared.set_position(next);
            Ok(true)
        })
        .await
    }

    /// Refreshes the map in the background: every `interval`, and at once whenever the backend
    /// signals a change (PostgreSQL's `NOTIFY`). Dropping the returned task stops it.
    ///
    /// The task keeps the map alive while it runs. A refresh that fails is retried at the next
    /// tick; the last failure is kept in the task. Woken by an announcement that carried the
    /// changes themselves (PostgreSQL's, when they fit in a notification), it applies them
    /// without asking the server ([`StorageBackend::changes_heard`]).
    ///
    /// ```
    /// use persistent_map::{sqlite::SqliteBackend, PersistentMap};
    /// use std::time::Duration;
    ///
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let dir = tempfile::tempdir()?;
    /// let map: PersistentMap<String, u32, SqliteBackend> =
    ///     PersistentMap::open(dir.path().join("app.db")).await?;
    /// let refresher = map.refresh_every(Duration::from_millis(100));
    /// assert!(refresher.take_error().is_none());
    /// drop(refresher); // stops refreshing
    /// # Ok(()) }));
    /// ```
    pub fn refresh_every(&self, interval: Duration) -> RefreshTask {
        let map = self.clone();
        let last_error = Arc::new(Mutex::new(None));
        let errors = Arc::clone(&last_error);
        // A zero period would make `interval` panic inside the task.
        let interval = interval.max(Duration::from_millis(1));
        let task = crate::tasks::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // Woken by an announcement, what was heard may be all the map needs.
                let heard = tokio::select! {
                    _ = ticks.tick() => false,
                    () = map.backend.external_change_signal() => true,
                };
                if let Err(error) = map.catch_up(heard).await {
                    *errors.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
                }
            }
        });
        RefreshTask { task, last_error }
    }
}

/// What a backend read under the changed keys together with the changes (per key: the value
/// and its deadline, or nothing), and the count of turns ended before it was asked.
type ReadWithChanges<V> = (Vec<Option<(V, Option<Deadline>)>>, u64);

/// A background refresh started by [`PersistentMap::refresh_every`]; dropping it stops the
/// refresh.
#[derive(Debug)]
#[must_use = "the refresh stops when this task is dropped"]
pub struct RefreshTask {
    task: tokio::task::JoinHandle<()>,
    last_error: Arc<Mutex<Option<PersistentError>>>,
}

impl RefreshTask {
    /// Takes the error of the last refresh that failed, if one failed since the last call.
    ///
    /// ```
    /// # use persistent_map::{in_memory::InMemoryBackend, PersistentMap};
    /// # persistent_map::__private::run_example(Box::pin(async {
    /// # let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// let task = map.refresh_every(std::time::Duration::from_secs(1));
    /// assert!(task.take_error().is_none());
    /// # Ok(()) }));
    /// ```
    ///
    /// A task that has stopped (a refresh panicked, in a key's `FromStr` or a value's
    /// `Deserialize`) reports that, every time it is asked.
    pub fn take_error(&self) -> Option<PersistentError> {
        let failed = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        failed.or_else(|| {
            self.task.is_finished().then(|| {
                PersistentError::Backend(
                    "the background refresh has stopped: a refresh panicked; \
                     start a new one with refresh_every"
                        .into(),
                )
            })
        })
    }
}

impl Drop for RefreshTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::oneshot;

    use super::*;
    use crate::in_memory::InMemoryBackend;

    /// An in-memory store whose `changes_since` reports `k` with the value stored when it was
    /// asked, as a backend that reads values with its changes does, and, the first time, waits
    /// for the test before answering, so that the map can write `k` in between.
    struct ReadsWithChanges {
        store: InMemoryBackend,
        asked: Mutex<Option<oneshot::Sender<()>>>,
        answer: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
        rereads: AtomicUsize,
    }

    type Store = dyn StorageBackend<String, u32> + Send + Sync;

    #[async_trait::async_trait]
    impl StorageBackend<String, u32> for ReadsWithChanges {
        async fn load_all(&self) -> Result<HashMap<String, u32>> {
            (&self.store as &Store).load_all().await
        }

        async fn save(&self, key: String, value: u32) -> Result<()> {
            (&self.store as &Store).save(key, value).await
        }

        async fn delete(&self, key: &String) -> Result<()> {
            (&self.store as &Store).delete(key).await
        }

        async fn load_keys_expiring(
            &self,
            keys: &[String],
        ) -> Result<HashMap<String, (u32, Option<Deadline>)>> {
            self.rereads.fetch_add(1, Ordering::SeqCst);
            (&self.store as &Store).load_keys_expiring(keys).await
        }

        async fn change_position(&self) -> Result<Option<ChangePosition>> {
            Ok(Some(ChangePosition::new(0)))
        }

        async fn changes_since(
            &self,
            _since: Option<ChangePosition>,
            _origin: u64,
        ) -> Result<(ExternalChanges<String, u32>, Option<ChangePosition>)> {
            let stored = self.load_all().await?.remove("k");
            let asked = self
                .asked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(asked) = asked {
                let _ = asked.send(());
            }
            if let Some(answer) = self.answer.lock().await.take() {
                let _ = answer.await;
            }
            let read = vec![("k".to_owned(), stored.map(|value| (value, None)))];
            Ok((ExternalChanges::Entries(read), Some(ChangePosition::new(1))))
        }
    }

    #[tokio::test]
    async fn values_read_with_the_changes_never_go_over_a_newer_write_of_the_map() {
        let (asked, read) = oneshot::channel();
        let (answer, answered) = oneshot::channel();
        let backend = ReadsWithChanges {
            store: InMemoryBackend::new(),
            asked: Mutex::new(Some(asked)),
            answer: tokio::sync::Mutex::new(Some(answered)),
            rereads: AtomicUsize::new(0),
        };
        let map = PersistentMap::new(backend).await.unwrap();
        map.insert("k".to_owned(), 1).await.unwrap();

        let refreshing = tokio::spawn({
            let map = map.clone();
            async move { map.refresh().await }
        });
        read.await.unwrap(); // the refresh has read k = 1
        map.insert("k".to_owned(), 2).await.unwrap();
        answer.send(()).unwrap();
        assert!(refreshing.await.unwrap().unwrap());
        assert_eq!(
            map.get("k"),
            Some(2),
            "the older value read was not applied"
        );
        assert_eq!(
            map.backend().rereads.load(Ordering::SeqCst),
            1,
            "k was read again"
        );

        // With no write in between, what was read is applied as it is.
        assert!(map.refresh().await.unwrap());
        assert_eq!(map.get("k"), Some(2));
        assert_eq!(map.backend().rereads.load(Ordering::SeqCst), 1);
    }
}
