use persistent_map::PersistentKey;

#[derive(PersistentKey)]
#[persistent_key(table = "user-sessions")]
struct SessionKey {
    tenant: String,
    user: u64,
}

fn main() {}
