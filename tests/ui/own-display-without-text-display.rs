use std::fmt;

use persistent_map::PersistentKey;

#[derive(PersistentKey)]
struct Key {
    name: String,
}

impl fmt::Display for Key {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.name)
    }
}

fn main() {}
