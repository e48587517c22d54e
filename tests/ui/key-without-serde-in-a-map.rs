use persistent_map::in_memory::InMemoryBackend;
use persistent_map::{PersistentKey, PersistentMap};

#[derive(PersistentKey, Clone, PartialEq, Eq, Hash)]
struct Key {
    name: String,
}

async fn open() -> persistent_map::Result<PersistentMap<Key, u32, InMemoryBackend>> {
    PersistentMap::new(InMemoryBackend::new()).await
}

fn main() {
    drop(open());
}
