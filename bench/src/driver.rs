//! The driver: builds the old crate's binary, writes the fixtures, runs every measurement in a
//! fresh process (ours and its anchors taking turns), and prints the medians and ratios as a
//! Markdown table.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::keys::KeyKind;
use crate::postgres;
use crate::raw::write_fixture;
use crate::rows::{postgres_rows, rows, Better, Figure, Job, Program, Row, Sizes};
use crate::workload::{median, BenchResult, RESULT_PREFIX};

/// What the command line asked for.
#[derive(Debug)]
pub(crate) struct Settings {
    runs: usize,
    quick: bool,
    only: Vec<String>,
    dir: PathBuf,
    old: bool,
    command: String,
}

pub(crate) const USAGE: &str = "\
pm-bench: persistent-map against raw rusqlite, HashMap/DashMap and persistent-map 0.1.3

usage: cargo run --release -p persistent-map-bench -- [options]

  --runs N       measure every figure N times and print medians (default 5; 1 with --quick)
  --quick        smaller workloads (200k instead of 1M rows, fewer durable writes)
  --only A,B     only the rows with these ids (see --list)
  --list         print the row ids and exit
  --no-old       skip persistent-map 0.1.3 (no build of bench/old)
  --dir PATH     where the databases go (default: target/pm-bench; not a tmpfs)

The PostgreSQL rows (pg-*) run when pm-bench is built with its feature `postgres` and
PM_BENCH_POSTGRES_URL (else PM_TEST_POSTGRES_URL) names a server that answers; otherwise the
table says why they were skipped:

  PM_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
      cargo run --release -p persistent-map-bench --features postgres

The charts of BENCHMARKS.md, measured and drawn as SVG into bench/charts (see `charts --help`):

  cargo run --release -p persistent-map-bench -- charts

A single measurement: pm-bench run WORKLOAD IMPL --name value ... (see src/main.rs).";

impl Settings {
    /// Parses the driver's command line; `None` when it only asked for help or the row list.
    pub(crate) fn parse(args: &[String]) -> BenchResult<Option<Self>> {
        let mut settings = Self {
            runs: 0,
            quick: false,
            only: Vec::new(),
            dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pm-bench"),
            old: true,
            command: {
                let features = if cfg!(feature = "postgres") {
                    " --features postgres"
                } else {
                    ""
                };
                match args {
                    [] => format!("cargo run --release -p persistent-map-bench{features}"),
                    args => format!(
                        "cargo run --release -p persistent-map-bench{features} -- {}",
                        args.join(" ")
                    ),
                }
            },
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| format!("{arg} needs a value"))
                    .map(String::as_str)
            };
            match arg.as_str() {
                "--runs" => settings.runs = value()?.parse()?,
                "--quick" => settings.quick = true,
                "--only" => settings.only = value()?.split(',').map(str::to_owned).collect(),
                "--no-old" => settings.old = false,
                "--dir" => settings.dir = PathBuf::from(value()?),
                "--list" => {
                    for row in rows(&Sizes::new(false)) {
                        println!("{:<22} {}", row.id, row.title);
                    }
                    for row in postgres_rows(&Sizes::new(false)) {
                        println!("{:<22} PostgreSQL backend: {}", row.id, row.title);
                    }
                    return Ok(None);
                }
                "--help" | "-h" | "help" => {
                    println!("{USAGE}");
                    return Ok(None);
                }
                other => return Err(format!("unknown option `{other}`\n\n{USAGE}").into()),
            }
        }
        if settings.runs == 0 {
            settings.runs = if settings.quick { 1 } else { 5 };
        }
        Ok(Some(settings))
    }
}

/// Every sample, by job name and metric.
type Samples = HashMap<(String, String), Vec<f64>>;

/// The PostgreSQL rows of a suite run: the server they ran against, or why they did not run.
#[derive(Debug)]
enum Postgres {
    /// None of the rows asked for is a PostgreSQL row.
    NotAsked,
    Skipped(String),
    Ran {
        server: String,
        command: String,
    },
}

