//! Another process writing the same file: `refresh` catches up, cheaply when nothing changed,
//! and `refresh_every` does it in the background. The other process is this test binary run
//! again as a child.

use std::path::Path;
use std::time::{Duration, Instant};

use persistent_map::sqlite::SqliteBackend;
use persistent_map::{Change, PersistentMap};
use persistent_map_tests::{child_test, temp_db};

const CHILD_DB: &str = "PERSISTENT_MAP_CHILD_DB";
const CHILD_PREFIX: &str = "PERSISTENT_MAP_CHILD_PREFIX";

type Map = PersistentMap<String, u64, SqliteBackend>;

#[test]
#[ignore = "the other process of the tests in this file; they run it"]
fn other_process_writer() {
    let path = std::env::var_os(CHILD_DB).expect("run by a parent test");
    let prefix = std::env::var(CHILD_PREFIX).expect("run by a parent test");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let map: Map = PersistentMap::open(path).await.unwrap();
        for i in 0..20 {
            map.insert(format!("{prefix}-{i}"), i).await.unwrap();
        }
        map.remove(&"shared".to_string()).await.unwrap();
    });
}

fn run_other_process(path: &Path, prefix: &str) {
    let status = child_test(module_path!(), "other_process_writer")
        .args(["--test-threads=1"])
        .env(CHILD_DB, path)
        .env(CHILD_PREFIX, prefix)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_catches_up_with_another_process_and_is_a_no_op_otherwise() {
    let (_dir, path) = temp_db();
    let map: Map = PersistentMap::open(&path).await.unwrap();
    map.insert("shared".into(), 1).await.unwrap();
    map.insert("mine".into(), 2).await.unwrap();
    assert!(!map.refresh().await.unwrap(), "our own writes are not news");

    let mut changes = map.subscribe();
    run_other_process(&path, "child");
    assert_eq!(map.get("child-0"), None, "no refresh yet");
    assert!(map.refresh().await.unwrap());
    assert_eq!(map.get("child-19"), Some(19));
    assert_eq!(map.get("shared"), None, "the other process removed it");
    assert_eq!(map.get("mine"), Some(2));
    assert_eq!(map.len(), 21);
    // The other process logged the keys it wrote: the map re-read just those, and says so key
    // by key (a full reload would say `Reloaded`).
    let mut heard = Vec::new();
    while let Ok(Some(change)) = changes.try_recv() {
        heard.push(change);
    }
    assert_eq!(heard.len(), 21, "{heard:?}");
    assert!(heard.contains(&Change::Inserted {
        key: "child-19".into(),
        value: 19
    }));
    assert!(heard.contains(&Change::Removed {
        key: "shared".into()
    }));

    assert!(!map.refresh().await.unwrap(), "nothing changed since");
    map.insert("after".into(), 3).await.unwrap();
    assert!(!map.refresh().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_refresh_picks_up_another_process_writes() {
    let (_dir, path) = temp_db();
    let map: Map = PersistentMap::open(&path).await.unwrap();
    let refresher = map.refresh_every(Duration::from_millis(50));

    run_other_process(&path, "bg");
    let deadline = Instant::now() + Duration::from_secs(10);
    while map.get("bg-19").is_none() {
        assert!(
            Instant::now() < deadline,
            "the background refresh never caught up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(map.len(), 20);
    assert!(refresher.take_error().is_none());

    drop(refresher);
    tokio::time::sleep(Duration::from_millis(60)).await;
    run_other_process(&path, "late");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(map.get("late-0"), None, "a dropped refresher stops");
    assert!(map.refresh().await.unwrap());
    assert_eq!(map.get("late-0"), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_interval_refreshes_as_often_as_it_can_instead_of_panicking() {
    let (_dir, path) = temp_db();
    let map: Map = PersistentMap::open(&path).await.unwrap();
    let refresher = map.refresh_every(Duration::ZERO);
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("INSERT INTO kv VALUES ('other', '7')", [])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while map.get("other").is_none() {
        assert!(Instant::now() < deadline, "the refresh never caught up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refresher.take_error().is_none());
}
