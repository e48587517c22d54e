//! The two key types every workload can run with.

use std::fmt;
use std::hash::Hash;

use persistent_map::PersistentKey;
use serde::{de::DeserializeOwned, Serialize};

use crate::composite::SessionKey;
use crate::workload::{key, BenchResult};

/// A key type of the workloads: what our map, raw rusqlite and the in-memory maps all need.
pub(crate) trait BenchKey:
    PersistentKey
    + Eq
    + Hash
    + Clone
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + fmt::Debug
    + 'static
{
    /// The `i`-th key.
    fn nth(i: u64) -> Self;
}

impl BenchKey for String {
    fn nth(i: u64) -> Self {
        key(i)
    }
}

impl BenchKey for SessionKey {
    fn nth(i: u64) -> Self {
        SessionKey::nth(i)
    }
}

/// Which key type a workload uses: `--keys string` (`key-000123`, table `kv`) or
/// `--keys composite` ([`SessionKey`], table `session_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum KeyKind {
    String,
    Composite,
}

impl KeyKind {
    pub(crate) fn parse(text: &str) -> BenchResult<Self> {
        match text {
            "string" => Ok(Self::String),
            "composite" => Ok(Self::Composite),
            other => Err(format!("--keys is `string` or `composite`, not `{other}`").into()),
        }
    }
}

/// The first `n` keys with their values.
pub(crate) fn entries<K: BenchKey>(n: u64) -> Vec<(K, crate::workload::Session)> {
    (0..n)
        .map(|i| (K::nth(i), crate::workload::value(i)))
        .collect()
}

/// Runs `$run::<K>($args)` (and awaits it, if written `$run(...).await`) with the key type of
/// `$kind`.
macro_rules! with_keys {
    ($kind:expr, $run:ident($($args:expr),* $(,)?).await) => {
        match $kind {
            $crate::keys::KeyKind::String => $run::<String>($($args),*).await,
            $crate::keys::KeyKind::Composite => {
                $run::<$crate::composite::SessionKey>($($args),*).await
            }
        }
    };
    ($kind:expr, $run:ident($($args:expr),* $(,)?)) => {
        match $kind {
            $crate::keys::KeyKind::String => $run::<String>($($args),*),
            $crate::keys::KeyKind::Composite => $run::<$crate::composite::SessionKey>($($args),*),
        }
    };
}
pub(crate) use with_keys;
