//! Change announcements: the `NOTIFY` a commit sends to wake the other instances, and what a
//! listening instance keeps of what it hears.
//!
//! What changed is not in the announcement: every commit logs its keys in
//! `persistent_map_log` (see `log.rs`), and a map reads the log from its own position when it
//! refreshes. The announcement only says "read the log now", so a lost or dropped announcement
//! costs nothing but time: the next refresh reads the same log.
//!
//! The payload (documented for users in the module docs of `postgres`):
//!
//! - `changed`: a commit of this crate, logged;
//! - anything else (`reload`, or the `k:<key>` of versions before the log): something that was
//!   not logged may have changed, so every map on the table reloads it at its next refresh.
//!
//! The channel is the table's name. The sender is not in the payload: PostgreSQL tells every
//! listener the process id of the backend that sent the notification, and a process sends its
//! notifications from the same connection it listens on, so it recognises its own by that id.
//! The other backends of the process on that table do not hear them, so the session wakes them
//! itself after each commit ([`Listeners::committed`]). It does not wake a backend whose own
//! writes were all the commit wrote to the table: its map would read nothing but its own writes,
//! which the log leaves out, and on a shared connection that read would queue before the reads
//! of the maps that do have news. Every [`WAKE_WRITERS_EVERY_COMMITS`] commits it wakes them too,
//! so that a map that only writes still moves its position along the log, far from what is
//! pruned.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::Notify;

/// The payload of a commit of this crate: its keys are in the log.
pub(super) const CHANGED: &str = "changed";

/// Every this many commits of a session, a commit wakes its sole writer too (see the module
/// docs): far fewer than the log's kept revisions.
pub(super) const WAKE_WRITERS_EVERY_COMMITS: u64 = 256;

/// What has been heard, shared by the backend and the tasks that read the connections.
#[derive(Debug, Default)]
pub(super) struct Changes {
    heard: Mutex<Heard>,
    /// Wakes [`StorageBackend::external_change_signal`](crate::StorageBackend::external_change_signal).
    signal: Notify,
}

#[derive(Debug, Default)]
struct Heard {
    /// Moves whenever the maps must reload instead of reading the log: an announcement of an
    /// unlogged change, a commit whose outcome is unknown. A map's position records the epoch
    /// it was taken in, so a refresh that is dropped before it reloads reloads next time.
    epoch: u32,
}

impl Changes {
    /// Records a payload sent by another instance.
    pub(super) fn heard(&self, payload: &str) {
        if payload != CHANGED {
            self.reload_later();
        }
        self.signal.notify_one();
    }

    /// Makes every map on the table reload at its next refresh (see [`Heard::epoch`]).
    pub(super) fn reload_later(&self) {
        let mut heard = self.lock();
        heard.epoch = heard.epoch.wrapping_add(1);
    }

    /// The current epoch: a position taken in another one is answered with a reload.
    pub(super) fn epoch(&self) -> u32 {
        self.lock().epoch
    }

    /// Wakes the map's background refresh.
    pub(super) fn wake(&self) {
        self.signal.notify_one();
    }

    /// Resolves once something was heard (or the connection changed) since the last wake-up.
    pub(super) async fn signalled(&self) {
        self.signal.notified().await;
    }

    fn lock(&self) -> MutexGuard<'_, Heard> {
        self.heard.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Who listens on a shared connection: the [`Changes`] of every backend using it, by channel
/// (table name). Shared by the session and the task that reads the connection's messages.
#[derive(Debug, Default)]
pub(super) struct Listeners {
    channels: Mutex<HashMap<String, Vec<Weak<Changes>>>>,
}

impl Listeners {
    /// Adds a backend's `changes` on `channel`; forgets backends that are gone.
    pub(super) fn add(&self, channel: &str, changes: &Arc<Changes>) {
        let mut channels = self.lock();
        channels.retain(|_, listeners| {
            listeners.retain(|listener| listener.strong_count() > 0);
            !listeners.is_empty()
        });
        channels
            .entry(channel.to_owned())
            .or_default()
            .push(Arc::downgrade(changes));
    }

    /// Another process's `payload` on `channel`.
    pub(super) fn heard(&self, channel: &str, payload: &str) {
        self.each_on(channel, |changes| changes.heard(payload));
    }

    /// This process committed to `channel`: the other backends on it do not hear the `NOTIFY`
    /// (it comes from their own session), so they are woken here, all but `sole_writer` (the
    /// backend that wrote everything the commit wrote to `channel`, if one did).
    pub(super) fn committed(&self, channel: &str, sole_writer: Option<&Changes>) {
        self.each_on(channel, |changes| {
            if !sole_writer.is_some_and(|writer| std::ptr::eq(writer, changes)) {
                changes.wake();
            }
        });
    }

    /// The connection was lost or re-established: every map is woken, to read what it missed
    /// from the log once it is back (the connection's state is the session's `Link`).
    pub(super) fn connection_changed(&self) {
        self.each(Changes::wake);
    }

    /// A commit's outcome is unknown: every map on `channel` reloads at its next refresh.
    pub(super) fn reload_later(&self, channel: &str) {
        self.each_on(channel, Changes::reload_later);
    }

    fn each_on(&self, channel: &str, mut action: impl FnMut(&Changes)) {
        let listeners: Vec<Arc<Changes>> = self
            .lock()
            .get(channel)
            .map(|listeners| listeners.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default();
        listeners.iter().for_each(|changes| action(changes));
    }

    fn each(&self, mut action: impl FnMut(&Changes)) {
        let listeners: Vec<Arc<Changes>> = self
            .lock()
            .values()
            .flatten()
            .filter_map(Weak::upgrade)
            .collect();
        listeners.iter().for_each(|changes| action(changes));
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Weak<Changes>>>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_announcements_of_unlogged_changes_move_the_epoch() {
        let changes = Changes::default();
        let start = changes.epoch();
        changes.heard(CHANGED);
        assert_eq!(changes.epoch(), start);
        changes.heard("reload");
        assert_ne!(changes.epoch(), start);
        let after_reload = changes.epoch();
        changes.heard("k:a");
        assert_ne!(changes.epoch(), after_reload);
    }

    #[tokio::test]
    async fn a_commit_wakes_every_backend_on_its_table_but_its_sole_writer() {
        let listeners = Listeners::default();
        let (writer, other) = (Arc::new(Changes::default()), Arc::new(Changes::default()));
        listeners.add("t", &writer);
        listeners.add("t", &other);
        let woken = |changes: &Changes| {
            let signalled = changes.signalled();
            futures_util::FutureExt::now_or_never(signalled).is_some()
        };
        listeners.committed("t", Some(&writer));
        assert!(woken(&other));
        assert!(!woken(&writer));
        listeners.committed("t", None);
        assert!(woken(&other) && woken(&writer));
    }

    #[test]
    fn listeners_hear_their_channel_and_every_connection_change() {
        let listeners = Listeners::default();
        let (a, b) = (Arc::new(Changes::default()), Arc::new(Changes::default()));
        listeners.add("t", &a);
        listeners.add("u", &b);
        listeners.heard("t", "reload");
        assert_ne!(a.epoch(), 0);
        assert_eq!(b.epoch(), 0);
        let woken = |changes: &Changes| {
            futures_util::FutureExt::now_or_never(changes.signalled()).is_some()
        };
        listeners.connection_changed();
        assert!(woken(&a) && woken(&b));
        drop(b);
        listeners.add("t", &a);
        assert_eq!(
            listeners.lock().len(),
            1,
            "a backend that is gone is forgotten"
        );
    }
}
