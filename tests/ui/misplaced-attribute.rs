use persistent_map::PersistentKey;

#[derive(PersistentKey)]
#[persistent_key(rename = "session")]
struct SessionKey {
    #[persistent_key(rename = "t")]
    tenant: String,
    user: u64,
}

#[derive(PersistentKey)]
enum Role {
    #[persistent_key(table = "roles")]
    Admin,
}

#[derive(PersistentKey)]
#[persistent_key(rename_all = "snake_case")]
struct UserId(u64);

fn main() {}
