//! Writes that finish even when their caller stops waiting.
//!
//! Between the backend's `Ok` and the change in memory there is an await (the backend's reply),
//! and a caller may drop its future right there: a `select!` that took another arm, a timeout,
//! a runtime shutting down. Stopping then would leave a commit on disk that memory never sees.
//! So a write is wrapped in [`CompleteOnDrop`]: dropped unfinished, it hands the rest of the
//! write to a tokio task, or, where no runtime can take it, to a thread of its own. (Spawning
//! every write up front would give the same guarantee at the cost of a task and an extra
//! wake-up per write.)

use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// Runs `write`, which the caller awaits, to completion even if the caller stops waiting.
pub(crate) fn run_to_completion<F>(write: F) -> CompleteOnDrop<F>
where
    F: Future + Send + 'static,
{
    CompleteOnDrop {
        write: Some(Box::pin(write)),
    }
}

/// The future of [`run_to_completion`].
pub(crate) struct CompleteOnDrop<F: Future + Send + 'static> {
    write: Option<Pin<Box<F>>>,
}

impl<F: Future + Send + 'static> Future for CompleteOnDrop<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        poll_slot(&mut self.write, cx)
    }
}

impl<F: Future + Send + 'static> Drop for CompleteOnDrop<F> {
    fn drop(&mut self) {
        let Some(write) = self.write.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            // A task, on the caller's runtime, so that a backend whose I/O belongs to that
            // runtime can go on using it. If the runtime is shutting down and drops the task
            // unfinished, `Finish` moves the write to a thread.
            Ok(runtime) => drop(runtime.spawn(Finish {
                write: Some(crate::tasks::task(discard_output(write))),
            })),
            Err(_) => finish_on_thread(crate::tasks::task(discard_output(write))),
        }
    }
}

/// The rest of `write`, whose outcome nobody waits for any more.
async fn discard_output<F: Future>(write: Pin<Box<F>>) {
    write.await;
}

/// The rest of an abandoned write, as a task (its type erased: see `tasks`).
struct Finish {
    write: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Future for Finish {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Nobody waits for the outcome any more; finishing the write is what matters.
        poll_slot(&mut self.write, cx)
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(write) = self.write.take() {
            finish_on_thread(write);
        }
    }
}

/// Polls the future in `slot`, emptying the slot once it is done, or if it panicked: a panicked
/// future must not be polled again, which finishing it on drop would do.
fn poll_slot<F: Future + ?Sized>(
    slot: &mut Option<Pin<Box<F>>>,
    cx: &mut Context<'_>,
) -> Poll<F::Output> {
    let write = slot
        .as_mut()
        .expect("a write is not polled after it completed");
    match catch_unwind(AssertUnwindSafe(|| write.as_mut().poll(cx))) {
        Ok(Poll::Pending) => Poll::Pending,
        Ok(Poll::Ready(output)) => {
            *slot = None;
            Poll::Ready(output)
        }
        Err(panic) => {
            *slot = None;
            resume_unwind(panic)
        }
    }
}

/// Finishes `write` on a new thread, polling it there: with no runtime to run it (none is
/// current, or it is shutting down), the writes of this crate need none. A write whose own
/// code panics there ends that thread only.
fn finish_on_thread(write: Pin<Box<dyn Future<Output = ()> + Send>>) {
    let spawned = std::thread::Builder::new()
        .name("persistent-map-finish".into())
        .spawn(move || block_on(write));
    // No thread to be had: nothing is left that could finish the write.
    drop(spawned);
}

/// Polls `future` to completion on this thread, parking it between wake-ups.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_write_abandoned_outside_any_runtime_finishes_on_a_thread() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&finished);
        let mut write = Box::pin(run_to_completion(async move {
            let _ = released.await;
            done.store(true, Ordering::SeqCst);
        }));
        let waker = Waker::from(Arc::new(NoWake));
        assert!(write
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        drop(write);
        release.send(()).unwrap();
        for _ in 0..200 {
            if finished.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the abandoned write never finished");
    }

    #[test]
    fn a_panicking_write_panics_once() {
        let mut write = Box::pin(run_to_completion(async { panic!("boom") }));
        let waker = Waker::from(Arc::new(NoWake));
        let poll = catch_unwind(AssertUnwindSafe(|| {
            let _ = write.as_mut().poll(&mut Context::from_waker(&waker));
        }));
        assert!(poll.is_err());
        // Dropped after its panic, it must not be handed on (and so polled again).
        assert!(write.write.is_none());
    }

    struct NoWake;
    impl Wake for NoWake {
        fn wake(self: Arc<Self>) {}
    }
}
