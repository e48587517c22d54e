//! Read-modify-writes: 16 writers updating one hot key (`hot-update`, in one process or, with
//! `--processes 2`, in two processes on one file), and 16 writers each running a transaction
//! over three tables (`tx3`: a hit counted per link, per day and in total). Ours (`ours`)
//! against raw rusqlite doing the same work its plain way (`raw-mutex`): 16 threads sharing one
//! mutex-guarded connection, each read-modify-write one `IMMEDIATE` transaction.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use persistent_map::sqlite::SqliteBackend;
use persistent_map::{transaction, PersistentError, PersistentMap};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::raw::open;
use crate::workload::{per_second, report, value, BenchResult, Budget, Options, Session, TASKS};

/// The key every writer of `hot-update` updates.
const HOT: &str = "counter";
/// The three tables of `tx3`.
const TX_TABLES: [&str; 3] = ["per_link", "per_day", "total"];

/// The update every writer makes: one more login.
fn bump(session: Option<&Session>) -> Option<Session> {
    let mut session = session.cloned().unwrap_or_else(|| value(0));
    session.logins += 1;
    Some(session)
}

/// The keys of the `i`-th transaction of writer `task` in `tx3`, one per table.
fn tx_keys(task: u64, i: u64) -> [String; 3] {
    [
        format!("/link-{}", (task + i) % 50),
        format!("day-{}", i % 7),
        "all".to_owned(),
    ]
}

pub(crate) async fn ours(
    workload: &str,
    dir: &Path,
    per_task: u64,
    options: &Options,
) -> BenchResult {
    match workload {
        "hot-update" => match options.text("processes") {
            Ok("2") => two_processes(dir, per_task, options).await,
            _ => {
                let (done, began) = ours_hot_update(dir, per_task, options).await?;
                report_rate(done, began.elapsed())
            }
        },
        "tx3" => ours_tx3(dir, per_task, options).await,
        other => Err(format!("our map has no workload `{other}`").into()),
    }
}

pub(crate) fn raw(workload: &str, dir: &Path, per_task: u64, options: &Options) -> BenchResult {
    match workload {
        "hot-update" => raw_threads(dir, per_task, options, raw_hot_update),
        "tx3" => raw_threads(dir, per_task, options, raw_tx3),
        other => Err(format!("raw rusqlite has no workload `{other}`").into()),
    }
}

fn report_rate(done: u64, elapsed: Duration) -> BenchResult {
    report(&[
        ("ops_per_sec", per_second(done, elapsed)),
        ("ops", done as f64),
    ])
}

/// [`TASKS`] tasks, each updating [`HOT`] `per_task` times; returns how many updates were done
/// and when they began.
async fn ours_hot_update(
    dir: &Path,
    per_task: u64,
    options: &Options,
) -> BenchResult<(u64, Instant)> {
    let map: PersistentMap<String, Session, SqliteBackend> =
        PersistentMap::open(dir.join("ours.db")).await?;
    let began = Instant::now();
    let done = run_tasks(per_task, options, move |_, _| {
        let map = map.clone();
        async move { map.update(&HOT.to_owned(), bump).await.map(drop) }
    })
    .await?;
    Ok((done, began))
}

