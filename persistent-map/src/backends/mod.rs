#[cfg(feature = "csv_backend")]
pub mod csv;
mod decode;
pub(crate) mod encode;
pub mod in_memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
