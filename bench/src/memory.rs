//! The in-memory floor: a plain `HashMap` and a `DashMap` loaded with the same data, for the peak
//! memory of holding it and the cost of a read.
//!
//! Two options of the `DashMap` load serve the profile in BENCHMARKS.md rather than the table:
//! `--capacity N` sizes the map before loading, `--hasher fold` uses foldhash instead of the
//! standard library's SipHash.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::Path;

use dashmap::DashMap;

use crate::keys::{with_keys, BenchKey, KeyKind};
use crate::raw::scan;
use crate::workload::{
    consume, leak, named, peak_rss_mib, random_indexes, report, time_reads, timed, BenchResult,
    Options,
};

/// Loads the fixture `--db` into a `HashMap` (`dashmap` false) or a `DashMap`, reports the time
/// and the process's peak memory, then times random reads.
pub(crate) fn run(workload: &str, dashmap: bool, options: &Options) -> BenchResult {
    if workload != "load" {
        return Err(format!("the in-memory maps have no workload `{workload}`").into());
    }
    let db = Path::new(options.text("db")?);
    let kind = KeyKind::parse(options.text("keys")?)?;
    let reads = options.reads()?;
    if dashmap {
        let capacity = match options.text("capacity") {
            Ok(capacity) => capacity.parse()?,
            Err(_) => 0,
        };
        let hasher = options.text("hasher").unwrap_or("sip");
        with_keys!(kind, load_dashmap_hashed(db, reads, capacity, hasher))
    } else {
        with_keys!(kind, load_hashmap(db, reads))
    }
}

/// `count` keys of a map of `len` entries, in random order.
pub(crate) fn queries<K: BenchKey>(count: u64, len: usize) -> Vec<K> {
    random_indexes(count as usize, len as u64)
        .into_iter()
        .map(K::nth)
        .collect()
}

fn load_hashmap<K: BenchKey>(db: &Path, reads: u64) -> BenchResult {
    let (map, elapsed) = timed(|| -> BenchResult<HashMap<K, _>> {
        let mut map = HashMap::new();
        scan(db, &mut |key, value| {
            map.insert(key, value);
        })?;
        Ok(map)
    });
    let map = map?;
    let rss = peak_rss_mib()?;
    let queries = queries::<K>(reads, map.len());
    let reads = time_reads(&queries, &mut [&mut |key| consume(map.get(key).cloned())]);
    let mut metrics = vec![("secs", elapsed.as_secs_f64()), ("rss_mib", rss)];
    metrics.extend(named(&["get_clone_ns"], &reads));
    report(&metrics)?;
    leak(map);
    Ok(())
}

fn load_dashmap_hashed<K: BenchKey>(
    db: &Path,
    reads: u64,
    capacity: usize,
    hasher: &str,
) -> BenchResult {
    match hasher {
        "sip" => load_dashmap::<K, RandomState>(db, reads, capacity),
        "fold" => load_dashmap::<K, foldhash::fast::RandomState>(db, reads, capacity),
        other => Err(format!("--hasher is `sip` or `fold`, not `{other}`").into()),
    }
}

fn load_dashmap<K, S>(db: &Path, reads: u64, capacity: usize) -> BenchResult
where
    K: BenchKey,
    S: BuildHasher + Clone + Default,
{
    let (map, elapsed) = timed(|| -> BenchResult<DashMap<K, _, S>> {
        let map = DashMap::with_capacity_and_hasher(capacity, S::default());
        scan(db, &mut |key, value| {
            map.insert(key, value);
        })?;
        Ok(map)
    });
    let map = map?;
    let rss = peak_rss_mib()?;
    let queries = queries::<K>(reads, map.len());
    let reads = time_reads(
        &queries,
        &mut [
            &mut |key| consume(map.get(key).map(|entry| entry.value().clone())),
            &mut |key| consume(map.get(key).map(|entry| entry.logins)),
        ],
    );
    let mut metrics = vec![("secs", elapsed.as_secs_f64()), ("rss_mib", rss)];
    metrics.extend(named(&["get_clone_ns", "get_ref_ns"], &reads));
    report(&metrics)?;
    leak(map);
    Ok(())
}