pub(crate) fn run(settings: &Settings) -> BenchResult {
    let started = Instant::now();
    let load_before = load_average();
    let sizes = Sizes::new(settings.quick);
    let wanted =
        |row: &Row| settings.only.is_empty() || settings.only.iter().any(|id| id == row.id);
    let mut postgres_rows: Vec<Row> = postgres_rows(&sizes).into_iter().filter(wanted).collect();
    let postgres = if postgres_rows.is_empty() {
        Postgres::NotAsked
    } else {
        match postgres::probe() {
            Ok(server) => Postgres::Ran {
                server,
                command: postgres_command(settings),
            },
            Err(reason) => {
                eprintln!("skipping the PostgreSQL rows: {reason}");
                postgres_rows.clear();
                Postgres::Skipped(reason)
            }
        }
    };
    let rows: Vec<Row> = rows(&sizes)
        .into_iter()
        .filter(wanted)
        .map(|mut row| {
            if !settings.old {
                row.anchors.retain(|anchor| {
                    anchor
                        .figures
                        .iter()
                        .all(|figure| figure.job.program != Program::Old)
                });
            }
            row
        })
        .collect();
    if rows.is_empty() && postgres_rows.is_empty() {
        return Err(match postgres {
            Postgres::Skipped(reason) => {
                format!("the PostgreSQL rows cannot run: {reason}\n\n{USAGE}").into()
            }
            _ => "no row matches --only; see --list".into(),
        });
    }
    let all_rows: Vec<&Row> = rows.iter().chain(&postgres_rows).collect();
    std::fs::create_dir_all(&settings.dir)?;
    let dir = settings.dir.canonicalize()?;
    let old_binary = if settings.old {
        Some(build_old()?)
    } else {
        None
    };
    write_fixtures(&dir, &all_rows)?;
    let fsync_before = measure_fsync(&dir)?;

    let mut samples = Samples::new();
    let mut failures = Vec::new();
    for run in 0..settings.runs {
        let mut done = HashSet::new();
        for row in &all_rows {
            let mut jobs: Vec<&Job> = row.jobs().filter(|job| done.insert(job.name())).collect();
            // Ours first on even runs, anchors first on odd ones.
            if run % 2 == 1 {
                jobs.reverse();
            }
            for job in jobs {
                eprint!("[run {}/{}] {} ... ", run + 1, settings.runs, job.name());
                match measure(job, &dir, old_binary.as_deref()) {
                    Ok(metrics) => {
                        eprintln!("{}", describe(&metrics));
                        for (metric, value) in metrics {
                            samples.entry((job.name(), metric)).or_default().push(value);
                        }
                    }
                    Err(error) => {
                        eprintln!("FAILED: {error}");
                        failures.push(format!("{} (run {}): {error}", job.name(), run + 1));
                    }
                }
            }
        }
    }
    let fsync_after = measure_fsync(&dir)?;
    let report = render(
        settings,
        &rows,
        &postgres_rows,
        &samples,
        &Context {
            dir: &dir,
            load_before,
            load_after: load_average(),
            fsync_micros: [fsync_before, fsync_after],
            minutes: started.elapsed().as_secs_f64() / 60.0,
            failures: &failures,
            postgres: &postgres,
        },
    );
    println!("{report}");
    std::fs::write(dir.join("results.md"), &report)?;
    std::fs::write(dir.join("samples.json"), samples_json(&samples)?)?;
    eprintln!(
        "(also written to {} and samples.json beside it)",
        dir.join("results.md").display()
    );
    Ok(())
}

/// Builds the old crate's binary with its own lock file and returns its path.
fn build_old() -> BenchResult<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("old/Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!(
        "building persistent-map 0.1.3's benchmark ({})",
        manifest.display()
    );
    let output = Command::new(cargo)
        .args(["build", "--release", "--locked", "--message-format"])
        .arg("json-render-diagnostics")
        .arg("--manifest-path")
        .arg(&manifest)
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err("building bench/old failed (see above); --no-old skips it".into());
    }
    String::from_utf8(output.stdout)?
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo built bench/old but named no executable".into())
}

/// The command line that runs these rows with the PostgreSQL ones, naming the server's variable.
fn postgres_command(settings: &Settings) -> String {
    match postgres::url() {
        Some((variable, url)) => format!(
            "{variable}={} {}",
            postgres::redacted(&url),
            settings.command
        ),
        None => settings.command.clone(),
    }
}

