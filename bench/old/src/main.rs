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
    consume, hot_key, key, peak_rss_mib, per_second, random_indexes, report, time_reads, value,
    BenchResult, Options, Session, TASKS,
};

type Map = PersistentMap<String, Session, SqliteBackend>;

/// Reads measured by `load`, as in `pm-bench`.
const READS: usize = 1_000_000;

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
            "seq-insert" => seq_insert(dir()?, n()?).await,
            "concurrent-insert" => concurrent(dir()?, n()?, |_, index| key(index)).await,
            "hot-keys" => concurrent(dir()?, n()?, |task, _| hot_key(task)).await,
            "remove" => remove(dir()?, n()?).await,
            "load" => load(Path::new(options.text("db")?)).await,
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

async fn seq_insert(dir: &Path, n: u64) -> BenchResult {
    let map = open(&dir.join("old.db")).await?;
    let entries: Vec<(String, Session)> = (0..n).map(|i| (key(i), value(i))).collect();
    let began = Instant::now();
    for (key, value) in entries {
        map.insert(key, value).await?;
    }
    report(&[("ops_per_sec", per_second(n, began.elapsed()))])
}

/// [`TASKS`] tasks sharing the map, each inserting `per_task` entries one at a time.
async fn concurrent(dir: &Path, per_task: u64, key_of: fn(u64, u64) -> String) -> BenchResult {
    let map = Arc::new(open(&dir.join("old.db")).await?);
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
            let map = Arc::clone(&map);
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
    report(&[("ops_per_sec", per_second(TASKS * per_task, began.elapsed()))])
}

/// Removes `n` entries one at a time. They are written beforehand with plain SQL in one
/// transaction (0.1.3 has no batch insert), so the map loads them when it opens.
async fn remove(dir: &Path, n: u64) -> BenchResult {
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
    let began = Instant::now();
    for i in 0..n {
        map.remove(&key(i)).await?;
    }
    report(&[("ops_per_sec", per_second(n, began.elapsed()))])
}

/// Reopens the fixture, reports the time and the process's peak memory, then times random
/// `get`s (0.1.3 has only the cloning read).
async fn load(db: &Path) -> BenchResult {
    let began = Instant::now();
    let map = open(db).await?;
    let secs = began.elapsed().as_secs_f64();
    let rss = peak_rss_mib()?;
    let queries: Vec<String> = random_indexes(READS, map.len() as u64)
        .into_iter()
        .map(key)
        .collect();
    let reads = time_reads(&queries, &mut [&mut |key| consume(map.get(key))]);
    report(&[
        ("secs", secs),
        ("rss_mib", rss),
        ("rows", map.len() as f64),
        ("get_ns", reads[0]),
    ])
}
