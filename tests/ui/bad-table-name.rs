use persistent_map::PersistentKey;

#[derive(PersistentKey)]
#[persistent_key(table = "user-sessions")]
struct SessionKey {
    tenant: String,
    user: u64,
}

/// Uses the key as a key: the placeholder impls keep this free of follow-on errors.
fn uses_the_key() -> String {
    fn table<K: PersistentKey>() -> &'static str {
        K::TABLE_NAME
    }
    let key: SessionKey = "acme:42".parse().unwrap();
    format!("{key} in {}", table::<SessionKey>())
}

fn main() {}
