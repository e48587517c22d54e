//! Seeded interleavings of the write path: a scripted store holds every write at its hand-over,
//! commits the writes in hand-over order when the schedule says so, and replies to each when
//! the schedule says so (in any order). Between steps, clients on several handles of one map
//! issue writes and read-modify-writes, another writer changes storage behind the map's back
//! (spelling its JSON otherwise), the map refreshes, and expired rows are swept while writes
//! that extend deadlines are in flight.
//!
//! The log is pruned now and then to its newest entries, so that a refresh behind it reloads.
//!
//! After every step the map's change feed must show, key by key, values in the order storage
//! committed them (never one storage did not hold, never going back); at the end, after a
//! refresh, memory must equal storage exactly.
//!
//! `cargo test` runs [`SCHEDULES`] seeds. A failing seed is printed with the command that
//! replays it; more seeds:
//! `PM_INTERLEAVINGS=100000 cargo test -p persistent-map-tests --test integration interleavings::`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::time::{Duration, SystemTime};

use persistent_map::{
    BatchOp, Change, ChangePosition, Checked, Condition, Deadline, ExternalChanges, PersistentMap,
    Result, StorageBackend, Stored, Subscription, WriteOptions,
};
use serde::{Deserialize, Serialize};

/// Seeds `cargo test` runs.
const SCHEDULES: u64 = 2000;
/// Steps in one schedule.
const STEPS: usize = 60;
const KEYS: [&str; 3] = ["a", "b", "c"];

/// A value whose rows another writer may spell otherwise: without the defaulted field, or with
/// its fields in another order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Val {
    n: u64,
    #[serde(default)]
    tag: String,
}

fn val(n: u64) -> Val {
    Val {
        n,
        tag: String::new(),
    }
}

/// splitmix64: small, seedable, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn key(&mut self) -> String {
        KEYS[self.below(KEYS.len())].to_string()
    }
}

/// A row: its JSON as stored, and its deadline (Unix milliseconds).
type Row = (String, Option<u64>);

/// A write handed over and not yet committed, or committed and not yet replied to.
struct Handed {
    id: u64,
    conditions: Vec<Condition<String>>,
    ops: Vec<BatchOp<String, Val>>,
    options: WriteOptions,
}

#[derive(Default)]
struct State {
    rows: BTreeMap<String, Row>,
    /// Handed over, in hand-over order (the order they commit in).
    queue: VecDeque<Handed>,
    /// Committed, waiting for their reply.
    answers: HashMap<u64, Result<Checked<Val>>>,
    replied: HashMap<u64, Result<Checked<Val>>>,
    wakers: HashMap<u64, Waker>,
    next_id: u64,
    /// (key, writer's origin) per commit: the change log.
    log: Vec<(String, u64)>,
    /// The log's entries before this one were pruned: a follower behind it reloads.
    pruned: usize,
    /// Every value each key held, in commit order (`None`: absent), and whether it had expired
    /// when it was committed (stored, but absent to every read).
    history: HashMap<String, Vec<(Option<Val>, bool)>>,
}

impl State {
    fn live(&self, key: &str, now: u64) -> Option<&Row> {
        self.rows
            .get(key)
            .filter(|(_, deadline)| deadline.is_none_or(|deadline| deadline > now))
    }

    fn record(&mut self, key: &str, origin: u64) {
        let now = now_ms();
        let row = self.rows.get(key);
        let value = row.map(|(json, _)| serde_json::from_str(json).unwrap());
        let expired = row.is_some_and(|(_, deadline)| deadline.is_some_and(|d| d <= now));
        self.history
            .entry(key.into())
            .or_default()
            .push((value, expired));
        self.log.push((key.into(), origin));
    }

    /// Commits the oldest write handed over: its conditions (compared as `Val`), then its ops.
    fn commit_next(&mut self) -> bool {
        let Some(write) = self.queue.pop_front() else {
            return false;
        };
        let now = now_ms();
        let current: Vec<Option<Stored<Val>>> = write
            .conditions
            .iter()
            .map(|condition| {
                self.live(&condition.key, now).map(|(json, _)| Stored {
                    value: serde_json::from_str(json).unwrap(),
                    json: json.clone(),
                })
            })
            .collect();
        let holds = write
            .conditions
            .iter()
            .zip(&current)
            .all(|(condition, now)| {
                let expected: Option<Val> = condition
                    .expected
                    .as_deref()
                    .map(|json| serde_json::from_str(json).unwrap());
                expected == now.as_ref().map(|stored| stored.value.clone())
            });
        let answer = if holds {
            let mut previous = Vec::new();
            for op in &write.ops {
                let key = op.key().clone();
                previous.push(self.live(&key, now).map(|(json, _)| json.clone()));
                match op {
                    BatchOp::Save(_, value) => {
                        let deadline = write.options.deadline().map(|d| d.unix_millis());
                        let json = serde_json::to_string(value).unwrap();
                        self.rows.insert(key.clone(), (json, deadline));
                    }
                    BatchOp::Delete(_) => drop(self.rows.remove(&key)),
                }
                self.record(&key, write.options.origin_id());
            }
            Checked::Applied {
                previous: write.options.wants_previous().then_some(previous),
            }
        } else {
            let current = current
                .into_iter()
                .zip(&write.conditions)
                .map(|(now, condition)| {
                    now.map(|stored| {
                        (
                            stored,
                            self.rows[&condition.key]
                                .1
                                .and_then(Deadline::from_unix_millis),
                        )
                    })
                })
                .collect();
            Checked::ConflictWithDeadlines { current }
        };
        self.answers.insert(write.id, Ok(answer));
        true
    }

