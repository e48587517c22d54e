//! Tasks, blocking work and threads started with their types erased.
//!
//! tokio's task machinery (the harness, the cell, the unwinding around each poll) is generic
//! over the task it runs, and so is `std::thread`'s. Spawned as they are, the map's own futures
//! and closures, which are generic over the key and value types, would have that machinery
//! compiled again for every key and value type a program uses (a hundred-odd functions per
//! spawn site and type). Boxed as trait objects, they share one copy: a program, and a test
//! binary, compile a quarter less of the map's code per map type, for one allocation per spawn
//! (tokio allocates a task anyway).

use std::future::Future;
use std::pin::Pin;

use tokio::task::{JoinError, JoinHandle};

use crate::PersistentError;

/// A task's future, its type erased.
type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Blocking work, its type erased.
type Work = Box<dyn FnOnce() + Send + 'static>;

/// Erases `task`'s type (see the module's docs).
pub(crate) fn task(task: impl Future<Output = ()> + Send + 'static) -> Task {
    Box::pin(task)
}

/// `tokio::spawn`, with the task's type erased.
pub(crate) fn spawn(work: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(task(work))
}

/// `tokio::task::spawn_blocking`, with the work's type erased. The work starts at once (the
/// returned future only waits for it), and a panic in it comes back as the `JoinError`, as
/// tokio's does.
pub(crate) fn spawn_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = Result<T, JoinError>> + Send + 'static {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let work: Work = Box::new(move || drop(sender.send(work())));
    let done = tokio::task::spawn_blocking(work);
    async move {
        done.await?;
        // The work returned, so it sent its result, and the receiver was here to take it.
        Ok(receiver
            .await
            .expect("blocking work that returned sent its result"))
    }
}

/// [`spawn_blocking`], awaited: a panic in `work` is resumed in the caller, and work that the
/// runtime dropped unstarted (it is shutting down) is a [`PersistentError::Backend`].
pub(crate) async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PersistentError> {
    spawn_blocking(work)
        .await
        .map_err(|join_error| match join_error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(cancelled) => PersistentError::Backend(cancelled.into()),
        })
}

/// Runs `work` on a new scoped thread named `name`, its type erased; `None` if no thread can be
/// had. The caller joins the handle, then reads what `work` left in its own variables.
pub(crate) fn spawn_scoped<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    name: &str,
    work: impl FnOnce() + Send + 'scope,
) -> Option<std::thread::ScopedJoinHandle<'scope, ()>> {
    let work: Box<dyn FnOnce() + Send + 'scope> = Box::new(work);
    std::thread::Builder::new()
        .name(name.into())
        .spawn_scoped(scope, work)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blocking_work_returns_its_result_and_its_panic() {
        assert_eq!(spawn_blocking(|| 7).await.unwrap(), 7);
        let panicked = spawn_blocking(|| -> u8 { panic!("boom") }).await;
        assert!(panicked.unwrap_err().is_panic());
    }

    #[tokio::test]
    async fn blocking_work_runs_without_being_awaited() {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        drop(spawn_blocking(move || sender.send(1)));
        assert_eq!(receiver.await.unwrap(), 1);
    }
}
