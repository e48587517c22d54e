use persistent_map::PersistentKey;

#[derive(PersistentKey)]
#[persistent_key(separator = "::")]
struct SessionKey {
    tenant: String,
    user: u64,
}

fn main() {}
