use persistent_map::PersistentKey;

/// Parses, but has no `Display`.
#[derive(Debug)]
struct Opaque;

impl std::str::FromStr for Opaque {
    type Err = std::convert::Infallible;

    fn from_str(_: &str) -> Result<Self, Self::Err> {
        Ok(Opaque)
    }
}

#[derive(PersistentKey)]
struct SessionKey {
    tenant: String,
    token: Opaque,
}

fn main() {}
