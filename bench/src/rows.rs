//! The table: each row is one workload, our figure for it, and the anchors it is compared with.

use crate::keys::KeyKind;
use crate::propagation::ENTRIES;
/// Tasks of each instance of the fleet row (see `fleet.rs`).
pub(crate) const TASKS_PER_INSTANCE: u64 = 8;
use crate::workload::{READS, TASKS};

/// Which binary measures a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Program {
    /// This binary (`pm-bench run ...`): our map, raw rusqlite, HashMap, DashMap.
    Ours,
    /// `bench/old`'s binary: persistent-map 0.1.3.
    Old,
}

/// A database written before the runs, that load workloads open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Fixture {
    pub(crate) rows: u64,
    pub(crate) keys: KeyKind,
    /// With the index persistent-map 0.1.3 creates on open (its copy of the data only).
    pub(crate) old_index: bool,
}

impl Fixture {
    pub(crate) fn file_name(&self) -> String {
        let keys = match self.keys {
            KeyKind::String => "string",
            KeyKind::Composite => "composite",
        };
        let old = if self.old_index { "-old" } else { "" };
        format!("{keys}-{}{old}.db", self.rows)
    }
}

/// One measurement: a process that runs `workload` with `implementation` and reports metrics.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) program: Program,
    pub(crate) workload: &'static str,
    pub(crate) implementation: &'static str,
    pub(crate) keys: KeyKind,
    /// Writes (or writes per task, for the concurrent workloads).
    pub(crate) n: Option<u64>,
    pub(crate) fixture: Option<Fixture>,
    /// More `--name value` options of the job.
    pub(crate) args: &'static [(&'static str, &'static str)],
}

impl Job {
    /// Unique per distinct measurement: rows that share a job share its samples.
    pub(crate) fn name(&self) -> String {
        let size = match (self.n, self.fixture) {
            (Some(n), _) => format!("n={n}"),
            (None, Some(fixture)) => format!("rows={}", fixture.rows),
            (None, None) => String::new(),
        };
        let args: String = self
            .args
            .iter()
            .map(|(name, value)| format!(" {name}={value}"))
            .collect();
        format!(
            "{} {} {:?} {size}{args}",
            self.workload, self.implementation, self.keys
        )
    }
}

impl Job {
    /// The writes a write job makes unless its time budget runs out first.
    pub(crate) fn planned_writes(&self) -> Option<u64> {
        match self.workload {
            "concurrent-insert" | "concurrent-tables" | "hot-keys" | "hot-update" | "tx3" => {
                self.n.map(|per_task| per_task * TASKS)
            }
            "seq-insert" | "remove" | "propagation" => self.n,
            _ => None,
        }
    }
}

/// One metric of one job.
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    pub(crate) job: Job,
    pub(crate) metric: &'static str,
    /// Names this figure where an anchor is the better of several.
    pub(crate) label: &'static str,
}

impl Figure {
    pub(crate) fn with_metric(&self, metric: &'static str) -> Self {
        Self {
            metric,
            ..self.clone()
        }
    }
}

/// What ours is compared with: one figure, or the better of several ways to do the same work.
#[derive(Debug)]
pub(crate) struct Anchor {
    pub(crate) label: &'static str,
    pub(crate) figures: Vec<Figure>,
    /// The ratio ours/anchor the issue asks for, if it asks for one.
    pub(crate) target: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Better {
    Higher,
    Lower,
}

#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) id: &'static str,
    pub(crate) title: String,
    pub(crate) unit: &'static str,
    pub(crate) better: Better,
    pub(crate) ours: Figure,
    pub(crate) anchors: Vec<Anchor>,
}

impl Row {
    /// Every job this row needs, ours first.
    pub(crate) fn jobs(&self) -> impl Iterator<Item = &Job> {
        std::iter::once(&self.ours.job).chain(
            self.anchors
                .iter()
                .flat_map(|anchor| anchor.figures.iter().map(|figure| &figure.job)),
        )
    }
}

