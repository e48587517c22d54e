//! The state of a session's connection as work would meet it now, shared by the session, the
//! task that reads the connection, and every backend on the session: what
//! [`PostgresBackend::health`](super::PostgresBackend::health) reports, what makes new work fail
//! at once, and the log of its changes (one event per connection, not per table).
//!
//! - **Connected**: the connection is up, and the attempt in flight (if any) was answered in
//!   time so far.
//! - **Stalled**: the connection is up but the attempt in flight has had no answer for half the
//!   operation timeout: new work queues behind it, and fails with it if no answer comes.
//! - **Reconnecting**: the connection broke (closed, reset, terminated) less than the reconnect
//!   timeout ago; work waits for the new one, until that timeout counted from the loss.
//! - **Down**: the connection has been gone for the reconnect timeout, or the server stopped
//!   answering (an attempt outlived the operation timeout): new work fails at once with
//!   [`PersistentError::Connect`](crate::PersistentError::Connect) until a reconnection,
//!   which the session keeps trying in the background, succeeds.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::session::Timeouts;
use super::Health;

/// A session's connection state.
#[derive(Debug)]
pub(super) struct Link {
    /// The server, as events name it.
    host: String,
    timeouts: Timeouts,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The connection that is current; a loss only counts if it is this one's.
    generation: u64,
    lost: Option<Lost>,
    /// When the attempt in flight on the live connection was sent.
    in_flight: Option<Instant>,
    /// The kind of health last logged, so that each change is logged once.
    logged: Kind,
}

/// Why the connection is gone, and since when.
#[derive(Debug, Clone)]
struct Lost {
    reason: String,
    at: Instant,
    /// The server stopped answering (rather than closing): down at once, not reconnecting.
    unanswered: bool,
}

/// [`Health`] without its details, to tell changes apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Kind {
    #[default]
    Connected,
    Stalled,
    Reconnecting,
    Down,
}

impl Link {
    /// A link whose first connection (number 1) is up.
    pub(super) fn new(host: String, timeouts: Timeouts) -> Self {
        Self {
            host,
            timeouts,
            state: Mutex::new(State {
                generation: 1,
                ..State::default()
            }),
        }
    }

    /// How long an attempt may go unanswered before the connection counts as stalled.
    pub(super) fn stall_after(&self) -> Duration {
        self.timeouts.operation / 2
    }

    /// What work sent now would meet.
    pub(super) fn health(&self) -> Health {
        let state = self.lock();
        self.health_of(&state)
    }

    fn health_of(&self, state: &State) -> Health {
        if let Some(lost) = &state.lost {
            let since = lost.at.elapsed();
            let reason = lost.reason.clone();
            return match lost.unanswered || since >= self.timeouts.reconnect {
                true => Health::Down { since, reason },
                false => Health::Reconnecting { since, reason },
            };
        }
        match state.in_flight.map(|sent| sent.elapsed()) {
            Some(since) if since >= self.stall_after() => Health::Stalled {
                since,
                reason: format!("the server has not answered the work in flight for {since:?}"),
            },
            _ => Health::Connected,
        }
    }

    /// Why new work must fail at once, if the connection is down.
    pub(super) fn refusal(&self) -> Option<String> {
        match self.health() {
            Health::Down { since, reason } => Some(format!(
                "the connection has been down for {since:?} ({reason}); new work fails at once \
                 until a reconnection (tried in the background) succeeds"
            )),
            _ => None,
        }
    }

    /// Until when work that finds no connection waits for one: the reconnect timeout after the
    /// loss, or now if the server stopped answering.
    pub(super) fn wait_for_connection_until(&self) -> Instant {
        let state = self.lock();
        match &state.lost {
            Some(lost) if lost.unanswered => lost.at,
            Some(lost) => lost.at + self.timeouts.reconnect,
            None => Instant::now() + self.timeouts.reconnect,
        }
    }

    /// An attempt was sent on the live connection.
    pub(super) fn sent(&self) {
        self.lock().in_flight = Some(Instant::now());
    }

    /// The attempt in flight was answered (or given up).
    pub(super) fn answered(&self) {
        self.lock().in_flight = None;
    }

    /// Connection `generation` is up.
    pub(super) fn connected(&self, generation: u64) {
        let mut state = self.lock();
        state.generation = generation;
        state.lost = None;
        state.in_flight = None;
    }

