//! Our map, persistent-map from this workspace, with its defaults: SQLite, WAL,
//! `synchronous=FULL`, group commit.

use std::hash::RandomState;
use std::path::Path;
use std::time::Instant;

use persistent_map::sqlite::SqliteBackend;
use persistent_map::{PersistentMap, StorageBackend};

use crate::expiry::reads_with_ttl;
use crate::keys::{entries, with_keys, BenchKey, KeyKind};
use crate::memory::{dashmap_of, hashmap_of, queries};
use crate::workload::{
    consume, hot_key, key, leak, named, peak_rss_mib, per_second, report, time_reads, value,
    BenchResult, Budget, Options, Session,
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
                    seq_insert(dir()?, n()?, options).await
                )
            }
            "concurrent-insert" => concurrent(dir()?, n()?, options, |_, index| key(index)).await,
            "concurrent-tables" => concurrent_tables(dir()?, n()?, options).await,
            "hot-keys" => concurrent(dir()?, n()?, options, |task, _| hot_key(task)).await,
            "remove" => remove(dir()?, n()?, options).await,
            "load" => {
                with_keys!(
                    KeyKind::parse(options.text("keys")?)?,
                    load(Path::new(options.text("db")?)).await
                )
            }
            "reads" => {
                with_keys!(
                    KeyKind::parse(options.text("keys")?)?,
                    reads(Path::new(options.text("db")?), options.reads()?).await
                )
            }
            "reads-ttl" => {
                with_keys!(
                    KeyKind::parse(options.text("keys")?)?,
                    reads_with_ttl(Path::new(options.text("db")?), options.reads()?).await
                )
            }
            "cached" => {
                crate::cached::cached(
                    Path::new(options.text("db")?),
                    options.number("capacity")?,
                    options.reads()?,
                )
                .await
            }
            "sweep" => crate::expiry::sweep(dir()?, n()?).await,
            "insert-many" => insert_many(dir()?, n()?).await,
            "hot-update" | "tx3" => crate::updates::ours(workload, dir()?, n()?, options).await,
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
        ("ops", ops as f64),
        ("commits", stats.commits as f64),
        ("writes", stats.writes as f64),
    ])
}

async fn seq_insert<K: BenchKey>(dir: &Path, n: u64, options: &Options) -> BenchResult {
    let map = open::<K>(dir).await?;
    let entries = entries::<K>(n);
    let budget = Budget::start(options)?;
    let began = Instant::now();
    let mut done = 0;
    for (key, value) in entries {
        if !budget.left() {
            break;
        }
        map.insert(key, value).await?;
        done += 1;
    }
    report_writes(&map, done, began)
}

/// [`TASKS`](crate::workload::TASKS) tasks, each inserting `per_task` entries one at a time;
/// `key_of(task, index)` as in the raw anchor.
async fn concurrent(
    dir: &Path,
    per_task: u64,
    options: &Options,
    key_of: fn(u64, u64) -> String,
) -> BenchResult {
    let map = open::<String>(dir).await?;
    let (done, began) = run_writers(std::slice::from_ref(&map), per_task, key_of, options).await?;
    report_writes(&map, done, began)
}

/// As [`concurrent`], with the keys spread over `--tables` maps on tables of one file.
async fn concurrent_tables(dir: &Path, per_task: u64, options: &Options) -> BenchResult {
    let path = dir.join("ours.db");
    let mut maps = Vec::new();
    for table in table_names(options)? {
        maps.push(Map::<String>::new(SqliteBackend::with_table(&path, &table).await?).await?);
    }
    let (done, began) = run_writers(&maps, per_task, |_, index| key(index), options).await?;
    report(&[
        ("ops_per_sec", per_second(done, began.elapsed())),
        ("ops", done as f64),
    ])
}

/// The tables of the `concurrent-tables` workload: `--tables` of them, `t0`, `t1`, ...
pub(crate) fn table_names(options: &Options) -> BenchResult<Vec<String>> {
    Ok((0..options.number("tables")?.max(1))
        .map(|table| format!("t{table}"))
        .collect())
}

