//! The example apps (`examples/`), run as a user runs them, with their output and their files
//! checked, and the README held to them: an example that stops compiling, fails, or stops
//! doing what the README says fails here.
//!
//! The examples are built once per run of this file, by the cargo that runs the tests
//! (`cargo build --workspace --examples`), into the same target directory and profile and with
//! the features the whole workspace unifies to, so after `cargo test --workspace` (which builds
//! the examples too) the build finds everything fresh. Cargo holds no build lock while tests
//! run, so the nested build does not wait on its parent. Each test then runs the binaries in a
//! temporary directory of its own.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use persistent_map_tests::{integrity_check, stored_rows};
use serde_json::{json, Value};

/// Every example declared in `examples/Cargo.toml` that runs on its own, each of which has a
/// test below.
const TESTED_EXAMPLES: [&str; 5] = [
    "bookmarks",
    "custom_backend",
    "quickstart",
    "sessions",
    "todo",
];

/// The examples that need a PostgreSQL server: they require the feature `postgres`, so they are
/// built and tested only with it, against the server of `PM_TEST_POSTGRES_URL`.
const POSTGRES_EXAMPLES: [&str; 1] = ["logging"];

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package sits in the workspace root")
}

/// The example binaries, by name, built on first use.
fn example_binaries() -> &'static BTreeMap<String, PathBuf> {
    static BUILT: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    BUILT.get_or_init(build_examples)
}

fn build_examples() -> BTreeMap<String, PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        // `--workspace`, not `--package persistent-map-examples`: building one package alone
        // unifies features differently and would rebuild its dependencies.
        .args(["build", "--quiet", "--workspace", "--examples"])
        .args(cfg!(feature = "postgres").then_some("--features=postgres"))
        .arg("--message-format=json-render-diagnostics")
        .args(same_target_and_profile())
        .stdin(Stdio::null())
        .output()
        .expect("run cargo to build the examples");
    assert!(
        output.status.success(),
        "cargo build --examples failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut binaries = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let message: Value = serde_json::from_str(line).expect("cargo prints JSON messages");
        let is_example = message["target"]["kind"] == json!(["example"]);
        if let (true, Some(executable)) = (is_example, message["executable"].as_str()) {
            let name = message["target"]["name"]
                .as_str()
                .expect("a target has a name");
            binaries.insert(name.to_owned(), PathBuf::from(executable));
        }
    }
    binaries
}

/// `--target-dir` and `--profile` of this test binary (`<target>/<profile dir>/deps/...`), so
/// the examples are built where the tests were rather than a second time elsewhere.
fn same_target_and_profile() -> Vec<String> {
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let mut ancestors = test_binary.ancestors().skip(2);
    let (Some(profile_dir), Some(target_dir)) = (ancestors.next(), ancestors.next()) else {
        return Vec::new();
    };
    let profile = match profile_dir.file_name().and_then(OsStr::to_str) {
        Some("debug") => "dev",
        Some(other) => other,
        None => return Vec::new(),
    };
    vec![
        format!("--target-dir={}", target_dir.display()),
        format!("--profile={profile}"),
    ]
}

/// What one run of an example did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the example `name` in `dir` with `args` and the extra environment `env`.
fn run(name: &str, dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Run {
    let binary = example_binaries()
        .get(name)
        .unwrap_or_else(|| panic!("cargo built no example `{name}`"));
    let mut command = Command::new(binary);
    command
        .current_dir(dir)
        .args(args)
        .env_remove("TODO_DB")
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("run example `{name}`: {error}"));
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("examples print UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("examples print UTF-8"),
    }
}

/// Runs an example that must succeed quietly: exit status 0, nothing on stderr.
fn run_ok(name: &str, dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> String {
    let run = run(name, dir, args, env);
    assert_eq!(run.code, Some(0), "`{name} {args:?}` failed: {run:#?}");
    assert_eq!(run.stderr, "", "`{name} {args:?}` wrote to stderr");
    run.stdout
}

fn temp_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    // The examples print absolute paths made from their working directory, which has no
    // symbolic links in it.
    let path = dir
        .path()
        .canonicalize()
        .expect("canonicalize the directory");
    (dir, path)
}

fn assert_has_line(output: &str, line: &str) {
    assert!(
        output.lines().any(|printed| printed == line),
        "expected the line {line:?} in:\n{output}"
    );
}

