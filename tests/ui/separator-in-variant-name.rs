use persistent_map::PersistentKey;

#[derive(PersistentKey)]
enum Role {
    #[persistent_key(rename = "admin:root")]
    Admin,
}

#[derive(PersistentKey)]
#[persistent_key(separator = '-', rename_all = "kebab-case")]
enum Level {
    Guest,
    PowerUser,
}

fn main() {}
