use persistent_map::PersistentKey;

#[derive(PersistentKey)]
#[persistent_key(table = "SQLite_sessions")]
struct SessionKey {
    tenant: String,
    user: u64,
}

fn main() {}
