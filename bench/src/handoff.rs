//! Raw rusqlite behind a writer thread: the shape of our SQLite backend (an async caller sends the
//! encoded write over a channel to the thread that owns the connection and awaits a oneshot
//! answer) without the map. It splits our distance from raw rusqlite into what the shape costs
//! (the two thread wake-ups per write) and what the map adds on top.
//!
//! For `seq-insert` the thread commits each write alone; for `concurrent-insert` and `hot-keys`
//! 16 tokio tasks write and the thread commits what is queued in one transaction, as our group
//! commit does ([`grouped`]): how close the shape itself comes to the group-commit floor.
//!
//! `--spin-us N` makes the writer poll its queue for up to N µs after each commit before it
//! blocks: the experiment in BENCHMARKS.md on whether sparing the writer its wake-up pays.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::keys::{entries, BenchKey};
use crate::raw::open;
use crate::workload::{per_second, report, BenchResult, Budget, Options, Session};

/// An encoded upsert and where to say it is committed.
type Request = (String, String, oneshot::Sender<rusqlite::Result<usize>>);

pub(crate) fn run(workload: &str, options: &Options) -> BenchResult {
    let key_of: Option<fn(u64, u64) -> String> = match workload {
        "concurrent-insert" => Some(|_, index| crate::workload::key(index)),
        "hot-keys" => Some(|task, _| crate::workload::hot_key(task)),
        _ => None,
    };
    if let Some(key_of) = key_of {
        return grouped(
            Path::new(options.text("dir")?),
            options.number("n")?,
            options,
            key_of,
        );
    }
    if workload != "seq-insert" {
        return Err(format!("raw-thread has no workload `{workload}`").into());
    }
    let spin = Duration::from_micros(options.number("spin-us").unwrap_or(0));
    let writer = WriterThread::start(&Path::new(options.text("dir")?).join("raw.db"), "kv", spin)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let entries = entries::<String>(options.number("n")?);
    let budget = Budget::start(options)?;
    let (ops, elapsed) = runtime.block_on(async {
        let began = Instant::now();
        let mut ops = 0;
        for (key, value) in &entries {
            if !budget.left() {
                break;
            }
            writer.upsert(key, value).await?;
            ops += 1;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((ops, began.elapsed()))
    })?;
    writer.stop()?;
    report(&[
        ("ops_per_sec", per_second(ops, elapsed)),
        ("ops", ops as f64),
    ])
}

/// A thread that owns a connection and commits the upserts sent to it, one transaction each.
#[derive(Debug)]
pub(crate) struct WriterThread {
    requests: mpsc::Sender<Request>,
    thread: JoinHandle<()>,
}

impl WriterThread {
    /// Opens `path` (table `table`) and starts the thread; `spin` as `--spin-us`.
    pub(crate) fn start(path: &Path, table: &str, spin: Duration) -> BenchResult<Self> {
        let connection = open(path, table)?;
        let upsert = crate::raw::upsert_sql(table);
        let (requests, queue) = mpsc::channel::<Request>();
        let thread = std::thread::spawn(move || serve(&connection, &upsert, &queue, spin));
        Ok(Self { requests, thread })
    }

    /// Encodes the entry here, as our backend does, and waits until the thread committed it.
    pub(crate) async fn upsert<K: BenchKey>(&self, key: &K, value: &Session) -> BenchResult {
        let (done, committed) = oneshot::channel();
        self.requests
            .send((key.to_string(), serde_json::to_string(value)?, done))?;
        committed.await??;
        Ok(())
    }

    /// Stops the thread once it has committed everything sent to it.
    pub(crate) fn stop(self) -> BenchResult {
        drop(self.requests);
        self.thread
            .join()
            .map_err(|_| "the writer thread panicked".into())
    }
}

fn serve(
    connection: &rusqlite::Connection,
    upsert: &str,
    queue: &mpsc::Receiver<Request>,
    spin: Duration,
) {
    while let Some((key, value, done)) = next(queue, spin) {
        let result = connection
            .prepare_cached(upsert)
            .and_then(|mut statement| statement.execute((key, value)));
        let _ = done.send(result);
    }
}

/// The next request: polled for up to `spin`, then waited for. `None` once the sender is gone.
fn next(queue: &mpsc::Receiver<Request>, spin: Duration) -> Option<Request> {
    let deadline = Instant::now() + spin;
    while Instant::now() < deadline {
        match queue.try_recv() {
            Ok(request) => return Some(request),
            Err(mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
            Err(mpsc::TryRecvError::Disconnected) => return None,
        }
    }
    queue.recv().ok()
}

/// `raw-thread` for the concurrent workloads: [`TASKS`](crate::workload::TASKS) tokio tasks
/// hand encoded upserts to one thread that commits whatever is queued in one transaction
/// (waiting, as our writer does, up to 200 µs for the writers it just answered) and answers
/// each by a oneshot. Our backend's shape and group commit without the map: what waking the
/// tasks and the thread costs on this machine, whatever the map does.
pub(crate) fn grouped(
    dir: &Path,
    per_task: u64,
    options: &Options,
    key_of: fn(u64, u64) -> String,
) -> BenchResult {
    use crate::workload::{value, TASKS};
    let mut connection = open(&dir.join("raw.db"), "kv")?;
    let upsert = crate::raw::upsert_sql("kv");
    let (requests, queue) = mpsc::channel::<Request>();
    let thread = std::thread::spawn(move || serve_groups(&mut connection, &upsert, &queue));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let budget = Budget::start(options)?;
    let (ops, elapsed) = runtime.block_on(async {
        let began = Instant::now();
        let writers: Vec<_> = (0..TASKS)
            .map(|task| {
                let requests = requests.clone();
                let work: Vec<(String, Session)> = (task * per_task..(task + 1) * per_task)
                    .map(|index| (key_of(task, index), value(index)))
                    .collect();
                tokio::spawn(async move {
                    let mut done = 0u64;
                    for (key, value) in work {
                        if !budget.left() {
                            break;
                        }
                        let (answer, committed) = oneshot::channel();
                        requests
                            .send((key, serde_json::to_string(&value)?, answer))
                            .map_err(|_| "the writer thread is gone")?;
                        committed.await??;
                        done += 1;
                    }
                    Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(done)
                })
            })
            .collect();
        let mut ops = 0;
        for writer in writers {
            ops += writer.await??;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((ops, began.elapsed()))
    })?;
    drop(requests);
    thread.join().map_err(|_| "the writer thread panicked")?;
    report(&[
        ("ops_per_sec", per_second(ops, elapsed)),
        ("ops", ops as f64),
    ])
}

/// Commits what is queued in one transaction, then answers every request in it.
fn serve_groups(
    connection: &mut rusqlite::Connection,
    upsert: &str,
    queue: &mpsc::Receiver<Request>,
) {
    let mut expected = 0;
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        let deadline = Instant::now() + Duration::from_micros(200);
        loop {
            match queue.try_recv() {
                Ok(request) => group.push(request),
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {
                    let now = Instant::now();
                    if group.len() >= expected || now >= deadline {
                        break;
                    }
                    match queue.recv_timeout(deadline - now) {
                        Ok(request) => group.push(request),
                        Err(_) => break,
                    }
                }
            }
        }
        let committed = connection.transaction().and_then(|transaction| {
            {
                let mut statement = transaction.prepare_cached(upsert)?;
                for (key, value, _) in &group {
                    statement.execute((key, value))?;
                }
            }
            transaction.commit()
        });
        expected = group.len();
        for (_, _, done) in group {
            let _ = done.send(match &committed {
                Ok(()) => Ok(1),
                Err(error) => Err(rusqlite::Error::InvalidParameterName(error.to_string())),
            });
        }
    }
}
