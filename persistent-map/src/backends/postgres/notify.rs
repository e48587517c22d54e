//! Change announcements: the `NOTIFY` a commit sends to wake the other instances, and what a
//! listening instance keeps of what it hears.
//!
//! Every commit logs its keys in `persistent_map_log` under the table's next revision (see
//! `log.rs`), and a map catches up by reading the log from its own position. The announcement
//! also carries what the commit wrote, when it fits in a notification, so that a map whose
//! position is just before the revisions it heard applies them without asking the server (a
//! round trip saved on every propagation). What it heard is only a shortcut: a revision it did
//! not hear (a lost notification, one too large to carry its writes, a clear), is read from the
//! log, which says the same.
//!
//! The payload (documented for users in the module docs of `postgres`):
//!
//! - `c<rev>:<writes>`: a commit of this crate, logged as revision `rev`, that wrote `writes`, a
//!   JSON array of `[key, value JSON text or null for a delete, deadline in Unix ms or null,
//!   origin]`, the last write of each key;
//! - `c<rev>`: the same, too large to carry its writes (or a clear);
//! - `changed`: a commit of this crate, logged (what versions before the writes were carried
//!   sent);
//! - anything else (`reload`, or the `k:<key>` of versions before the log): something that was
//!   not logged may have changed, so every map on the table reloads it at its next refresh.
//!
//! PostgreSQL delivers a table's notifications in the order their transactions committed,
//! which is the order of their revisions, and [`Changes::announced_since`] only answers for an
//! unbroken run of revisions from the asking map's position.
//!
//! The channel is the table's name. The sender is not in the payload: PostgreSQL tells every
//! listener the process id of the backend that sent the notification, and a process sends its
//! notifications from the same connection it listens on, so it recognises its own by that id.
//! Its own commits' writes are recorded by the session itself, before it acknowledges them
//! ([`Listeners::committed`]), so that a run of revisions heard includes them. The other
//! backends of the process on that table do not hear them either, so the session wakes them
//! itself after each commit. It does not wake a backend whose own writes were all the commit
//! wrote to the table: its map would read nothing but its own writes, which the log leaves out,
//! and on a shared connection that read would queue before the reads of the maps that do have
//! news. Every [`WAKE_WRITERS_EVERY_COMMITS`] commits it wakes them too, so that a map that only
//! writes still moves its position along the log, far from what is pruned.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::Notify;

use super::log::Logged;
use super::session::RawRow;

/// The payload of a commit of this crate by a version that did not carry its writes: its keys
/// are in the log.
pub(super) const CHANGED: &str = "changed";

/// The most bytes of writes a payload carries: PostgreSQL takes payloads of under 8,000 bytes.
pub(super) const MAX_CARRIED_BYTES: usize = 7_900;

/// The revisions whose writes a backend keeps, the newest: a map that falls further behind
/// reads the log. (At most about 2 MB of writes.)
const REVISIONS_HEARD: usize = 256;

/// A commit's writes as carried by its payload: key, value JSON text and deadline (`None`:
/// deleted), origin.
type Carried = (String, Option<String>, Option<i64>, i64);

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
    /// The writes of the latest revisions heard, by revision.
    revisions: BTreeMap<i64, Arc<Vec<Carried>>>,
}

/// What a payload says, read once for every backend on its channel.
#[derive(Debug)]
enum Announcement {
    /// A logged commit, revision and writes.
    Carried(i64, Arc<Vec<Carried>>),
    /// A logged commit whose writes are not here (too large, a clear, an older version's
    /// `changed`, or writes that do not parse): the log has them.
    Logged,
    /// Something that was not logged may have changed.
    Unlogged,
}

impl Announcement {
    fn parse(payload: &str) -> Self {
        match parse_commit(payload) {
            Some((rev, writes)) => Self::of_commit(rev, writes),
            None if payload == CHANGED => Announcement::Logged,
            None => Announcement::Unlogged,
        }
    }

    /// Revision `rev`, which wrote `writes` (a payload's JSON, or `""` if it carried none).
    fn of_commit(rev: i64, writes: &str) -> Self {
        match serde_json::from_str(writes) {
            Ok(writes) => Announcement::Carried(rev, Arc::new(writes)),
            Err(_) => Announcement::Logged,
        }
    }
}