#[test]
fn every_example_is_built_and_tested() {
    let built: Vec<&str> = example_binaries().keys().map(String::as_str).collect();
    let mut expected = TESTED_EXAMPLES.to_vec();
    if cfg!(feature = "postgres") {
        expected.extend(POSTGRES_EXAMPLES);
        expected.sort_unstable();
    }
    assert_eq!(
        built, expected,
        "each example in examples/Cargo.toml needs a test in this file"
    );
}

#[test]
fn quickstart_finds_the_first_runs_data_on_its_second_run() {
    let (_dir, dir) = temp_dir();
    let database = dir.join("quickstart.db");

    let first = run_ok("quickstart", &dir, &[], &[]);
    assert_has_line(&first, &format!("database: {}", database.display()));
    assert_has_line(&first, "acme:42 is not stored yet: this is the first run");
    assert_has_line(&first, "acme:42 now has 1 visit(s)");
    let guest = r#"Some(Session { name: "Guest", visits: 1 })"#;
    assert_has_line(
        &first,
        &format!("acme:7: inserted, read {guest}, removed {guest}"),
    );
    assert_has_line(
        &first,
        "1 session(s) stored; run again and the visits go up",
    );

    let second = run_ok("quickstart", &dir, &[], &[]);
    assert_has_line(
        &second,
        r#"acme:42 was stored by an earlier run: Session { name: "Ada", visits: 1 }"#,
    );
    assert_has_line(&second, "acme:42 now has 2 visit(s)");

    // On disk as the README says: the key's text, the value as JSON, in the table `sessions`.
    assert_eq!(
        stored_rows(&database, "sessions"),
        [("acme:42".into(), r#"{"name":"Ada","visits":2}"#.into())]
    );
    assert_eq!(integrity_check(&database), "ok");

    // A path given as the argument is a database of its own.
    let other = run_ok("quickstart", &dir, &["other.db"], &[]);
    assert_has_line(
        &other,
        &format!("database: {}", dir.join("other.db").display()),
    );
    assert_has_line(&other, "acme:42 is not stored yet: this is the first run");
}

#[test]
fn todo_keeps_its_lists_in_the_file_named_by_todo_db() {
    let (_dir, dir) = temp_dir();
    let database = dir.join("state").join("my-todos.db");
    std::fs::create_dir(database.parent().unwrap()).unwrap();
    let env = [("TODO_DB", database.as_path())];
    let todo = |args: &[&str]| run_ok("todo", &dir, args, &env);

    assert_eq!(
        todo(&["add", "groceries", "buy", "milk"]),
        "added groceries #1: buy milk\n"
    );
    assert_eq!(
        todo(&["add", "groceries", "eggs"]),
        "added groceries #2: eggs\n"
    );
    assert_eq!(
        todo(&["add", "work: 2024", "write the README"]),
        "added work: 2024 #1: write the README\n"
    );
    assert_eq!(
        todo(&["done", "groceries", "1"]),
        "done groceries #1: buy milk\n"
    );
    assert_eq!(
        todo(&["done", "groceries", "1"]),
        "groceries #1 was already done: buy milk\n"
    );
    assert_eq!(
        todo(&["remove", "groceries", "2"]),
        "removed groceries #2: eggs\n"
    );
    // Ids are never reused, even after the last one was removed.
    assert_eq!(
        todo(&["add", "groceries", "bread"]),
        "added groceries #3: bread\n"
    );

    let stored_in = format!("stored in {}", database.display());
    assert_eq!(
        todo(&["list"]),
        format!(
            "groceries:\n  [x]   1  buy milk\n  [ ]   3  bread\n\
             work: 2024:\n  [ ]   1  write the README\n\
             1 of 3 done; {stored_in}\n"
        )
    );
    assert_eq!(
        todo(&["list", "work: 2024"]),
        format!("work: 2024:\n  [ ]   1  write the README\n0 of 1 done; {stored_in}\n")
    );
    assert_eq!(
        todo(&["list", "holidays"]),
        format!("holidays has no items\n0 of 0 done; {stored_in}\n")
    );

    // One file, two tables: the items under `list:id` (the separator escaped inside a
    // field), and the last id of each list.
    let items: Vec<String> = stored_rows(&database, "todos")
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(items, ["groceries:1", "groceries:3", r"work\: 2024:1"]);
    assert_eq!(
        stored_rows(&database, "todo_last_id"),
        [
            ("groceries".into(), "3".into()),
            ("work: 2024".into(), "1".into())
        ]
    );
    assert!(
        !dir.join("todo.db").exists(),
        "TODO_DB replaces the default file"
    );
}

#[test]
fn todo_explains_bad_arguments_and_exits_non_zero() {
    let (_dir, dir) = temp_dir();
    let database = dir.join("todo.db");
    // (arguments, exit status, what stderr must say)
    let cases: [(&[&str], i32, &str); 8] = [
        (&[], 2, "error: no command given"),
        (&["frob"], 2, "error: unknown command `frob`"),
        (&["add"], 2, "error: `add` needs a list and a title"),
        (
            &["add", "groceries"],
            2,
            "error: `add` needs a list and a title",
        ),
        (&["add", " ", "x"], 2, "error: a list name cannot be empty"),
        (
            &["list", "a", "b"],
            2,
            "error: `list` takes at most one list name",
        ),
        (
            &["done", "groceries"],
            2,
            "error: `done` needs a list and an item id",
        ),
        (
            &["remove", "groceries", "one"],
            2,
            "error: `one` is not an item id",
        ),
    ];
    for (args, code, message) in cases {
        let run = run("todo", &dir, args, &[]);
        assert_eq!(run.code, Some(code), "todo {args:?}: {run:#?}");
        assert!(run.stderr.starts_with(message), "todo {args:?}: {run:#?}");
        assert!(
            run.stderr.contains("usage: todo add LIST TITLE"),
            "{run:#?}"
        );
        assert_eq!(run.stdout, "", "todo {args:?}");
    }
    assert!(
        !database.exists(),
        "arguments it rejects never open the file"
    );

    let missing = run("todo", &dir, &["done", "groceries", "9"], &[]);
    assert_eq!(missing.code, Some(1), "{missing:#?}");
    assert_eq!(
        missing.stderr,
        "error: groceries has no item 9 (`todo list groceries` shows its items)\n"
    );
    assert_eq!(
        run("todo", &dir, &["remove", "groceries", "9"], &[]).code,
        Some(1)
    );

    let help = run_ok("todo", &dir, &["help"], &[]);
    assert!(help.starts_with("usage: todo add LIST TITLE"), "{help}");
}

#[test]
fn sessions_writes_three_tables_concurrently_and_reads_them_back() {
    let (_dir, dir) = temp_dir();
    let database = dir.join("sessions.db");
    let summary = "reopened: 100 users, 50 open sessions, 100 logins and 50 logouts, as written";

    let first = run_ok("sessions", &dir, &[], &[]);
    assert_has_line(&first, &format!("database: {}", database.display()));
    assert_has_line(&first, summary);
    assert_has_line(
        &first,
        "open sessions expire 30 minutes after their last write",
    );
    assert_has_line(
        &first,
        "the guest session expired at its deadline and was swept from storage",
    );
    assert!(!first.contains("cleared"), "{first}");

    assert_eq!(stored_rows(&database, "users").len(), 100);
    // The expired guest session's row is gone.
    assert_eq!(stored_rows(&database, "sessions").len(), 50);
    let stats = stored_rows(&database, "stats");
    for (key, value) in [("Logins", "100"), ("Logouts", "50"), ("Tenant:acme", "25")] {
        assert!(
            stats.contains(&(key.into(), value.into())),
            "{key} = {value} in {stats:?}"
        );
    }
    assert_eq!(integrity_check(&database), "ok");

    let second = run_ok("sessions", &dir, &[], &[]);
    assert_has_line(&second, "cleared 156 entries left by an earlier run");
    assert_has_line(&second, summary);
}

#[test]
fn custom_backend_keeps_a_json_file_and_replaces_it_whole() {
    let (_dir, dir) = temp_dir();
    let file = dir.join("custom_backend.json");

    let first = run_ok("custom_backend", &dir, &[], &[]);
    assert_has_line(&first, &format!("file: {}", file.display()));
    assert_has_line(
        &first,
        "no inventory yet: stocking three bins in one atomic write",
    );
    assert_has_line(&first, "delivered 50 bolts: berlin bin 1 now holds 150");

    let second = run_ok("custom_backend", &dir, &[], &[]);
    assert_has_line(&second, "loaded 2 bins written by an earlier run");
    assert_has_line(&second, "delivered 50 bolts: berlin bin 1 now holds 200");
    assert_has_line(&second, "  berlin bin 1: 200 bolts");
    assert_has_line(&second, "  berlin bin 2: 250 nuts");

    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).expect("valid JSON");
    assert_eq!(
        stored,
        json!([
            { "key": { "warehouse": "berlin", "bin": 1 }, "value": { "item": "bolts", "count": 200 } },
            { "key": { "warehouse": "berlin", "bin": 2 }, "value": { "item": "nuts", "count": 250 } },
        ])
    );
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(files, ["custom_backend.json"], "no temporary file is left");

    // A file it cannot read is an error that names the file, and stays as it was.
    let broken = dir.join("broken.json");
    std::fs::write(&broken, "[{\"key\": 1}").unwrap();
    let run = run("custom_backend", &dir, &["broken.json"], &[]);
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stderr.contains("broken.json is not a list"), "{run:#?}");
    assert_eq!(std::fs::read_to_string(&broken).unwrap(), "[{\"key\": 1}");
}

