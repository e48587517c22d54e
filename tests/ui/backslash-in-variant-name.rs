use persistent_map::PersistentKey;

#[derive(PersistentKey)]
enum Role {
    #[persistent_key(rename = r"domain\admin")]
    Admin,
}

fn main() {}