/// How much work each job does.
#[derive(Debug)]
pub(crate) struct Sizes {
    sequential: u64,
    sequential_old: u64,
    per_task: u64,
    per_task_raw: u64,
    per_task_old: u64,
    small: u64,
    large: u64,
    /// The table of the map larger than memory (`CachedMap`).
    huge: u64,
    /// Writes of a propagation job.
    propagation: u64,
}

impl Sizes {
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                sequential: 1_000,
                sequential_old: 300,
                per_task: 300,
                per_task_raw: 50,
                per_task_old: 20,
                small: 100_000,
                large: 200_000,
                huge: 200_000,
                propagation: 200,
            }
        } else {
            Self {
                sequential: 3_000,
                sequential_old: 1_000,
                per_task: 1_000,
                per_task_raw: 150,
                per_task_old: 60,
                small: 100_000,
                large: 1_000_000,
                huge: 5_000_000,
                propagation: 1_000,
            }
        }
    }
}

fn job(
    program: Program,
    workload: &'static str,
    implementation: &'static str,
    keys: KeyKind,
) -> Job {
    Job {
        program,
        workload,
        implementation,
        keys,
        n: None,
        fixture: None,
        args: &[],
    }
}

impl Job {
    fn n(mut self, n: u64) -> Self {
        self.n = Some(n);
        self
    }

    fn fixture(mut self, rows: u64) -> Self {
        self.fixture = Some(Fixture {
            rows,
            keys: self.keys,
            old_index: self.program == Program::Old,
        });
        self
    }

    fn args(mut self, args: &'static [(&'static str, &'static str)]) -> Self {
        self.args = args;
        self
    }

    fn figure(&self, metric: &'static str) -> Figure {
        Figure {
            job: self.clone(),
            metric,
            label: "",
        }
    }
}

impl Figure {
    fn labelled(mut self, label: &'static str) -> Self {
        self.label = label;
        self
    }
}

fn anchor(label: &'static str, figure: Figure) -> Anchor {
    Anchor {
        label,
        figures: vec![figure],
        target: None,
    }
}

impl Anchor {
    fn target(mut self, ratio: f64) -> Self {
        self.target = Some(ratio);
        self
    }
}

