//! Propagation: how long after one instance's acknowledged `insert` another instance's map
//! returns the new value.
//!
//! Both instances hold the same [`Plan::entries`] entries, stored before the first write. Then
//! the writer makes [`Plan::writes`] writes one at a time, write `i` setting
//! `key(i % entries)` to a value no earlier write stored ([`write()`]), and waits for the other
//! instance to see each before it makes the next. Before each write it pauses for a
//! pseudo-random time in `[0, pause)`, so that writes land at every phase of a follower that
//! polls (SQLite: `pause` = the refresh interval) instead of right after its last refresh.
//!
//! The other instance waits on its map's change feed ([`PersistentMap::subscribe`]): after each
//! change it is told of, it checks with `get_with` whether the key holds the written value, and
//! stamps the moment it does. No polling, and nothing spins on the two cores the writer, the
//! follower (and PostgreSQL) share. A change reaches the feed after the map applied it, so the
//! stamp is when `get` returns the new value, at most a wake-up of the waiting task later.
//! Both stamps are `SystemTime` (the same clock in both processes of the SQLite job); the
//! figure is the follower's stamp minus the writer's, taken right after `insert` returned `Ok`.
//!
//! - SQLite (`pm-bench run propagation ours`): the writer is this process; the follower is a
//!   second process (`pm-bench run follow ours`) on the same file, since two maps in one process
//!   share one connection, which does not see its own commits as another's. Both run
//!   `refresh_every(interval)`; a refresh asks `PRAGMA data_version` and reloads the table when
//!   another connection committed, so the interval bounds the figure.
//! - PostgreSQL (`pm-bench run propagation pg`, in `postgres.rs`): two maps on two backends (two
//!   connections) in this process, both running `refresh_every(interval)`, which the other's
//!   `NOTIFY` wakes at once; the follower then re-reads the announced key.

use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use persistent_map::sqlite::SqliteBackend;
use persistent_map::{PersistentMap, RecvError, StorageBackend, Subscription};

use crate::workload::{key, random_indexes, report, value, BenchResult, Options, Session};

/// Entries both instances hold unless `--entries` says otherwise.
pub(crate) const ENTRIES: u64 = 1_000;

/// A propagation job stops starting writes after this long (a follower that polls every 10 ms
/// needs about 10 s for 1,000 writes), unless `--seconds` says otherwise.
const SECONDS: f64 = 40.0;

/// What the follower prints when it holds the entries and follows the writer.
const READY: &str = "ready";

/// What a propagation job does; the follower of the SQLite job gets the same options.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Writes made, one at a time.
    pub(crate) writes: u64,
    /// Entries stored before the first write (and written over by the writes).
    pub(crate) entries: u64,
    /// Both instances' `refresh_every` interval.
    pub(crate) interval: Duration,
    /// Each write waits a pseudo-random time below this first.
    pub(crate) pause: Duration,
    /// No write starts after this long.
    pub(crate) seconds: f64,
}

impl Plan {
    pub(crate) fn from_options(options: &Options) -> BenchResult<Self> {
        let optional = |name: &str, default: u64| match options.text(name) {
            Ok(text) => text.parse::<u64>(),
            Err(_) => Ok(default),
        };
        Ok(Self {
            writes: options.number("n")?,
            entries: optional("entries", ENTRIES)?.max(1),
            interval: Duration::from_micros(options.number("interval-us")?.max(1)),
            pause: Duration::from_micros(options.number("pause-us")?),
            seconds: match options.text("seconds") {
                Ok(text) => text.parse()?,
                Err(_) => SECONDS,
            },
        })
    }

    /// The options that give the follower this plan.
    fn args(&self) -> Vec<String> {
        [
            ("--n", self.writes.to_string()),
            ("--entries", self.entries.to_string()),
            ("--interval-us", self.interval.as_micros().to_string()),
            ("--pause-us", self.pause.as_micros().to_string()),
        ]
        .into_iter()
        .flat_map(|(name, value)| [name.to_owned(), value])
        .collect()
    }

