//! Change announcements: the `NOTIFY` payloads a commit sends, and what a listening instance
//! keeps of the ones it hears until its map refreshes.
//!
//! The payload format (documented for users in the module docs of `postgres`):
//!
//! - `k:<key text>`: the row of that key was inserted, updated or deleted;
//! - `reload`: anything may have changed (a clear, a batch of many keys, a key too long to fit
//!   in a payload); any payload that is not `k:...` is read as `reload` too.
//!
//! The channel is the table's name. The sender is not in the payload: PostgreSQL tells every
//! listener the process id of the backend that sent the notification, and an instance sends its
//! notifications from the same connection it listens on, so it recognises its own by that id.

use std::collections::HashSet;
use std::mem;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The payload meaning "reload everything".
pub(super) const RELOAD: &str = "reload";

/// The prefix of a payload naming one key.
const KEY_PREFIX: &str = "k:";

/// PostgreSQL refuses payloads of 8000 bytes or more.
const MAX_PAYLOAD_BYTES: usize = 7999;

/// A commit that changes more keys than this announces one `reload` instead of every key: each
/// other instance then reloads once rather than re-reading the keys one notification at a time.
pub(super) const MAX_ANNOUNCED_KEYS: usize = 1024;

/// An instance that has heard of more changed keys than this before refreshing forgets them and
/// reloads everything, so a map that is never refreshed does not collect keys without bound.
const MAX_PENDING_KEYS: usize = 16 * 1024;

/// The payloads that announce a commit changing `keys` (or everything, if `cleared`).
pub(super) fn payloads<'a>(
    cleared: bool,
    keys: impl ExactSizeIterator<Item = &'a str>,
) -> Vec<String> {
    if cleared || keys.len() > MAX_ANNOUNCED_KEYS {
        return vec![RELOAD.to_owned()];
    }
    let mut reload = false;
    let mut payloads = Vec::with_capacity(keys.len());
    for key in keys {
        if KEY_PREFIX.len() + key.len() <= MAX_PAYLOAD_BYTES {
            payloads.push(format!("{KEY_PREFIX}{key}"));
        } else if !reload {
            reload = true;
            payloads.push(RELOAD.to_owned());
        }
    }
    payloads
}

/// What one payload announces.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Announced<'a> {
    Key(&'a str),
    Reload,
}

pub(super) fn parse_payload(payload: &str) -> Announced<'_> {
    match payload.strip_prefix(KEY_PREFIX) {
        Some(key) => Announced::Key(key),
        None => Announced::Reload,
    }
}

/// What has been heard since the map last asked, shared by the backend and the tasks that read
/// the connections.
#[derive(Debug, Default)]
pub(super) struct Changes {
    heard: Mutex<Heard>,
    /// Wakes [`StorageBackend::external_change_signal`](crate::StorageBackend::external_change_signal).
    signal: Notify,
}

#[derive(Debug, Default)]
struct Heard {
    keys: HashSet<String>,
    reload: bool,
    /// The connection that is current; a lost connection only counts if it is this one.
    generation: u64,
    /// Why the current connection is gone and since when, while it is.
    lost: Option<(String, Instant)>,
}

/// What [`Changes::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Taken {
    Nothing,
    Keys(Vec<String>),
    Everything,
    /// The connection is down (with why, and for how long): changes cannot be heard now.
    Disconnected(String, Duration),
}

impl Changes {
    /// Records a payload sent by another instance.
    pub(super) fn heard(&self, payload: &str) {
        let mut heard = self.lock();
        match parse_payload(payload) {
            Announced::Key(_) if heard.reload => {}
            Announced::Key(key) => {
                heard.keys.insert(key.to_owned());
                if heard.keys.len() > MAX_PENDING_KEYS {
                    heard.keys = HashSet::new();
                    heard.reload = true;
                }
            }
            Announced::Reload => {
                heard.keys = HashSet::new();
                heard.reload = true;
            }
        }
        drop(heard);
        self.signal.notify_one();
    }

    /// Connection `generation` is up and listening. Everything committed while no connection
    /// listened is unknown, so the next refresh reloads (`reload`); the first connection of a
    /// backend is established before the map's first load, so it needs none.
    pub(super) fn connected(&self, generation: u64, reload: bool) {
        let mut heard = self.lock();
        heard.generation = generation;
        heard.lost = None;
        heard.reload |= reload;
        drop(heard);
        if reload {
            self.signal.notify_one();
        }
    }

