//! Three maps (three tables) in one SQLite file, written by a hundred concurrent tokio tasks,
//! then reopened and checked against what the tasks wrote.
//!
//! `cargo run --example sessions` uses `sessions.db` in the current directory (or the path
//! given as the first argument), and starts each run by clearing what an earlier run left.
//!
//! - `users`: `UserId(42)` → a profile, key text `42`.
//! - `sessions`: `SessionKey { tenant, user }` → a session, key text `acme:42`. Sessions expire
//!   after [`IDLE_TIMEOUT`] without a write: the map's default time to live, renewed by every
//!   write, so an idle session vanishes from every read at its deadline and the background sweep
//!   deletes its row. A guest session shows it happen.
//! - `stats`: an enum key (`Logins`, `Logouts`, `Tenant("acme")`, texts `Logins`, `Logouts`,
//!   `Tenant:acme`) → a counter, bumped by every task with `update`, so the totals show that no
//!   concurrent update was lost. This table is opened with `Durability::Normal`: its commits
//!   skip the fsync, so a power cut may lose its last updates (a crash never does).

use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use persistent_map::sqlite::{Durability, SqliteBackend};
use persistent_map::{PersistentKey, PersistentMap};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

const TENANTS: [&str; 4] = ["acme", "globex", "initech", "umbrella"];
const USERS_PER_TENANT: u64 = 25;
/// How long a session lives after its last write.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[persistent_key(table = "users")]
struct UserId(u64);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Profile {
    tenant: String,
    name: String,
}