    /// The entries stored before the first write.
    pub(crate) fn initial(&self) -> Vec<(String, Session)> {
        (0..self.entries).map(|i| (key(i), value(i))).collect()
    }
}

/// Write `i`: which key it sets, to which new value.
pub(crate) fn write(i: u64, plan: &Plan) -> (String, Session) {
    (key(i % plan.entries), value(plan.entries + i))
}

/// Nanoseconds since the Unix epoch: a clock both processes of the SQLite job read alike.
pub(crate) fn now_ns() -> BenchResult<i128> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as i128)
}

/// Waits until `map` returns `value` for `key`, woken by `changes` (subscribed before the write
/// could be applied), and returns the moment it does.
pub(crate) async fn visible<B>(
    map: &PersistentMap<String, Session, B>,
    changes: &mut Subscription<String, Session>,
    key: &str,
    value: &Session,
) -> BenchResult<i128>
where
    B: StorageBackend<String, Session> + Send + Sync + 'static,
{
    loop {
        if map.get_with(key, |stored| stored == value) == Some(true) {
            return now_ns();
        }
        match changes.recv().await {
            // Lagging only means changes were dropped; the map itself is current.
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(error) => return Err(format!("the follower's change feed ended: {error}").into()),
        }
    }
}

/// Makes the plan's writes through `writer` one at a time; `seen(i)` waits until the other
/// instance returns write `i` and gives the moment it did. Returns each write's propagation
/// time in milliseconds (negative if the other instance saw it before `insert` returned).
pub(crate) fn write_one_at_a_time<B>(
    runtime: &tokio::runtime::Runtime,
    writer: &PersistentMap<String, Session, B>,
    plan: &Plan,
    seen: impl FnMut(u64) -> BenchResult<i128>,
) -> BenchResult<Vec<f64>>
where
    B: StorageBackend<String, Session> + Send + Sync + 'static,
{
    time_writes(
        plan,
        |key, value| {
            runtime.block_on(writer.insert(key, value))?;
            Ok(())
        },
        seen,
    )
}

/// Makes the plan's writes one at a time with `acknowledged_write`, which returns once the
/// write is acknowledged, each after its pause; `seen(i)` waits until the other side has write `i` and
/// gives the moment it did. Returns each write's time from its acknowledgement to that moment,
/// in milliseconds.
pub(crate) fn time_writes(
    plan: &Plan,
    mut acknowledged_write: impl FnMut(String, Session) -> BenchResult,
    mut seen: impl FnMut(u64) -> BenchResult<i128>,
) -> BenchResult<Vec<f64>> {
    let pause_ns = plan.pause.as_nanos().max(1) as u64;
    let pauses = random_indexes(plan.writes as usize, pause_ns);
    let ends = Instant::now() + Duration::from_secs_f64(plan.seconds);
    let mut times = Vec::with_capacity(plan.writes as usize);
    for (i, pause) in (0..plan.writes).zip(pauses) {
        if Instant::now() >= ends {
            break;
        }
        std::thread::sleep(Duration::from_nanos(pause));
        let (key, value) = write(i, plan);
        acknowledged_write(key, value)?;
        let acknowledged = now_ns()?;
        let visible = seen(i)?;
        times.push((visible - acknowledged) as f64 / 1e6);
    }
    Ok(times)
}

/// Reports the median, p99 (nearest rank), minimum and maximum of `times` (ms), and `ops`; with
/// `--times FILE`, also writes every time to `FILE` as a JSON array (the charts' distribution).
pub(crate) fn report_times(mut times: Vec<f64>, options: &Options) -> BenchResult {
    if times.is_empty() {
        return Err("no write was made".into());
    }
    times.sort_by(f64::total_cmp);
    if let Ok(file) = options.text("times") {
        std::fs::write(file, serde_json::to_string(&times)?)?;
    }
    let rank = |fraction: f64| {
        let index = (fraction * times.len() as f64).ceil() as usize;
        times[index.clamp(1, times.len()) - 1]
    };
    report(&[
        ("median_ms", crate::workload::median(times.clone())),
        ("p99_ms", rank(0.99)),
        ("min_ms", times[0]),
        ("max_ms", times[times.len() - 1]),
        ("ops", times.len() as f64),
    ])
}

