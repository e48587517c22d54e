use persistent_map::PersistentKey;

#[derive(PersistentKey)]
struct CléDeSession(u64);

#[derive(PersistentKey)]
struct SqliteKey(u64);

fn main() {}
