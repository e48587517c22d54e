//! `pm-bench`: the benchmark suite of persistent-map.
//!
//! Without arguments (or with driver options, see `--help`) it is the driver: it runs every
//! workload of [`rows`] in fresh processes, ours and the anchors taking turns, and prints a
//! Markdown table of medians and ratios. `pm-bench charts` measures the curves of
//! BENCHMARKS.md the same way and draws them as SVG ([`charts`], [`draw`]). `pm-bench run
//! WORKLOAD IMPL --name value ...` is one such process: it measures once and prints one result
//! line.
//!
//! Workloads and implementations of `run` (options: `--dir` an empty directory for the
//! database, `--n` writes, `--keys string|composite`, `--db` a fixture to load):
//!
//! | workload | implementations |
//! | --- | --- |
//! | `seq-insert` | `ours`, `raw`, `raw-thread` (`--spin-us N`: see `handoff.rs`) |
//! | `remove`, `insert-many` | `ours`, `raw` |
//! | `seq-insert`, `remove` | `paired`: ours and its raw anchors in one process, in turns |
//! | `concurrent-insert`, `hot-keys` (`--tasks N`: N writers instead of 16; not `raw-thread`) | `ours`, `raw-conns`, `raw-mutex`, `raw-grouped`, `raw-thread` (see `handoff.rs`) |
//! | `hot-update` (`--processes 2`: ours in two processes), `tx3` | `ours`, `raw-mutex` (see `updates.rs`) |
//! | `load` | `ours`, `raw` (scan + decode), `hashmap`, `dashmap` (`--capacity N`, `--hasher fold`) |
//! | `reads` (`--reads N`) | `ours`: our map, a `DashMap` and a `HashMap` in one process, read in turns |
//! | `concurrent-insert` | `pg`: our map on the PostgreSQL backend (feature `postgres`, see `postgres.rs`) |
//! | `concurrent-tables` (`--tables N`: the keys spread over N maps on N tables of one database) | `ours`, `pg` |
//! | `propagation` (`--interval-us`, `--pause-us`, `--entries`, `--times FILE`: every time as JSON) | `ours` (SQLite; the follower is a second process, `follow ours --db FILE`), `pg`, `raw-pg` |
//! | `concurrent-insert` | `raw-pg`: a deadpool-postgres pool of 16 connections upserting (see `postgres.rs`) |
//! | `fleet-update` (`--instances N`, `--seconds S`) | `pg`, `raw-pg`: N processes of 8 tasks incrementing one key (see `fleet.rs`) |

mod cached;
mod charts;
mod composite;
mod draw;
mod driver;
mod expiry;
#[cfg(feature = "postgres")]
mod fleet;
mod handoff;
mod keys;
mod memory;
mod ours;
mod paired;
#[cfg(feature = "postgres")]
mod pg_raw;
mod postgres;
mod propagation;
mod raw;
mod rows;
mod updates;
mod workload;

use std::process::ExitCode;

use workload::{BenchResult, Options};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.split_first() {
        Some((command, rest)) if command == "run" => run_one(rest),
        Some((command, rest)) if command == "charts" => charts::run(rest),
        _ => driver::Settings::parse(&args).and_then(|settings| match settings {
            Some(settings) => driver::run(&settings),
            None => Ok(()),
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pm-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// One measurement, in this process. With `PM_BENCH_TRACE` set to a level (`debug`, `info`,
/// ...), the crate's `tracing` events (each commit, load and read of the PostgreSQL change log,
/// with its `elapsed`) are printed to stderr with microsecond timestamps, to see where a job's
/// time goes; the figures of such a run are not comparable with others.
fn run_one(args: &[String]) -> BenchResult {
    if let Ok(level) = std::env::var("PM_BENCH_TRACE") {
        let level: tracing_subscriber::filter::LevelFilter = level.parse()?;
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(std::io::stderr)
            .init();
    }
    let [workload, implementation, options @ ..] = args else {
        return Err(format!(
            "usage: pm-bench run WORKLOAD IMPL [--name value]...\n\n{}",
            driver::USAGE
        )
        .into());
    };
    let options = Options::parse(options.iter().cloned())?;
    match implementation.as_str() {
        "ours" if matches!(workload.as_str(), "propagation" | "follow") => {
            propagation::sqlite(workload, &options)
        }
        "pg" | "raw-pg" => postgres::run(workload, implementation, &options),
        "ours" => ours::run(workload, &options),
        "raw" | "raw-conns" => raw::run(workload, raw::Writers::OwnConnections, &options),
        "raw-mutex" => raw::run(workload, raw::Writers::SharedConnection, &options),
        "raw-grouped" => raw::run(workload, raw::Writers::Grouped, &options),
        "raw-thread" => handoff::run(workload, &options),
        "paired" => paired::run(workload, &options),
        "hashmap" => memory::run(workload, false, &options),
        "dashmap" => memory::run(workload, true, &options),
        other => Err(format!("unknown implementation `{other}`").into()),
    }
}