#[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[persistent_key(table = "sessions")]
struct SessionKey {
    tenant: String,
    user: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Session {
    token: String,
    logins: u32,
}

#[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[persistent_key(table = "stats")]
enum Stat {
    Logins,
    Logouts,
    Tenant(String),
}

/// The three maps of the app; clones share the same entries and the same file.
#[derive(Clone)]
struct Store {
    users: PersistentMap<UserId, Profile, SqliteBackend>,
    sessions: PersistentMap<SessionKey, Session, SqliteBackend>,
    stats: PersistentMap<Stat, u64, SqliteBackend>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Store {
    async fn open(path: &Path) -> persistent_map::Result<Self> {
        let stats = SqliteBackend::builder(path)
            .table(Stat::TABLE_NAME)
            .durability(Durability::Normal)
            .open()
            .await?;
        Ok(Self {
            users: PersistentMap::open(path).await?,
            sessions: PersistentMap::open(path)
                .await?
                .with_default_ttl(IDLE_TIMEOUT)?,
            stats: PersistentMap::new(stats).await?,
        })
    }

    async fn clear(&self) -> persistent_map::Result<usize> {
        let left = self.users.len() + self.sessions.len() + self.stats.len();
        self.users.clear().await?;
        self.sessions.clear().await?;
        self.stats.clear().await?;
        Ok(left)
    }

    /// One user logs in: a profile, a session and two counters, each write committed before
    /// the next starts; every second user logs out again.
    async fn log_in(self, tenant: &'static str, user: u64) -> persistent_map::Result<()> {
        let name = format!("user {user} of {tenant}");
        let tenant = tenant.to_owned();
        let profile = Profile {
            tenant: tenant.clone(),
            name,
        };
        self.users.insert(UserId(user), profile).await?;
        let key = SessionKey { tenant, user };
        let session = Session {
            token: format!("token-{user:04}"),
            logins: 1,
        };
        self.sessions.insert(key.clone(), session).await?;
        self.bump(Stat::Logins).await?;
        self.bump(Stat::Tenant(key.tenant.clone())).await?;
        if user.is_multiple_of(2) {
            self.sessions.remove(&key).await?;
            self.bump(Stat::Logouts).await?;
        }
        Ok(())
    }

    /// Adds one to a counter; `update` makes the read and the write one step.
    async fn bump(&self, stat: Stat) -> persistent_map::Result<()> {
        self.stats
            .update(&stat, |count| Some(count.copied().unwrap_or(0) + 1))
            .await?;
        Ok(())
    }
}

/// A consistent copy of each map, to compare with what a reopened store loads.
#[derive(Debug, PartialEq)]
struct Contents {
    users: HashMap<UserId, Profile>,
    sessions: HashMap<SessionKey, Session>,
    stats: HashMap<Stat, u64>,
}

impl Contents {
    async fn of(store: &Store) -> Self {
        Self {
            users: store.users.snapshot().await,
            sessions: store.sessions.snapshot().await,
            stats: store.stats.snapshot().await,
        }
    }
}

/// Fails unless `map` holds `expected` under `key`.
fn expect_entry<K, V>(map: &HashMap<K, V>, key: K, expected: V) -> Result<(), BoxError>
where
    K: Eq + Hash + std::fmt::Display,
    V: PartialEq + std::fmt::Debug,
{
    match map.get(&key) {
        Some(found) if *found == expected => Ok(()),
        found => Err(format!("{key}: expected {expected:?}, found {found:?}").into()),
    }
}

/// A guest session with a short life: present until its deadline, absent from then on (before
/// any sweep), then swept from storage.
async fn expire_a_guest_session(store: &Store) -> Result<(), BoxError> {
    let guest = SessionKey {
        tenant: "acme".into(),
        user: 0,
    };
    let session = Session {
        token: "guest".into(),
        logins: 1,
    };
    let deadline = SystemTime::now() + Duration::from_millis(200);
    store
        .sessions
        .insert_until(guest.clone(), session, deadline)
        .await?;
    if store.sessions.get(&guest).is_none() && SystemTime::now() < deadline {
        return Err("the guest session vanished before its deadline".into());
    }
    while SystemTime::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if store.sessions.get(&guest).is_some() {
        return Err("the guest session outlived its deadline".into());
    }
    // The background sweep (every second) may have deleted it already; this makes sure.
    store.sessions.sweep_expired().await?;
    println!("the guest session expired at its deadline and was swept from storage");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let path = PathBuf::from(std::env::args_os().nth(1).unwrap_or("sessions.db".into()));
    println!("database: {}", std::path::absolute(&path)?.display());
    let store = Store::open(&path).await?;
    let left = store.clear().await?;
    if left > 0 {
        println!("cleared {left} entries left by an earlier run");
    }

    let mut tasks = JoinSet::new();
    let mut next_user = 1;
    for tenant in TENANTS {
        for _ in 0..USERS_PER_TENANT {
            tasks.spawn(store.clone().log_in(tenant, next_user));
            next_user += 1;
        }
    }
    let task_count = tasks.len();
    while let Some(finished) = tasks.join_next().await {
        finished??; // a task that panicked, or a write that failed
    }
    let stats = store.users.backend().stats();
    println!(
        "{task_count} tasks wrote {} times to 3 tables in {} commits",
        stats.writes, stats.commits
    );

    if store.sessions.keys().any(|key| {
        store
            .sessions
            .ttl(&key)
            .is_none_or(|left| left > IDLE_TIMEOUT)
    }) {
        return Err("every open session should expire within the idle timeout".into());
    }
    println!(
        "open sessions expire {} minutes after their last write",
        IDLE_TIMEOUT.as_secs() / 60
    );
    expire_a_guest_session(&store).await?;

    let written = Contents::of(&store).await;
    let users = USERS_PER_TENANT * TENANTS.len() as u64;
    expect_entry(&written.stats, Stat::Logins, users)?;
    expect_entry(&written.stats, Stat::Logouts, users / 2)?;
    for tenant in TENANTS {
        expect_entry(
            &written.stats,
            Stat::Tenant(tenant.into()),
            USERS_PER_TENANT,
        )?;
    }
    drop(store);

    let reopened = Contents::of(&Store::open(&path).await?).await;
    if reopened != written {
        return Err("the reopened maps differ from what the tasks wrote".into());
    }
    println!(
        "reopened: {} users, {} open sessions, {} logins and {} logouts, as written",
        reopened.users.len(),
        reopened.sessions.len(),
        reopened.stats[&Stat::Logins],
        reopened.stats[&Stat::Logouts],
    );
    Ok(())
}
