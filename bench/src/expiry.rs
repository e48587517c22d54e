//! Expiry: what a time to live costs a read, and what sweeping a mass expiry costs writers.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use persistent_map::sqlite::SqliteBackend;
use persistent_map::PersistentMap;

use crate::keys::{entries, BenchKey};
use crate::memory::queries;
use crate::workload::{
    consume, leak, named, report, time_reads, value, BenchResult, Session, TASKS,
};

type Map<K> = PersistentMap<K, Session, SqliteBackend>;

/// Opens the fixture `db` as it is and a copy of it in which every row has a deadline an hour
/// away, and times `reads` random `get`s of each, taking turns pass by pass (as `reads` does),
/// so the two figures see the same moments of a noisy machine.
pub(crate) async fn reads_with_ttl<K: BenchKey>(db: &Path, reads: u64) -> BenchResult {
    let copy = db.with_extension("ttl.db");
    // A log (`-wal`) left by an earlier run would replay that run's `ALTER TABLE` onto the copy.
    for leftover in ["ttl.db-wal", "ttl.db-shm"] {
        let _ = std::fs::remove_file(db.with_extension(leftover));
    }
    std::fs::copy(db, &copy)?;
    let in_an_hour = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64 + 3_600_000;
    let connection = rusqlite::Connection::open(&copy)?;
    connection.execute_batch("ALTER TABLE kv ADD COLUMN expires_at INTEGER")?;
    connection.execute("UPDATE kv SET expires_at = ?1", [in_an_hour])?;
    drop(connection);

    let plain = Map::<K>::open(db).await?;
    let expiring = Map::<K>::open(&copy).await?;
    let probe = queries::<K>(1, plain.len());
    if plain.ttl(&probe[0]).is_some() || expiring.ttl(&probe[0]).is_none() {
        return Err("the TTL copy of the fixture did not load its deadlines".into());
    }
    let queries = queries::<K>(reads, plain.len());
    let times = time_reads(
        &queries,
        &mut [&mut |key| consume(plain.get(key)), &mut |key| {
            consume(expiring.get(key))
        }],
    );
    report(&named(&["get_ns", "get_ttl_ns"], &times))?;
    leak((plain, expiring));
    let _ = std::fs::remove_file(&copy);
    Ok(())
}

/// Stores `n` entries that expire together, then sweeps them while `TASKS` tasks write one key
/// at a time; reports how long the sweep took and how long writes took before and during it.
pub(crate) async fn sweep(dir: &Path, n: u64) -> BenchResult {
    let map = Map::<String>::open(dir.join("sweep.db")).await?;
    // Long enough that the writes before the sweep run before anything has expired (storing
    // 1M entries takes seconds), so the background sweep does not start early.
    let ttl = Duration::from_secs(15);
    map.clone()
        .with_default_ttl(ttl)?
        .insert_many(entries::<String>(n))
        .await?;
    // The batch's one deadline was taken inside `insert_many`, before it stored anything: on a
    // loaded machine storing 1M entries takes most of the TTL, and timing the sweep from the
    // return let it run (and end) before the writes meant to measure it. Read it back instead.
    let deadline = map
        .deadline(&String::nth(0))
        .ok_or("the entries have no deadline")?;
    let left = deadline
        .to_system_time()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    if left < Duration::from_secs(1) {
        return Err(format!("storing {n} entries took longer than their TTL of {ttl:?}").into());
    }
    let expired_at = Instant::now() + left;
    let before = {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = tokio::spawn(write_from_tasks(map.clone(), "before", Arc::clone(&stop)));
        // As long as the entries leave (half a second at least): the tail of plain writes,
        // checkpoints included, is the yardstick for the tail during the sweep.
        let window = left
            .saturating_sub(Duration::from_millis(500))
            .clamp(Duration::from_millis(500), Duration::from_secs(5));
        tokio::time::sleep(window).await;
        stop.store(true, Ordering::Relaxed);
        writers.await??
    };
    // Just past the deadline (the wall clock and `Instant` may disagree by a little).
    tokio::time::sleep_until((expired_at + Duration::from_millis(10)).into()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers = tokio::spawn(write_from_tasks(map.clone(), "during", Arc::clone(&stop)));
    let began = Instant::now();
    let swept = map.sweep_expired().await?;
    let sweep_secs = began.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let during = writers.await??;
    if map.len() != before.len() + during.len() {
        return Err("the sweep left expired entries in memory".into());
    }
    let ms = |times: &[Duration], at: f64| {
        times[((times.len() - 1) as f64 * at) as usize].as_secs_f64() * 1e3
    };
    report(&[
        ("sweep_secs", sweep_secs),
        ("swept", swept as f64),
        ("write_p50_before_ms", ms(&before, 0.5)),
        ("write_p99_before_ms", ms(&before, 0.99)),
        ("write_max_before_ms", ms(&before, 1.0)),
        ("write_p50_during_ms", ms(&during, 0.5)),
        ("write_p99_during_ms", ms(&during, 0.99)),
        ("write_max_during_ms", ms(&during, 1.0)),
        ("writes_during", during.len() as f64),
    ])?;
    leak(map);
    Ok(())
}

/// `TASKS` tasks each writing distinct keys one at a time until `stop`; their write times,
/// sorted.
async fn write_from_tasks(
    map: Map<String>,
    round: &'static str,
    stop: Arc<AtomicBool>,
) -> BenchResult<Vec<Duration>> {
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let map = map.clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut times = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    map.insert(format!("{round}-{task}-{i}"), value(i)).await?;
                    times.push(start.elapsed());
                    i += 1;
                }
                Ok::<_, persistent_map::PersistentError>(times)
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await??);
    }
    times.sort();
    Ok(times)
}
