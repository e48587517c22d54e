//! What every implementation is measured with: the keys, the value, the random read order, and
//! how a measuring process reports back to the driver.
//!
//! The old-crate binary (`bench/old`) includes this file by path: it cannot depend on this crate,
//! whose SQLite would clash with the one persistent-map 0.1.3 links, and the workloads must be the
//! same data on both sides.

use std::collections::HashMap;
use std::error::Error;
use std::hint::black_box;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The error type of every measuring function: a benchmark that fails just stops and says why.
pub(crate) type BenchResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// A measuring process prints exactly one line starting with this, followed by its metrics as
/// JSON; everything else it prints is for people.
pub(crate) const RESULT_PREFIX: &str = "PM-BENCH-RESULT ";

/// Writers in the concurrent workloads, unless `--tasks` says otherwise.
pub(crate) const TASKS: u64 = 16;

/// Keys the 16 writers of the hot-keys workload share.
pub(crate) const HOT_KEYS: u64 = 4;

/// Random reads measured by the `load` workloads unless `--reads` says otherwise.
pub(crate) const READS: u64 = 1_000_000;

/// How long a write workload keeps starting writes unless `--seconds` says otherwise: on a slow
/// disk a job stops early (and reports the rate of the writes it made) so that the suite still
/// ends in reasonable time.
const WRITE_SECONDS: f64 = 3.0;

/// The stored value: a small serde struct whose JSON is about 117 bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Session {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) email: String,
    pub(crate) active: bool,
    pub(crate) logins: u32,
    pub(crate) roles: Vec<String>,
}

/// The `i`-th key of the String-keyed workloads: `key-000123`.
pub(crate) fn key(i: u64) -> String {
    format!("key-{i:06}")
}

/// The value stored under the `i`-th key.
pub(crate) fn value(i: u64) -> Session {
    Session {
        id: i,
        name: format!("user-{i:06}"),
        email: format!("u{i:06}@example.com"),
        active: !i.is_multiple_of(3),
        logins: (i % 1000) as u32,
        roles: vec!["reader".to_owned(), "writer".to_owned()],
    }
}

/// The key the `task`-th writer of the hot-keys workload writes.
pub(crate) fn hot_key(task: u64) -> String {
    key(task % HOT_KEYS)
}

/// `count` indexes below `bound` in a fixed pseudo-random order (xorshift64*), the same in every
/// process, so every implementation reads the same keys in the same order.
pub(crate) fn random_indexes(count: usize, bound: u64) -> Vec<u64> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..count)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
        })
        .collect()
}

/// The most memory this process has held so far (`VmHWM`), in MiB.
pub(crate) fn peak_rss_mib() -> BenchResult<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .ok_or("no VmHWM in /proc/self/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib / 1024.0)
}

pub(crate) fn per_second(ops: u64, elapsed: Duration) -> f64 {
    ops as f64 / elapsed.as_secs_f64()
}

/// When a write workload stops starting writes; started right before its timed part.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    ends: Instant,
}

impl Budget {
    /// The budget of one writer.
    pub(crate) fn start(options: &Options) -> BenchResult<Self> {
        Self::shared_by(1, options)
    }

    /// The budget of a job whose `writers` take turns: each one's, times `writers`.
    pub(crate) fn shared_by(writers: usize, options: &Options) -> BenchResult<Self> {
        let seconds = match options.text("seconds") {
            Ok(text) => text.parse()?,
            Err(_) => WRITE_SECONDS,
        };
        Ok(Self {
            ends: Instant::now() + Duration::from_secs_f64(seconds * writers as f64),
        })
    }

    /// Whether another write may start.
    pub(crate) fn left(&self) -> bool {
        Instant::now() < self.ends
    }
}

/// Runs `work` and returns what it returned and how long it took.
pub(crate) fn timed<T>(work: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let result = work();
    (result, start.elapsed())
}

/// How many timed passes over the queries each reader makes.
const READ_PASSES: usize = 3;

