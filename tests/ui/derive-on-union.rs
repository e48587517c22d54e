use persistent_map::PersistentKey;

#[derive(PersistentKey)]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
