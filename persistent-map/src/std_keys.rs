//! `PersistentKey` for the std types that maps are keyed by: `String`, the integers, `bool`,
//! `char` and the network addresses.
//!
//! Each type's text is its own `Display`, read back by its own `FromStr`. The tables, and why
//! they cannot collide, are documented on the trait ("Keys from std").

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::{
    NonZeroI128, NonZeroI16, NonZeroI32, NonZeroI64, NonZeroI8, NonZeroIsize, NonZeroU128,
    NonZeroU16, NonZeroU32, NonZeroU64, NonZeroU8, NonZeroUsize,
};

use crate::PersistentKey;

/// `String` keys live in the table `kv`, as [`SqliteBackend::new`](crate::sqlite::SqliteBackend::new)
/// and persistent-map 0.1.3 store them.
impl PersistentKey for String {
    const TABLE_NAME: &'static str = "kv";
}

macro_rules! std_keys {
    ($($ty:ty => $table:literal,)*) => {
        $(
            #[doc = concat!("`", stringify!($ty), "` keys live in the table `", $table, "`.")]
            impl PersistentKey for $ty {
                const TABLE_NAME: &'static str = $table;
            }
        )*
    };
}

std_keys! {
    u8 => "std__u8",
    u16 => "std__u16",
    u32 => "std__u32",
    u64 => "std__u64",
    u128 => "std__u128",
    usize => "std__usize",
    i8 => "std__i8",
    i16 => "std__i16",
    i32 => "std__i32",
    i64 => "std__i64",
    i128 => "std__i128",
    isize => "std__isize",
    NonZeroU8 => "std__non_zero_u8",
    NonZeroU16 => "std__non_zero_u16",
    NonZeroU32 => "std__non_zero_u32",
    NonZeroU64 => "std__non_zero_u64",
    NonZeroU128 => "std__non_zero_u128",
    NonZeroUsize => "std__non_zero_usize",
    NonZeroI8 => "std__non_zero_i8",
    NonZeroI16 => "std__non_zero_i16",
    NonZeroI32 => "std__non_zero_i32",
    NonZeroI64 => "std__non_zero_i64",
    NonZeroI128 => "std__non_zero_i128",
    NonZeroIsize => "std__non_zero_isize",
    bool => "std__bool",
    char => "std__char",
    IpAddr => "std__ip_addr",
    Ipv4Addr => "std__ipv4_addr",
    Ipv6Addr => "std__ipv6_addr",
    SocketAddr => "std__socket_addr",
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Every std key's table, by type name.
    fn tables() -> Vec<(&'static str, &'static str)> {
        macro_rules! tables {
            ($($ty:ty),*) => {
                vec![$((stringify!($ty), <$ty as PersistentKey>::TABLE_NAME)),*]
            };
        }
        tables![
            String,
            u8,
            u16,
            u32,
            u64,
            u128,
            usize,
            i8,
            i16,
            i32,
            i64,
            i128,
            isize,
            NonZeroU8,
            NonZeroU16,
            NonZeroU32,
            NonZeroU64,
            NonZeroU128,
            NonZeroUsize,
            NonZeroI8,
            NonZeroI16,
            NonZeroI32,
            NonZeroI64,
            NonZeroI128,
            NonZeroIsize,
            bool,
            char,
            IpAddr,
            Ipv4Addr,
            Ipv6Addr,
            SocketAddr
        ]
    }

    #[test]
    fn tables_are_valid_and_distinct() {
        let tables = tables();
        let distinct: HashSet<_> = tables.iter().map(|(_, table)| table).collect();
        assert_eq!(distinct.len(), tables.len(), "{tables:?}");
        for (ty, table) in tables {
            crate::validate_table_name(table).unwrap_or_else(|err| panic!("{ty}: {err}"));
        }
    }

    /// A derived default name joins words with single underscores, so `__` marks a std table.
    #[test]
    fn std_tables_have_a_double_underscore() {
        for (ty, table) in tables().into_iter().filter(|(ty, _)| *ty != "String") {
            assert!(table.starts_with("std__"), "{ty}: {table}");
            assert!(!table["std__".len()..].contains("__"), "{ty}: {table}");
        }
    }

    #[test]
    fn std_keys_record_no_layout() {
        assert_eq!(u64::KEY_LAYOUT, "");
        assert_eq!(char::KEY_LAYOUT, "");
        assert_eq!(SocketAddr::KEY_LAYOUT, "");
    }
}
