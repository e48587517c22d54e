//! The integration tests of the map, written as a user would: one module per file, all in one
//! test binary, so that a cold `cargo test --workspace` compiles and links the map's generic
//! code once rather than once per file (keys, files and error messages are in
//! `files_and_keys.rs`, which compiles beside this one). Run one file's tests with its module's
//! name as the filter: `cargo test -p persistent-map-tests --test integration sigkill::`.

mod cached_map;
mod cancellation;
mod examples;
mod expiry;
mod hot_keys;
mod interleavings;
mod invariants;
mod map_features;
mod multi_process;
mod one_truth;
mod sigkill;
mod transactions;
mod write_path;
