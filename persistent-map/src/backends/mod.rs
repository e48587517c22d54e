#[cfg(feature = "csv_backend")]
pub mod csv;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod decode;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod encode;
pub mod in_memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
