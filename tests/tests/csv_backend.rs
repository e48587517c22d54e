//! The CSV backend on files in persistent-map 0.1.3's exact format: read as they are, written
//! back as 0.1.3 reads them, replaced whole even when the writer is killed, and refused with
//! the path and the line when damaged.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use persistent_map::csv::CsvBackend;
use persistent_map::{PersistentError, PersistentMap};
use persistent_map_tests::acking_child;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    visits: u32,
    admin: bool,
}

fn profile(name: &str, visits: u32, admin: bool) -> Profile {
    Profile {
        name: name.into(),
        visits,
        admin,
    }
}

fn temp_csv() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("data.csv");
    (dir, path)
}

async fn open<K, V>(path: &Path) -> persistent_map::Result<PersistentMap<K, V, CsvBackend>>
where
    K: std::str::FromStr<Err: std::error::Error + Send + Sync + 'static>
        + ToString
        + Eq
        + std::hash::Hash
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    V: Clone + Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    PersistentMap::new(CsvBackend::new(path)).await
}

/// What 0.1.3's `load_all` did with a file: `csv` with no headers, `(String, V)` records, a
/// later record of a key replacing an earlier one.
fn read_as_0_1_3<V: serde::de::DeserializeOwned>(path: &Path) -> Vec<(String, V)> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .expect("open the file as 0.1.3 did");
    let mut entries: Vec<(String, V)> = Vec::new();
    for record in reader.deserialize::<(String, V)>() {
        let (key, value) = record.expect("a record 0.1.3 can read");
        entries.retain(|(existing, _)| *existing != key);
        entries.push((key, value));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

#[tokio::test]
async fn a_0_1_3_file_is_read_as_it_is_and_written_back_as_0_1_3_wrote_it(
) -> persistent_map::Result<()> {
    let (_dir, path) = temp_csv();
    // As 0.1.3 left it: no header, appended on every insert (`alice` was updated), a struct
    // value written as its fields, a key with a comma quoted, an empty string as an empty field.
    let written_by_0_1_3 = "alice,Alice,30,false\n\
                            bob,Bob,25,true\n\
                            alice,Alice,31,false\n\
                            \"smith, jr\",\"Smith, Jr\",1,false\n\
                            nobody,,0,false\n";
    std::fs::write(&path, written_by_0_1_3)?;

    let map: PersistentMap<String, Profile, CsvBackend> = open(&path).await?;
    assert_eq!(map.len(), 4);
    assert_eq!(map.get("alice"), Some(profile("Alice", 31, false)));
    assert_eq!(map.get("bob"), Some(profile("Bob", 25, true)));
    assert_eq!(map.get("smith, jr"), Some(profile("Smith, Jr", 1, false)));
    assert_eq!(map.get("nobody"), Some(profile("", 0, false)));
    // Reading changes nothing on disk.
    assert_eq!(std::fs::read_to_string(&path)?, written_by_0_1_3);

    map.insert("carol".into(), profile("Carol", 1, true))
        .await?;
    map.remove(&"bob".to_string()).await?;
    // One record per key, in key order, each exactly as 0.1.3's writer writes it.
    assert_eq!(
        std::fs::read_to_string(&path)?,
        "alice,Alice,31,false\n\
         carol,Carol,1,true\n\
         nobody,,0,false\n\
         \"smith, jr\",\"Smith, Jr\",1,false\n"
    );
    assert_eq!(
        read_as_0_1_3::<Profile>(&path),
        [
            ("alice".to_string(), profile("Alice", 31, false)),
            ("carol".to_string(), profile("Carol", 1, true)),
            ("nobody".to_string(), profile("", 0, false)),
            ("smith, jr".to_string(), profile("Smith, Jr", 1, false)),
        ]
    );
    drop(map);

    let reopened: PersistentMap<String, Profile, CsvBackend> = open(&path).await?;
    assert_eq!(reopened.len(), 4);
    assert_eq!(reopened.get("carol"), Some(profile("Carol", 1, true)));
    Ok(())
}

#[tokio::test]
async fn numbers_quotes_and_batches_round_trip() -> persistent_map::Result<()> {
    let (_dir, path) = temp_csv();
    std::fs::write(&path, "1,\"say \"\"hi\"\"\"\n2,plain\n")?;
    let map: PersistentMap<u64, String, CsvBackend> = open(&path).await?;
    assert_eq!(map.get(&1), Some(r#"say "hi""#.to_string()));

    map.insert_many([(3, "line\nbreak".to_string()), (4, String::new())])
        .await?;
    assert_eq!(map.remove_many([2]).await?, 1);
    assert_eq!(
        std::fs::read_to_string(&path)?,
        "1,\"say \"\"hi\"\"\"\n3,\"line\nbreak\"\n4,\n"
    );
    assert_eq!(
        read_as_0_1_3::<String>(&path),
        [
            ("1".to_string(), r#"say "hi""#.to_string()),
            ("3".to_string(), "line\nbreak".to_string()),
            ("4".to_string(), String::new()),
        ]
    );
    map.clear().await?;
    assert_eq!(std::fs::read_to_string(&path)?, "");
    Ok(())
}

#[tokio::test]
async fn a_missing_file_is_an_empty_map_created_with_its_directory_on_first_write(
) -> persistent_map::Result<()> {
    let (dir, _) = temp_csv();
    let path = dir.path().join("nested").join("data.csv");
    let map: PersistentMap<String, u32, CsvBackend> = open(&path).await?;
    assert!(map.is_empty());
    assert!(!path.exists());
    map.insert("a".into(), 1).await?;
    assert_eq!(std::fs::read_to_string(&path)?, "a,1\n");
    Ok(())
}

#[tokio::test]
async fn a_damaged_file_is_refused_with_its_path_and_line_and_left_untouched() {
    let (_dir, path) = temp_csv();
    let cases: [(&[u8], String); 4] = [
        (
            b"1,one\nx2,two\n",
            r#"line 2: key "x2" does not parse: invalid digit found in string"#.to_string(),
        ),
        (
            b"1,one\n2,two\n3\n",
            r#"line 3: value of key "3" does not deserialize: invalid length 1, expected a tuple of size 2"#
                .to_string(),
        ),
        (
            b"1,one\n2,one,extra\n",
            r#"line 2: value of key "2" does not deserialize: "#.to_string(),
        ),
        (
            b"1,one\n2,\xff\xfe\n",
            "line 2: is not CSV: invalid UTF-8 in field 2".to_string(),
        ),
    ];
    for (contents, expected) in cases {
        std::fs::write(&path, contents).unwrap();
        let err = open::<u64, String>(&path).await.unwrap_err();
        assert!(matches!(err, PersistentError::Csv { .. }), "{err:?}");
        let message = err.to_string();
        let prefix = format!("CSV file {}, ", path.display());
        assert!(
            message.starts_with(&format!("{prefix}{expected}")),
            "{message}\nexpected it to start with {prefix}{expected}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), contents);
    }
}

#[tokio::test]
async fn a_value_csv_cannot_hold_is_refused_naming_the_key_and_nothing_changes() {
    let (_dir, path) = temp_csv();
    let map: PersistentMap<String, BTreeMap<String, u32>, CsvBackend> = open(&path).await.unwrap();
    let err = map
        .insert("nested".into(), BTreeMap::from([("a".into(), 1)]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PersistentError::Csv { line: None, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "CSV file {}: value of key \"nested\" cannot be stored: ",
            path.display()
        )),
        "{err}"
    );
    assert!(map.is_empty());
    assert!(!path.exists());
}

const CHILD_CSV: &str = "PERSISTENT_MAP_CSV_SIGKILL_CHILD";
const ENTRIES: u32 = 400;

/// Every entry of generation `generation`: the file is about 1 MB, so a kill lands mid-write.
fn generation(generation: u64) -> Vec<(u32, String)> {
    (0..ENTRIES)
        .map(|key| (key, format!("{generation}:{}", "x".repeat(2500))))
        .collect()
}

#[test]
#[ignore = "the child process of `a_sigkill_mid_write_leaves_the_old_or_the_new_file_whole`"]
fn csv_sigkill_child_writer() {
    let path = PathBuf::from(std::env::var_os(CHILD_CSV).expect("run by the parent test"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let map: PersistentMap<u32, String, CsvBackend> = open(&path).await.unwrap();
        for step in 1.. {
            map.insert_many(generation(step)).await.unwrap();
            println!("ack {step}");
        }
    });
}

#[test]
fn a_sigkill_mid_write_leaves_the_old_or_the_new_file_whole() {
    let (_dir, path) = temp_csv();
    let mut child = acking_child(module_path!(), "csv_sigkill_child_writer")
        .env(CHILD_CSV, &path)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked = 0;
    while acked < 3 {
        assert!(Instant::now() < deadline, "the child wrote too slowly");
        let line = lines.next().expect("the child exited early").unwrap();
        if let Some((_, step)) = line.split_once("ack ") {
            acked = step.parse().unwrap();
        }
    }
    // Into the middle of the next write.
    std::thread::sleep(Duration::from_millis(7));
    child.kill().unwrap(); // SIGKILL on Unix
    for line in lines.map_while(Result::ok) {
        if let Some((_, step)) = line.split_once("ack ") {
            acked = step.parse().unwrap();
        }
    }
    child.wait().unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let map: PersistentMap<u32, String, CsvBackend> = runtime
        .block_on(open(&path))
        .expect("the killed writer left a whole file");
    assert_eq!(map.len(), ENTRIES as usize);
    let generations: std::collections::BTreeSet<u64> = map
        .values()
        .map(|value| value.split_once(':').unwrap().0.parse().unwrap())
        .collect();
    assert_eq!(
        generations.len(),
        1,
        "a mix of generations: {generations:?}"
    );
    let found = *generations.first().unwrap();
    assert!(
        found == acked || found == acked + 1,
        "generation {found} after {acked} acknowledged writes"
    );
}
