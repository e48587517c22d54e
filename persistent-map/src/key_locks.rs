//! Per-key write ordering for the map.
//!
//! A write holds its key's stripe from before it calls the backend until memory is updated, so
//! two writes of one key reach storage and memory in the same order, and a read-modify-write
//! sees no other write of its key in between. Keys are spread over many stripes so that writes
//! to different keys rarely wait for each other; stripes are always taken in ascending order, so
//! a batch and single writes cannot deadlock.

use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

const STRIPES: usize = 1024;

pub(crate) struct KeyLocks {
    hasher: RandomState,
    stripes: Box<[Arc<Mutex<()>>]>,
}

/// Held stripes; dropping it lets the next writer of those keys go.
pub(crate) struct KeyGuard {
    _stripes: Vec<OwnedMutexGuard<()>>,
}

impl KeyLocks {
    pub(crate) fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect(),
        }
    }

    fn stripe_of<K: Hash + ?Sized>(&self, key: &K) -> usize {
        // Only the remainder matters, so truncating the hash on 32-bit targets loses nothing.
        (self.hasher.hash_one(key) as usize) % STRIPES
    }

    /// Waits for the stripe of `key`.
    pub(crate) async fn lock<K: Hash + ?Sized>(&self, key: &K) -> KeyGuard {
        let stripe = Arc::clone(&self.stripes[self.stripe_of(key)]);
        KeyGuard {
            _stripes: vec![stripe.lock_owned().await],
        }
    }

    /// Waits for the stripes of all `keys`, in ascending order.
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

    /// Waits for every stripe: no write of this map can run until the guard drops.
    pub(crate) async fn lock_all(&self) -> KeyGuard {
        self.lock_stripes(0..STRIPES).await
    }

    async fn lock_stripes(&self, ascending: impl Iterator<Item = usize>) -> KeyGuard {
        let mut guards = Vec::new();
        for stripe in ascending {
            guards.push(Arc::clone(&self.stripes[stripe]).lock_owned().await);
        }
        KeyGuard { _stripes: guards }
    }
}
