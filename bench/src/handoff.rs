//! Raw rusqlite behind a writer thread: the shape of our SQLite backend (an async caller sends the
//! encoded write over a channel to the thread that owns the connection and awaits a oneshot
//! answer) without the map. It splits our distance from raw rusqlite into what the shape costs
//! (the two thread wake-ups per write) and what the map adds on top.
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