impl Changes {
    /// Records what another instance announced, and wakes the map.
    fn heard(&self, announcement: &Announcement) {
        match announcement {
            Announcement::Carried(..) => self.record(announcement),
            Announcement::Logged => {}
            Announcement::Unlogged => self.reload_later(),
        }
        self.signal.notify_one();
    }

    /// Keeps the writes a commit's announcement carried; nothing for any other announcement.
    fn record(&self, announcement: &Announcement) {
        let Announcement::Carried(rev, writes) = announcement else {
            return;
        };
        let mut heard = self.lock();
        heard.revisions.insert(*rev, Arc::clone(writes));
        while heard.revisions.len() > REVISIONS_HEARD {
            heard.revisions.pop_first();
        }
    }

    /// What the revisions heard after `since` say changed, as the log would: the keys written
    /// by others than `origin`, with the last value written under each (`None`: deleted, or
    /// expired by `now`), sorted; and the revision that brings the map to. `None` if the
    /// revision after `since` was not heard (the log must be read).
    pub(super) fn announced_since(
        &self,
        since: i64,
        origin: i64,
        now: i64,
    ) -> Option<(i64, Logged)> {
        let heard = self.lock();
        let mut rev = since;
        let mut last: BTreeMap<&str, (Option<RawRow>, bool)> = BTreeMap::new();
        for (&at, writes) in heard.revisions.range(since.checked_add(1)?..) {
            if at != rev + 1 {
                break;
            }
            rev = at;
            for (key, value, deadline, by) in writes.iter() {
                let live = deadline.is_none_or(|deadline| deadline > now);
                let row = value
                    .as_ref()
                    .filter(|_| live)
                    .map(|value| (key.clone(), Some(value.clone()), *deadline));
                let (slot, by_others) = last.entry(key).or_insert((None, false));
                *slot = row;
                *by_others |= *by != origin;
            }
        }
        if rev == since {
            return None;
        }
        let changed = last
            .into_iter()
            .filter(|(_, (_, by_others))| *by_others)
            .map(|(key, (row, _))| (key.to_owned(), row))
            .collect();
        Some((rev, Logged::Entries(changed)))
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

/// A commit's payload, `c<rev>` or `c<rev>:<writes>`, as the revision and the writes (`""` if
/// it carries none).
fn parse_commit(payload: &str) -> Option<(i64, &str)> {
    let rest = payload.strip_prefix('c')?;
    let (rev, writes) = rest.split_once(':').unwrap_or((rest, ""));
    Some((rev.parse().ok()?, writes))
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
        let announcement = Announcement::parse(payload);
        self.each_on(channel, |changes| changes.heard(&announcement));
    }

    /// This process committed `writes` (as its payload carried them, or `""`) to `channel` as
    /// revision `rev`: recorded for every backend on it, as if heard. The other backends do not
    /// hear the `NOTIFY` (it comes from their own session), so they are woken here, all but
    /// `sole_writer` (the backend that wrote everything the commit wrote to `channel`, if one
    /// did).
    pub(super) fn committed(
        &self,
        channel: &str,
        (rev, writes): (i64, &str),
        sole_writer: Option<&Changes>,
    ) {
        let announcement = Announcement::of_commit(rev, writes);
        self.each_on(channel, |changes| {
            changes.record(&announcement);
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
        changes.heard(&Announcement::parse(CHANGED));
        assert_eq!(changes.epoch(), start);
        changes.heard(&Announcement::parse("reload"));
        assert_ne!(changes.epoch(), start);
        let after_reload = changes.epoch();
        changes.heard(&Announcement::parse("k:a"));
        assert_ne!(changes.epoch(), after_reload);
    }

    /// The announcement of revision `rev` carrying `writes` (key, value or `None`, origin), as
    /// its payload is read.
    fn announced(rev: i64, writes: &[(&str, Option<&str>, i64)]) -> Announcement {
        let writes: Vec<Carried> = writes
            .iter()
            .map(|&(key, value, origin)| (key.into(), value.map(Into::into), None, origin))
            .collect();
        Announcement::parse(&format!(
            "c{rev}:{}",
            serde_json::to_string(&writes).unwrap()
        ))
    }

    fn row(key: &str, value: &str) -> Option<RawRow> {
        Some((key.into(), Some(value.into()), None))
    }

    #[test]
    fn a_run_of_revisions_heard_answers_as_the_log_would() {
        let changes = Changes::default();
        changes.heard(&announced(5, &[("a", Some("1"), 7), ("b", Some("1"), 7)]));
        changes.heard(&announced(6, &[("a", Some("2"), 8)]));
        changes.heard(&announced(7, &[("b", None, 7), ("c", Some("3"), 9)]));
        // Map 7 at revision 4: the keys others wrote (a, c), each with its last value; b was
        // written by 7 alone, so it is not news to 7.
        let (rev, changed) = changes.announced_since(4, 7, 0).unwrap();
        assert_eq!(rev, 7);
        assert_eq!(
            changed,
            Logged::Entries(vec![
                ("a".into(), row("a", "2")),
                ("c".into(), row("c", "3"))
            ])
        );
        // Map 8 at revision 5: a's last write is its own, b was deleted by 7.
        let (rev, changed) = changes.announced_since(5, 8, 0).unwrap();
        assert_eq!(rev, 7);
        assert_eq!(
            changed,
            Logged::Entries(vec![("b".into(), None), ("c".into(), row("c", "3"))])
        );
        // Nothing heard after the position: ask the server.
        assert!(changes.announced_since(7, 8, 0).is_none());
        // A revision before the run was not heard: ask the server.
        assert!(changes.announced_since(3, 8, 0).is_none());
    }

    #[test]
    fn a_revision_not_heard_ends_the_run() {
        let changes = Changes::default();
        changes.heard(&announced(1, &[("a", Some("1"), 1)]));
        changes.heard(&Announcement::parse("c2")); // too large to carry its writes
        changes.heard(&announced(3, &[("a", Some("3"), 1)]));
        changes.heard(&Announcement::parse("changed"));
        assert_eq!(
            changes.epoch(),
            0,
            "announcements of logged commits keep the epoch"
        );
        let (rev, changed) = changes.announced_since(0, 2, 0).unwrap();
        let entries = Logged::Entries(vec![("a".into(), row("a", "1"))]);
        assert_eq!((rev, changed), (1, entries));
        assert!(changes.announced_since(1, 2, 0).is_none());
        assert!(changes.announced_since(2, 2, 0).is_some());
        // Writes that do not parse are not taken either.
        changes.heard(&Announcement::parse("c4:[[\"a\""));
        assert_eq!(changes.announced_since(2, 2, 0).unwrap().0, 3);
    }

    #[test]
    fn a_value_whose_deadline_has_passed_is_absent() {
        let changes = Changes::default();
        let writes = r#"[["a","1",1000,1],["b","2",3000,1]]"#;
        changes.heard(&Announcement::of_commit(1, writes));
        let (_, changed) = changes.announced_since(0, 2, 2000).unwrap();
        assert_eq!(
            changed,
            Logged::Entries(vec![
                ("a".into(), None),
                ("b".into(), Some(("b".into(), Some("2".into()), Some(3000))))
            ])
        );
    }

    #[test]
    fn only_the_latest_revisions_are_kept() {
        let changes = Changes::default();
        for rev in 1..=(REVISIONS_HEARD as i64 + 10) {
            changes.heard(&Announcement::of_commit(rev, "[]"));
        }
        assert!(changes.announced_since(0, 1, 0).is_none());
        assert!(changes.announced_since(10, 1, 0).is_some());
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
        listeners.committed("t", (1, ""), Some(&writer));
        assert!(woken(&other));
        assert!(!woken(&writer));
        listeners.committed("t", (2, r#"[["k","1",null,3]]"#), None);
        assert!(woken(&other) && woken(&writer));
        // Both recorded the commit's writes, as if heard.
        for changes in [&writer, &other] {
            let (rev, changed) = changes.announced_since(1, 4, 0).unwrap();
            let entries = Logged::Entries(vec![("k".into(), row("k", "1"))]);
            assert_eq!((rev, changed), (2, entries));
        }
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
