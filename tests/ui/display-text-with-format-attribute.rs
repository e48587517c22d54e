use persistent_map::PersistentKey;

#[derive(PersistentKey)]
#[persistent_key(text = "display", separator = '/', rename_all = "lowercase")]
enum Role {
    #[persistent_key(rename = "root")]
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("admin")
    }
}

impl std::str::FromStr for Role {
    type Err = std::convert::Infallible;

    fn from_str(_: &str) -> Result<Self, Self::Err> {
        Ok(Role::Admin)
    }
}

/// Uses the enum as a key: the placeholder impl keeps this free of follow-on errors, and the
/// enum's own `Display` stays the only one.
fn uses_the_key() -> String {
    fn table<K: PersistentKey>() -> &'static str {
        K::TABLE_NAME
    }
    format!("{} in {}", Role::Admin, table::<Role>())
}

fn main() {}
