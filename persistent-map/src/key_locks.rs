//! Per-key write ordering for the map.
//!
//! Keys are spread over many stripes so that writes to different keys rarely wait for each
//! other. A stripe orders its writes in two ways:
//!
//! - **Exclusive turns** ([`KeyLocks::lock`], [`lock_many`](KeyLocks::lock_many),
//!   [`lock_all`](KeyLocks::lock_all)): the holder has the stripe to itself from before it calls
//!   the backend until memory is updated, and no write of the stripe is in flight meanwhile.
//!   Batches, transactions, refreshes and conditional writes that must read committed values
//!   take these. Stripes are always taken in ascending order, so two of them cannot deadlock.
//! - **Pipelined writes** ([`KeyLocks::pipeline`]): the writer holds the stripe only while it
//!   hands its write to the backend, and takes a [`Ticket`]. The next write of the key can then
//!   be handed over before the previous one is committed (both may share one commit), while
//!   memory still takes them in the order they were handed over: each waits for its ticket's
//!   turn before it touches memory. Only backends that apply writes in the order they were
//!   handed over allow this ([`crate::StorageBackend::pipelines_writes`]).
//!
//! [`KeyLocks::turns_ended`] counts the turns that have ended, of either kind: a refresh that
//! read values without holding the keys' turns can tell, once it holds them, whether a write of
//! this map may have changed memory meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::future::poll_fn;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

const STRIPES: usize = 1024;

pub(crate) struct KeyLocks {
    hasher: RandomState,
    stripes: Box<[Arc<Stripe>]>,
    /// Turns ended, in every stripe: shared by the stripes and the guards.
    ended: Arc<AtomicU64>,
}

struct Stripe {
    /// Held while a write is handed to the backend (or, for an exclusive turn, throughout).
    sending: Arc<AsyncMutex<()>>,
    /// Which tickets have finished, and who waits for which.
    finished: Mutex<Finished>,
    /// The [`KeyLocks`]' count of turns ended.
    ended: Arc<AtomicU64>,
}

/// Tickets below `next` have all finished; `early` holds those above it that finished first.
#[derive(Default)]
struct Finished {
    next: u64,
    /// Tickets handed out so far (the number of the next one), under `sending`.
    issued: u64,
    early: BTreeSet<u64>,
    /// Who waits for `next` to reach each number. Only those whose number is reached are
    /// woken: on a hot key, waking every waiter at each finish would wake n tasks for each of
    /// n writes sharing a commit.
    waiting: BTreeMap<u64, Vec<Waker>>,
}

/// Held stripes; dropping it lets the next writer of those keys go.
pub(crate) struct KeyGuard {
    _stripes: Vec<OwnedMutexGuard<()>>,
    ended: Arc<AtomicU64>,
}

/// A pipelined write's place in its stripe's order. Finishing it (or dropping it, should the
/// write never get there) lets the next ticket take its turn.
pub(crate) struct Ticket {
    stripe: Arc<Stripe>,
    number: u64,
    finished: bool,
}

impl KeyLocks {
    pub(crate) fn new() -> Self {
        let ended = Arc::new(AtomicU64::new(0));
        Self {
            hasher: RandomState::new(),
            stripes: (0..STRIPES)
                .map(|_| {
                    Arc::new(Stripe {
                        sending: Arc::new(AsyncMutex::new(())),
                        finished: Mutex::new(Finished::default()),
                        ended: Arc::clone(&ended),
                    })
                })
                .collect(),
            ended,
        }
    }

    /// How many turns (exclusive turns, pipelined hand-overs and tickets) have ended so far. A
    /// turn counts as ended before its stripes are let go, so whoever takes a stripe next sees
    /// the count of every turn that held it before.
    pub(crate) fn turns_ended(&self) -> u64 {
        self.ended.load(Ordering::SeqCst)
    }

    fn stripe_of<K: Hash + ?Sized>(&self, key: &K) -> usize {
        // Only the remainder matters, so truncating the hash on 32-bit targets loses nothing.
        (self.hasher.hash_one(key) as usize) % STRIPES
    }

    /// An exclusive turn at the stripe of `key`.
    pub(crate) async fn lock<K: Hash + ?Sized>(&self, key: &K) -> KeyGuard {
        self.lock_stripes(std::iter::once(self.stripe_of(key)))
            .await
    }

    /// An exclusive turn at the stripes of all `keys`, taken in ascending order.
    pub(crate) async fn lock_many<'k, K: Hash + 'k>(
        &self,
        keys: impl IntoIterator<Item = &'k K>,
    ) -> KeyGuard {
        let mut wanted = vec![false; STRIPES];
        for key in keys {
            wanted[self.stripe_of(key)] = true;
        }
        self.lock_stripes(
            wanted
                .iter()
                .enumerate()
                .filter(|(_, w)| **w)
                .map(|(i, _)| i),
        )
        .await
    }

