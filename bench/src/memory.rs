//! The in-memory floor: a plain `HashMap` and a `DashMap` loaded with the same data, for the peak
//! memory of holding it, and the maps the `reads` workload reads beside ours.
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
    leak, peak_rss_mib, random_indexes, report, timed, BenchResult, Options, Session,
};

/// Loads the fixture `--db` into a `HashMap` (`dashmap` false) or a `DashMap`, and reports the
/// time and the process's peak memory.
pub(crate) fn run(workload: &str, dashmap: bool, options: &Options) -> BenchResult {
    if workload != "load" {
        return Err(format!("the in-memory maps have no workload `{workload}`").into());
    }
    let db = Path::new(options.text("db")?);
    let kind = KeyKind::parse(options.text("keys")?)?;
    if dashmap {
        let capacity = match options.text("capacity") {
            Ok(capacity) => capacity.parse()?,
            Err(_) => 0,
        };
        let hasher = options.text("hasher").unwrap_or("sip");
        with_keys!(kind, time_dashmap_load(db, capacity, hasher))
    } else {
        with_keys!(kind, time_hashmap_load(db))
    }
}

/// `count` keys of a map of `len` entries, in random order.
pub(crate) fn queries<K: BenchKey>(count: u64, len: usize) -> Vec<K> {
    random_indexes(count as usize, len as u64)
        .into_iter()
        .map(K::nth)
        .collect()
}

/// The fixture `db` in a `HashMap`, loaded by raw rusqlite.
pub(crate) fn hashmap_of<K: BenchKey>(db: &Path) -> BenchResult<HashMap<K, Session>> {
    let mut map = HashMap::new();
    scan(db, &mut |key, value| {
        map.insert(key, value);
    })?;
    Ok(map)
}

/// The fixture `db` in a `DashMap` made with `capacity` and the hasher `S`, loaded by raw
/// rusqlite.
pub(crate) fn dashmap_of<K, S>(db: &Path, capacity: usize) -> BenchResult<DashMap<K, Session, S>>
where
    K: BenchKey,
    S: BuildHasher + Clone + Default,
{
    let map = DashMap::with_capacity_and_hasher(capacity, S::default());
    scan(db, &mut |key, value| {
        map.insert(key, value);
    })?;
    Ok(map)
}

fn time_hashmap_load<K: BenchKey>(db: &Path) -> BenchResult {
    time_load(db, hashmap_of::<K>)
}

fn time_dashmap_load<K: BenchKey>(db: &Path, capacity: usize, hasher: &str) -> BenchResult {
    match hasher {
        "sip" => time_load(db, |db| dashmap_of::<K, RandomState>(db, capacity)),
        "fold" => time_load(db, |db| {
            dashmap_of::<K, foldhash::fast::RandomState>(db, capacity)
        }),
        other => Err(format!("--hasher is `sip` or `fold`, not `{other}`").into()),
    }
}

/// Times `load(db)` and reports the time and the process's peak memory after it.
fn time_load<T>(db: &Path, load: impl FnOnce(&Path) -> BenchResult<T>) -> BenchResult {
    let (map, elapsed) = timed(|| load(db));
    let map = map?;
    report(&[
        ("secs", elapsed.as_secs_f64()),
        ("rss_mib", peak_rss_mib()?),
    ])?;
    leak(map);
    Ok(())
}
