use persistent_map::PersistentKey;

/// Claims to bring its own text, but has no `Display`.
#[derive(PersistentKey)]
#[persistent_key(text = "display")]
struct OrderId(u32);

impl std::str::FromStr for OrderId {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse().map(OrderId)
    }
}

fn main() {}