fn write_fixtures(dir: &Path, rows: &[&Row]) -> BenchResult {
    let wanted: HashSet<_> = rows
        .iter()
        .flat_map(|row| row.jobs())
        .filter_map(|job| job.fixture)
        .collect();
    let fixtures = dir.join("fixtures");
    if fixtures.exists() {
        std::fs::remove_dir_all(&fixtures)?;
    }
    std::fs::create_dir_all(&fixtures)?;
    for fixture in wanted {
        eprintln!("writing fixture {}", fixture.file_name());
        write_fixture(
            &fixtures.join(fixture.file_name()),
            fixture.rows,
            fixture.keys,
            fixture.old_index,
        )?;
    }
    Ok(())
}

/// Runs one job in a process of its own, in an empty directory, and returns its metrics.
fn measure(job: &Job, dir: &Path, old_binary: Option<&Path>) -> BenchResult<Vec<(String, f64)>> {
    measure_with(job, dir, old_binary, &[])
}

/// [`measure`], with `extra` appended to the job's command line.
pub(crate) fn measure_with(
    job: &Job,
    dir: &Path,
    old_binary: Option<&Path>,
    extra: &[std::ffi::OsString],
) -> BenchResult<Vec<(String, f64)>> {
    let work = dir.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let mut command = match job.program {
        Program::Ours => {
            let mut command = Command::new(std::env::current_exe()?);
            command.args(["run", job.workload, job.implementation]);
            command
        }
        Program::Old => {
            let mut command = Command::new(old_binary.ok_or("bench/old was not built")?);
            command.arg(job.workload);
            command
        }
    };
    command.arg("--dir").arg(&work);
    command.args(["--keys", job.keys_name()]);
    for (name, value) in job.args {
        command.arg(format!("--{name}")).arg(value);
    }
    if let Some(n) = job.n {
        command.args(["--n", &n.to_string()]);
    }
    if let Some(fixture) = job.fixture {
        command
            .arg("--db")
            .arg(dir.join("fixtures").join(fixture.file_name()));
    }
    command.args(extra);
    let output = command.stderr(Stdio::inherit()).output()?;
    std::fs::remove_dir_all(&work)?;
    if !output.status.success() {
        return Err(format!("exited with {}", output.status).into());
    }
    let stdout = String::from_utf8(output.stdout)?;
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix(RESULT_PREFIX))
        .ok_or("printed no result")?;
    let metrics: HashMap<String, f64> = serde_json::from_str(line)?;
    let mut metrics: Vec<_> = metrics.into_iter().collect();
    metrics.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(metrics)
}