    /// An exclusive turn at every stripe: no write of this map runs until the guard drops.
    pub(crate) async fn lock_all(&self) -> KeyGuard {
        self.lock_stripes(0..STRIPES).await
    }

    /// The stripe of `key` for as long as it takes to hand a write to the backend, and the
    /// write's ticket.
    pub(crate) async fn pipeline<K: Hash + ?Sized>(&self, key: &K) -> (KeyGuard, Ticket) {
        let stripe = &self.stripes[self.stripe_of(key)];
        let sending = Arc::clone(&stripe.sending).lock_owned().await;
        let number = {
            let mut finished = stripe.finished();
            finished.issued += 1;
            finished.issued - 1
        };
        let ticket = Ticket {
            stripe: Arc::clone(stripe),
            number,
            finished: false,
        };
        (
            KeyGuard {
                _stripes: vec![sending],
                ended: Arc::clone(&self.ended),
            },
            ticket,
        )
    }

    /// Waits until every write of `key`'s stripe (its key's and the others that share the
    /// stripe) handed over before this call has finished; not those handed over meanwhile,
    /// which a hot key never runs out of.
    pub(crate) async fn finished_so_far<K: Hash + ?Sized>(&self, key: &K) {
        let stripe = &self.stripes[self.stripe_of(key)];
        let next = {
            let _sending = stripe.sending.lock().await;
            stripe.finished().issued
        };
        stripe.wait_for(next).await;
    }

    /// Waits until every ticket of `key`'s stripe numbered below `issued` has finished.
    pub(crate) async fn finished_before<K: Hash + ?Sized>(&self, key: &K, issued: u64) {
        self.stripes[self.stripe_of(key)].wait_for(issued).await;
    }

    async fn lock_stripes(&self, ascending: impl Iterator<Item = usize>) -> KeyGuard {
        let mut guards = Vec::new();
        for index in ascending {
            let stripe = &self.stripes[index];
            let sending = Arc::clone(&stripe.sending).lock_owned().await;
            // Every ticket handed out must have finished: no write of the stripe in flight.
            let issued = stripe.finished().issued;
            stripe.wait_for(issued).await;
            guards.push(sending);
        }
        KeyGuard {
            _stripes: guards,
            ended: Arc::clone(&self.ended),
        }
    }
}

impl Drop for KeyGuard {
    /// Counted before the fields let the stripes go.
    fn drop(&mut self) {
        self.ended.fetch_add(1, Ordering::SeqCst);
    }
}

