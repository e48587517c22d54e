//! The raw rusqlite anchor: the same schema, the same JSON, the best way a hand-written program
//! does it: WAL, `synchronous=FULL`, cached prepared statements, `INSERT ... ON CONFLICT DO
//! UPDATE`, one transaction per write (autocommit) for the durable rows and one transaction for
//! the batch.

use std::path::Path;
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::keys::{entries, with_keys, BenchKey, KeyKind};
use crate::workload::{
    hot_key, key, leak, per_second, report, timed, value, BenchResult, Budget, Options, Session,
};

/// How the concurrent workloads' 16 writers reach SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writers {
    /// `raw-conns`: a thread and a connection (with a busy timeout) each.
    OwnConnections,
    /// `raw-mutex`: a thread each, one mutex-guarded connection.
    SharedConnection,
    /// `raw-grouped`: one thread commits one write of every writer per transaction, in turn: the
    /// ideal schedule of a group commit, without any of its coordination.
    Grouped,
}

/// Runs the raw rusqlite workload `workload`; `writers` says how the concurrent workloads write.
pub(crate) fn run(workload: &str, writers: Writers, options: &Options) -> BenchResult {
    let dir = || options.text("dir").map(Path::new);
    let n = || options.number("n");
    let concurrently = |key_of| match writers {
        Writers::Grouped => grouped(dir()?, n()?, options, key_of),
        _ => concurrent(
            dir()?,
            n()?,
            writers == Writers::SharedConnection,
            options,
            key_of,
        ),
    };
    match workload {
        "seq-insert" => {
            with_keys!(
                KeyKind::parse(options.text("keys")?)?,
                seq_insert(dir()?, n()?, options)
            )
        }
        "concurrent-insert" => concurrently(|_, index| key(index)),
        "hot-keys" => concurrently(|task, _| hot_key(task)),
        "remove" => remove(dir()?, n()?, options),
        "load" => with_keys!(
            KeyKind::parse(options.text("keys")?)?,
            load(Path::new(options.text("db")?))
        ),
        "insert-many" => insert_many(dir()?, n()?),
        "hot-update" | "tx3" => crate::updates::raw(workload, dir()?, n()?, options),
        other => Err(format!("raw rusqlite has no workload `{other}`").into()),
    }
}

/// Opens (creating if needed) a database the way the map's files are: WAL, `synchronous=FULL`,
/// the map's table schema, and a busy timeout for the concurrent writers.
pub(crate) fn open(path: &Path, table: &str) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.busy_timeout(Duration::from_secs(30))?;
    connection.execute(
        &format!(
            "CREATE TABLE IF NOT EXISTS \"{table}\" (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)"
        ),
        [],
    )?;
    Ok(connection)
}

pub(crate) fn upsert_sql(table: &str) -> String {
    format!(
        "INSERT INTO \"{table}\" (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    )
}

/// Stores one entry with `connection`'s cached upsert: in autocommit mode, a transaction of its
/// own.
pub(crate) fn upsert<K: BenchKey>(
    connection: &Connection,
    key: &K,
    value: &Session,
) -> BenchResult {
    connection
        .prepare_cached(&upsert_sql(K::TABLE_NAME))?
        .execute((key.to_string(), serde_json::to_string(value)?))?;
    Ok(())
}

/// One upsert per transaction. `--transaction explicit` (for the profile, not the table) wraps
/// each in `BEGIN IMMEDIATE` ... `COMMIT` as rusqlite's `Transaction` does, instead of autocommit.
fn seq_insert<K: BenchKey>(dir: &Path, n: u64, options: &Options) -> BenchResult {
    let mut connection = open(&dir.join("raw.db"), K::TABLE_NAME)?;
    let explicit = match options.text("transaction").unwrap_or("autocommit") {
        "autocommit" => false,
        "explicit" => true,
        other => {
            return Err(
                format!("--transaction is `autocommit` or `explicit`, not `{other}`").into(),
            )
        }
    };
    let entries = entries::<K>(n);
    let budget = Budget::start(options)?;
    let began = Instant::now();
    let mut done = 0;
    for (key, value) in &entries {
        if !budget.left() {
            break;
        }
        if explicit {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            upsert(&transaction, key, value)?;
            transaction.commit()?;
        } else {
            upsert(&connection, key, value)?;
        }
        done += 1;
    }
    report_writes(done, began)
}

fn report_writes(ops: u64, began: Instant) -> BenchResult {
    report(&[
        ("ops_per_sec", per_second(ops, began.elapsed())),
        ("ops", ops as f64),
    ])
}

/// [`TASKS`](crate::workload::TASKS) (or `--tasks`) threads, each writing `per_task` entries, each
/// entry in a transaction of its own; `key_of(task, index)` names the key of the write `index`
/// (counted over all threads) of thread `task`.
fn concurrent(
    dir: &Path,
    per_task: u64,
    shared: bool,
    options: &Options,
    key_of: fn(u64, u64) -> String,
) -> BenchResult {
    let path = dir.join("raw.db");
    let first = open(&path, "kv")?;
    let shared_connection = Arc::new(Mutex::new(first));
    let tasks = options.tasks()?;
    let start = Arc::new(Barrier::new(tasks as usize + 1));
    // Counts from before the threads' setup, which takes milliseconds of its seconds.
    let budget = Budget::start(options)?;
    let writers = (0..tasks)
        .map(|task| {
            let work: Vec<(String, Session)> = (task * per_task..(task + 1) * per_task)
                .map(|index| (key_of(task, index), value(index)))
                .collect();
            let own_connection = if shared {
                None
            } else {
                Some(open(&path, "kv")?)
            };
            let shared_connection = Arc::clone(&shared_connection);
            let start = Arc::clone(&start);
            Ok(thread::spawn(move || -> BenchResult<u64> {
                start.wait();
                let mut done = 0;
                for (key, value) in &work {
                    if !budget.left() {
                        break;
                    }
                    match &own_connection {
                        Some(connection) => upsert(connection, key, value)?,
                        None => upsert(
                            &shared_connection
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner),
                            key,
                            value,
                        )?,
                    }
                    done += 1;
                }
                Ok(done)
            }))
        })
        .collect::<BenchResult<Vec<_>>>()?;
    start.wait();
    let began = Instant::now();
    let mut done = 0;
    for writer in writers {
        done += writer.join().map_err(|_| "a writer thread panicked")??;
    }
    report_writes(done, began)
}

