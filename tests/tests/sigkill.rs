//! Acknowledged means durable: a writer killed with SIGKILL loses no acknowledged write, and
//! the file it leaves passes `PRAGMA integrity_check`.
//!
//! The parent test runs this same test binary again as a child (selected by an environment
//! variable), reads the child's acknowledgements from its stdout, kills it mid-stream, then
//! reopens the database and checks every acknowledged write.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use persistent_map::sqlite::SqliteBackend;
use persistent_map::PersistentMap;
use persistent_map_tests::{child_test, integrity_check, stored_rows, temp_db};

const CHILD_DB: &str = "PERSISTENT_MAP_SIGKILL_CHILD_DB";
const TASKS: u64 = 16;
/// Acknowledgements to wait for before killing the child.
const ACKS_BEFORE_KILL: usize = 1500;

/// The fixed schedule of one writer task: step `i` inserts `t{task}-{i}` with value `i`, except
/// every third step, which removes the key the step before inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Insert(String, u64),
    Remove(String),
}

fn op(task: u64, step: u64) -> Op {
    if step % 3 == 2 {
        Op::Remove(format!("t{task}-{}", step - 1))
    } else {
        Op::Insert(format!("t{task}-{step}"), step)
    }
}

#[test]
#[ignore = "the child process of `acknowledged_writes_survive_sigkill`; it runs until killed"]
fn sigkill_child_writer() {
    let path = PathBuf::from(std::env::var_os(CHILD_DB).expect("run by the parent test"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let map: PersistentMap<String, u64, SqliteBackend> =
            PersistentMap::open(&path).await.unwrap();
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let map = map.clone();
                tokio::spawn(async move {
                    for step in 0.. {
                        match op(task, step) {
                            Op::Insert(key, value) => {
                                map.insert(key, value).await.unwrap();
                            }
                            Op::Remove(key) => {
                                map.remove(&key).await.unwrap();
                            }
                        }
                        // One line per acknowledgement, written whole.
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ack {task} {step}").unwrap();
                        out.flush().unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let (_dir, path) = temp_db();
    let mut child = child_test(module_path!(), "sigkill_child_writer")
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_DB, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    // The last acknowledged step of each task.
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let record = |line: &str, acked: &mut BTreeMap<u64, u64>| -> bool {
        // The test harness may print its own words before the first line without a newline.
        let Some((_, rest)) = line.split_once("ack ") else {
            return false;
        };
        let (task, step) = rest.split_once(' ').unwrap();
        let (task, step): (u64, u64) = (task.parse().unwrap(), step.parse().unwrap());
        let previous = acked.insert(task, step);
        assert_eq!(
            previous.map_or(0, |p| p + 1),
            step,
            "task {task} acknowledged out of order"
        );
        true
    };
    while count < ACKS_BEFORE_KILL {
        assert!(Instant::now() < deadline, "the child wrote too slowly");
        let line = lines.next().expect("the child exited early").unwrap();
        if record(&line, &mut acked) {
            count += 1;
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
                           // Acknowledgements already in the pipe count too.
    for line in lines {
        let Ok(line) = line else { break };
        record(&line, &mut acked);
    }
    child.wait().unwrap();

    // What must be stored: every acknowledged step applied in order. A task's next step may have
    // run without being acknowledged; the keys it touches may go either way.
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut uncertain: BTreeSet<String> = BTreeSet::new();
    for (&task, &last) in &acked {
        for step in 0..=last {
            match op(task, step) {
                Op::Insert(key, value) => expected.insert(key, value),
                Op::Remove(key) => expected.remove(&key),
            };
        }
        match op(task, last + 1) {
            Op::Insert(key, _) | Op::Remove(key) => uncertain.insert(key),
        };
    }

    assert_eq!(integrity_check(&path), "ok");
    let stored: BTreeMap<String, u64> = stored_rows(&path, "kv")
        .into_iter()
        .map(|(key, value)| (key, value.parse().unwrap()))
        .collect();
    for (key, value) in &expected {
        if !uncertain.contains(key) {
            assert_eq!(
                stored.get(key),
                Some(value),
                "acknowledged insert of {key} was lost"
            );
        }
    }
    for key in stored.keys() {
        assert!(
            expected.contains_key(key) || uncertain.contains(key),
            "{key} is stored but its removal was acknowledged (or it was never written)"
        );
    }
    assert!(
        expected.len() > 500,
        "the child wrote {} keys",
        expected.len()
    );

    // And the map itself opens on what the killed process left.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reopened_len = runtime.block_on(async {
        let map: PersistentMap<String, u64, SqliteBackend> =
            PersistentMap::open(&path).await.unwrap();
        map.len()
    });
    assert_eq!(reopened_len, stored.len());
}
