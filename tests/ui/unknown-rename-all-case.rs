use persistent_map::PersistentKey;

#[derive(PersistentKey)]
#[persistent_key(rename_all = "snake")]
enum Role {
    Admin,
}

fn main() {}
