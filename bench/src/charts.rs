//! `pm-bench charts`: the curves drawn in BENCHMARKS.md, measured and drawn by one command.
//!
//! - **Writers**: durable inserts per second against the number of concurrent writers (1 to
//!   32), for our map (`concurrent-insert ours --tasks N`), the group-commit floor (one thread
//!   committing one write of each of N writers per transaction, `raw-grouped`) and hand-rolled
//!   rusqlite (N threads, one mutex-guarded connection, a transaction per insert, `raw-mutex`).
//! - **Open**: the time to open a table and the process's peak memory against the table's size,
//!   for our map (`load ours`) against raw rusqlite scanning and decoding the rows (`load raw`)
//!   and a plain `HashMap` loaded by raw rusqlite (`load hashmap`).
//! - **Propagation**: the distribution of the time from an acknowledged `insert` to another
//!   instance's `get` returning it (`propagation`), for the SQLite backend with a second
//!   process refreshing every 1 ms and every 10 ms, and for the PostgreSQL backend when the
//!   bench is built with its feature `postgres` and a server answers.
//!
//! Every job is a fresh process, as in the suite ([`driver`](crate::driver)); a point is the
//! median of `--runs` runs (the propagation samples of every run are pooled). The figures go
//! to `data.json` beside the charts, with the commit, the machine and its load, so that
//! `--redraw` draws them again without measuring.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::driver::{load_average, machine, measure_fsync, measure_with, number};
use crate::keys::KeyKind;
use crate::postgres;
use crate::raw::write_fixture;
use crate::rows::{Fixture, Job, Program};
use crate::workload::{median, BenchResult};

pub(crate) const USAGE: &str = "\
pm-bench charts: measure the curves of BENCHMARKS.md and draw them as SVG

usage: cargo run --release -p persistent-map-bench -- charts [options]

  --quick        smaller workloads (fewer writes, tables up to 300k rows), 1 run
  --runs N       measure every point N times and draw medians (default 3; 1 with --quick)
  --dir PATH     where the databases go (default: target/pm-bench; not a tmpfs)
  --out PATH     where the charts and data.json go (default: bench/charts)
  --redraw       draw the charts again from PATH/data.json, measuring nothing

The PostgreSQL curve of the propagation chart is measured when pm-bench is built with its
feature `postgres` and PM_BENCH_POSTGRES_URL (else PM_TEST_POSTGRES_URL) names a server:

  PM_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \\
      cargo run --release -p persistent-map-bench --features postgres -- charts";

/// Concurrent writers of the writers chart, with the job option that sets them.
const WRITERS: [(u64, &[(&str, &str)]); 6] = [
    (1, &[("tasks", "1")]),
    (2, &[("tasks", "2")]),
    (4, &[("tasks", "4")]),
    (8, &[("tasks", "8")]),
    (16, &[("tasks", "16")]),
    (32, &[("tasks", "32")]),
];

/// The propagation jobs' options: each refresh interval, and the pause before each write that
/// spreads writes over it (see `propagation.rs`).
const SQLITE_1MS: &[(&str, &str)] = &[("interval-us", "1000"), ("pause-us", "1000")];
const SQLITE_10MS: &[(&str, &str)] = &[("interval-us", "10000"), ("pause-us", "10000")];
const POSTGRES_NOTIFY: &[(&str, &str)] = &[("interval-us", "1000000"), ("pause-us", "1000")];

/// What one `charts` run measured, and where and how: what `--redraw` draws from.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ChartData {
    pub(crate) taken: Taken,
    pub(crate) writers: Vec<WritersPoint>,
    pub(crate) open: Vec<OpenPoint>,
    pub(crate) propagation: Vec<Distribution>,
}

/// Where the figures come from.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Taken {
    pub(crate) command: String,
    /// `git rev-parse --short HEAD`, with `+changes` if the work tree differed from it.
    pub(crate) commit: String,
    pub(crate) machine: String,
    pub(crate) load_before: String,
    pub(crate) load_after: String,
    /// A 4 KiB write + fdatasync in the databases' directory, before and after (µs, median).
    pub(crate) fsync_micros: [f64; 2],
    pub(crate) runs: usize,
    /// Writes per point of the writers chart (spread over its writers).
    pub(crate) writes_per_point: u64,
    /// Writes per run of each propagation curve.
    pub(crate) propagation_writes: u64,
    /// The PostgreSQL server of the propagation chart, or why it has no PostgreSQL curve.
    pub(crate) postgres: String,
    pub(crate) minutes: f64,
}

