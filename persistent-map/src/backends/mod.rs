pub mod in_memory;
#[cfg(feature = "sqlite")]
pub mod sqlite;
