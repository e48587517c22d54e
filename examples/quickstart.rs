// Your own struct as the key, every write committed to `quickstart.db` before it returns.
//
// `cargo run --example quickstart` opens `quickstart.db` in the current directory (or the
// path given as the first argument). Run it twice: the second run finds the first run's data.

use persistent_map::{sqlite::SqliteBackend, PersistentKey, PersistentMap};
use serde::{Deserialize, Serialize};

/// Stored as the text `tenant:user` (`acme:42`) in the table `sessions`.
#[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[persistent_key(table = "sessions")]
struct SessionKey {
    tenant: String,
    user: u64,
}

/// Stored as JSON: `{"name":"Ada","visits":1}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Session {
    name: String,
    visits: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or("quickstart.db".into());
    // Opens (or creates) the file, and loads the table `sessions` into memory.
    let sessions: PersistentMap<SessionKey, Session, SqliteBackend> =
        PersistentMap::open(&path).await?;
    println!("database: {}", std::path::absolute(&path)?.display());

    let ada = SessionKey {
        tenant: "acme".into(),
        user: 42,
    };
    // Reads come from memory: no I/O, no await.
    match sessions.get(&ada) {
        Some(earlier) => println!("{ada} was stored by an earlier run: {earlier:?}"),
        None => println!("{ada} is not stored yet: this is the first run"),
    }
    let visits = sessions.get(&ada).map_or(0, |earlier| earlier.visits) + 1;
    let name = "Ada".to_string();
    // When `insert` returns Ok, the write is committed to disk.
    sessions
        .insert(ada.clone(), Session { name, visits })
        .await?;
    println!("{ada} now has {visits} visit(s)");

    let guest = SessionKey {
        tenant: "acme".into(),
        user: 7,
    };
    let name = "Guest".to_string();
    sessions
        .insert(guest.clone(), Session { name, visits: 1 })
        .await?;
    let read = sessions.get(&guest);
    let removed = sessions.remove(&guest).await?; // returns the value it removed
    println!("{guest}: inserted, read {read:?}, removed {removed:?}");

    let stored = sessions.len();
    println!("{stored} session(s) stored; run again and the visits go up");
    Ok(())
}
