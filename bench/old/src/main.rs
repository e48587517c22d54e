//! `pm-bench-old`: the workloads of `pm-bench` run against persistent-map 0.1.3, the anchor the
//! issue measures the new map against. The driver (`pm-bench`) builds and runs it:
//! `pm-bench-old WORKLOAD --name value ...` measures once and prints one result line.
//!
//! Workloads: `seq-insert`, `concurrent-insert`, `hot-keys`, `remove` (options `--dir`, `--n`),
//! `load` (`--db`, a fixture with 0.1.3's index). String keys only: 0.1.3 stores every map in
//! the table `kv`.

// The same keys, values and report format as `pm-bench`; only some of it is used here.
#[allow(dead_code)]
#[path = "../../src/workload.rs"]
mod workload;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use persistent_map::sqlite::SqliteBackend;
use persistent_map::PersistentMap;

use workload::{
    consume, hot_key, key, leak, named, peak_rss_mib, per_second, random_indexes, report,
    time_reads, value, BenchResult, Budget, Options, Session, TASKS,
};

type Map = PersistentMap<String, Session, SqliteBackend>;

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let outcome = match args.next() {
        Some(workload) => Options::parse(args).and_then(|options| run(&workload, &options)),
        None => Err("usage: pm-bench-old WORKLOAD [--name value]...".into()),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pm-bench-old: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(workload: &str, options: &Options) -> BenchResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = || options.text("dir").map(Path::new);
    let n = || options.number("n");
    runtime.block_on(async {
        match workload {
            "seq-insert" => seq_insert(dir()?, n()?, options).await,
            "concurrent-insert" => concurrent(dir()?, n()?, options, |_, index| key(index)).await,
            "hot-keys" => concurrent(dir()?, n()?, options, |task, _| hot_key(task)).await,
            "remove" => remove(dir()?, n()?, options).await,
            "load" => load(Path::new(options.text("db")?), options.reads()?).await,
            other => Err(format!("persistent-map 0.1.3 has no workload `{other}`").into()),
        }
    })
}

/// Opens a map on `path`, with 0.1.3's defaults (its own table setup, SQLite's default
/// rollback journal and `synchronous=FULL` on a new file).
async fn open(path: &Path) -> BenchResult<Map> {
    let path = path.to_str().ok_or("0.1.3 takes the path as &str")?;
    Ok(PersistentMap::new(SqliteBackend::new(path).await?).await?)
}

fn report_writes(ops: u64, began: Instant) -> BenchResult {
    report(&[
        ("ops_per_sec", per_second(ops, began.elapsed())),
        ("ops", ops as f64),
    ])
}

async fn seq_insert(dir: &Path, n: u64, options: &Options) -> BenchResult {
    let map = open(&dir.join("old.db")).await?;
    let entries: Vec<(String, Session)> = (0..n).map(|i| (key(i), value(i))).collect();
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
    report_writes(done, began)
}

/// [`TASKS`] tasks sharing the map, each inserting `per_task` entries one at a time.
async fn concurrent(
    dir: &Path,
    per_task: u64,
    options: &Options,
    key_of: fn(u64, u64) -> String,
) -> BenchResult {
    let map = Arc::new(open(&dir.join("old.db")).await?);
    let work: Vec<Vec<(String, Session)>> = (0..TASKS)
        .map(|task| {
            (task * per_task..(task + 1) * per_task)
                .map(|index| (key_of(task, index), value(index)))
                .collect()
        })
        .collect();
    let budget = Budget::start(options)?;
    let began = Instant::now();
    let writers: Vec<_> = work
        .into_iter()
        .map(|entries| {
            let map = Arc::clone(&map);
            tokio::spawn(async move {
                let mut done = 0;
                for (key, value) in entries {
                    if !budget.left() {
                        break;
                    }
                    map.insert(key, value).await?;
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
    report_writes(done, began)
}

/// Removes `n` entries one at a time. They are written beforehand with plain SQL in one
/// transaction (0.1.3 has no batch insert), so the map loads them when it opens.
async fn remove(dir: &Path, n: u64, options: &Options) -> BenchResult {
    let path = dir.join("old.db");
    drop(open(&path).await?); // 0.1.3 creates its table
    let mut connection = rusqlite::Connection::open(&path)?;
    let transaction = connection.transaction()?;
    for i in 0..n {
        transaction.execute(
            "INSERT INTO kv (key, value) VALUES (?1, ?2)",
            (key(i), serde_json::to_string(&value(i))?),
        )?;
    }
    transaction.commit()?;
    drop(connection);
    let map = open(&path).await?;
    let keys: Vec<String> = (0..n).map(key).collect();
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
    report_writes(done, began)
}

/// Reopens the fixture, reports the time and the process's peak memory, then times `reads`
/// random `get`s (0.1.3 has only the cloning read).
async fn load(db: &Path, reads: u64) -> BenchResult {
    let began = Instant::now();
    let map = open(db).await?;
    let secs = began.elapsed().as_secs_f64();
    let rss = peak_rss_mib()?;
    let queries: Vec<String> = random_indexes(reads as usize, map.len() as u64)
        .into_iter()
        .map(key)
        .collect();
    let reads = time_reads(&queries, &mut [&mut |key| consume(map.get(key))]);
    let mut metrics = vec![("secs", secs), ("rss_mib", rss), ("rows", map.len() as f64)];
    metrics.extend(named(&["get_ns"], &reads));
    report(&metrics)?;
    leak(map);
    Ok(())
}