/// `1M`, `100k`, `1,500`.
fn count(n: u64) -> String {
    match n {
        n if n.is_multiple_of(1_000_000) => format!("{}M", n / 1_000_000),
        n if n.is_multiple_of(1_000) && n >= 10_000 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

const OLD: &str = "persistent-map 0.1.3";
const RAW_RMW_MUTEX: &str =
    "raw rusqlite, 16 threads, one mutex-guarded connection, 1 read-modify-write transaction each";
const RAW_ONE_BY_ONE: &str = "raw rusqlite, 1 transaction/insert, WAL + FULL, same process";
const RAW_THREAD: &str =
    "raw rusqlite on a writer thread answered by a oneshot (our backend's shape), same process";

pub(crate) fn rows(sizes: &Sizes) -> Vec<Row> {
    use KeyKind::{Composite, String};
    use Program::{Old, Ours};

    let ours = |workload, keys| job(Ours, workload, "ours", keys);
    // Ours and its raw anchors writing in turns in one process (paired.rs).
    let paired = |workload, keys, metric| {
        job(Ours, workload, "paired", keys)
            .n(sizes.sequential)
            .figure(metric)
    };
    let raw = |workload, keys| job(Ours, workload, "raw", keys);
    let old = |workload| job(Old, workload, "old", String);
    // The cache's capacity: a fiftieth of the full suite's 5M rows, a tenth of --quick's 200k.
    let (capacity, capacity_args): (u64, &'static [(&str, &str)]) = if sizes.huge >= 1_000_000 {
        (100_000, &[("capacity", "100000")])
    } else {
        (20_000, &[("capacity", "20000")])
    };
    let cached = ours("cached", String)
        .fixture(sizes.huge)
        .args(capacity_args);
    // The same file loaded whole by the resident map.
    let resident = ours("load", String).fixture(sizes.huge);
    let raw_threads = |workload, per_task| Anchor {
        label: "raw rusqlite, 16 threads, 1 transaction/insert",
        figures: vec![
            job(Ours, workload, "raw-conns", String)
                .n(per_task)
                .figure("ops_per_sec")
                .labelled("a connection each, busy_timeout"),
            job(Ours, workload, "raw-mutex", String)
                .n(per_task)
                .figure("ops_per_sec")
                .labelled("one mutex-guarded connection"),
        ],
        target: None,
    };
    let raw_grouped = |workload, per_task| {
        anchor(
            "raw rusqlite, one thread, 1 transaction per round of 16 writes (a group commit's floor)",
            job(Ours, workload, "raw-grouped", String)
                .n(per_task)
                .figure("ops_per_sec"),
        )
    };
    // The shape our SQLite backend must have (tasks hand writes to a thread that owns the
    // connection and answers by oneshots) with its group commit, without the map.
    let raw_thread_grouped = |workload, per_task| {
        anchor(
            "raw rusqlite on a writer thread, group commit, 16 tokio tasks answered by oneshots \
             (our backend's shape without the map)",
            job(Ours, workload, "raw-thread", String)
                .n(per_task)
                .figure("ops_per_sec"),
        )
    };
    let Sizes {
        sequential,
        sequential_old,
        per_task,
        per_task_raw,
        per_task_old,
        small,
        large,
        huge,
        propagation: _,
    } = *sizes;

    vec![
        Row {
            id: "seq-insert",
            title: format!("durable sequential `insert`, String keys ({sequential} writes)"),
            unit: "inserts/s",
            better: Better::Higher,
            ours: paired("seq-insert", String, "ours_ops_per_sec"),
            anchors: vec![
                anchor(
                    RAW_ONE_BY_ONE,
                    paired("seq-insert", String, "raw_ops_per_sec"),
                )
                .target(0.9),
                anchor(
                    RAW_THREAD,
                    paired("seq-insert", String, "raw_thread_ops_per_sec"),
                ),
                anchor(
                    OLD,
                    old("seq-insert").n(sequential_old).figure("ops_per_sec"),
                ),
            ],
        },
        Row {
            id: "seq-insert-composite",
            title: format!("durable sequential `insert`, composite key ({sequential} writes)"),
            unit: "inserts/s",
            better: Better::Higher,
            ours: paired("seq-insert", Composite, "ours_ops_per_sec"),
            anchors: vec![
                anchor(
                    RAW_ONE_BY_ONE,
                    paired("seq-insert", Composite, "raw_ops_per_sec"),
                ),
                anchor(
                    RAW_THREAD,
                    paired("seq-insert", Composite, "raw_thread_ops_per_sec"),
                ),
            ],
        },
        Row {
            id: "concurrent",
            title: format!(
                "16 tasks inserting distinct keys, durable ({} writes)",
                16 * per_task
            ),
            unit: "inserts/s",
            better: Better::Higher,
            ours: ours("concurrent-insert", String)
                .n(per_task)
                .figure("ops_per_sec"),
            anchors: vec![
                raw_threads("concurrent-insert", per_task_raw).target(8.0),
                raw_grouped("concurrent-insert", per_task),
                raw_thread_grouped("concurrent-insert", per_task),
                anchor(
                    OLD,
                    old("concurrent-insert")
                        .n(per_task_old)
                        .figure("ops_per_sec"),
                ),
            ],
        },
        Row {
            id: "hot-keys",
            title: format!("16 tasks on 4 hot keys, durable ({} writes)", 16 * per_task),
            unit: "inserts/s",
            better: Better::Higher,
            ours: ours("hot-keys", String).n(per_task).figure("ops_per_sec"),
            anchors: vec![
                raw_threads("hot-keys", per_task_raw),
                raw_grouped("hot-keys", per_task).target(0.7),
                raw_thread_grouped("hot-keys", per_task),
                anchor(OLD, old("hot-keys").n(per_task_old).figure("ops_per_sec")),
            ],
        },
        Row {
            id: "hot-update",
            title: format!("16 tasks `update` one key, durable ({} updates)", 16 * per_task),
            unit: "updates/s",
            better: Better::Higher,
            ours: ours("hot-update", String).n(per_task).figure("ops_per_sec"),
            anchors: vec![anchor(
                RAW_RMW_MUTEX,
                job(Ours, "hot-update", "raw-mutex", String)
                    .n(per_task_raw)
                    .figure("ops_per_sec"),
            )
            .target(5.0)],
        },
        Row {
            id: "hot-update-2proc",
            title: format!(
                "the same from two processes on one file, 16 tasks each ({} updates)",
                32 * per_task
            ),
            unit: "updates/s",
            better: Better::Higher,
            ours: ours("hot-update", String)
                .n(per_task)
                .args(&[("processes", "2")])
                .figure("ops_per_sec"),
            anchors: vec![
                anchor(
                    RAW_RMW_MUTEX,
                    job(Ours, "hot-update", "raw-mutex", String)
                        .n(per_task_raw)
                        .figure("ops_per_sec"),
                ),
                anchor(
                    "ours, one process",
                    ours("hot-update", String).n(per_task).figure("ops_per_sec"),
                ),
            ],
        },
        Row {
            id: "tx3",
            title: format!(
                "16 tasks each running a 3-map transaction, durable ({} transactions)",
                16 * per_task
            ),
            unit: "transactions/s",
            better: Better::Higher,
            ours: ours("tx3", String).n(per_task).figure("ops_per_sec"),
            anchors: vec![anchor(
                "raw rusqlite, 16 threads, one mutex-guarded connection, the 3 read-modify-writes in one transaction",
                job(Ours, "tx3", "raw-mutex", String)
                    .n(per_task_raw)
                    .figure("ops_per_sec"),
            )],
        },
        Row {
            id: "remove",
            title: format!("durable sequential `remove` ({sequential} writes)"),
            unit: "removes/s",
            better: Better::Higher,
            ours: paired("remove", String, "ours_ops_per_sec"),
            anchors: vec![
                anchor(
                    "raw rusqlite, 1 transaction/delete, WAL + FULL, same process",
                    paired("remove", String, "raw_ops_per_sec"),
                ),
                anchor(OLD, old("remove").n(sequential_old).figure("ops_per_sec")),
            ],
        },
        Row {
            id: "reopen-small",
            title: format!("reopen {} entries", count(small)),
            unit: "s",
            better: Better::Lower,
            ours: ours("load", String).fixture(small).figure("secs"),
            anchors: vec![
                anchor(
                    "raw rusqlite: scan + decode",
                    raw("load", String).fixture(small).figure("secs"),
                ),
                anchor(OLD, old("load").fixture(small).figure("secs")),
            ],
        },
        Row {
            id: "reopen-small-composite",
            title: format!("reopen {} entries, composite key", count(small)),
            unit: "s",
            better: Better::Lower,
            ours: ours("load", Composite).fixture(small).figure("secs"),
            anchors: vec![anchor(
                "raw rusqlite: scan + decode",
                raw("load", Composite).fixture(small).figure("secs"),
            )],
        },
        Row {
            id: "reopen-large",
            title: format!("reopen {} entries", count(large)),
            unit: "s",
            better: Better::Lower,
            ours: ours("load", String).fixture(large).figure("secs"),
            anchors: vec![
                anchor(
                    "raw rusqlite: scan + decode",
                    raw("load", String).fixture(large).figure("secs"),
                )
                .target(1.0),
                anchor(OLD, old("load").fixture(large).figure("secs")),
            ],
        },
        Row {
            id: "rss-large",
            title: format!("peak RSS of a process that loads {} entries", count(large)),
            unit: "MiB",
            better: Better::Lower,
            ours: ours("load", String).fixture(large).figure("rss_mib"),
            anchors: vec![
                anchor(
                    "plain `HashMap` loaded by raw rusqlite",
                    job(Ours, "load", "hashmap", String)
                        .fixture(large)
                        .figure("rss_mib"),
                )
                .target(1.15),
                anchor(
                    "`DashMap` loaded by raw rusqlite",
                    job(Ours, "load", "dashmap", String)
                        .fixture(large)
                        .figure("rss_mib"),
                ),
                anchor(OLD, old("load").fixture(large).figure("rss_mib")),
            ],
        },
        Row {
            id: "cached-open",
            title: format!(
                "open a {}-row file as a `CachedMap` (cache of {} entries)",
                count(huge),
                count(capacity)
            ),
            unit: "s",
            better: Better::Lower,
            ours: cached.figure("open_secs"),
            anchors: vec![anchor(
                "`PersistentMap::open` of the same file (loads every row)",
                resident.figure("secs"),
            )],
        },
        Row {
            id: "cached-rss",
            title: format!(
                "peak RSS, `CachedMap` of {} entries over {} rows, hot set read",
                count(capacity),
                count(huge)
            ),
            unit: "MiB",
            better: Better::Lower,
            ours: cached.figure("rss_mib"),
            anchors: vec![anchor(
                "`PersistentMap` holding every row",
                resident.figure("rss_mib"),
            )
            .target(0.1)],
        },
        Row {
            id: "cached-get",
            title: "`CachedMap::get` of a cached key (awaited)".to_owned(),
            unit: "ns/get",
            better: Better::Lower,
            ours: cached.figure("hit_ns"),
            anchors: vec![anchor(
                "`DashMap` get + value clone, same keys, same process",
                cached.figure("dashmap_get_clone_ns"),
            )
            .target(1.5)],
        },
        Row {
            id: "cached-miss",
            title: "`CachedMap::get` of a key the cache does not hold".to_owned(),
            unit: "ns/get",
            better: Better::Lower,
            ours: cached.figure("miss_ns"),
            anchors: vec![anchor(
                "raw rusqlite point SELECT + decode on a blocking thread, same process",
                cached.figure("raw_miss_ns"),
            )
            // 0.7x of raw's reads per second.
            .target(1.43)],
        },
        Row {
            id: "cached-zipf",
            title: format!(
                "zipfian reads (s = 1.0) over {} rows through a cache of {} entries",
                count(huge),
                count(capacity)
            ),
            unit: "ns/get",
            better: Better::Lower,
            ours: cached.figure("zipf_ns"),
            // The hit rate (`zipf_hit_rate`) is in the job's samples.
            anchors: vec![anchor(
                "raw rusqlite point SELECT + decode for every read (no cache), same process",
                cached.figure("raw_miss_ns"),
            )],
        },
        Row {
            id: "get",
            title: format!(
                "`get` (a clone) on a {}-entry map, {} random keys",
                count(large),
                count(READS)
            ),
            unit: "ns/get",
            better: Better::Lower,
            ours: ours("reads", String).fixture(large).figure("get_ns"),
            anchors: vec![
                anchor(
                    "`DashMap` get + value clone, same process",
                    ours("reads", String)
                        .fixture(large)
                        .figure("dashmap_get_clone_ns"),
                )
                .target(1.1),
                anchor(
                    "`HashMap` get + value clone, same process",
                    ours("reads", String)
                        .fixture(large)
                        .figure("hashmap_get_clone_ns"),
                ),
                anchor(OLD, old("load").fixture(large).figure("get_ns")),
            ],
        },
        Row {
            id: "get-with",
            title: format!(
                "`get_with` (a borrow) on a {}-entry map, random keys",
                count(large)
            ),
            unit: "ns/get",
            better: Better::Lower,
            ours: ours("reads", String).fixture(large).figure("get_with_ns"),
            anchors: vec![anchor(
                "`DashMap` get, no clone, same process",
                ours("reads", String)
                    .fixture(large)
                    .figure("dashmap_get_ref_ns"),
            )
            .target(1.2)],
        },
        Row {
            id: "get-ttl",
            title: format!(
                "`get` (a clone) on a {}-entry map whose every entry has a TTL, random keys",
                count(large)
            ),
            unit: "ns/get",
            better: Better::Lower,
            ours: ours("reads-ttl", String)
                .fixture(large)
                .figure("get_ttl_ns"),
            anchors: vec![anchor(
                "`get` on the same map without TTLs, same process",
                ours("reads-ttl", String).fixture(large).figure("get_ns"),
            )
            .target(1.1)],
        },
        Row {
            id: "sweep",
            title: format!(
                "slowest of {TASKS} tasks' writes while {} entries that expired together are swept",
                count(large)
            ),
            unit: "ms",
            better: Better::Lower,
            ours: ours("sweep", String).n(large).figure("write_max_during_ms"),
            anchors: vec![
                anchor(
                    "median write (one commit) before the sweep",
                    ours("sweep", String).n(large).figure("write_p50_before_ms"),
                ),
                anchor(
                    "p99 write before the sweep (plain writes, up to 5 s)",
                    ours("sweep", String).n(large).figure("write_p99_before_ms"),
                ),
                anchor(
                    "p99 write during the sweep",
                    ours("sweep", String).n(large).figure("write_p99_during_ms"),
                ),
                anchor(
                    "the sweep itself (s)",
                    ours("sweep", String).n(large).figure("sweep_secs"),
                ),
            ],
        },
        Row {
            id: "get-composite",
            title: format!(
                "`get` (a clone) on a {}-entry map, composite keys",
                count(small)
            ),
            unit: "ns/get",
            better: Better::Lower,
            ours: ours("reads", Composite).fixture(small).figure("get_ns"),
            anchors: vec![anchor(
                "`DashMap` get + value clone, same process",
                ours("reads", Composite)
                    .fixture(small)
                    .figure("dashmap_get_clone_ns"),
            )],
        },
        Row {
            id: "insert-many",
            title: format!("`insert_many` of {} rows into an empty map", count(large)),
            unit: "rows/s",
            better: Better::Higher,
            ours: ours("insert-many", String).n(large).figure("ops_per_sec"),
            anchors: vec![anchor(
                "raw rusqlite, one transaction",
                raw("insert-many", String).n(large).figure("ops_per_sec"),
            )
            .target(0.7)],
        },
    ]
}

/// The options of the `pg-8tables` row's jobs.
const EIGHT_TABLES: &[(&str, &str)] = &[("tables", "8")];

/// The options of the `pg-fleet-update` row's jobs.
const THREE_INSTANCES: &[(&str, &str)] = &[("instances", "3")];

/// The PostgreSQL backend's rows: "ours" is our map on PostgreSQL; the anchors raw
/// tokio-postgres over the same server doing the same work the plain way (the targets), and our
/// map on SQLite, in the same run. They need the feature `postgres` and a server
/// (`postgres.rs`).
pub(crate) fn postgres_rows(sizes: &Sizes) -> Vec<Row> {
    use KeyKind::String;
    use Program::Ours;

    let writes = sizes.propagation;
    // PostgreSQL: `refresh_every(1 s)`, which the writer's NOTIFY wakes at once; a pause of up to
    // 1 ms before each write. SQLite: the follower polls, so the pause spans its interval.
    let pg = job(Ours, "propagation", "pg", String)
        .n(writes)
        .args(&[("interval-us", "1000000"), ("pause-us", "1000")]);
    let sqlite_10ms = job(Ours, "propagation", "ours", String)
        .n(writes)
        .args(&[("interval-us", "10000"), ("pause-us", "10000")]);
    let sqlite_1ms = job(Ours, "propagation", "ours", String)
        .n(writes)
        .args(&[("interval-us", "1000"), ("pause-us", "1000")]);
    let raw_notify = job(Ours, "propagation", "raw-pg", String)
        .n(writes)
        .args(&[("interval-us", "1000000"), ("pause-us", "1000")]);
    let propagation = |id, title: std::string::String, metric| Row {
        id,
        title,
        unit: "ms",
        better: Better::Lower,
        ours: pg.figure(metric),
        anchors: vec![
            anchor(
                "raw tokio-postgres: an upsert, then a `NOTIFY` carrying the value, to a \
                 listener on a second connection",
                raw_notify.figure(metric),
            )
            .target(1.25),
            anchor(
                "SQLite backend, a second process on the same file, `refresh_every(10 ms)`",
                sqlite_10ms.figure(metric),
            ),
            anchor(
                "SQLite backend, a second process on the same file, `refresh_every(1 ms)`",
                sqlite_1ms.figure(metric),
            ),
        ],
    };
    vec![
        Row {
            id: "pg-concurrent",
            title: format!(
                "16 tasks inserting distinct keys, durable ({} writes)",
                16 * sizes.per_task
            ),
            unit: "inserts/s",
            better: Better::Higher,
            ours: job(Ours, "concurrent-insert", "pg", String)
                .n(sizes.per_task)
                .figure("ops_per_sec"),
            anchors: vec![
                anchor(
                    "raw tokio-postgres: a deadpool-postgres pool of 16 connections, each insert \
                     one `INSERT ... ON CONFLICT DO UPDATE`",
                    job(Ours, "concurrent-insert", "raw-pg", String)
                        .n(sizes.per_task)
                        .figure("ops_per_sec"),
                )
                .target(1.0),
                anchor(
                    "SQLite backend, the same workload (the `concurrent` row's ours)",
                    job(Ours, "concurrent-insert", "ours", String)
                        .n(sizes.per_task)
                        .figure("ops_per_sec"),
                ),
            ],
        },
        Row {
            id: "pg-fleet-update",
            title: format!(
                "a fleet's hot counter: 3 instances (processes) x {TASKS_PER_INSTANCE} tasks \
                 incrementing one key for 3 s, durable"
            ),
            unit: "increments/s",
            better: Better::Higher,
            ours: job(Ours, "fleet-update", "pg", String)
                .args(THREE_INSTANCES)
                .figure("ops_per_sec"),
            anchors: vec![anchor(
                "raw tokio-postgres: 3 processes with one connection each, their tasks sending \
                 `UPDATE ... SET v = v + 1`",
                job(Ours, "fleet-update", "raw-pg", String)
                    .args(THREE_INSTANCES)
                    .figure("ops_per_sec"),
            )
            .target(1.0)],
        },
        Row {
            id: "pg-8tables",
            title: format!(
                "8 tables from 16 tasks at once: 16 tasks inserting distinct keys spread over 8 \
                 maps (8 tables) of one database, durable ({} writes)",
                16 * sizes.per_task
            ),
            unit: "inserts/s",
            better: Better::Higher,
            ours: job(Ours, "concurrent-tables", "pg", String)
                .n(sizes.per_task)
                .args(EIGHT_TABLES)
                .figure("ops_per_sec"),
            anchors: vec![anchor(
                "SQLite backend, the same workload on 8 tables of one file",
                job(Ours, "concurrent-tables", "ours", String)
                    .n(sizes.per_task)
                    .args(EIGHT_TABLES)
                    .figure("ops_per_sec"),
            )],
        },
        propagation(
            "pg-propagation",
            format!(
                "from an acknowledged `insert` to another instance's `get` returning it \
                 ({ENTRIES} entries): median of {writes} writes"
            ),
            "median_ms",
        ),
        propagation(
            "pg-propagation-p99",
            format!("the same, 99th percentile of {writes} writes"),
            "p99_ms",
        ),
    ]
}
