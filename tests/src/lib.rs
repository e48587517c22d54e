//! Helpers shared by the integration tests: temporary databases, a second SQLite client that
//! reads what a map wrote, and a backend that refuses writes on demand.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use persistent_map::{BatchOp, PersistentError, Result, StorageBackend};
use serde::{de::DeserializeOwned, Serialize};

/// A fresh directory (removed on drop) and the path of a database file inside it.
pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("test.db");
    (dir, path)
}

/// A command that runs one `#[ignore]`d test of the running test binary, alone, as a child
/// process: the multi-process tests run their other process this way. `module` is the
/// `module_path!()` of the file that holds the test (the integration tests share two binaries,
/// where a test's name starts with its file's module), `test` the test function's name.
pub fn child_test(module: &str, test: &str) -> Command {
    let in_binary = module.split_once("::").map_or("", |(_crate, path)| path);
    let name = if in_binary.is_empty() {
        test.to_owned()
    } else {
        format!("{in_binary}::{test}")
    };
    let binary = std::env::current_exe().expect("the running test binary's path");
    let mut command = Command::new(binary);
    command.args(["--ignored", "--exact", &name]);
    command
}

/// [`child_test`] for a child whose acknowledgements the parent reads ([`print_ack`] and
/// [`kill_after_acks`]): one test thread, its output on a piped stdout, its errors shown.
pub fn acking_child(module: &str, test: &str) -> Command {
    let mut command = child_test(module, test);
    command
        .args(["--nocapture", "--test-threads=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// Checks what a killed child left in `stored` against what it acknowledged: each task's
/// steps up to its last acknowledged one (`acked`, from [`kill_after_acks`]) applied in order,
/// `step(task, step)` giving the key a step writes and its value (`None`: removed). Every
/// value so left is stored, and nothing else, except under a key that a task's next,
/// unacknowledged step touches (it may have committed). Returns how many keys those steps
/// leave.
pub fn assert_acknowledged_steps_kept(
    stored: &BTreeMap<String, u64>,
    acked: &BTreeMap<u64, u64>,
    step: impl Fn(u64, u64) -> (String, Option<u64>),
) -> usize {
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut uncertain: BTreeSet<String> = BTreeSet::new();
    for (&task, &last) in acked {
        for number in 0..=last {
            match step(task, number) {
                (key, Some(value)) => expected.insert(key, value),
                (key, None) => expected.remove(&key),
            };
        }
        uncertain.insert(step(task, last + 1).0);
    }
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
    expected.len()
}

/// Tells a parent test that a child's task `task` had its step `step` acknowledged: one line,
/// written whole, that [`kill_after_acks`] reads.
pub fn print_ack(task: u64, step: u64) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ack {task} {step}").unwrap();
    out.flush().unwrap();
}

/// Reads `child`'s acknowledgements ([`print_ack`], on its piped stdout) until `wanted` came
/// (within a minute), kills it with SIGKILL, reads those already in the pipe, and returns each
/// task's last acknowledged step. Each task's steps must come in order, from 0.
pub fn kill_after_acks(child: &mut Child, wanted: usize) -> BTreeMap<u64, u64> {
    let mut lines = BufReader::new(child.stdout.take().expect("a piped stdout")).lines();
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut record = |line: &str| -> bool {
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
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut count = 0;
    while count < wanted {
        assert!(Instant::now() < deadline, "the child wrote too slowly");
        let line = lines.next().expect("the child exited early").unwrap();
        count += usize::from(record(&line));
    }
    child.kill().unwrap(); // SIGKILL on Unix
                           // Acknowledgements already in the pipe count too.
    for line in lines.map_while(std::result::Result::ok) {
        record(&line);
    }
    child.wait().unwrap();
    acked
}

/// Every `(key, value)` row of `table`, read by a separate SQLite connection, sorted by key.
pub fn stored_rows(path: &Path, table: &str) -> Vec<(String, String)> {
    let connection =
        rusqlite::Connection::open(path).expect("open the database as a second client");
    let mut statement = connection
        .prepare(&format!("SELECT key, value FROM \"{table}\" ORDER BY key"))
        .expect("prepare the SELECT");
    let rows = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("run the SELECT");
    rows.collect::<rusqlite::Result<_>>()
        .expect("read the rows")
}

/// The result of `PRAGMA integrity_check` on the file.
pub fn integrity_check(path: &Path) -> String {
    let connection = rusqlite::Connection::open(path).expect("open the database");
    connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("run the integrity check")
}

/// Wraps a backend and refuses every write while its switch is on, as a full disk would.
#[derive(Debug, Clone)]
pub struct Refusing<B> {
    pub inner: B,
    refuse: Arc<AtomicBool>,
}

impl<B> Refusing<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            refuse: Arc::new(AtomicBool::new(false)),
        }
    }

    /// From now on, refuse writes (`true`) or pass them through (`false`).
    pub fn refuse(&self, refuse: bool) {
        self.refuse.store(refuse, Ordering::SeqCst);
    }

    fn check(&self) -> Result<()> {
        if self.refuse.load(Ordering::SeqCst) {
            Err(PersistentError::Io(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "refused: the disk is full",
            )))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl<K, V, B> StorageBackend<K, V> for Refusing<B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        self.inner.load_all().await
    }

    async fn save(&self, key: K, value: V) -> Result<()> {
        self.check()?;
        self.inner.save(key, value).await
    }

    async fn delete(&self, key: &K) -> Result<()> {
        self.check()?;
        self.inner.delete(key).await
    }

    async fn apply_batch(&self, ops: &[BatchOp<K, V>]) -> Result<()> {
        self.check()?;
        self.inner.apply_batch(ops).await
    }
}

