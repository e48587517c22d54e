use persistent_map::PersistentKey;

#[derive(PersistentKey)]
union Bits {
    int: u32,
    float: f32,
}

/// Uses the union as a key: the placeholder impls keep this free of follow-on errors.
fn uses_the_key() -> String {
    fn table<K: PersistentKey>() -> &'static str {
        K::TABLE_NAME
    }
    let bits: Bits = "1".parse().unwrap();
    format!("{bits} in {}", table::<Bits>())
}

fn main() {}
