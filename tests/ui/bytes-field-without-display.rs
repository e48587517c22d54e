use persistent_map::PersistentKey;

/// `Vec<u8>` has neither `Display` nor `FromStr`: the errors name the field's type and what
/// it lacks, and nothing of the derive's inner workings.
#[derive(PersistentKey)]
struct BlobKey {
    bucket: String,
    digest: Vec<u8>,
}

fn main() {}