    /// Connection `generation` is gone (`unanswered`: the server stopped answering on it);
    /// ignored if a newer one is up or its loss is already known.
    pub(super) fn lost(&self, generation: u64, reason: &str, unanswered: bool) {
        let mut state = self.lock();
        if state.generation != generation {
            return;
        }
        state.in_flight = None;
        match &mut state.lost {
            // The session's own word that the server stopped answering outranks the reader's
            // news of the close that followed.
            Some(lost) if unanswered && !lost.unanswered => {
                lost.unanswered = true;
                lost.reason = reason.to_owned();
            }
            Some(_) => {}
            None => {
                state.lost = Some(Lost {
                    reason: reason.to_owned(),
                    at: Instant::now(),
                    unanswered,
                })
            }
        }
    }

    /// A reconnect attempt failed for `reason`: the health reports it from now on.
    pub(super) fn reconnect_failed(&self, reason: &str) {
        if let Some(lost) = &mut self.lock().lost {
            lost.reason = reason.to_owned();
        }
    }

    /// Logs the health if it changed since last logged: one event for the connection, naming
    /// the `tables` it serves, at `info` when it is well again and `warn` otherwise.
    pub(super) fn log_change(&self, tables: impl FnOnce() -> String) {
        let mut state = self.lock();
        let health = self.health_of(&state);
        let kind = match &health {
            Health::Connected => Kind::Connected,
            Health::Stalled { .. } => Kind::Stalled,
            Health::Reconnecting { .. } => Kind::Reconnecting,
            Health::Down { .. } => Kind::Down,
        };
        if kind == state.logged {
            return;
        }
        let was = state.logged;
        state.logged = kind;
        drop(state);
        let (host, tables) = (&self.host, tables());
        match health {
            Health::Connected if was == Kind::Stalled => {
                tracing::info!(host = %host, tables, "the PostgreSQL server answered the stalled work")
            }
            Health::Connected => {
                tracing::info!(host = %host, tables, "reconnected to PostgreSQL; the maps catch up from the change log")
            }
            Health::Stalled { since, reason } => {
                tracing::warn!(host = %host, tables, since = ?since, reason = %reason, "the PostgreSQL connection is stalled: new work waits behind an unanswered attempt")
            }
            Health::Reconnecting { since, reason } => {
                tracing::warn!(host = %host, tables, since = ?since, reason = %reason, "lost the connection to PostgreSQL; reconnecting, work waits")
            }
            Health::Down { since, reason } => {
                tracing::warn!(host = %host, tables, since = ?since, reason = %reason, "PostgreSQL is down: new work fails at once until a reconnection succeeds")
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(reconnect: Duration, operation: Duration) -> Link {
        Link::new(
            "h:5432".into(),
            Timeouts {
                reconnect,
                operation,
            },
        )
    }

    #[test]
    fn a_closed_connection_reconnects_then_is_down_after_the_reconnect_timeout() {
        let link = link(Duration::from_millis(30), Duration::from_secs(10));
        assert_eq!(link.health(), Health::Connected);
        link.lost(1, "closed", false);
        assert!(matches!(link.health(), Health::Reconnecting { .. }));
        assert!(link.refusal().is_none());
        std::thread::sleep(Duration::from_millis(40));
        assert!(link.health().is_down());
        assert!(link.refusal().unwrap().contains("closed"));
        // News of an older connection's end does not touch the new one.
        link.connected(2);
        link.lost(1, "late news", false);
        assert_eq!(link.health(), Health::Connected);
    }

    #[test]
    fn an_unanswered_attempt_stalls_then_a_server_that_stopped_answering_is_down_at_once() {
        let link = link(Duration::from_secs(10), Duration::from_millis(20));
        link.sent();
        assert_eq!(link.health(), Health::Connected);
        std::thread::sleep(Duration::from_millis(15));
        assert!(matches!(link.health(), Health::Stalled { .. }));
        link.lost(1, "closed by the reader", false);
        link.lost(1, "no answer within the operation timeout", true);
        let Health::Down { reason, .. } = link.health() else {
            panic!("{:?}", link.health());
        };
        assert!(reason.contains("operation timeout"), "{reason}");
        assert!(link.wait_for_connection_until() <= Instant::now());
        link.connected(2);
        assert_eq!(link.health(), Health::Connected);
    }
}