/// One point of the writers chart: inserts per second with `writers` concurrent writers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WritersPoint {
    pub(crate) writers: u64,
    pub(crate) ours: Option<f64>,
    /// How many writes one of our commits served.
    pub(crate) ours_writes_per_commit: Option<f64>,
    pub(crate) floor: Option<f64>,
    pub(crate) raw: Option<f64>,
}

/// One point of the open chart: a table of `rows` entries.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OpenPoint {
    pub(crate) rows: u64,
    pub(crate) ours_secs: Option<f64>,
    pub(crate) raw_secs: Option<f64>,
    pub(crate) ours_rss_mib: Option<f64>,
    pub(crate) hashmap_rss_mib: Option<f64>,
}

/// Every propagation time of one configuration, in milliseconds, sorted.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Distribution {
    pub(crate) label: String,
    pub(crate) times_ms: Vec<f64>,
}

/// The command line of `charts`.
#[derive(Debug)]
struct Settings {
    quick: bool,
    runs: usize,
    dir: PathBuf,
    out: PathBuf,
    redraw: bool,
    command: String,
}

impl Settings {
    fn parse(args: &[String]) -> BenchResult<Option<Self>> {
        let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
        let features = if cfg!(feature = "postgres") {
            " --features postgres"
        } else {
            ""
        };
        let mut settings = Self {
            quick: false,
            runs: 0,
            dir: bench.join("../target/pm-bench"),
            out: bench.join("charts"),
            redraw: false,
            command: format!(
                "cargo run --release -p persistent-map-bench{features} -- charts {}",
                args.join(" ")
            )
            .trim_end()
            .to_owned(),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| format!("{arg} needs a value"))
                    .map(String::as_str)
            };
            match arg.as_str() {
                "--quick" => settings.quick = true,
                "--runs" => settings.runs = value()?.parse()?,
                "--dir" => settings.dir = PathBuf::from(value()?),
                "--out" => settings.out = PathBuf::from(value()?),
                "--redraw" => settings.redraw = true,
                "--help" | "-h" | "help" => {
                    println!("{USAGE}");
                    return Ok(None);
                }
                other => return Err(format!("unknown option `{other}`\n\n{USAGE}").into()),
            }
        }
        if settings.runs == 0 {
            settings.runs = if settings.quick { 1 } else { 3 };
        }
        Ok(Some(settings))
    }

    /// Writes per point of the writers chart.
    fn writes_per_point(&self) -> u64 {
        if self.quick {
            2_000
        } else {
            6_400
        }
    }

    /// Table sizes of the open chart.
    fn table_sizes(&self) -> &'static [u64] {
        if self.quick {
            &[10_000, 30_000, 100_000, 300_000]
        } else {
            &[10_000, 100_000, 300_000, 1_000_000]
        }
    }

    fn propagation_writes(&self) -> u64 {
        if self.quick {
            300
        } else {
            1_000
        }
    }
}

/// `pm-bench charts ...`.
pub(crate) fn run(args: &[String]) -> BenchResult {
    let Some(settings) = Settings::parse(args)? else {
        return Ok(());
    };
    std::fs::create_dir_all(&settings.out)?;
    let data_file = settings.out.join("data.json");
    let data = if settings.redraw {
        serde_json::from_str(
            &std::fs::read_to_string(&data_file)
                .map_err(|error| format!("--redraw reads {}: {error}", data_file.display()))?,
        )?
    } else {
        let data = measure_all(&settings)?;
        std::fs::write(&data_file, serde_json::to_string_pretty(&data)? + "\n")?;
        data
    };
    for path in crate::draw::all(&data, &settings.out)? {
        eprintln!("drew {}", path.display());
    }
    print_summary(&data);
    Ok(())
}

