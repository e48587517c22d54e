//! Speed: what the map costs against the anchors it must be measured by.
//!
//! The repository's bench runs the map and its anchors (raw rusqlite doing the same work its
//! best way, `HashMap` and `DashMap`, raw tokio-postgres, persistent-map 0.1.3) on the same
//! workloads in one run, each job a fresh process, and prints the ratios; `pm-bench charts`
//! draws the curves.
//! [BENCHMARKS.md](https://github.com/persistent-map/persistent-map/blob/main/BENCHMARKS.md)
//! has the current figures, the charts, the machine and the commit each came from, and
//! [BENCHMARKS-HISTORY.md](https://github.com/persistent-map/persistent-map/blob/main/BENCHMARKS-HISTORY.md)
//! every earlier round and where the time goes.
//!
//! ```sh
//! cargo run --release -p persistent-map-bench              # the suite: every row, 5 runs
//! cargo run --release -p persistent-map-bench -- --quick   # smaller workloads, 1 run
//! cargo run --release -p persistent-map-bench -- charts    # the charts of BENCHMARKS.md
//! ```
//!
//! The current figures, on a 2-core VM, some taken beside other builds (read them as ratios to
//! anchors measured in the same run: durable writes measure the disk as much as the code):
//!
//! | | ours / anchor | anchor |
//! | --- | ---: | --- |
//! | 16 tasks `update` one key | 7.35-9.18x | raw rusqlite, 16 threads on one mutex-guarded connection, one read-modify-write transaction each |
//! | durable inserts from 16 tasks | 3.81x / 0.54-0.61x | raw rusqlite, one transaction per insert / the group-commit floor (one thread committing 16 writes per transaction) |
//! | 16 tasks on 4 hot keys | 0.49-0.65x | the group-commit floor (0.7x wanted; our backend's shape alone, a writer thread answering 16 tokio tasks with no map, makes 0.51-0.73x) |
//! | 16 tasks each running a 3-map transaction on a shared key | 0.43-0.57x | raw rusqlite doing it in one transaction under a mutex |
//! | durable inserts, one at a time | 0.73-0.81x | raw rusqlite, one transaction per insert, in turns in one process |
//! | writes from 16 tasks while 1M expired entries are swept | median 1.18-1.19 ms | 0.60-0.65 ms before the sweep |
//! | reopening 1M entries | 0.96x the time | raw rusqlite scanning and decoding them |
//! | peak memory holding 1M entries | 0.88x | a plain `HashMap` of the same data |
//! | `get` | 1.12x | a `DashMap` get and clone |
//! | `insert_many` of 1M rows | 1.06x | raw rusqlite, one transaction |
//! | PostgreSQL: 3 processes × 8 tasks `update(+1)` on one key | 0.86-1.08x, median 0.94x (about 2,400-3,700/s; 0.67x before 840b20c on the same machine); 1.21x in 5 runs on another 2-core host (5,298/s against raw's 4,375/s, at 9787c79) | 3 connections sending `UPDATE ... SET v = v + 1` |
//! | PostgreSQL: 16 tasks inserting | 0.56-0.69x | raw tokio-postgres, a pool of 16 connections |
//! | PostgreSQL: acknowledged write to another instance's `get` | -0.02 ms median, 0.09 ms p99 (seen before `insert` returned, in most writes) | a plain upsert + `NOTIFY` loop: 0.15 ms median, 0.32 ms p99 |
//!
//! Against persistent-map 0.1.3 (previous round, idle machine): 4.4x its durable sequential
//! inserts, 27x its inserts from 16 tasks, a quarter of its time to reopen 1M entries, two
//! thirds of its memory.