    /// Connection `generation` is gone; ignored if a newer one is already up.
    pub(super) fn lost(&self, generation: u64, reason: String) {
        let mut heard = self.lock();
        if heard.generation == generation && heard.lost.is_none() {
            heard.lost = Some((reason, Instant::now()));
            drop(heard);
            self.signal.notify_one();
        }
    }

    /// Takes what was heard. While the connection is down nothing is taken: the reload that the
    /// reconnection will ask for covers it.
    pub(super) fn take(&self) -> Taken {
        let mut heard = self.lock();
        if let Some((reason, since)) = &heard.lost {
            return Taken::Disconnected(reason.clone(), since.elapsed());
        }
        if mem::take(&mut heard.reload) {
            heard.keys = HashSet::new();
            return Taken::Everything;
        }
        if heard.keys.is_empty() {
            return Taken::Nothing;
        }
        Taken::Keys(mem::take(&mut heard.keys).into_iter().collect())
    }

    /// Why the connection is down and for how long, while it is.
    pub(super) fn disconnected(&self) -> Option<(String, Duration)> {
        let heard = self.lock();
        let (reason, since) = heard.lost.as_ref()?;
        Some((reason.clone(), since.elapsed()))
    }

    /// A refresh that took changes failed before applying them: ask for a full reload next time.
    pub(super) fn reload_later(&self) {
        self.lock().reload = true;
    }

    /// Resolves once something was heard (or the connection changed) since the last wake-up.
    pub(super) async fn signalled(&self) {
        self.signal.notified().await;
    }

    fn lock(&self) -> MutexGuard<'_, Heard> {
        self.heard.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_keys_and_fall_back_to_reload() {
        assert_eq!(payloads(false, ["a", ""].into_iter()), ["k:a", "k:"]);
        assert_eq!(payloads(true, ["a"].into_iter()), [RELOAD]);
        let long = "x".repeat(MAX_PAYLOAD_BYTES);
        let fits = "y".repeat(MAX_PAYLOAD_BYTES - KEY_PREFIX.len());
        assert_eq!(
            payloads(false, [long.as_str(), "b", long.as_str()].into_iter()),
            [RELOAD, "k:b"]
        );
        assert_eq!(
            payloads(false, [fits.as_str()].into_iter())[0].len(),
            MAX_PAYLOAD_BYTES
        );
        let many: Vec<String> = (0..=MAX_ANNOUNCED_KEYS).map(|i| i.to_string()).collect();
        assert_eq!(payloads(false, many.iter().map(String::as_str)), [RELOAD]);
    }

    #[test]
    fn payloads_parse_back() {
        assert_eq!(parse_payload("k:a:b"), Announced::Key("a:b"));
        assert_eq!(parse_payload("k:"), Announced::Key(""));
        assert_eq!(parse_payload(RELOAD), Announced::Reload);
        assert_eq!(parse_payload("something else"), Announced::Reload);
    }

    #[test]
    fn heard_keys_are_taken_once_and_a_reload_swallows_them() {
        let changes = Changes::default();
        assert_eq!(changes.take(), Taken::Nothing);
        changes.heard("k:a");
        changes.heard("k:a");
        assert_eq!(changes.take(), Taken::Keys(vec!["a".to_owned()]));
        assert_eq!(changes.take(), Taken::Nothing);
        changes.heard("k:a");
        changes.heard(RELOAD);
        changes.heard("k:b");
        assert_eq!(changes.take(), Taken::Everything);
        assert_eq!(changes.take(), Taken::Nothing);
    }

    #[test]
    fn a_lost_connection_reports_until_the_next_one_asks_for_a_reload() {
        let changes = Changes::default();
        changes.connected(1, false);
        changes.lost(1, "gone".to_owned());
        assert!(matches!(changes.take(), Taken::Disconnected(reason, _) if reason == "gone"));
        assert_eq!(
            changes.disconnected().map(|(reason, _)| reason).as_deref(),
            Some("gone")
        );
        changes.connected(2, true);
        changes.lost(1, "late news of the old connection".to_owned());
        assert_eq!(changes.take(), Taken::Everything);
        assert_eq!(changes.take(), Taken::Nothing);
        assert_eq!(changes.disconnected(), None);
    }

    #[test]
    fn too_many_heard_keys_become_a_reload() {
        let changes = Changes::default();
        for i in 0..=MAX_PENDING_KEYS {
            changes.heard(&format!("k:{i}"));
        }
        assert_eq!(changes.take(), Taken::Everything);
    }
}