fn measure_all(settings: &Settings) -> BenchResult<ChartData> {
    let started = Instant::now();
    let load_before = load_average();
    std::fs::create_dir_all(&settings.dir)?;
    let dir = settings.dir.canonicalize()?;
    let postgres = postgres::probe();
    if let Err(reason) = &postgres {
        eprintln!("no PostgreSQL curve: {reason}");
    }
    let fixtures = write_fixtures(&dir, settings.table_sizes())?;
    let fsync_before = measure_fsync(&dir)?;
    let mut samples = Samples::default();
    for run in 0..settings.runs {
        eprintln!("[run {}/{}]", run + 1, settings.runs);
        for (writers, args) in WRITERS {
            let per_task = (settings.writes_per_point() / writers).max(1);
            for job in rotated(writers_jobs(per_task, args), run) {
                samples.measure(&job, &dir, writers)?;
            }
        }
        for fixture in &fixtures {
            for job in rotated(open_jobs(*fixture), run) {
                samples.measure(&job, &dir, fixture.rows)?;
            }
        }
        for (label, job) in propagation_jobs(settings, postgres.is_ok()) {
            samples.propagation(label, &job, &dir)?;
        }
    }
    let fsync_after = measure_fsync(&dir)?;
    Ok(ChartData {
        taken: Taken {
            command: settings.command.clone(),
            commit: commit(),
            machine: machine(),
            load_before,
            load_after: load_average(),
            fsync_micros: [fsync_before, fsync_after],
            runs: settings.runs,
            writes_per_point: settings.writes_per_point(),
            propagation_writes: settings.propagation_writes(),
            postgres: match postgres {
                Ok(server) => server,
                Err(reason) => format!("not measured: {reason}"),
            },
            minutes: started.elapsed().as_secs_f64() / 60.0,
        },
        writers: WRITERS
            .iter()
            .map(|&(writers, args)| {
                let per_task = (settings.writes_per_point() / writers).max(1);
                let [ours, floor, raw] = writers_jobs(per_task, args);
                let commits = samples.median(&ours, "commits", writers);
                let writes = samples.median(&ours, "writes", writers);
                WritersPoint {
                    writers,
                    ours: samples.median(&ours, "ops_per_sec", writers),
                    ours_writes_per_commit: writes.zip(commits).map(|(w, c)| w / c),
                    floor: samples.median(&floor, "ops_per_sec", writers),
                    raw: samples.median(&raw, "ops_per_sec", writers),
                }
            })
            .collect(),
        open: fixtures
            .iter()
            .map(|&fixture| {
                let [ours, raw, hashmap] = open_jobs(fixture);
                let rows = fixture.rows;
                OpenPoint {
                    rows,
                    ours_secs: samples.median(&ours, "secs", rows),
                    raw_secs: samples.median(&raw, "secs", rows),
                    ours_rss_mib: samples.median(&ours, "rss_mib", rows),
                    hashmap_rss_mib: samples.median(&hashmap, "rss_mib", rows),
                }
            })
            .collect(),
        propagation: samples.distributions,
    })
}

/// Every figure measured so far, by job, metric and the point it belongs to.
#[derive(Debug, Default)]
struct Samples {
    figures: Vec<(String, String, u64, f64)>,
    distributions: Vec<Distribution>,
}

impl Samples {
    /// Measures `job` once, as a point at `x`. A failed job is reported and leaves a gap.
    fn measure(&mut self, job: &Job, dir: &Path, x: u64) -> BenchResult {
        eprint!("  {} ... ", job.name());
        match measure_with(job, dir, None, &[]) {
            Ok(metrics) => {
                let shown: Vec<String> = metrics
                    .iter()
                    .map(|(name, value)| format!("{name}={}", number(*value)))
                    .collect();
                eprintln!("{}", shown.join(" "));
                for (metric, value) in metrics {
                    self.figures.push((job.name(), metric, x, value));
                }
            }
            Err(error) => eprintln!("FAILED: {error}"),
        }
        Ok(())
    }

    /// Measures the propagation `job` once and adds its times to the distribution `label`.
    fn propagation(&mut self, label: &str, job: &Job, dir: &Path) -> BenchResult {
        let times_file = dir.join("propagation-times.json");
        let extra: [OsString; 2] = ["--times".into(), times_file.clone().into()];
        eprint!("  {} ... ", job.name());
        let metrics = match measure_with(job, dir, None, &extra) {
            Ok(metrics) => metrics,
            Err(error) => {
                eprintln!("FAILED: {error}");
                return Ok(());
            }
        };
        let mut times: Vec<f64> = serde_json::from_str(&std::fs::read_to_string(&times_file)?)?;
        std::fs::remove_file(&times_file)?;
        let median = metrics
            .iter()
            .find(|(name, _)| name == "median_ms")
            .map_or(f64::NAN, |(_, value)| *value);
        eprintln!("{} writes, median {} ms", times.len(), number(median));
        match self.distributions.iter_mut().find(|d| d.label == label) {
            Some(distribution) => distribution.times_ms.append(&mut times),
            None => self.distributions.push(Distribution {
                label: label.to_owned(),
                times_ms: times,
            }),
        }
        for distribution in &mut self.distributions {
            distribution.times_ms.sort_by(f64::total_cmp);
        }
        Ok(())
    }

    fn median(&self, job: &Job, metric: &str, x: u64) -> Option<f64> {
        let name = job.name();
        let values: Vec<f64> = self
            .figures
            .iter()
            .filter(|(j, m, at, _)| *j == name && m == metric && *at == x)
            .map(|(_, _, _, value)| *value)
            .collect();
        (!values.is_empty()).then(|| median(values))
    }
}