/// What [`Faulty`] does at its chosen call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Return an error instead of calling the backend.
    Fail,
    /// Wait until [`Faulty::release`], then call the backend.
    Stall,
}

/// Wraps a backend and numbers every call the map makes to it (every await point of the map's
/// that reaches storage); the call numbered `at` fails or stalls. Each call is passed through
/// otherwise, including the change tracking, so the map's refresh runs for real.
#[derive(Debug, Clone)]
pub struct Faulty<B> {
    pub inner: B,
    calls: Arc<std::sync::atomic::AtomicUsize>,
    at: Arc<std::sync::Mutex<Option<(usize, Fault)>>>,
    released: Arc<tokio::sync::watch::Sender<bool>>,
}

impl<B> Faulty<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            calls: Arc::default(),
            at: Arc::default(),
            released: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// Fault the call numbered `at` (counting from 0, from now on).
    pub fn fault_at(&self, at: usize, fault: Fault) {
        self.calls.store(0, Ordering::SeqCst);
        self.released.send_replace(false);
        *self.at.lock().unwrap() = Some((at, fault));
    }

    /// Calls made since the last `fault_at`.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// No more faults; stalled calls go on.
    pub fn release(&self) {
        *self.at.lock().unwrap() = None;
        self.released.send_replace(true);
    }

    async fn point(&self) -> Result<()> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let fault = *self.at.lock().unwrap();
        match fault {
            Some((at, Fault::Fail)) if at == call => Err(PersistentError::Io(
                std::io::Error::other(format!("injected failure at call {call}")),
            )),
            Some((at, Fault::Stall)) if at == call => {
                let mut released = self.released.subscribe();
                let _ = released.wait_for(|released| *released).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl<K, V, B> StorageBackend<K, V> for Faulty<B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        self.point().await?;
        self.inner.load_all().await
    }

    async fn save(&self, key: K, value: V) -> Result<()> {
        self.point().await?;
        self.inner.save(key, value).await
    }

    async fn delete(&self, key: &K) -> Result<()> {
        self.point().await?;
        self.inner.delete(key).await
    }

    async fn apply_batch(&self, ops: &[BatchOp<K, V>]) -> Result<()> {
        self.point().await?;
        self.inner.apply_batch(ops).await
    }

    async fn load_each(&self, sink: &mut (dyn FnMut(K, V) + Send)) -> Result<()> {
        self.point().await?;
        self.inner.load_each(sink).await
    }

    async fn clear(&self) -> Result<()> {
        self.point().await?;
        self.inner.clear().await
    }

    async fn load_keys(&self, keys: &[K]) -> Result<HashMap<K, V>> {
        self.point().await?;
        self.inner.load_keys(keys).await
    }

    async fn apply_checked(
        &self,
        conditions: &[persistent_map::Condition<K>],
        ops: &[BatchOp<K, V>],
        options: persistent_map::WriteOptions,
    ) -> Result<persistent_map::Checked<V>> {
        self.point().await?;
        self.inner.apply_checked(conditions, ops, options).await
    }

    async fn change_position(&self) -> Result<Option<persistent_map::ChangePosition>> {
        self.point().await?;
        self.inner.change_position().await
    }

    async fn changes_since(
        &self,
        since: Option<persistent_map::ChangePosition>,
        origin: u64,
    ) -> Result<(
        persistent_map::ExternalChanges<K, V>,
        Option<persistent_map::ChangePosition>,
    )> {
        self.point().await?;
        self.inner.changes_since(since, origin).await
    }
}

#[derive(Debug, Clone)]
pub struct SeenEvent {
    pub level: tracing::Level,
    pub fields: HashMap<String, String>,
}

/// A `tracing` subscriber that keeps every event, for the tests to look at.
#[derive(Debug, Clone, Default)]
pub struct EventLog(Arc<std::sync::Mutex<Vec<SeenEvent>>>);

impl EventLog {
    /// Every event so far.
    pub fn all(&self) -> Vec<SeenEvent> {
        self.0.lock().unwrap().clone()
    }

    /// The events whose field `table` is `table`.
    pub fn of_table(&self, table: &str) -> Vec<SeenEvent> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter(|event| event.fields.get("table").map(String::as_str) == Some(table))
            .cloned()
            .collect()
    }

    pub fn has(&self, table: &str, level: tracing::Level, message: &str) -> Option<SeenEvent> {
        self.of_table(table)
            .into_iter()
            .find(|event| event.level == level && event.fields["message"].contains(message))
    }
}

struct FieldsOf<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for FieldsOf<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl tracing::Subscriber for EventLog {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = HashMap::new();
        event.record(&mut FieldsOf(&mut fields));
        let level = *event.metadata().level();
        self.0.lock().unwrap().push(SeenEvent { level, fields });
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}
