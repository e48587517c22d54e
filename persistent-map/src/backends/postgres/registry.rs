//! One connection per server and database in a process: the backends opened with the same
//! connection string and timeouts share one session (one connection, one task), as the SQLite
//! backends of one file share one writer.
//!
//! The sessions run on a runtime of their own, on one thread the crate starts the first time a
//! backend connects: a session serves backends made on any runtime, and must outlive the one it
//! happened to be started from (a `#[tokio::test]`'s, say, while other tests still use it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::{mpsc, oneshot};
use tracing::instrument::WithSubscriber;

use super::connect::{Endpoint, Target};
use super::link::Link;
use super::session::{Command, Session, Timeouts};
use crate::{PersistentError, Result};

/// A session's handle: the way to its task. The task ends, and closes the connection, once the
/// last handle is dropped.
#[derive(Debug)]
pub(super) struct SessionHandle {
    commands: mpsc::UnboundedSender<Command>,
    /// The state of the session's connection.
    pub(super) link: Arc<Link>,
}

impl SessionHandle {
    /// Sends `command` for work on `target`'s table. While the connection is down, new work
    /// fails at once with a [`PersistentError::Connect`] about `target` (and is never done
    /// later); if the session is gone, with `stopped()`. Every command goes through here, so
    /// none can queue behind a connection that is down and keep the session from reconnecting.
    pub(super) fn send(
        &self,
        target: &Target,
        command: Command,
        stopped: impl FnOnce() -> PersistentError,
    ) -> Result<()> {
        if let Some(reason) = self.link.refusal() {
            return Err(target.connect_error(reason));
        }
        self.commands.send(command).map_err(|_| stopped())
    }
}

/// Where the backends of one connection string find each other's session. Opening holds the
/// slot's lock while it connects, so two backends opened at once share one connection.
type Slot = tokio::sync::Mutex<Weak<SessionHandle>>;

static SLOTS: Mutex<Option<HashMap<String, Arc<Slot>>>> = Mutex::new(None);

/// The session for `url` with `timeouts`: the live one, or a new one connected to `endpoint`
/// (a failure to connect is reported about `target`, the backend being opened).
pub(super) async fn session(
    url: &str,
    timeouts: Timeouts,
    endpoint: Endpoint,
    target: &Target,
) -> Result<Arc<SessionHandle>> {
    let slot = slot(format!(
        "{url}\u{0}{timeouts:?}\u{0}{:?}\u{0}{:?}",
        endpoint.connect_timeout, endpoint.lock_classes
    ));
    let mut slot = slot.lock().await;
    if let Some(session) = slot.upgrade() {
        return Ok(session);
    }
    let runtime = runtime()?;
    let link = Arc::new(Link::new(endpoint.host.clone(), timeouts));
    let session_link = Arc::clone(&link);
    let (connected, connecting) = oneshot::channel();
    let target = Target {
        host: target.host.clone(),
        table: target.table.clone(),
    };
    // Whoever opened the first backend sees the session's events with their subscriber.
    runtime.spawn(
        async move {
            let session = match Session::connect(endpoint, timeouts, &target, session_link).await {
                Ok(session) => session,
                Err(error) => {
                    let _ = connected.send(Err(error));
                    return;
                }
            };
            let (commands, queue) = mpsc::unbounded_channel();
            let _ = connected.send(Ok(commands));
            session.run(queue).await;
        }
        .with_current_subscriber(),
    );
    let commands = connecting.await.map_err(|_| {
        PersistentError::Backend("the PostgreSQL session task stopped while connecting".into())
    })??;
    let session = Arc::new(SessionHandle { commands, link });
    *slot = Arc::downgrade(&session);
    Ok(session)
}

fn slot(key: String) -> Arc<Slot> {
    let mut slots = SLOTS.lock().unwrap_or_else(PoisonError::into_inner);
    let slots = slots.get_or_insert_with(HashMap::new);
    // Forget the connection strings no session uses any more.
    slots.retain(|_, slot| {
        Arc::strong_count(slot) > 1
            || slot
                .try_lock()
                .map_or(true, |session| session.strong_count() > 0)
    });
    Arc::clone(slots.entry(key).or_default())
}

/// The runtime the sessions run on, started on first use.
fn runtime() -> Result<tokio::runtime::Handle> {
    static RUNTIME: Mutex<Option<tokio::runtime::Handle>> = Mutex::new(None);
    let mut handle = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = &*handle {
        return Ok(handle.clone());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = runtime.handle().clone();
    std::thread::Builder::new()
        .name("persistent-map-postgres".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    *handle = Some(started.clone());
    Ok(started)
}