/// Queries per turn: readers take turns every this many reads, so that a noisy moment of the
/// machine hits them all alike.
const READ_TURN: usize = 20_000;

/// Times `readers` over `queries` (none if there are no queries): a warm-up, then
/// [`READ_PASSES`] passes in which the readers take turns every [`READ_TURN`] queries, in a
/// rotating order so that none always reads right after another warmed the same query keys.
/// Returns each reader's mean nanoseconds per read, in order.
pub(crate) fn time_reads<Q>(queries: &[Q], readers: &mut [&mut dyn FnMut(&Q)]) -> Vec<f64> {
    if queries.is_empty() {
        return Vec::new();
    }
    let warm_up = queries.len().min(200_000);
    for read in readers.iter_mut() {
        queries[..warm_up].iter().for_each(&mut **read);
    }
    let mut totals = vec![Duration::ZERO; readers.len()];
    for pass in 0..READ_PASSES {
        for (turn, slice) in queries.chunks(READ_TURN).enumerate() {
            for i in 0..readers.len() {
                let reader = (i + pass + turn) % readers.len();
                let ((), elapsed) = timed(|| slice.iter().for_each(&mut *readers[reader]));
                totals[reader] += elapsed;
            }
        }
    }
    let reads = (READ_PASSES * queries.len()) as f64;
    totals
        .into_iter()
        .map(|total| total.as_nanos() as f64 / reads)
        .collect()
}

/// Names the figures [`time_reads`] returned (none, if it measured none).
pub(crate) fn named<'a>(names: &[&'a str], figures: &[f64]) -> Vec<(&'a str, f64)> {
    names.iter().copied().zip(figures.iter().copied()).collect()
}

/// Leaves what a load workload loaded to the operating system: the process ends right after,
/// and freeing a million entries one by one would only make the suite slower (and profiles of
/// the load noisier).
pub(crate) fn leak<T>(loaded: T) {
    std::mem::forget(loaded);
}

/// Keeps `value` alive as far as the optimizer can tell, so a read is not optimized away.
pub(crate) fn consume<T>(value: T) {
    drop(black_box(value));
}

pub(crate) fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    match samples.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => samples[n / 2],
        n => (samples[n / 2 - 1] + samples[n / 2]) / 2.0,
    }
}

/// Prints the one result line the driver reads.
pub(crate) fn report(metrics: &[(&str, f64)]) -> BenchResult {
    let metrics: HashMap<&str, f64> = metrics.iter().copied().collect();
    println!("{RESULT_PREFIX}{}", serde_json::to_string(&metrics)?);
    Ok(())
}

/// A measuring process's command line after its workload name: `--name value` pairs.
#[derive(Debug)]
pub(crate) struct Options(HashMap<String, String>);

impl Options {
    pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> BenchResult<Self> {
        let mut options = HashMap::new();
        let mut args = args.into_iter();
        while let Some(name) = args.next() {
            let name = name
                .strip_prefix("--")
                .ok_or_else(|| format!("expected `--name value`, found `{name}`"))?;
            let value = args
                .next()
                .ok_or_else(|| format!("--{name} needs a value"))?;
            options.insert(name.to_owned(), value);
        }
        Ok(Self(options))
    }

    pub(crate) fn text(&self, name: &str) -> BenchResult<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("missing --{name}").into())
    }

    pub(crate) fn number(&self, name: &str) -> BenchResult<u64> {
        Ok(self.text(name)?.parse()?)
    }

    /// How many writers a concurrent workload runs (`--tasks`, default [`TASKS`]).
    pub(crate) fn tasks(&self) -> BenchResult<u64> {
        match self.0.contains_key("tasks") {
            true => Ok(self.number("tasks")?.max(1)),
            false => Ok(TASKS),
        }
    }

    /// How many random reads a `load` workload measures (`--reads`, default [`READS`]).
    pub(crate) fn reads(&self) -> BenchResult<u64> {
        match self.0.contains_key("reads") {
            true => self.number("reads"),
            false => Ok(READS),
        }
    }
}