/// The writes of [`concurrent`]'s threads, committed by one thread
/// [`TASKS`](crate::workload::TASKS) (or `--tasks`) at a time: the `i`-th write of every writer in
/// one transaction.
fn grouped(
    dir: &Path,
    per_task: u64,
    options: &Options,
    key_of: fn(u64, u64) -> String,
) -> BenchResult {
    let mut connection = open(&dir.join("raw.db"), "kv")?;
    let tasks = options.tasks()?;
    let rounds: Vec<Vec<(String, Session)>> = (0..per_task)
        .map(|i| {
            (0..tasks)
                .map(|task| {
                    let index = task * per_task + i;
                    (key_of(task, index), value(index))
                })
                .collect()
        })
        .collect();
    let budget = Budget::start(options)?;
    let began = Instant::now();
    let mut done = 0;
    for round in &rounds {
        if !budget.left() {
            break;
        }
        in_one_transaction(&mut connection, round)?;
        done += round.len() as u64;
    }
    report_writes(done, began)
}

fn remove(dir: &Path, n: u64, options: &Options) -> BenchResult {
    let mut connection = open(&dir.join("raw.db"), "kv")?;
    let entries = entries::<String>(n);
    in_one_transaction(&mut connection, &entries)?;
    let budget = Budget::start(options)?;
    let began = Instant::now();
    let mut done = 0;
    for (key, _) in &entries {
        if !budget.left() {
            break;
        }
        connection
            .prepare_cached("DELETE FROM kv WHERE key = ?1")?
            .execute([key])?;
        done += 1;
    }
    report_writes(done, began)
}

fn insert_many(dir: &Path, n: u64) -> BenchResult {
    let mut connection = open(&dir.join("raw.db"), "kv")?;
    let entries = entries::<String>(n);
    let (stored, elapsed) = timed(|| in_one_transaction(&mut connection, &entries));
    stored?;
    report(&[
        ("ops_per_sec", per_second(n, elapsed)),
        ("secs", elapsed.as_secs_f64()),
    ])?;
    leak(entries);
    Ok(())
}

/// Upserts every entry in one transaction.
pub(crate) fn in_one_transaction<K: BenchKey>(
    connection: &mut Connection,
    entries: &[(K, Session)],
) -> BenchResult {
    let transaction = connection.transaction()?;
    upsert_all(&transaction, entries)?;
    transaction.commit()?;
    Ok(())
}

fn upsert_all<K: BenchKey>(transaction: &Transaction<'_>, entries: &[(K, Session)]) -> BenchResult {
    let mut statement = transaction.prepare_cached(&upsert_sql(K::TABLE_NAME))?;
    for (key, value) in entries {
        statement.execute((key.to_string(), serde_json::to_string(value)?))?;
    }
    Ok(())
}

/// Scan + decode: every row of the fixture parsed into a key and a value, kept in a `Vec`.
fn load<K: BenchKey>(db: &Path) -> BenchResult {
    let (rows, elapsed) = timed(|| -> BenchResult<Vec<(K, Session)>> {
        let mut rows = Vec::new();
        scan(db, &mut |key, value| rows.push((key, value)))?;
        Ok(rows)
    });
    let rows = rows?;
    report(&[("secs", elapsed.as_secs_f64()), ("rows", rows.len() as f64)])?;
    leak(rows);
    Ok(())
}

/// Reads every row of `K`'s table in `db` and hands it to `sink` decoded, the fastest way
/// rusqlite allows: borrowed text, no intermediate `String` for the value.
pub(crate) fn scan<K: BenchKey>(db: &Path, sink: &mut dyn FnMut(K, Session)) -> BenchResult {
    let connection = Connection::open(db)?;
    let mut statement =
        connection.prepare(&format!("SELECT key, value FROM \"{}\"", K::TABLE_NAME))?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let key = text(row.get_ref(0)?)?.parse::<K>()?;
        let value = serde_json::from_str(text(row.get_ref(1)?)?)?;
        sink(key, value);
    }
    Ok(())
}

fn text(cell: ValueRef<'_>) -> BenchResult<&str> {
    Ok(cell.as_str()?)
}

/// Writes the database the reopen and `get` workloads load: `rows` entries of `kind`'s keys, in
/// one transaction. With `old_index`, also the index persistent-map 0.1.3 creates when it opens
/// a file, so that opening it there is not a write.
pub(crate) fn write_fixture(path: &Path, rows: u64, kind: KeyKind, old_index: bool) -> BenchResult {
    with_keys!(kind, write_rows(path, rows))?;
    if old_index {
        Connection::open(path)?.execute("CREATE INDEX IF NOT EXISTS kv_key_idx ON kv (key)", [])?;
    }
    Ok(())
}

fn write_rows<K: BenchKey>(path: &Path, rows: u64) -> BenchResult {
    let mut connection = open(path, K::TABLE_NAME)?;
    in_one_transaction(&mut connection, &entries::<K>(rows))
}
