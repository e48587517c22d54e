//! The derived composite key of the composite-key workloads.

use persistent_map::PersistentKey;
use serde::{Deserialize, Serialize};

/// A session of a user of a tenant; stored as `tenant:user` in the table `session_key`.
#[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct SessionKey {
    tenant: String,
    user: u64,
}

impl SessionKey {
    /// The `i`-th composite key: 50 tenants, each with its own users.
    pub(crate) fn nth(i: u64) -> Self {
        Self {
            tenant: format!("tenant-{:02}", i % 50),
            user: i,
        }
    }
}