    /// Replies to the committed write `pick` chooses among those waiting.
    fn reply(&mut self, pick: usize) -> bool {
        let mut waiting: Vec<u64> = self.answers.keys().copied().collect();
        if waiting.is_empty() {
            return false;
        }
        waiting.sort_unstable();
        let id = waiting[pick % waiting.len()];
        let answer = self.answers.remove(&id).unwrap();
        self.replied.insert(id, answer);
        if let Some(waker) = self.wakers.remove(&id) {
            waker.wake();
        }
        true
    }

    /// Another writer (another process) stores `value` under `key`, spelled otherwise.
    fn write_behind(&mut self, key: &str, value: Option<Val>, spelling: usize) {
        match value {
            Some(value) => {
                let json = match spelling % 3 {
                    0 if value.tag.is_empty() => format!(r#"{{"n":{}}}"#, value.n),
                    1 => format!(r#"{{ "tag": {:?}, "n": {} }}"#, value.tag, value.n),
                    _ => serde_json::to_string(&value).unwrap(),
                };
                self.rows.insert(key.into(), (json, None));
            }
            None => drop(self.rows.remove(key)),
        }
        self.record(key, 0);
    }
}

fn now_ms() -> u64 {
    persistent_map::Deadline::after(Duration::ZERO).unix_millis()
}

#[derive(Clone, Default)]
struct Scripted(Arc<Mutex<State>>);

impl Scripted {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl StorageBackend<String, Val> for Scripted {
    async fn load_all(&self) -> Result<HashMap<String, Val>> {
        let now = now_ms();
        let state = self.state();
        Ok(state
            .rows
            .keys()
            .filter_map(|key| {
                let (json, _) = state.live(key, now)?;
                Some((key.clone(), serde_json::from_str(json).unwrap()))
            })
            .collect())
    }

    async fn save(&self, key: String, value: Val) -> Result<()> {
        self.apply_checked(&[], &[BatchOp::Save(key, value)], WriteOptions::new())
            .await
            .map(drop)
    }

    async fn delete(&self, key: &String) -> Result<()> {
        self.apply_checked(&[], &[BatchOp::Delete(key.clone())], WriteOptions::new())
            .await
            .map(drop)
    }

    /// Handed over on the first poll; answered when the schedule commits it and replies.
    async fn apply_checked(
        &self,
        conditions: &[Condition<String>],
        ops: &[BatchOp<String, Val>],
        options: WriteOptions,
    ) -> Result<Checked<Val>> {
        let id = {
            let mut state = self.state();
            state.next_id += 1;
            let id = state.next_id;
            state.queue.push_back(Handed {
                id,
                conditions: conditions.to_vec(),
                ops: ops.to_vec(),
                options,
            });
            id
        };
        poll_fn(|cx| {
            let mut state = self.state();
            match state.replied.remove(&id) {
                Some(answer) => Poll::Ready(answer),
                None => {
                    state.wakers.insert(id, cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    fn pipelines_writes(&self) -> bool {
        true
    }

    fn supports_expiry(&self) -> bool {
        true
    }

    async fn load_each_expiring(
        &self,
        sink: &mut (dyn FnMut(String, Val, Option<Deadline>) + Send),
    ) -> Result<()> {
        let rows = self.live_rows(None);
        for (key, value, deadline) in rows {
            sink(key, value, deadline);
        }
        Ok(())
    }

    async fn load_keys_expiring(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, (Val, Option<Deadline>)>> {
        Ok(self
            .live_rows(Some(keys))
            .into_iter()
            .map(|(key, value, deadline)| (key, (value, deadline)))
            .collect())
    }

    async fn sweep_expired(&self, limit: usize, origin: u64) -> Result<Vec<String>> {
        let now = now_ms();
        let mut state = self.state();
        let expired: Vec<String> = state
            .rows
            .iter()
            .filter(|(_, (_, deadline))| deadline.is_some_and(|deadline| deadline <= now))
            .map(|(key, _)| key.clone())
            .take(limit)
            .collect();
        for key in &expired {
            state.rows.remove(key);
            state.record(key, origin);
        }
        Ok(expired)
    }

    async fn change_position(&self) -> Result<Option<ChangePosition>> {
        Ok(Some(ChangePosition::new(self.state().log.len() as u128)))
    }

    async fn changes_since(
        &self,
        since: Option<ChangePosition>,
        origin: u64,
    ) -> Result<(ExternalChanges<String, Val>, Option<ChangePosition>)> {
        let state = self.state();
        let now = ChangePosition::new(state.log.len() as u128);
        let Some(since) = since.filter(|since| since.get() as usize >= state.pruned) else {
            return Ok((ExternalChanges::Unknown, Some(now)));
        };
        let mut keys: Vec<String> = state.log[since.get() as usize..]
            .iter()
            .filter(|(_, writer)| *writer != origin)
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        keys.dedup();
        let changes = match keys.is_empty() {
            true => ExternalChanges::None,
            false => ExternalChanges::Keys(keys),
        };
        Ok((changes, Some(now)))
    }

    fn storage_id(&self) -> Option<String> {
        Some(format!("scripted {:p}", Arc::as_ptr(&self.0)))
    }
}

impl Scripted {
    fn live_rows(&self, only: Option<&[String]>) -> Vec<(String, Val, Option<Deadline>)> {
        let now = now_ms();
        let state = self.state();
        state
            .rows
            .iter()
            .filter(|(key, _)| only.is_none_or(|only| only.contains(key)))
            .filter_map(|(key, _)| {
                let (json, deadline) = state.live(key, now)?;
                let value = serde_json::from_str(json).unwrap();
                Some((
                    key.clone(),
                    value,
                    deadline.and_then(Deadline::from_unix_millis),
                ))
            })
            .collect()
    }
}

type Map = PersistentMap<String, Val, Scripted>;

/// One client operation, on one of the map's handles.
fn client_op(rng: &mut Rng, handles: &[Map]) -> tokio::task::JoinHandle<()> {
    let map = handles[rng.below(handles.len())].clone();
    let key = rng.key();
    let n = rng.below(50) as u64;
    let op = rng.below(10);
    tokio::spawn(async move {
        // Errors (a write that conflicted to the end) are fine; what they leave is checked.
        let _ = match op {
            0 | 1 => map.insert(key, val(n)).await.map(drop),
            2 => map.remove(&key).await.map(drop),
            3 | 4 => map
                .update(&key, |v| Some(val(v.map_or(0, |v| v.n) + 1)))
                .await
                .map(drop),
            5 => {
                let seen = map.get(&key);
                map.compare_exchange(&key, seen.as_ref(), Some(val(n)))
                    .await
                    .map(drop)
            }
            6 => map.get_or_insert_with(key, || val(n)).await.map(drop),
            7 => map.expire(&key, Duration::from_secs(3600)).await.map(drop),
            8 => map
                .insert_until(key, val(n), SystemTime::UNIX_EPOCH)
                .await
                .map(drop),
            _ => map
                .insert_many([(key, val(n)), ("b".into(), val(n + 1))])
                .await
                .map(drop),
        };
    })
}

/// What the map's feed showed, key by key, checked against storage's history: every value the
/// feed shows is one storage held, in storage's order.
#[derive(Default)]
struct Feed {
    /// Per key: the index in storage's history of the last value the feed showed.
    at: HashMap<String, usize>,
}

impl Feed {
    fn check(&mut self, changes: &mut Subscription<String, Val>, state: &State, seed: u64) {
        while let Ok(Some(change)) = changes.try_recv() {
            let (key, value) = match change {
                Change::Inserted { key, value } => (key, Some(value)),
                Change::Removed { key } | Change::Expired { key } => (key, None),
                Change::DeadlineChanged { .. } => continue,
                Change::Reloaded | Change::Cleared => {
                    self.at.clear();
                    continue;
                }
                other => panic!("seed {seed}: unexpected change {other:?}"),
            };
            let history = state.history.get(&key).cloned().unwrap_or_default();
            let from = self.at.get(&key).copied().unwrap_or(0);
            // The value shown may repeat the last one (a conflict's read of what it held). An
            // expired value is stored but absent: the feed may show it inserted, or gone.
            let shows = |(held, expired): &(Option<Val>, bool)| match &value {
                Some(_) => *held == value,
                None => held.is_none() || *expired,
            };
            let found = (from..history.len()).find(|&i| shows(&history[i]));
            let Some(found) = found else {
                panic!(
                    "seed {seed}: the feed showed {key} = {value:?}, which storage did not hold \
                     after the feed's last value (storage held, in order: {history:?}; the feed \
                     was at {from}). Replay: {}",
                    replay(seed)
                );
            };
            self.at.insert(key, found);
        }
    }
}

fn replay(seed: u64) -> String {
    format!("PM_INTERLEAVING_SEED={seed} cargo test -p persistent-map-tests --test integration interleavings::")
}

async fn settle_tasks() {
    for _ in 0..32 {
        tokio::task::yield_now().await;
    }
}

/// One seeded schedule.
async fn schedule(seed: u64) {
    let mut rng = Rng(seed);
    let store = Scripted::default();
    let map: Map = PersistentMap::new(store.clone()).await.unwrap();
    let second: Map = PersistentMap::new(store.clone()).await.unwrap(); // shares the entries
    let ttl = map
        .clone()
        .with_default_ttl(Duration::from_secs(600))
        .unwrap();
    let handles = [map.clone(), second, ttl];
    let mut changes = map.subscribe();
    let mut feed = Feed::default();
    let mut clients = Vec::new();
    for _ in 0..STEPS {
        match rng.below(12) {
            0..=3 => clients.push(client_op(&mut rng, &handles)),
            4..=6 => {
                store.state().commit_next();
            }
            7..=9 => {
                let pick = rng.below(8);
                store.state().reply(pick);
            }
            10 if rng.below(4) == 0 => {
                // The log is pruned to its newest entries (the retention limit).
                let mut state = store.state();
                state.pruned = state.log.len().saturating_sub(2);
            }
            10 => {
                let (key, n, spelling) = (rng.key(), rng.below(50) as u64, rng.below(3));
                let value = (n % 7 != 0).then(|| val(n));
                store.state().write_behind(&key, value, spelling);
            }
            _ => {
                let map = handles[rng.below(handles.len())].clone();
                let sweep = rng.below(2) == 0;
                clients.push(tokio::spawn(async move {
                    let _ = match sweep {
                        true => map.sweep_expired().await.map(drop),
                        false => map.refresh().await.map(drop),
                    };
                }));
            }
        }
        settle_tasks().await;
        feed.check(&mut changes, &store.state(), seed);
    }
    // Let everything in flight finish, in a seeded order. (A sweep drops what it swept from
    // memory on tokio's blocking pool: that takes real time.)
    let mut idle = Duration::ZERO;
    while clients.iter().any(|client| !client.is_finished()) {
        let committed = store.state().commit_next();
        let pick = rng.below(8);
        let replied = store.state().reply(pick);
        settle_tasks().await;
        feed.check(&mut changes, &store.state(), seed);
        if committed || replied {
            idle = Duration::ZERO;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            idle += Duration::from_millis(1);
            assert!(
                idle < Duration::from_secs(10),
                "seed {seed}: clients wait on nothing. Replay: {}",
                replay(seed)
            );
        }
    }
    for client in clients {
        client.await.unwrap();
    }
    map.refresh().await.unwrap();
    feed.check(&mut changes, &store.state(), seed);
    let mut memory: Vec<(String, Val)> = map.iter().collect();
    memory.sort_by(|a, b| a.0.cmp(&b.0));
    let mut stored: Vec<(String, Val)> = store
        .live_rows(None)
        .into_iter()
        .map(|(key, value, _)| (key, value))
        .collect();
    stored.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        memory,
        stored,
        "seed {seed}: memory differs from storage. Replay: {}",
        replay(seed)
    );
}

#[test]
fn seeded_interleavings_keep_memory_the_feed_and_storage_in_step() {
    let seeds: Vec<u64> = match std::env::var("PM_INTERLEAVING_SEED") {
        Ok(seed) => vec![seed.parse().expect("a seed is a number")],
        Err(_) => {
            let count = std::env::var("PM_INTERLEAVINGS")
                .ok()
                .and_then(|count| count.parse().ok())
                .unwrap_or(SCHEDULES);
            (0..count).collect()
        }
    };
    // The schedules are independent: a thread per core runs every n-th of them, so the suite
    // waits for them about half as long on two cores. A failing schedule's panic (its seed and
    // how to replay it) fails the test when its thread is joined.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    std::thread::scope(|scope| {
        for first in 0..threads {
            let seeds = &seeds;
            scope.spawn(move || {
                for &seed in seeds.iter().skip(first).step_by(threads) {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .unwrap();
                    runtime.block_on(schedule(seed));
                }
            });
        }
    });
}
