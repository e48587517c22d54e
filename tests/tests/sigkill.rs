//! Acknowledged means durable: a writer killed with SIGKILL loses no acknowledged write, and
//! the file it leaves passes `PRAGMA integrity_check`.
//!
//! The parent test runs this same test binary again as a child (selected by an environment
//! variable), reads the child's acknowledgements from its stdout, kills it mid-stream, then
//! reopens the database and checks every acknowledged write.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use persistent_map::sqlite::SqliteBackend;
use persistent_map::PersistentMap;
use persistent_map_tests::{
    acking_child, assert_acknowledged_steps_kept, integrity_check, kill_after_acks, print_ack,
    stored_rows, temp_db,
};

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
                        print_ack(task, step);
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
    let mut child = acking_child(module_path!(), "sigkill_child_writer")
        .env(CHILD_DB, &path)
        .spawn()
        .unwrap();
    // The last acknowledged step of each task.
    let acked = kill_after_acks(&mut child, ACKS_BEFORE_KILL);

    // Every acknowledged step must be stored, applied in order. A task's next step may have
    // run without being acknowledged; the keys it touches may go either way.
    assert_eq!(integrity_check(&path), "ok");
    let stored: BTreeMap<String, u64> = stored_rows(&path, "kv")
        .into_iter()
        .map(|(key, value)| (key, value.parse().unwrap()))
        .collect();
    let written =
        assert_acknowledged_steps_kept(&stored, &acked, |task, step| match op(task, step) {
            Op::Insert(key, value) => (key, Some(value)),
            Op::Remove(key) => (key, None),
        });
    assert!(written > 500, "the child wrote {written} keys");

    // And the map itself opens on what the killed process left.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reopened_len = runtime.block_on(async {
        let map: PersistentMap<String, u64, SqliteBackend> =
            PersistentMap::open(&path).await.unwrap();
        map.len()
    });
    assert_eq!(reopened_len, stored.len());
}

const SECOND_MAP_CHILD_DB: &str = "PERSISTENT_MAP_SECOND_MAP_CHILD_DB";
/// Writes acknowledged after the second map opened and the reader came and went.
const WRITES_AFTER_READER: u64 = 50;

#[test]
#[ignore = "the child process of `a_second_map_on_the_file_keeps_sqlites_locks`; it runs until killed"]
fn second_map_child_writer() {
    let path =
        PathBuf::from(std::env::var_os(SECOND_MAP_CHILD_DB).expect("run by the parent test"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let first: PersistentMap<String, u64, SqliteBackend> =
            PersistentMap::open(&path).await.unwrap();
        first.insert("before".into(), 0).await.unwrap();
        // A second map on the same file, as the README's several-maps-in-one-file setup has.
        let second: PersistentMap<u64, String, _> =
            PersistentMap::new(SqliteBackend::with_table(&path, "second").await.unwrap())
                .await
                .unwrap();
        second.insert(1, "one".into()).await.unwrap();
        println!("opened");
        // The parent reads the file with a connection of its own and closes it, then says go.
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).unwrap();
        for step in 0..WRITES_AFTER_READER {
            first.insert(format!("after-{step}"), step).await.unwrap();
            println!("ack {step}");
        }
        println!("done");
        std::future::pending::<()>().await;
    });
}

/// Opening a second map on a file must not drop the locks SQLite holds on it in this process
/// (closing any descriptor of a file drops every POSIX lock the process holds on it): else the
/// next program that reads the file and closes it believes it was the last user and deletes the
/// write-ahead log from under the writer, and later acknowledged writes vanish.
#[test]
fn a_second_map_on_the_file_keeps_sqlites_locks() {
    let (_dir, path) = temp_db();
    let mut child = acking_child(module_path!(), "second_map_child_writer")
        .env(SECOND_MAP_CHILD_DB, &path)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut wait_for = |wanted: &str| loop {
        let line = lines.next().expect("the child exited early").unwrap();
        if line.ends_with(wanted) {
            return;
        }
    };
    wait_for("opened");

    // Another program reads the file and closes it: the `sqlite3` tool, whose close deletes
    // the write-ahead log if it finds no other process holding SQLite's locks on the file.
    let read = Command::new("sqlite3")
        .arg(&path)
        .arg("SELECT count(*) FROM kv")
        .output()
        .expect("run the `sqlite3` tool (Debian: apt-get install sqlite3)");
    assert!(read.status.success(), "sqlite3 failed: {read:?}");
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "1");

    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    stdin.flush().unwrap();
    wait_for("done");

    // Every acknowledged write is visible to another program while the writer runs...
    let visible: BTreeSet<String> = stored_rows(&path, "kv")
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    let wanted: BTreeSet<String> = std::iter::once("before".to_string())
        .chain((0..WRITES_AFTER_READER).map(|step| format!("after-{step}")))
        .collect();
    assert_eq!(
        visible, wanted,
        "acknowledged writes were invisible to a reader"
    );
    // ... and in the file once the writer is killed.
    assert_eq!(integrity_check(&path), "ok");
    let stored: BTreeSet<String> = stored_rows(&path, "kv")
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(stored, wanted, "acknowledged writes were lost");
}
