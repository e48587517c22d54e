//! The integration tests of persistent-map, written as a user would: one module per file, all
//! in one test binary, so that a cold `cargo test --workspace` compiles and links the map's
//! generic code once rather than once per file. Run one file's tests with its module's name as
//! the filter: `cargo test -p persistent-map-tests --test integration sigkill::`.

mod bad_input;
mod cancellation;
mod csv_backend;
mod derive_attributes;
mod derive_errors;
mod derive_escaping;
mod derive_format;
mod derive_roundtrip;
mod derive_serde;
mod derive_sqlite;
mod derive_table_name;
mod error_messages;
mod examples;
mod expiry;
mod hot_keys;
mod interleavings;
mod invariants;
mod key_layout;
mod map_features;
mod multi_process;
mod one_truth;
mod options;
mod sigkill;
mod sqlite_reopen;
mod std_keys;
mod transactions;
mod write_path;