impl Stripe {
    fn finished(&self) -> std::sync::MutexGuard<'_, Finished> {
        // Every change to `Finished` is complete before anything can panic.
        self.finished.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until every ticket below `number` has finished.
    async fn wait_for(&self, number: u64) {
        poll_fn(|cx| {
            let mut finished = self.finished();
            if finished.next >= number {
                return Poll::Ready(());
            }
            // Checked and registered under one lock, so a ticket finishing in between still
            // wakes us. A waiter dropped before its turn leaves a stale waker, woken once.
            let wakers = finished.waiting.entry(number).or_default();
            if !wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
    }
}

impl Ticket {
    /// Waits until every earlier ticket of the stripe has finished.
    pub(crate) async fn turn(&self) {
        self.stripe.wait_for(self.number).await;
    }

    /// This ticket's write is done with memory: the next one may go. Returns how many tickets
    /// of the stripe had been handed out by then (see [`KeyLocks::finished_before`]).
    pub(crate) fn finish(mut self) -> u64 {
        let issued = self.stripe.finished().issued;
        self.mark_finished();
        issued
    }

    /// The ticket's number, for telling the last write of a key from earlier ones.
    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    fn mark_finished(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.stripe.ended.fetch_add(1, Ordering::SeqCst);
        let mut finished = self.stripe.finished();
        finished.early.insert(self.number);
        loop {
            let next = finished.next;
            if !finished.early.remove(&next) {
                break;
            }
            finished.next += 1;
        }
        let first_unreached = finished.next + 1;
        let still_waiting = finished.waiting.split_off(&first_unreached);
        let reached = std::mem::replace(&mut finished.waiting, still_waiting);
        drop(finished);
        reached.into_values().flatten().for_each(Waker::wake);
    }
}

impl Drop for Ticket {
    /// A write that never got to finish (its task panicked) must not hold up the stripe.
    fn drop(&mut self) {
        self.mark_finished();
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    #[tokio::test]
    async fn tickets_take_turns_in_order_and_an_exclusive_turn_waits_for_them() {
        let locks = KeyLocks::new();
        let (guard, first) = locks.pipeline("k").await;
        drop(guard);
        let (guard, second) = locks.pipeline("k").await;
        drop(guard);
        // The second cannot take its turn before the first finishes.
        let early = tokio::time::timeout(std::time::Duration::from_millis(20), second.turn()).await;
        assert!(early.is_err());
        // Nor can an exclusive turn start while either is in flight.
        let exclusive = tokio::time::timeout(std::time::Duration::from_millis(20), locks.lock("k"));
        assert!(exclusive.await.is_err());
        first.finish();
        second.turn().await;
        drop(second); // dropped unfinished: still lets the stripe go
        drop(locks.lock("k").await);
    }

    #[tokio::test]
    async fn finished_so_far_waits_for_the_tickets_before_it_and_not_for_later_ones() {
        let locks = KeyLocks::new();
        let (guard, first) = locks.pipeline("k").await;
        drop(guard);
        let mut waiting = Box::pin(locks.finished_so_far("k"));
        // The first ticket is in flight: it waits.
        let early = tokio::time::timeout(std::time::Duration::from_millis(20), waiting.as_mut());
        assert!(early.await.is_err());
        // A ticket handed out after the call does not hold it up once the first finishes.
        let (guard, later) = locks.pipeline("k").await;
        drop(guard);
        first.finish();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("done once the tickets before it finished, with a later one in flight");
        drop(later);
    }

    #[tokio::test]
    async fn a_finished_ticket_tells_the_tickets_issued_and_only_those_are_waited_for() {
        let locks = KeyLocks::new();
        let mut tickets = handed_over(&locks, 3).await.into_iter();
        // A write that conflicted: the two after it were handed over before it settled.
        let issued = tickets.next().unwrap().finish();
        assert_eq!(issued, 3);
        // Its retry comes after another writer's, handed over since.
        let (guard, since) = locks.pipeline("k").await;
        drop(guard);
        let mut waiting = Box::pin(locks.finished_before("k", issued));
        let early = tokio::time::timeout(std::time::Duration::from_millis(20), waiting.as_mut());
        assert!(early.await.is_err(), "the two before it are in flight");
        tickets.for_each(|ticket| {
            ticket.finish();
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("done once those issued before it settled, with a later one in flight");
        drop(since);
    }

    /// `count` pipelined writes of the key `k`, handed over.
    async fn handed_over(locks: &KeyLocks, count: usize) -> Vec<Ticket> {
        let mut tickets = Vec::new();
        for _ in 0..count {
            let (guard, ticket) = locks.pipeline("k").await;
            drop(guard);
            tickets.push(ticket);
        }
        tickets
    }

    /// Counts how often it is woken.
    struct Counting(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_finished_ticket_wakes_only_the_next_one() {
        let locks = KeyLocks::new();
        let tickets = handed_over(&locks, 8).await;
        // Tickets 1..8 wait for their turns, each with a waker that counts.
        let counters: Vec<_> = (1..8)
            .map(|_| Arc::new(Counting(Default::default())))
            .collect();
        let mut turns: Vec<_> = tickets[1..]
            .iter()
            .map(|ticket| Box::pin(ticket.turn()))
            .collect();
        for (turn, counter) in turns.iter_mut().zip(&counters) {
            let waker = Waker::from(Arc::clone(counter));
            let polled = turn
                .as_mut()
                .poll(&mut std::task::Context::from_waker(&waker));
            assert!(polled.is_pending());
        }
        let wakes = || -> Vec<usize> {
            counters
                .iter()
                .map(|counter| counter.0.load(std::sync::atomic::Ordering::SeqCst))
                .collect()
        };
        drop(turns);
        let mut tickets = tickets.into_iter();
        tickets.next().unwrap().finish();
        assert_eq!(wakes(), [1, 0, 0, 0, 0, 0, 0]);
        tickets.next().unwrap().finish();
        assert_eq!(wakes(), [1, 1, 0, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn every_kind_of_turn_is_counted_once_it_ends() {
        let locks = KeyLocks::new();
        let exclusive = locks.lock_many(["a", "b"].iter()).await;
        assert_eq!(locks.turns_ended(), 0, "a turn held has not ended");
        drop(exclusive);
        assert_eq!(locks.turns_ended(), 1);
        let (guard, ticket) = locks.pipeline("a").await;
        drop(guard);
        assert_eq!(locks.turns_ended(), 2, "the hand-over ended");
        ticket.finish();
        assert_eq!(locks.turns_ended(), 3, "and then the write's ticket");
        drop(locks.lock_all().await);
        assert_eq!(locks.turns_ended(), 4);
    }
}