#[cfg(feature = "postgres")]
#[test]
fn logging_shows_the_backends_events_on_stderr() {
    let (_dir, dir) = temp_dir();
    let url = std::env::var("PM_TEST_POSTGRES_URL")
        .expect("the PostgreSQL examples need a server: set PM_TEST_POSTGRES_URL");
    let run = run("logging", &dir, &[&url], &[]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_has_line(&run.stdout, "stored 3 entries");
    for event in [
        "connected to PostgreSQL",
        "DEBUG",
        " commit table=logging_example requests=",
    ] {
        assert!(
            run.stderr.contains(event),
            "{event:?} missing from:\n{}",
            run.stderr
        );
    }
}

#[test]
fn bookmarks_uses_the_blocking_api_from_a_plain_main() {
    let (_dir, dir) = temp_dir();
    let database = dir.join("bookmarks.db");
    let bookmarks = |args: &[&str]| run_ok("bookmarks", &dir, args, &[]);

    assert_eq!(
        bookmarks(&["add", "rust", "https://www.rust-lang.org"]),
        "added rust\n"
    );
    assert_eq!(
        bookmarks(&["add", "docs", "https://docs.rs"]),
        "added docs\n"
    );
    assert_eq!(bookmarks(&["open", "docs"]), "https://docs.rs (visit 1)\n");
    assert_eq!(bookmarks(&["open", "docs"]), "https://docs.rs (visit 2)\n");
    assert_eq!(
        bookmarks(&["list"]),
        "   2  docs  https://docs.rs\n   0  rust  https://www.rust-lang.org\n2 bookmark(s)\n"
    );
    assert_eq!(bookmarks(&["remove", "rust"]), "removed rust\n");
    // The key is stored as its text; the value as JSON.
    assert_eq!(
        stored_rows(&database, "bookmarks"),
        [(
            "docs".into(),
            r#"{"url":"https://docs.rs","visits":2}"#.into()
        )]
    );
    assert_eq!(integrity_check(&database), "ok");

    let missing = run("bookmarks", &dir, &["open", "rust"], &[]);
    assert_eq!(missing.code, Some(1), "{missing:#?}");
    assert_eq!(missing.stderr, "bookmarks: no bookmark named rust\n");
    let usage = run("bookmarks", &dir, &["add", "only-a-name"], &[]);
    assert_eq!(usage.code, Some(2), "{usage:#?}");
    assert!(
        usage.stderr.starts_with("usage: bookmarks add NAME URL"),
        "{usage:#?}"
    );
}

fn read_workspace_file(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path))
        .unwrap_or_else(|error| panic!("read {path}: {error}"))
}

#[test]
fn the_readme_quickstart_is_examples_quickstart_rs() {
    let readme = read_workspace_file("README.md");
    let quickstart = read_workspace_file("examples/quickstart.rs");
    assert!(
        readme.contains(&format!("```rust\n{quickstart}```\n")),
        "README.md must show examples/quickstart.rs verbatim in a ```rust block"
    );
}

#[test]
fn the_readme_commands_run_examples_that_exist_and_ci_runs_its_tests() {
    let readme = read_workspace_file("README.md");
    assert!(readme.contains("\ncargo run --example quickstart\n"));
    assert!(readme.contains("\ncargo test --workspace\n"));
    let mut named = 0;
    for mention in readme.split("cargo run --example ").skip(1) {
        let name: String = mention
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            example_binaries().contains_key(&name),
            "README.md runs `cargo run --example {name}`, which is no example"
        );
        named += 1;
    }
    assert!(
        named >= TESTED_EXAMPLES.len(),
        "README.md shows how to run each example"
    );

    let ci = read_workspace_file(".ci/run");
    assert!(
        ci.lines()
            .any(|line| line.trim() == "cargo test --workspace"),
        ".ci/run runs the README's test command"
    );
}
