//! Durable sequential writes of ours and its raw anchors in one process, taking turns every
//! [`BURST`] writes in a rotating order. A durable write measures the disk as much as the code,
//! and this disk's speed drifts from one second to the next; in separate processes the ratio of
//! two rows moved by ±15% from run to run, taking turns it holds within a few percent.

use std::path::Path;
use std::time::{Duration, Instant};

use persistent_map::sqlite::SqliteBackend;
use persistent_map::PersistentMap;

use crate::handoff::WriterThread;
use crate::keys::{entries, with_keys, BenchKey, KeyKind};
use crate::raw;
use crate::workload::{per_second, report, BenchResult, Budget, Options, Session};

/// Writes one contender makes before the next takes its turn.
const BURST: usize = 100;

type Map<K> = PersistentMap<K, Session, SqliteBackend>;

/// `seq-insert` (ours, raw rusqlite, raw rusqlite on a writer thread) or `remove` (ours, raw
/// rusqlite), `--n` writes each.
pub(crate) fn run(workload: &str, options: &Options) -> BenchResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = Path::new(options.text("dir")?);
    let n = options.number("n")?;
    match workload {
        "seq-insert" => with_keys!(
            KeyKind::parse(options.text("keys")?)?,
            seq_insert(&runtime, dir, n, options)
        ),
        "remove" => remove(&runtime, dir, n, options),
        other => Err(format!("`paired` has no workload `{other}`").into()),
    }
}

fn seq_insert<K: BenchKey>(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    n: u64,
    options: &Options,
) -> BenchResult {
    let map = runtime.block_on(Map::<K>::open(dir.join("ours.db")))?;
    let connection = raw::open(&dir.join("raw.db"), K::TABLE_NAME)?;
    let thread = WriterThread::start(&dir.join("thread.db"), K::TABLE_NAME, Duration::ZERO)?;
    let mut ours = entries::<K>(n).into_iter();
    let anchors = entries::<K>(n);
    let bursts: Vec<&[(K, Session)]> = anchors.chunks(BURST).collect();
    let tallies = take_turns(
        &bursts.iter().map(|burst| burst.len()).collect::<Vec<_>>(),
        options,
        &mut [
            &mut |round| {
                let burst: Vec<_> = ours.by_ref().take(bursts[round].len()).collect();
                runtime.block_on(async {
                    for (key, value) in burst {
                        map.insert(key, value).await?;
                    }
                    BenchResult::Ok(())
                })
            },
            &mut |round| {
                bursts[round]
                    .iter()
                    .try_for_each(|(key, value)| raw::upsert(&connection, key, value))
            },
            &mut |round| {
                runtime.block_on(async {
                    for (key, value) in bursts[round] {
                        thread.upsert(key, value).await?;
                    }
                    BenchResult::Ok(())
                })
            },
        ],
    )?;
    thread.stop()?;
    let stats = map.backend().stats();
    let mut metrics = rates(&["ours", "raw", "raw_thread"], &tallies);
    metrics.extend([
        ("commits".to_owned(), stats.commits as f64),
        ("writes".to_owned(), stats.writes as f64),
    ]);
    report_owned(&metrics)
}

fn remove(runtime: &tokio::runtime::Runtime, dir: &Path, n: u64, options: &Options) -> BenchResult {
    let map = runtime.block_on(Map::<String>::open(dir.join("ours.db")))?;
    let mut connection = raw::open(&dir.join("raw.db"), "kv")?;
    let stored = entries::<String>(n);
    runtime.block_on(map.insert_many(stored.iter().cloned()))?;
    raw::in_one_transaction(&mut connection, &stored)?;
    let bursts: Vec<&[(String, Session)]> = stored.chunks(BURST).collect();
    let tallies = take_turns(
        &bursts.iter().map(|burst| burst.len()).collect::<Vec<_>>(),
        options,
        &mut [
            &mut |round| {
                runtime.block_on(async {
                    for (key, _) in bursts[round] {
                        map.remove(key).await?;
                    }
                    BenchResult::Ok(())
                })
            },
            &mut |round| {
                let mut delete = connection.prepare_cached("DELETE FROM kv WHERE key = ?1")?;
                for (key, _) in bursts[round] {
                    delete.execute([key])?;
                }
                Ok(())
            },
        ],
    )?;
    report_owned(&rates(&["ours", "raw"], &tallies))
}

/// Time spent and writes made by one contender.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    elapsed: Duration,
    writes: u64,
}

/// Runs a round per entry of `bursts` (fewer if the time budget, one writer's per contender, runs
/// out) in which every contender makes its burst of that round (`bursts[round]` writes), the
/// first to go rotating from round to round.
fn take_turns(
    bursts: &[usize],
    options: &Options,
    contenders: &mut [&mut dyn FnMut(usize) -> BenchResult],
) -> BenchResult<Vec<Tally>> {
    let budget = Budget::shared_by(contenders.len(), options)?;
    let mut tallies = vec![Tally::default(); contenders.len()];
    for (round, &writes) in bursts.iter().enumerate() {
        if !budget.left() {
            break;
        }
        for i in 0..contenders.len() {
            let who = (i + round) % contenders.len();
            let began = Instant::now();
            contenders[who](round)?;
            tallies[who].elapsed += began.elapsed();
            tallies[who].writes += writes as u64;
        }
    }
    Ok(tallies)
}

/// `<name>_ops_per_sec` for every contender, and `ops`: the writes each made (all the same).
fn rates(names: &[&str], tallies: &[Tally]) -> Vec<(String, f64)> {
    let mut metrics: Vec<(String, f64)> = names
        .iter()
        .zip(tallies)
        .map(|(name, tally)| {
            let rate = per_second(tally.writes, tally.elapsed);
            (format!("{name}_ops_per_sec"), rate)
        })
        .collect();
    let ops = tallies.first().map_or(0, |tally| tally.writes);
    metrics.push(("ops".to_owned(), ops as f64));
    metrics
}

fn report_owned(metrics: &[(String, f64)]) -> BenchResult {
    let metrics: Vec<(&str, f64)> = metrics
        .iter()
        .map(|(name, value)| (name.as_str(), *value))
        .collect();
    report(&metrics)
}
