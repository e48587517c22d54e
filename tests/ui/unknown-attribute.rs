use persistent_map::PersistentKey;

#[derive(PersistentKey)]
#[persistent_key(table = "sessions", tabel = "sessions")]
struct SessionKey {
    tenant: String,
    user: u64,
}

#[derive(PersistentKey)]
enum Role {
    #[persistent_key(renamed = "admin")]
    Admin,
}

fn main() {}
