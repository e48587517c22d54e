use persistent_map::PersistentKey;

#[derive(PersistentKey)]
enum Never {}

fn main() {}
