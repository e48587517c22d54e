use persistent_map::PersistentKey;

#[derive(PersistentKey)]
#[persistent_key(text = "fromstr")]
struct UserId(u64);

fn main() {}
