//! The derived composite key of the composite-key workloads.

use std::fmt;
use std::str::FromStr;

use persistent_map::PersistentKey;
use serde::{Deserialize, Serialize};

/// A session of a user of a tenant; stored as `tenant:user` in the table `session_key`.
//
// Written by hand until `#[derive(PersistentKey)]` lands; the text is what the derive writes for
// these fields (no tenant holds `:` or `\`, so nothing needs escaping).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.tenant, self.user)
    }
}

/// A text that is not `tenant:user`.
#[derive(Debug)]
pub(crate) struct NotASessionKey(String);

impl fmt::Display for NotASessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not `tenant:user`", self.0)
    }
}

impl std::error::Error for NotASessionKey {}

impl FromStr for SessionKey {
    type Err = NotASessionKey;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || NotASessionKey(text.to_owned());
        let (tenant, user) = text.split_once(':').ok_or_else(invalid)?;
        Ok(Self {
            tenant: tenant.to_owned(),
            user: user.parse().map_err(|_| invalid())?,
        })
    }
}

impl PersistentKey for SessionKey {
    const TABLE_NAME: &'static str = "session_key";
}
