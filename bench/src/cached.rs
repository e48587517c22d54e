//! The map larger than memory, [`CachedMap`], on the 5M-row fixture (200k with `--quick`): how long it takes to open,
//! the peak memory of a process whose cache holds `--capacity` entries, a `get` the cache
//! answers against a `DashMap` get + clone, a miss against raw rusqlite's point `SELECT` and
//! decode on a blocking thread (what a miss does without the map), and a zipfian read mix
//! (s = 1.0) over every row with its hit rate.
//!
//! One process measures them in that order, so that its peak memory is taken before the
//! `DashMap` anchor loads the whole fixture.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use persistent_map::sqlite::SqliteBackend;
use persistent_map::{CacheCapacity, CachedMap};
use rusqlite::OptionalExtension;

use crate::memory::dashmap_of;
use crate::workload::{consume, key, peak_rss_mib, random_indexes, report, BenchResult, Session};

type Cached = CachedMap<String, Session, SqliteBackend>;

/// Misses timed, for ours and the raw anchor each.
const MISSES: usize = 20_000;

pub(crate) async fn cached(db: &Path, capacity: u64, reads: u64) -> BenchResult {
    let began = Instant::now();
    let map = Cached::open(db, CacheCapacity::entries(capacity)).await?;
    let open_secs = began.elapsed().as_secs_f64();
    let rows = map.len().await? as u64;
    if rows < 2 * capacity {
        return Err(format!("{rows} rows: a cache of {capacity} would hold half of them").into());
    }

    // The hot set: `capacity` keys spread over the table, read once so the cache holds them.
    let stride = rows / capacity;
    let hot: Vec<String> = (0..capacity).map(|i| key(i * stride)).collect();
    for hot_key in &hot {
        consume(map.get(hot_key.as_str()).await?);
    }
    let hits: Vec<&String> = random_indexes(reads as usize, capacity)
        .into_iter()
        .map(|i| &hot[i as usize])
        .collect();
    let reads_before = map.cache_stats().storage_reads;
    let hit_ns = time_gets(&map, hits.iter().map(|k| k.as_str())).await?;
    let missed = map.cache_stats().storage_reads - reads_before;
    if missed * 100 > reads {
        return Err(format!("{missed} of {reads} reads of the hot set missed the cache").into());
    }
    let rss_mib = peak_rss_mib()?;

    // Misses: keys off the hot set's stride, read once each.
    let misses: Vec<String> = random_indexes(MISSES, rows)
        .into_iter()
        .filter(|i| i % stride != 0)
        .map(key)
        .collect();
    let (ours_half, raw_half) = misses.split_at(misses.len() / 2);
    let miss_ns = time_gets(&map, ours_half.iter().map(String::as_str)).await?;
    let raw_miss_ns = raw_point_selects(db, raw_half).await?;

    // A zipfian mix over every row, hottest first: `key-000000` is read most.
    let zipf = Zipf::new(rows);
    let mix: Vec<String> = random_indexes(reads as usize, u64::MAX)
        .into_iter()
        .map(|r| key(zipf.rank(r as f64 / u64::MAX as f64)))
        .collect();
    let reads_before = map.cache_stats().storage_reads;
    let zipf_ns = time_gets(&map, mix.iter().map(String::as_str)).await?;
    let zipf_misses = map.cache_stats().storage_reads - reads_before;
    let hit_rate = 1.0 - zipf_misses as f64 / mix.len() as f64;

    // The anchor of a cached get: the whole fixture in a DashMap, read with the same keys.
    let dashmap = dashmap_of::<String, std::hash::RandomState>(db, 0)?;
    let began = Instant::now();
    for hit in &hits {
        consume(dashmap.get(hit.as_str()).map(|entry| entry.value().clone()));
    }
    let dashmap_ns = began.elapsed().as_nanos() as f64 / hits.len() as f64;

    report(&[
        ("open_secs", open_secs),
        ("rss_mib", rss_mib),
        ("hit_ns", hit_ns),
        ("dashmap_get_clone_ns", dashmap_ns),
        ("miss_ns", miss_ns),
        ("raw_miss_ns", raw_miss_ns),
        ("zipf_ns", zipf_ns),
        ("zipf_hit_rate", hit_rate),
        ("rows", rows as f64),
    ])
}

/// Nanoseconds per `get` of `keys`, each awaited in turn.
async fn time_gets<'a>(
    map: &Cached,
    keys: impl ExactSizeIterator<Item = &'a str>,
) -> BenchResult<f64> {
    let count = keys.len().max(1);
    let began = Instant::now();
    for key in keys {
        consume(map.get(key).await?);
    }
    Ok(began.elapsed().as_nanos() as f64 / count as f64)
}

/// Nanoseconds per read of `keys` by raw rusqlite: a point `SELECT` and a decode on tokio's
/// blocking pool, one connection shared, each read awaited in turn.
async fn raw_point_selects(db: &Path, keys: &[String]) -> BenchResult<f64> {
    let connection = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let connection = Arc::new(Mutex::new(connection));
    let began = Instant::now();
    for key in keys {
        let (connection, key) = (Arc::clone(&connection), key.clone());
        let value = tokio::task::spawn_blocking(move || -> Result<Option<Session>, String> {
            let connection = connection.lock().map_err(|e| e.to_string())?;
            let mut select = connection
                .prepare_cached("SELECT value FROM kv WHERE key = ?1")
                .map_err(|e| e.to_string())?;
            let json: Option<String> = select
                .query_row([&key], |row| row.get(0))
                .optional()
                .map_err(|e| e.to_string())?;
            json.map(|json| serde_json::from_str(&json).map_err(|e| e.to_string()))
                .transpose()
        })
        .await??;
        consume(value);
    }
    Ok(began.elapsed().as_nanos() as f64 / keys.len().max(1) as f64)
}

/// Ranks `0..n` drawn with probability proportional to `1 / (rank + 1)` (s = 1.0).
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: u64) -> Self {
        let mut total = 0.0;
        let mut cumulative: Vec<f64> = (1..=n)
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect();
        cumulative.iter_mut().for_each(|c| *c /= total);
        Self { cumulative }
    }

    /// The rank whose share of the distribution holds `u` (in `0..1`).
    fn rank(&self, u: f64) -> u64 {
        self.cumulative.partition_point(|&c| c < u) as u64
    }
}