/// Runs `--tasks` tokio tasks ([`TASKS`](crate::workload::TASKS) unless it says otherwise) against
/// `maps`, task `t` inserting its `per_task` entries (`key_of(t, index)`, into map `index %
/// maps.len()`) one at a time, each awaited; returns how many inserts were done and when they
/// began. The concurrent rows of every backend run this.
pub(crate) async fn run_writers<B>(
    maps: &[PersistentMap<String, Session, B>],
    per_task: u64,
    key_of: fn(u64, u64) -> String,
    options: &Options,
) -> BenchResult<(u64, Instant)>
where
    B: StorageBackend<String, Session> + Send + Sync + 'static,
{
    let work: Vec<Vec<(usize, String, Session)>> = (0..options.tasks()?)
        .map(|task| {
            (task * per_task..(task + 1) * per_task)
                .map(|index| {
                    let map = (index % maps.len() as u64) as usize;
                    (map, key_of(task, index), value(index))
                })
                .collect()
        })
        .collect();
    let budget = Budget::start(options)?;
    let began = Instant::now();
    let writers: Vec<_> = work
        .into_iter()
        .map(|entries| {
            let maps = maps.to_vec();
            tokio::spawn(async move {
                let mut done = 0;
                for (map, key, value) in entries {
                    if !budget.left() {
                        break;
                    }
                    maps[map].insert(key, value).await?;
                    done += 1;
                }
                Ok::<u64, persistent_map::PersistentError>(done)
            })
        })
        .collect();
    let mut done = 0;
    for writer in writers {
        done += writer.await??;
    }
    Ok((done, began))
}

async fn remove(dir: &Path, n: u64, options: &Options) -> BenchResult {
    let map = open::<String>(dir).await?;
    let entries = entries::<String>(n);
    let keys: Vec<String> = entries.iter().map(|(key, _)| key.clone()).collect();
    map.insert_many(entries).await?;
    let budget = Budget::start(options)?;
    let began = Instant::now();
    let mut done = 0;
    for key in &keys {
        if !budget.left() {
            break;
        }
        map.remove(key).await?;
        done += 1;
    }
    report(&[
        ("ops_per_sec", per_second(done, began.elapsed())),
        ("ops", done as f64),
    ])
}

/// Reopens the fixture `db` and reports the time and the process's peak memory.
async fn load<K: BenchKey>(db: &Path) -> BenchResult {
    let began = Instant::now();
    let map = Map::<K>::open(db).await?;
    let secs = began.elapsed().as_secs_f64();
    report(&[
        ("secs", secs),
        ("rss_mib", peak_rss_mib()?),
        ("rows", map.len() as f64),
    ])?;
    leak(map);
    Ok(())
}

/// Reopens the fixture `db`, loads it into a `DashMap` and a `HashMap` too, and times `reads`
/// random reads of each, taking turns pass by pass so that all see the same moments of a noisy
/// machine: our `get` (a clone) and `get_with` (a borrow), `DashMap` get with and without a clone
/// of the value, `HashMap` get with a clone.
async fn reads<K: BenchKey>(db: &Path, reads: u64) -> BenchResult {
    let map = Map::<K>::open(db).await?;
    let dashmap = dashmap_of::<K, RandomState>(db, 0)?;
    let hashmap = hashmap_of::<K>(db)?;
    let queries = queries::<K>(reads, map.len());
    let times = time_reads(
        &queries,
        &mut [
            &mut |key| consume(map.get(key)),
            &mut |key| consume(dashmap.get(key).map(|entry| entry.value().clone())),
            &mut |key| consume(hashmap.get(key).cloned()),
            &mut |key| consume(map.get_with(key, |value| value.logins)),
            &mut |key| consume(dashmap.get(key).map(|entry| entry.logins)),
        ],
    );
    report(&named(
        &[
            "get_ns",
            "dashmap_get_clone_ns",
            "hashmap_get_clone_ns",
            "get_with_ns",
            "dashmap_get_ref_ns",
        ],
        &times,
    ))?;
    leak((map, dashmap, hashmap));
    Ok(())
}

async fn insert_many(dir: &Path, n: u64) -> BenchResult {
    let map = open::<String>(dir).await?;
    let entries = entries::<String>(n);
    let began = Instant::now();
    map.insert_many(entries).await?;
    let secs = began.elapsed().as_secs_f64();
    report(&[("ops_per_sec", n as f64 / secs), ("secs", secs)])?;
    leak(map);
    Ok(())
}
