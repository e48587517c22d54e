use persistent_map::PersistentKey;

#[derive(PersistentKey)]
#[persistent_key(table = "sessions")]
#[persistent_key(separator = '/', table = "user_sessions")]
struct SessionKey {
    tenant: String,
    user: u64,
}

#[derive(PersistentKey)]
enum Role {
    #[persistent_key(rename = "admin", rename = "root")]
    Admin,
}

fn main() {}
