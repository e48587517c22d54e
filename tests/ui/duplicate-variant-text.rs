use persistent_map::PersistentKey;

#[derive(PersistentKey)]
enum Role {
    Admin,
    #[persistent_key(rename = "Admin")]
    Root,
}

#[derive(PersistentKey)]
#[persistent_key(rename_all = "lowercase")]
enum Flag {
    On,
    #[persistent_key(rename = "on")]
    Enabled(u8),
}

fn main() {}