fn describe(metrics: &[(String, f64)]) -> String {
    metrics
        .iter()
        .map(|(name, value)| format!("{name}={}", number(*value)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Microseconds per 4 KiB write + `fdatasync` in the benchmark directory, into a file written
/// and synced beforehand (as SQLite reuses its WAL file): the floor of a durable commit.
pub(crate) fn measure_fsync(dir: &Path) -> BenchResult<f64> {
    use std::os::unix::fs::FileExt;
    const WRITES: u64 = 200;
    let path = dir.join("fsync-probe");
    let file = std::fs::File::create(&path)?;
    file.write_all_at(&vec![0u8; 4096 * WRITES as usize], 0)?;
    file.sync_all()?;
    let block = [7u8; 4096];
    let mut times = Vec::new();
    for i in 0..WRITES {
        let began = Instant::now();
        file.write_all_at(&block, 4096 * i)?;
        file.sync_data()?;
        times.push(began.elapsed().as_secs_f64() * 1e6);
    }
    std::fs::remove_file(&path)?;
    Ok(median(times))
}

struct Context<'a> {
    dir: &'a Path,
    load_before: String,
    load_after: String,
    /// Before and after the runs.
    fsync_micros: [f64; 2],
    minutes: f64,
    failures: &'a [String],
    postgres: &'a Postgres,
}

fn render(
    settings: &Settings,
    rows: &[Row],
    postgres_rows: &[Row],
    samples: &Samples,
    context: &Context<'_>,
) -> String {
    let mut out = String::new();
    let command = match context.postgres {
        Postgres::Ran { command, .. } => command,
        _ => &settings.command,
    };
    let _ = writeln!(out, "Command: `{command}`\n");
    let _ = writeln!(out, "- machine: {}", machine());
    let _ = writeln!(
        out,
        "- databases in `{}` ({}); a 4 KiB write + fdatasync there took {:.0} µs before the \
         runs and {:.0} µs after (medians of 200)",
        context.dir.display(),
        filesystem(context.dir),
        context.fsync_micros[0],
        context.fsync_micros[1],
    );
    let _ = writeln!(
        out,
        "- load average before: {}; after: {}; the suite took {:.1} min",
        context.load_before, context.load_after, context.minutes
    );
    let _ = writeln!(
        out,
        "- {} runs of every job, each job a fresh process (the `paired` and `reads` jobs hold ours and \
         its anchors in one process, taking turns); medians below; ratio = ours / anchor\n",
        settings.runs
    );
    if !rows.is_empty() {
        out.push_str(
            "| row | workload | unit | ours | anchor | anchor's figure | ours / anchor | target |\n",
        );
        out.push_str("| --- | --- | --- | ---: | --- | ---: | ---: | --- |\n");
        render_rows(&mut out, rows, samples, true);
    }
    if let (Postgres::Ran { server, .. }, false) = (context.postgres, postgres_rows.is_empty()) {
        if !rows.is_empty() {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "PostgreSQL backend: {server}. Ours is our map on PostgreSQL; the anchors are raw \
             tokio-postgres over the same server (the targets) and our map on SQLite, measured \
             in this run, the PostgreSQL jobs without TLS; ratio = ours / anchor\n"
        );
        out.push_str(
            "| row | workload | unit | ours (PostgreSQL) | anchor | anchor's figure | ours / anchor | target |\n",
        );
        out.push_str("| --- | --- | --- | ---: | --- | ---: | ---: | --- |\n");
        render_rows(&mut out, postgres_rows, samples, true);
    }
    out.push('\n');
    let labelled = rows
        .iter()
        .map(|row| (row, "ours"))
        .chain(postgres_rows.iter().map(|row| (row, "PostgreSQL")));
    for (row, who) in labelled {
        if let (Some(commits), Some(writes)) = (
            median_of(samples, &row.ours.with_metric("commits")),
            median_of(samples, &row.ours.with_metric("writes")),
        ) {
            let _ = writeln!(
                out,
                "- `{}`: {who} served {:.1} writes per commit ({} commits for {} writes, median)",
                row.id,
                writes / commits,
                number(commits),
                number(writes)
            );
        }
    }
    let mut noted = HashSet::new();
    for job in rows.iter().chain(postgres_rows).flat_map(Row::jobs) {
        let (Some(planned), Some(made)) = (
            job.planned_writes(),
            samples.get(&(job.name(), "ops".to_owned())),
        ) else {
            continue;
        };
        let short = made.iter().filter(|&&ops| ops < planned as f64).count();
        if short > 0 && noted.insert(job.name()) {
            let _ = writeln!(
                out,
                "- `{}` ran out of its time budget before {planned} writes in {short} of {} runs; \
                 its rate is over the writes it made",
                job.name(),
                made.len()
            );
        }
    }
    if let Postgres::Skipped(reason) = context.postgres {
        let _ = writeln!(
            out,
            "- the PostgreSQL rows were skipped: {reason}. To run them: \
             `PM_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo run --release \
             -p persistent-map-bench --features postgres`"
        );
    }
    for failure in context.failures {
        let _ = writeln!(out, "- FAILED: {failure}");
    }
    out
}

/// The table lines of `rows`, with the target column or without it.
fn render_rows(out: &mut String, rows: &[Row], samples: &Samples, targets: bool) {
    for row in rows {
        let ours = median_of(samples, &row.ours);
        for (i, anchor) in row.anchors.iter().enumerate() {
            let best = anchor
                .figures
                .iter()
                .map(|figure| (figure, median_of(samples, figure)))
                .filter(|(_, value)| value.is_some())
                .max_by(|a, b| row.better.compare(a.1, b.1));
            let (label, figure) = match (&anchor.figures[..], best) {
                (_, None) => (anchor.label.to_owned(), None),
                ([_], Some((_, value))) => (anchor.label.to_owned(), value),
                (_, Some((figure, value))) => (
                    format!("{} (the faster: {})", anchor.label, figure.label),
                    value,
                ),
            };
            let ratio = ours.zip(figure).map(|(ours, anchor)| ours / anchor);
            let target = match (anchor.target, ratio) {
                (None, _) => String::new(),
                (Some(target), None) => format!("{} {target:.2}x: not measured", row.better.sign()),
                (Some(target), Some(ratio)) => format!(
                    "{} {target:.2}x: **{}**",
                    row.better.sign(),
                    if row.better.meets(ratio, target) {
                        "met"
                    } else {
                        "missed"
                    }
                ),
            };
            let (id, title, unit, ours_text) = if i == 0 {
                (row.id, row.title.as_str(), row.unit, figure_text(ours))
            } else {
                ("", "", "", String::new())
            };
            let target = if targets {
                format!(" {target} |")
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "| {id} | {title} | {unit} | {ours_text} | {label} | {} | {} |{target}",
                figure_text(figure),
                ratio.map_or_else(|| "—".to_owned(), |ratio| format!("{ratio:.2}x")),
            );
        }
    }
}

fn median_of(samples: &Samples, figure: &Figure) -> Option<f64> {
    samples
        .get(&(figure.job.name(), figure.metric.to_owned()))
        .map(|values| median(values.clone()))
}

fn figure_text(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), number)
}

