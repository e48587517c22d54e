use persistent_map::PersistentKey;

/// Displays, but does not parse.
struct Shown;

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("shown")
    }
}

#[derive(PersistentKey)]
enum Resource {
    Root,
    Item { id: u64, label: Shown },
}

fn main() {}
