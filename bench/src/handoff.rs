//! Raw rusqlite behind a writer thread: the shape of our SQLite backend (an async caller sends the
//! encoded write over a channel to the thread that owns the connection and awaits a oneshot
//! answer) without the map. It splits our distance from raw rusqlite into what the shape costs
//! (the two thread wake-ups per write) and what the map adds on top.
//!
//! `--spin-us N` makes the writer poll its queue for up to N µs after each commit before it
//! blocks, the experiment behind the proposal in BENCHMARKS.md: a sequential caller's next write
//! then arrives without waking the writer.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::keys::entries;
use crate::raw::open;
use crate::workload::{per_second, report, BenchResult, Budget, Options};

/// An encoded upsert and where to say it is committed.
type Request = (String, String, oneshot::Sender<rusqlite::Result<usize>>);

pub(crate) fn run(workload: &str, options: &Options) -> BenchResult {
    if workload != "seq-insert" {
        return Err(format!("raw-thread has no workload `{workload}`").into());
    }
    let spin = Duration::from_micros(options.number("spin-us").unwrap_or(0));
    seq_insert(
        Path::new(options.text("dir")?),
        options.number("n")?,
        spin,
        options,
    )
}

fn seq_insert(dir: &Path, n: u64, spin: Duration, options: &Options) -> BenchResult {
    let connection = open(&dir.join("raw.db"), "kv")?;
    let (requests, queue) = mpsc::channel::<Request>();
    let writer = std::thread::spawn(move || serve(&connection, &queue, spin));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let entries = entries::<String>(n);
    let budget = Budget::start(options)?;
    let (ops, elapsed) = runtime.block_on(async move {
        let began = Instant::now();
        let mut ops = 0;
        for (key, value) in entries {
            if !budget.left() {
                break;
            }
            let (done, committed) = oneshot::channel();
            requests.send((key, serde_json::to_string(&value)?, done))?;
            committed.await??;
            ops += 1;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((ops, began.elapsed()))
    })?;
    writer.join().map_err(|_| "the writer thread panicked")?;
    report(&[
        ("ops_per_sec", per_second(ops, elapsed)),
        ("ops", ops as f64),
    ])
}

fn serve(connection: &rusqlite::Connection, queue: &mpsc::Receiver<Request>, spin: Duration) {
    while let Some((key, value, done)) = next(queue, spin) {
        let result = connection
            .prepare_cached(
                "INSERT INTO kv (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
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
