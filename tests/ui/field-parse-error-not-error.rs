use persistent_map::PersistentKey;

/// Parses with an error that is not a `std::error::Error`.
struct Code(String);

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Code {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Code(text.to_owned()))
    }
}

#[derive(PersistentKey)]
struct Key(Code);

fn main() {}
