//! The writer thread's inbox: a queue under a mutex, and a condition variable the writer sleeps
//! on.
//!
//! `std::sync::mpsc` spins and yields for a while before it parks a receiver. The writer waits
//! for its writers' next requests after every commit, and on a two-core machine a spinning
//! writer takes the very CPU those writers need to make them. This inbox never spins, and a push
//! makes a wake-up call only when the writer is actually asleep.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

pub(super) struct Inbox<T> {
    state: Mutex<State<T>>,
    arrived: Condvar,
}

struct State<T> {
    items: VecDeque<T>,
    /// The writer waits on `arrived`: a push must wake it.
    sleeping: bool,
    /// No more pushes will come; the writer stops once `items` is empty.
    closed: bool,
}

/// What [`Inbox::pop`] found.
pub(super) enum Popped<T> {
    Item(T),
    /// The deadline passed with the inbox empty.
    TimedOut,
    /// The inbox is closed and empty.
    Closed,
}

impl<T> Inbox<T> {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                sleeping: false,
                closed: false,
            }),
            arrived: Condvar::new(),
        }
    }

    /// Queues `item`; gives it back if the inbox is closed.
    pub(super) fn push(&self, item: T) -> Result<(), T> {
        let mut state = self.lock();
        if state.closed {
            return Err(item);
        }
        state.items.push_back(item);
        let wake = state.sleeping;
        drop(state);
        if wake {
            self.arrived.notify_one();
        }
        Ok(())
    }

    /// No more pushes: the writer finishes what is queued, then stops.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.arrived.notify_one();
    }

    /// The next item, waiting for one until `deadline` (or for ever, without one).
    pub(super) fn pop(&self, deadline: Option<Instant>) -> Popped<T> {
        let mut state = self.lock();
        loop {
            if let Some(item) = state.items.pop_front() {
                return Popped::Item(item);
            }
            if state.closed {
                return Popped::Closed;
            }
            state.sleeping = true;
            state = match deadline {
                None => self
                    .arrived
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                        state.sleeping = false;
                        return Popped::TimedOut;
                    };
                    self.arrived
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
            state.sleeping = false;
        }
    }

    /// Closes the inbox and drops what is queued: for a writer that stops before it is done, so
    /// that the callers of those items hear that it stopped instead of waiting for ever.
    pub(super) fn abandon(&self) {
        let queued = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.items)
        };
        drop(queued);
    }

    /// Whether anything is queued: work that a long job should make way for.
    pub(super) fn has_queued(&self) -> bool {
        !self.lock().items.is_empty()
    }

    /// The next item if one is queued, without waiting.
    pub(super) fn try_pop(&self) -> Option<T> {
        self.lock().items.pop_front()
    }

    /// Every item is pushed and popped whole under the lock, so a panic elsewhere cannot leave
    /// the queue half-changed: a poisoned lock is still sound to use.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn items_come_out_in_order_then_closed() {
        let inbox = Inbox::new();
        inbox.push(1).unwrap();
        inbox.push(2).unwrap();
        inbox.close();
        assert_eq!(inbox.push(3), Err(3));
        assert!(matches!(inbox.pop(None), Popped::Item(1)));
        assert!(matches!(inbox.try_pop(), Some(2)));
        assert!(matches!(inbox.pop(None), Popped::Closed));
    }

    #[test]
    fn an_abandoned_inbox_drops_its_items_and_takes_no_more() {
        let inbox = Inbox::new();
        let (sender, receiver) = std::sync::mpsc::channel::<()>();
        inbox.push(sender).unwrap();
        inbox.abandon();
        assert!(receiver.recv().is_err(), "the queued item was dropped");
        assert!(inbox.push(std::sync::mpsc::channel().0).is_err());
        assert!(matches!(inbox.pop(None), Popped::Closed));
    }

    #[test]
    fn a_sleeping_writer_is_woken_by_a_push_and_a_deadline_ends_a_wait() {
        let inbox = Arc::new(Inbox::new());
        let sender = Arc::clone(&inbox);
        let pusher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            sender.push("late").unwrap();
        });
        assert!(matches!(inbox.pop(None), Popped::Item("late")));
        pusher.join().unwrap();
        let deadline = Instant::now() + Duration::from_millis(20);
        assert!(matches!(inbox.pop(Some(deadline)), Popped::TimedOut));
        assert!(Instant::now() >= deadline);
    }
}