fn job(workload: &'static str, implementation: &'static str) -> Job {
    Job {
        program: Program::Ours,
        workload,
        implementation,
        keys: KeyKind::String,
        n: None,
        fixture: None,
        args: &[],
    }
}

/// Ours, the group-commit floor and hand-rolled rusqlite, `per_task` writes per writer.
fn writers_jobs(per_task: u64, args: &'static [(&'static str, &'static str)]) -> [Job; 3] {
    ["ours", "raw-grouped", "raw-mutex"].map(|implementation| Job {
        n: Some(per_task),
        args,
        ..job("concurrent-insert", implementation)
    })
}

/// Ours, raw rusqlite's scan + decode, and a `HashMap` loaded by raw rusqlite, on `fixture`.
fn open_jobs(fixture: Fixture) -> [Job; 3] {
    ["ours", "raw", "hashmap"].map(|implementation| Job {
        fixture: Some(fixture),
        ..job("load", implementation)
    })
}

fn propagation_jobs(settings: &Settings, postgres: bool) -> Vec<(&'static str, Job)> {
    let n = Some(settings.propagation_writes());
    let mut jobs = Vec::new();
    if postgres {
        jobs.push((
            "PostgreSQL, another instance woken by NOTIFY",
            Job {
                n,
                args: POSTGRES_NOTIFY,
                ..job("propagation", "pg")
            },
        ));
    }
    jobs.push((
        "SQLite, another process, refresh_every(1 ms)",
        Job {
            n,
            args: SQLITE_1MS,
            ..job("propagation", "ours")
        },
    ));
    jobs.push((
        "SQLite, another process, refresh_every(10 ms)",
        Job {
            n,
            args: SQLITE_10MS,
            ..job("propagation", "ours")
        },
    ));
    jobs
}

/// `jobs` in turn order: ours first on even runs, the anchors first on odd ones.
fn rotated<const N: usize>(mut jobs: [Job; N], run: usize) -> [Job; N] {
    if run % 2 == 1 {
        jobs.reverse();
    }
    jobs
}

/// The open chart's tables, written once per `charts` run.
fn write_fixtures(dir: &Path, sizes: &[u64]) -> BenchResult<Vec<Fixture>> {
    let fixtures_dir = dir.join("fixtures");
    std::fs::create_dir_all(&fixtures_dir)?;
    sizes
        .iter()
        .map(|&rows| {
            let fixture = Fixture {
                rows,
                keys: KeyKind::String,
                old_index: false,
            };
            let path = fixtures_dir.join(fixture.file_name());
            if path.exists() {
                std::fs::remove_file(&path)?;
            }
            eprintln!("writing fixture {}", fixture.file_name());
            write_fixture(&path, rows, KeyKind::String, false)?;
            Ok(fixture)
        })
        .collect()
}

/// The commit the bench was run at, marked when the work tree had changes.
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    match (
        git(&["rev-parse", "--short", "HEAD"]),
        git(&["status", "--porcelain", "--untracked-files=no"]),
    ) {
        (Some(commit), Some(changes)) if !changes.is_empty() => format!("{commit}+changes"),
        (Some(commit), _) => commit,
        (None, _) => "unknown".to_owned(),
    }
}

/// The figures as text, to paste or compare.
fn print_summary(data: &ChartData) {
    let text = |value: Option<f64>| value.map_or_else(|| "—".to_owned(), number);
    println!("| writers | ours (inserts/s) | writes per commit | group-commit floor | ours / floor | raw rusqlite, mutex |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for point in &data.writers {
        let ratio = point
            .ours
            .zip(point.floor)
            .map(|(ours, floor)| ours / floor);
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            point.writers,
            text(point.ours),
            text(point.ours_writes_per_commit),
            text(point.floor),
            ratio.map_or_else(|| "—".to_owned(), |ratio| format!("{ratio:.2}x")),
            text(point.raw)
        );
    }
    println!();
    println!("| rows | open, ours (s) | raw scan + decode (s) | peak RSS, ours (MiB) | `HashMap` (MiB) |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for point in &data.open {
        println!(
            "| {} | {} | {} | {} | {} |",
            number(point.rows as f64),
            text(point.ours_secs),
            text(point.raw_secs),
            text(point.ours_rss_mib),
            text(point.hashmap_rss_mib)
        );
    }
    println!();
    println!("| propagation | writes | median (ms) | p90 (ms) | p99 (ms) | max (ms) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for distribution in &data.propagation {
        let times = &distribution.times_ms;
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            distribution.label,
            times.len(),
            text(crate::draw::quantile(times, 0.5)),
            text(crate::draw::quantile(times, 0.9)),
            text(crate::draw::quantile(times, 0.99)),
            text(times.last().copied())
        );
    }
}