type SqliteMap = PersistentMap<String, Session, SqliteBackend>;

/// `pm-bench run propagation ours` (the writer, which starts the follower) or
/// `pm-bench run follow ours --db FILE` (the follower).
pub(crate) fn sqlite(workload: &str, options: &Options) -> BenchResult {
    let plan = Plan::from_options(options)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match workload {
        "propagation" => sqlite_writer(&runtime, options, &plan),
        "follow" => sqlite_follower(&runtime, Path::new(options.text("db")?), &plan),
        other => Err(format!("propagation has no workload `{other}`").into()),
    }
}

fn sqlite_writer(runtime: &tokio::runtime::Runtime, options: &Options, plan: &Plan) -> BenchResult {
    let path = Path::new(options.text("dir")?).join("ours.db");
    let writer = runtime.block_on(async {
        let map = SqliteMap::open(&path).await?;
        map.insert_many(plan.initial()).await?;
        BenchResult::Ok(map)
    })?;
    let _follow = runtime.block_on(async { writer.refresh_every(plan.interval) });
    let mut follower = Follower::start(&path, plan)?;
    let times = write_one_at_a_time(runtime, &writer, plan, |i| follower.seen(i));
    follower.stop()?;
    report_times(times?, options)
}

/// The follower process, read line by line.
struct Follower {
    child: Child,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Follower {
    fn start(db: &Path, plan: &Plan) -> BenchResult<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["run", "follow", "ours", "--db"])
            .arg(db)
            .args(plan.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("the follower has no stdout")?;
        let mut follower = Self {
            child,
            lines: BufReader::new(stdout).lines(),
        };
        match follower.next_line()?.as_str() {
            READY => Ok(follower),
            other => Err(format!("the follower said `{other}` instead of `{READY}`").into()),
        }
    }

    fn next_line(&mut self) -> BenchResult<String> {
        match self.lines.next() {
            Some(line) => Ok(line?),
            None => Err(format!("the follower ended ({})", self.child.wait()?).into()),
        }
    }

    /// Waits for the follower's `seen I NANOS` of write `i`.
    fn seen(&mut self, i: u64) -> BenchResult<i128> {
        let line = self.next_line()?;
        match line.split(' ').collect::<Vec<_>>()[..] {
            ["seen", index, nanos] if index.parse::<u64>()? == i => Ok(nanos.parse()?),
            _ => Err(format!("the follower said `{line}` while write {i} was awaited").into()),
        }
    }

    /// Ends the follower, which may still wait for writes the time budget did not start.
    fn stop(mut self) -> BenchResult {
        if self.child.try_wait()?.is_none() {
            self.child.kill()?;
        }
        self.child.wait()?;
        Ok(())
    }
}

fn sqlite_follower(runtime: &tokio::runtime::Runtime, db: &Path, plan: &Plan) -> BenchResult {
    runtime.block_on(async {
        let map = SqliteMap::open(db).await?;
        if map.len() as u64 != plan.entries {
            return Err(format!(
                "the follower loaded {} entries, not {}",
                map.len(),
                plan.entries
            )
            .into());
        }
        let mut changes = map.subscribe();
        let _follow = map.refresh_every(plan.interval);
        let mut out = std::io::stdout().lock();
        writeln!(out, "{READY}")?;
        out.flush()?;
        for i in 0..plan.writes {
            let (key, value) = write(i, plan);
            let nanos = visible(&map, &mut changes, &key, &value).await?;
            writeln!(out, "seen {i} {nanos}")?;
            out.flush()?;
        }
        Ok(())
    })
}
