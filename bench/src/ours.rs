//! Our map, persistent-map from this workspace, with its defaults: SQLite, WAL,
//! `synchronous=FULL`, group commit.

use std::path::Path;
use std::time::Instant;

use persistent_map::sqlite::SqliteBackend;
use persistent_map::PersistentMap;

use crate::keys::{entries, with_keys, BenchKey, KeyKind};
use crate::memory::queries;
use crate::workload::{
    consume, hot_key, key, peak_rss_mib, per_second, report, time_reads, value, BenchResult,
    Options, Session, TASKS,
};

type Map<K> = PersistentMap<K, Session, SqliteBackend>;

pub(crate) fn run(workload: &str, options: &Options) -> BenchResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = || options.text("dir").map(Path::new);
    let n = || options.number("n");
    runtime.block_on(async {
        match workload {
            "seq-insert" => {
                with_keys!(
                    KeyKind::parse(options.text("keys")?)?,
                    seq_insert(dir()?, n()?).await
                )
            }
            "concurrent-insert" => concurrent(dir()?, n()?, |_, index| key(index)).await,
            "hot-keys" => concurrent(dir()?, n()?, |task, _| hot_key(task)).await,
            "remove" => remove(dir()?, n()?).await,
            "load" => {
                with_keys!(
                    KeyKind::parse(options.text("keys")?)?,
                    load(Path::new(options.text("db")?)).await
                )
            }
            "insert-many" => insert_many(dir()?, n()?).await,
            other => Err(format!("our map has no workload `{other}`").into()),
        }
    })
}

async fn open<K: BenchKey>(dir: &Path) -> BenchResult<Map<K>> {
    Ok(Map::<K>::open(dir.join("ours.db")).await?)
}

/// The figures every write workload reports: throughput, and how many writes a commit served.
fn report_writes<K: BenchKey>(map: &Map<K>, ops: u64, began: Instant) -> BenchResult {
    let ops_per_sec = per_second(ops, began.elapsed());
    let stats = map.backend().stats();
    report(&[
        ("ops_per_sec", ops_per_sec),
        ("commits", stats.commits as f64),
        ("writes", stats.writes as f64),
    ])
}

async fn seq_insert<K: BenchKey>(dir: &Path, n: u64) -> BenchResult {
    let map = open::<K>(dir).await?;
    let entries = entries::<K>(n);
    let began = Instant::now();
    for (key, value) in entries {
        map.insert(key, value).await?;
    }
    report_writes(&map, n, began)
}

/// [`TASKS`] tasks, each inserting `per_task` entries one at a time; `key_of(task, index)` as in
/// the raw anchor.
async fn concurrent(dir: &Path, per_task: u64, key_of: fn(u64, u64) -> String) -> BenchResult {
    let map = open::<String>(dir).await?;
    let work: Vec<Vec<(String, Session)>> = (0..TASKS)
        .map(|task| {
            (task * per_task..(task + 1) * per_task)
                .map(|index| (key_of(task, index), value(index)))
                .collect()
        })
        .collect();
    let began = Instant::now();
    let writers: Vec<_> = work
        .into_iter()
        .map(|entries| {
            let map = map.clone();
            tokio::spawn(async move {
                for (key, value) in entries {
                    map.insert(key, value).await?;
                }
                Ok::<_, persistent_map::PersistentError>(())
            })
        })
        .collect();
    for writer in writers {
        writer.await??;
    }
    report_writes(&map, TASKS * per_task, began)
}

async fn remove(dir: &Path, n: u64) -> BenchResult {
    let map = open::<String>(dir).await?;
    let entries = entries::<String>(n);
    let keys: Vec<String> = entries.iter().map(|(key, _)| key.clone()).collect();
    map.insert_many(entries).await?;
    let began = Instant::now();
    for key in &keys {
        map.remove(key).await?;
    }
    report(&[("ops_per_sec", per_second(n, began.elapsed()))])
}

/// Reopens the fixture `db`, reports the time and the process's peak memory, then times random
/// `get`s (a clone) and `get_with`s (a borrow).
async fn load<K: BenchKey>(db: &Path) -> BenchResult {
    let began = Instant::now();
    let map = Map::<K>::open(db).await?;
    let secs = began.elapsed().as_secs_f64();
    let rss = peak_rss_mib()?;
    let queries = queries::<K>(map.len());
    let reads = time_reads(
        &queries,
        &mut [&mut |key| consume(map.get(key)), &mut |key| {
            consume(map.get_with(key, |value| value.logins))
        }],
    );
    report(&[
        ("secs", secs),
        ("rss_mib", rss),
        ("rows", map.len() as f64),
        ("get_ns", reads[0]),
        ("get_with_ns", reads[1]),
    ])
}

async fn insert_many(dir: &Path, n: u64) -> BenchResult {
    let map = open::<String>(dir).await?;
    let entries = entries::<String>(n);
    let began = Instant::now();
    map.insert_many(entries).await?;
    let secs = began.elapsed().as_secs_f64();
    report(&[("ops_per_sec", n as f64 / secs), ("secs", secs)])
}
