//! The integration tests of keys (the derive, key layouts, std keys), files (reopening, the CSV
//! backend, bad input) and error messages: one module per file, in a binary of their own. The
//! map's tests are in `integration.rs`; two binaries of about equal weight compile side by side
//! on two cores, where one took a core alone for the last 20 s of a cold `cargo test`. Run one
//! file's tests with its module's name as the filter:
//! `cargo test -p persistent-map-tests --test files_and_keys key_layout::`.

mod bad_input;
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
mod key_layout;
mod options;
mod sqlite_reopen;
mod std_keys;
