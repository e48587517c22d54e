//! The repository: its layout, the example apps, and the tests.
//!
//! # Layout
//!
//! | path | what lives there |
//! | --- | --- |
//! | `persistent-map/` | the crate: the map, the backend trait, the SQLite, PostgreSQL, CSV and in-memory backends, errors, the key trait, and these guides (`src/guide/`) |
//! | `persistent-map-derive/` | `#[derive(PersistentKey)]`, re-exported by `persistent-map` (feature `derive`, on by default) |
//! | `tests/` | integration tests written as a user would, in two test binaries (`tests/tests/integration.rs`, the map, and `tests/tests/files_and_keys.rs`, keys, files and errors; a module per file; the PostgreSQL tests and the few that need a process of their own are binaries of their own), and the example apps' tests |
//! | `tests/ui/` | the derive's compile-fail suite, a crate of its own (trybuild) |
//! | `examples/` | the example apps below |
//! | `bench/` | the benchmark suite and the charts of `BENCHMARKS.md` (`bench/README.md` says how it works); `bench/old` measures persistent-map 0.1.3 |
//! | `.ci/run` | what CI runs: `cargo fmt --all --check`, `cargo clippy --workspace --all-targets -- -D warnings`, `cargo test --workspace`, `cargo doc --workspace --no-deps` with `RUSTDOCFLAGS=-D warnings`, then the same with `--features postgres` against a PostgreSQL server |
//!
//! # Example apps
//!
//! Each runs from the repository root, keeps its data in the current directory, prints where
//! (`todo` in its `list`), and exits non-zero on an error. git ignores the `*.db` files they
//! create; `custom_backend.json` it does not.
//!
//! | example | what it shows | try |
//! | --- | --- | --- |
//! | `quickstart` | a derived composite key; insert, get, remove; data found again by the next run | `cargo run --example quickstart` |
//! | `todo` | a command-line app whose whole state is one SQLite file: items keyed by `{ list, id }`, a second table of id counters, `update` for atomic changes, clear messages for bad arguments | `cargo run --example todo -- add groceries buy milk`, then `-- list`, `-- done groceries 1`, `-- remove groceries 1`; `TODO_DB=path` picks the file |
//! | `sessions` | three maps (tables, one of them an enum key) in one file, written by 100 concurrent tokio tasks, then reopened and compared; `Durability::Normal` through the builder | `cargo run --example sessions` |
//! | `bookmarks` | the blocking API from a plain `fn main`, no runtime; a key with `#[persistent_key(serde)]` and no serde derive | `cargo run --example bookmarks -- add rust https://www.rust-lang.org`, then `-- open rust`, `-- list`, `-- remove rust` |
//! | `custom_backend` | your own `StorageBackend`: a JSON file, replaced atomically (temporary file, fsync, rename) on every write | `cargo run --example custom_backend` (writes `custom_backend.json`) |
//! | `logging` (feature `postgres`) | the crate's `tracing` events on a PostgreSQL map | `PM_TEST_POSTGRES_URL=... cargo run --example logging --features postgres` |
//!
//! `quickstart`, `sessions` and `custom_backend` take another file as their first argument,
//! for instance `cargo run --example sessions -- /tmp/sessions.db`.
//!
//! # The tests
//!
//! `cargo test --workspace` runs every test: unit tests and doctests (these guides' examples
//! and the README's code blocks among them), the integration tests in `tests/` (each guarantee,
//! a writer killed with SIGKILL, several processes on one file, the key format, the derive's
//! output), the compile errors of the derive (`tests/ui/`), and `tests/tests/examples.rs`,
//! which builds and runs every example app and checks what it prints and stores.
//!
//! - The doctests are compiled as one crate, so each key, value and backend type they use, and
//!   each future handed to tokio's `block_on`, compiles the map's generic code once more. So
//!   they share a handful of key and value types, and their hidden lines box the example's
//!   future before `block_on` instead of using `#[tokio::main]` (which would compile tokio's
//!   `block_on` once per example): compiling them takes 11.6 s instead of 21.8 s. A new example
//!   should do the same; copy the hidden lines of one nearby.
//! - The integration tests are two binaries, `integration` (the map) and `files_and_keys`
//!   (keys, files, error messages), so that a cold build compiles and links the map's generic
//!   code twice rather than once per file, on both cores. Run one file's tests with its
//!   module's name as the filter: `cargo test -p persistent-map-tests --test integration sigkill::`.
//! - `tests/tests/interleavings.rs` drives the write path through seeded schedules: a scripted
//!   store holds every write at its hand-over, commits and answers them in the order the
//!   schedule says, while several handles write, another writer changes storage behind the
//!   map's back, the map refreshes and expired rows are swept. After every step the change feed
//!   must show each key's values in commit order, and at the end memory must equal storage.
//!   `cargo test` runs 2,000 seeds; a failing seed is printed with the command that replays it.
//!   For a longer run:
//!   `PM_INTERLEAVINGS=100000 cargo test -p persistent-map-tests --test integration interleavings::`.
//! - The PostgreSQL tests run with the feature `postgres` and a server:
//!   `PM_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo test --workspace
//!   --features postgres` ([`postgresql`](super::postgresql#the-tests)).
//! - The derive's compile-fail cases are `tests/ui/*.rs` with their `.stderr`, one file per
//!   error; regenerate them with `TRYBUILD=overwrite cargo test -p persistent-map-compile-fail`
//!   and read the diff.
