use persistent_map::PersistentKey;

#[derive(PersistentKey)]
#[persistent_key(serde = true)]
struct UserId(u64);

fn main() {}