/// `hot-update` in this process and in a second one (this binary again, `--child`) on the
/// same file at the same time: the rate of both together.
async fn two_processes(dir: &Path, per_task: u64, options: &Options) -> BenchResult {
    if options.text("child").is_ok() {
        let (done, began) = ours_hot_update(dir, per_task, options).await?;
        return report_rate(done, began.elapsed());
    }
    // Create the file and table first, so the two processes do not race to.
    drop(PersistentMap::<String, Session, SqliteBackend>::open(dir.join("ours.db")).await?);
    let child = Command::new(std::env::current_exe()?)
        .args([
            "run",
            "hot-update",
            "ours",
            "--processes",
            "2",
            "--child",
            "1",
        ])
        .arg("--dir")
        .arg(dir)
        .args(["--n", &per_task.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let began = Instant::now();
    let (done, _) = ours_hot_update(dir, per_task, options).await?;
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let elapsed = began.elapsed();
    if !output.status.success() {
        return Err("the second process failed".into());
    }
    let child_done = String::from_utf8(output.stdout)?
        .lines()
        .find_map(|line| {
            line.strip_prefix(crate::workload::RESULT_PREFIX)
                .map(str::to_owned)
        })
        .map(|json| serde_json::from_str::<serde_json::Value>(&json))
        .transpose()?
        .and_then(|metrics| metrics["ops"].as_f64())
        .ok_or("the second process reported nothing")?;
    report_rate(done + child_done as u64, elapsed)
}

/// [`TASKS`] tasks, each running `per_task` transactions that count one hit in each of the
/// three maps.
async fn ours_tx3(dir: &Path, per_task: u64, options: &Options) -> BenchResult {
    let path = dir.join("ours.db");
    let mut maps = Vec::new();
    for table in TX_TABLES {
        let backend = SqliteBackend::with_table(&path, table).await?;
        maps.push(PersistentMap::<String, u64, _>::new(backend).await?);
    }
    let maps = Arc::new(maps);
    let began = Instant::now();
    let done = run_tasks(per_task, options, move |task, i| {
        let maps = Arc::clone(&maps);
        async move {
            let keys = tx_keys(task, i);
            transaction(|tx| {
                for (map, key) in maps.iter().zip(&keys) {
                    tx.update(map, key, |n| Some(n.copied().unwrap_or(0) + 1));
                }
                Ok::<_, PersistentError>(())
            })
            .await
        }
    })
    .await?;
    report_rate(done, began.elapsed())
}

/// [`TASKS`] tokio tasks, task `t` running `step(t, i)` for `i` up to `per_task` (within the
/// time budget), each awaited; returns how many steps were done.
async fn run_tasks<F, Step>(per_task: u64, options: &Options, step: F) -> BenchResult<u64>
where
    F: Fn(u64, u64) -> Step + Clone + Send + 'static,
    Step: std::future::Future<Output = persistent_map::Result<()>> + Send,
{
    let budget = Budget::start(options)?;
    let writers: Vec<_> = (0..TASKS)
        .map(|task| {
            let step = step.clone();
            tokio::spawn(async move {
                let mut done = 0;
                while done < per_task && budget.left() {
                    step(task, done).await?;
                    done += 1;
                }
                Ok::<u64, PersistentError>(done)
            })
        })
        .collect();
    let mut done = 0;
    for writer in writers {
        done += writer.await??;
    }
    Ok(done)
}

/// [`TASKS`] threads sharing one mutex-guarded connection, each running `per_task` units of
/// `work` (each one `IMMEDIATE` transaction).
fn raw_threads(
    dir: &Path,
    per_task: u64,
    options: &Options,
    work: fn(&mut Connection, u64, u64) -> BenchResult,
) -> BenchResult {
    let path = dir.join("raw.db");
    let connection = open(&path, "kv")?;
    for table in TX_TABLES {
        drop(open(&path, table)?);
    }
    let connection = Arc::new(Mutex::new(connection));
    let start = Arc::new(Barrier::new(TASKS as usize + 1));
    let budget = Budget::start(options)?;
    let writers: Vec<_> = (0..TASKS)
        .map(|task| {
            let (connection, start) = (Arc::clone(&connection), Arc::clone(&start));
            thread::spawn(move || -> BenchResult<u64> {
                start.wait();
                let mut done = 0;
                while done < per_task && budget.left() {
                    let mut connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
                    work(&mut connection, task, done)?;
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    let mut done = 0;
    for writer in writers {
        done += writer.join().map_err(|_| "a writer thread panicked")??;
    }
    report_rate(done, began.elapsed())
}

/// One update of [`HOT`]: read, modify, write, in one transaction.
fn raw_hot_update(connection: &mut Connection, _task: u64, _i: u64) -> BenchResult {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let stored: Option<String> = transaction
        .prepare_cached("SELECT value FROM kv WHERE key = ?1")?
        .query_row([HOT], |row| row.get(0))
        .optional()?;
    let current: Option<Session> = stored.map(|json| serde_json::from_str(&json)).transpose()?;
    let new = bump(current.as_ref());
    transaction
        .prepare_cached(&crate::raw::upsert_sql("kv"))?
        .execute((HOT, serde_json::to_string(&new)?))?;
    transaction.commit()?;
    Ok(())
}

/// One transaction counting a hit in each of the three tables.
fn raw_tx3(connection: &mut Connection, task: u64, i: u64) -> BenchResult {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (table, key) in TX_TABLES.iter().zip(tx_keys(task, i)) {
        let stored: Option<String> = transaction
            .prepare_cached(&format!("SELECT value FROM \"{table}\" WHERE key = ?1"))?
            .query_row([&key], |row| row.get(0))
            .optional()?;
        let count: u64 = stored
            .map(|json| serde_json::from_str(&json))
            .transpose()?
            .unwrap_or(0);
        transaction
            .prepare_cached(&crate::raw::upsert_sql(table))?
            .execute((&key, serde_json::to_string(&(count + 1))?))?;
    }
    transaction.commit()?;
    Ok(())
}