/// A figure with three significant digits and thousands separators.
pub(crate) fn number(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let decimals = match value.abs() {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        v if v >= 1.0 => 2,
        _ => 3,
    };
    let text = format!("{value:.decimals$}");
    let (integer, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let (sign, digits) = integer
        .strip_prefix('-')
        .map_or(("", integer), |digits| ("-", digits));
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    match fraction {
        "" => format!("{sign}{grouped}"),
        fraction => format!("{sign}{grouped}.{fraction}"),
    }
}

fn samples_json(samples: &Samples) -> BenchResult<String> {
    let mut by_key: Vec<(String, &Vec<f64>)> = samples
        .iter()
        .map(|((job, metric), values)| (format!("{job} {metric}"), values))
        .collect();
    by_key.sort_by(|a, b| a.0.cmp(&b.0));
    let map: serde_json::Map<String, serde_json::Value> = by_key
        .into_iter()
        .map(|(key, values)| (key, serde_json::json!(values)))
        .collect();
    Ok(serde_json::to_string_pretty(&map)?)
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or_else(String::new, |kib| {
            format!(", {:.0} GiB RAM", kib / 1024.0 / 1024.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}){memory}, Linux {}, SQLite {} (ours and raw rusqlite)",
        kernel.trim(),
        rusqlite::version()
    )
}

/// The filesystem `dir` is on, from `/proc/mounts` (the longest mount point above it).
fn filesystem(dir: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields[..] {
                [device, mount_point, fs_type, ..] if dir.starts_with(mount_point) => {
                    Some((mount_point.len(), format!("{fs_type} on {device}")))
                }
                _ => None,
            }
        })
        .max_by_key(|(length, _)| *length)
        .map_or_else(|| "unknown filesystem".to_owned(), |(_, fs)| fs)
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|load| {
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

impl Better {
    /// Orders two figures so that the better one is the greater.
    fn compare(self, a: Option<f64>, b: Option<f64>) -> std::cmp::Ordering {
        let (a, b) = (a.unwrap_or(f64::NAN), b.unwrap_or(f64::NAN));
        match self {
            Better::Higher => a.total_cmp(&b),
            Better::Lower => b.total_cmp(&a),
        }
    }

    fn sign(self) -> &'static str {
        match self {
            Better::Higher => "≥",
            Better::Lower => "≤",
        }
    }

    fn meets(self, ratio: f64, target: f64) -> bool {
        match self {
            Better::Higher => ratio >= target,
            Better::Lower => ratio <= target,
        }
    }
}

impl Job {
    fn keys_name(&self) -> &'static str {
        match self.keys {
            KeyKind::String => "string",
            KeyKind::Composite => "composite",
        }
    }
}
