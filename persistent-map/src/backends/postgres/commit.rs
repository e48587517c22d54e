//! One commit of a group of write requests, possibly of several tables: the locks, the checks,
//! the writes, the log and the announcement, in one transaction and two round trips.
//!
//! Instances writing the same keys must not deadlock (PostgreSQL would break the cycle only
//! after `deadlock_timeout`, a second by default). Row locks cannot be taken in one order across
//! the upsert and the delete statements, and a key not yet stored has no row to lock, so each
//! transaction first takes advisory locks in one global order: the tables' locks in ascending
//! order (shared, or exclusive for a clear or a table with too many keys to lock one by one),
//! then the keys' locks in ascending order. Every transaction holds the locks of all the keys it
//! checks or touches before it reads or touches a row, so transactions of this crate wait for
//! each other but never in a cycle; the revision rows of the change log are bumped last, in
//! table-name order, for the same reason.
//!
//! The stored values that conditions and previous values need are read under those locks, so no
//! other writer of this crate can change them before the commit. Each request is then decided
//! in order against the tables as the requests before it left them: one whose conditions hold
//! is applied, one whose conditions fail writes nothing and is told what is stored. A request
//! may write several tables (a transaction across maps): it is one request all the same, its
//! keys locked with everyone else's, and it holds only if the conditions of all its parts do.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;

use super::connect::{Live, TableStatements};
use super::expiry;
use super::log;
use super::notify;
use super::session::{Outcome, RawOp, Write};
use crate::backends::encode::condition_holds;

/// A transaction of more keys of one table than this locks that table instead of each key: the
/// server's lock table is shared and bounded (`max_locks_per_transaction`).
pub(super) const MAX_KEY_LOCKS: usize = 256;

/// A request of a group: per table written, the table's name and its writes. All of them are
/// applied or none is.
pub(super) type Request<'a> = Vec<(&'a str, &'a Write)>;

/// What one table's part of a commit did, for its log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Summary {
    pub(super) requests: usize,
    pub(super) rows: usize,
    pub(super) cleared: bool,
    pub(super) conflicts: usize,
}

/// A commit as decided: each request's outcome, and a summary per table.
#[derive(Debug, Clone)]
pub(super) struct Decided {
    /// Per request, in order: what it did, or `None` if it was left out of the commit because
    /// a row it writes (or a request before it that shares a key with it) is locked by
    /// another session: it waits, and is tried again with a later group.
    pub(super) outcomes: Vec<Option<Outcome>>,
    /// The rows, as table and key, that other sessions held locked.
    pub(super) locked: Vec<(String, String)>,
    pub(super) tables: BTreeMap<String, Summary>,
    /// Per table written, once committed: its new revision and the writes its announcement
    /// carried (`""`: none).
    pub(super) announced: Vec<(String, i64, String)>,
}

/// Why an attempt at a commit failed, with the statement error when there is one.
pub(super) type Attempt<T> = std::result::Result<T, tokio_postgres::Error>;

/// What a group of requests needs before it can decide: the locks to take and the keys to read.
pub(super) struct Plan<'a> {
    requests: &'a [Request<'a>],
    /// The tables' advisory locks in the order to take them, each exclusive or shared.
    table_locks: Vec<(i32, bool)>,
    /// The keys' advisory locks in the order to take them (of tables locked shared).
    key_locks: Vec<i32>,
    /// Per table, the keys whose stored values the conditions and previous values need.
    reads: BTreeMap<&'a str, Vec<&'a str>>,
    /// Per table not cleared, the keys written, whose rows are checked for other sessions'
    /// locks before anything is written.
    written: BTreeMap<&'a str, Vec<&'a str>>,
}

impl<'a> Plan<'a> {
    pub(super) fn new(requests: &'a [Request<'a>]) -> Self {
        #[derive(Default)]
        struct Needs<'a> {
            locked: Vec<&'a str>,
            read: Vec<&'a str>,
            written: Vec<&'a str>,
            cleared: bool,
        }
        let mut tables: BTreeMap<&str, Needs<'_>> = BTreeMap::new();
        for (table, write) in requests.iter().flatten() {
            let needs = tables.entry(table).or_default();
            let conditions = write.conditions.iter().map(|(key, _)| key.as_str());
            needs.locked.extend(conditions.clone());
            needs.read.extend(conditions);
            for op in &write.ops {
                match op.key() {
                    Some(key) => {
                        needs.locked.push(key);
                        needs.written.push(key);
                        // A sweep deletes only a row it reads as expired.
                        if write.want_previous || matches!(op, RawOp::Sweep { .. }) {
                            needs.read.push(key);
                        }
                    }
                    None => needs.cleared = true,
                }
            }
        }
        let mut table_locks: Vec<(i32, bool)> = Vec::with_capacity(tables.len());
        let mut key_locks = Vec::new();
        let mut reads = BTreeMap::new();
        let mut written = BTreeMap::new();
        for (table, mut needs) in tables {
            let exclusive = needs.cleared || needs.locked.len() > MAX_KEY_LOCKS;
            table_locks.push((lock_id(table, None), exclusive));
            if !exclusive {
                key_locks.extend(needs.locked.iter().map(|key| lock_id(table, Some(key))));
            }
            needs.read.sort_unstable();
            needs.read.dedup();
            if !needs.read.is_empty() {
                reads.insert(table, needs.read);
            }
            // A clear deletes every row: it waits for other sessions' row locks (`lock_timeout`).
            if !needs.cleared && !needs.written.is_empty() {
                needs.written.sort_unstable();
                needs.written.dedup();
                written.insert(table, needs.written);
            }
        }
        // Two tables whose locks collide take it once, exclusive if either needs that.
        table_locks.sort_unstable();
        table_locks.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                earlier.1 |= later.1;
            }
            same
        });
        key_locks.sort_unstable();
        key_locks.dedup();
        Self {
            requests,
            table_locks,
            key_locks,
            reads,
            written,
        }
    }

    /// Nothing to check and nothing to write.
    pub(super) fn is_empty(&self) -> bool {
        self.requests
            .iter()
            .flatten()
            .all(|(_, write)| write.ops.is_empty() && write.conditions.is_empty())
    }

    /// The tables that a request saves a value with a deadline to: they need the column
    /// `expires_at` before the commit.
    pub(super) fn tables_with_deadlines(&self) -> Vec<&'a str> {
        let mut tables: Vec<&str> = self
            .requests
            .iter()
            .flatten()
            .filter(|(_, write)| {
                write.ops.iter().any(|op| {
                    matches!(
                        op,
                        RawOp::Upsert {
                            expires_at: Some(_),
                            ..
                        }
                    )
                })
            })
            .map(|(table, _)| *table)
            .collect();
        tables.sort_unstable();
        tables.dedup();
        tables
    }

    /// The tables of the requests, each once.
    pub(super) fn tables(&self) -> Vec<&'a str> {
        let mut tables: Vec<&str> = self
            .requests
            .iter()
            .flatten()
            .map(|(table, _)| *table)
            .collect();
        tables.sort_unstable();
        tables.dedup();
        tables
    }

    /// The outcomes of requests that neither check nor write anything.
    pub(super) fn trivial(&self) -> Decided {
        let outcomes = self
            .requests
            .iter()
            .map(|parts| {
                Some(Outcome::Applied {
                    previous: parts
                        .iter()
                        .map(|(_, write)| write.want_previous.then(Vec::new))
                        .collect(),
                })
            })
            .collect();
        Decided {
            outcomes,
            locked: Vec::new(),
            tables: BTreeMap::new(),
            announced: Vec::new(),
        }
    }
}

pub(super) type Step<'s> = (&'s Statement, Vec<&'s (dyn ToSql + Sync)>);

/// Sends `steps` in order without waiting for each answer (one round trip for all of them),
/// and returns their rows. Each is sent when its future is first polled, and `try_join_all`
/// polls them in order.
pub(super) async fn pipeline(
    client: &tokio_postgres::Client,
    steps: &[Step<'_>],
) -> Attempt<Vec<Vec<tokio_postgres::Row>>> {
    futures_util::future::try_join_all(
        steps
            .iter()
            .map(|(statement, params)| client.query(*statement, params)),
    )
    .await
}

/// What one attempt at a commit came to.
pub(super) enum Committed {
    Done(Decided),
    /// Every request that was decided conflicted and nothing was written: the transaction is
    /// left open, holding its locks, so that the requests computed again from what it read can
    /// be committed in it (see [`Begun::covers`]) instead of queueing for the locks again.
    Held(Decided, Begun),
    /// The tables' layouts under the locks are not the ones their statements were prepared
    /// for (another instance gave one the column `expires_at`): nothing was written; prepare
    /// them again (with these, the tables that have the column) and try again.
    LayoutChanged(Vec<String>),
}

/// A transaction after its first round trip: the locks it holds, its id, and what it read
/// under them (which nobody of this crate can change while it holds them).
#[derive(Debug)]
pub(super) struct Begun {
    txid: i64,
    table_locks: Vec<(i32, bool)>,
    /// Sorted.
    key_locks: Vec<i32>,
    /// Per table, the keys read and the rows found.
    reads: BTreeMap<String, (Vec<String>, StoredRows)>,
    /// Per table, the keys whose rows were checked for other sessions' locks.
    probed: BTreeMap<String, Vec<String>>,
    /// The rows, as table and key, that other sessions held locked.
    locked: Vec<(String, String)>,
}

impl Begun {
    /// Whether `plan` can be decided and committed in this transaction as it stands: its locks
    /// are held (as strongly), its reads were made and its written rows checked, and no table
    /// of it needs the column `expires_at` added (which takes a transaction of its own).
    pub(super) fn covers(&self, plan: &Plan<'_>, live: &Live) -> bool {
        let locks = plan.table_locks.iter().all(|(id, exclusive)| {
            self.table_locks
                .iter()
                .any(|(held, held_exclusive)| held == id && (held_exclusive >= exclusive))
        });
        let keys = plan
            .key_locks
            .iter()
            .all(|id| self.key_locks.binary_search(id).is_ok());
        let within = |done: Option<&Vec<String>>, wanted: &[&str]| {
            done.is_some_and(|done| wanted.iter().all(|key| done.iter().any(|d| d == key)))
        };
        let reads = plan
            .reads
            .iter()
            .all(|(table, wanted)| within(self.reads.get(*table).map(|(keys, _)| keys), wanted));
        let probed = plan
            .written
            .iter()
            .all(|(table, wanted)| within(self.probed.get(*table), wanted));
        let columns = plan
            .tables_with_deadlines()
            .iter()
            .all(|table| live.table(table).expiring);
        locks && keys && reads && probed && columns
    }
}

/// One attempt at committing `plan`'s requests, in two round trips: [`begin`] (the locks, the
/// reads), then [`finish`] (the decisions, the writes, `COMMIT`).
pub(super) async fn commit_once(
    live: &Live,
    plan: &Plan<'_>,
    prune: bool,
    may_hold: bool,
    on_commit_sent: impl FnOnce(i64, &Decided),
) -> Attempt<Committed> {
    match begin(live, plan).await? {
        Ok(begun) => finish(live, plan, begun, prune, may_hold, on_commit_sent).await,
        Err(with_column) => Ok(Committed::LayoutChanged(with_column)),
    }
}

/// The first round trip of a commit: `BEGIN`, the locks, the transaction's id, which tables
/// have the column `expires_at`, the rows the requests depend on (read at this instance's
/// clock: an expired row is absent), and which written rows other sessions hold locked.
/// `Err` (with the tables that have the column) if the tables' layouts are not the ones their
/// statements were prepared for; the transaction is then rolled back.
pub(super) async fn begin(live: &Live, plan: &Plan<'_>) -> Attempt<Result<Begun, Vec<String>>> {
    let (client, statements) = (&live.client, &live.statements);
    let mut steps: Vec<Step<'_>> = Vec::with_capacity(4 + plan.table_locks.len());
    steps.push((&statements.begin, vec![]));
    for (id, exclusive) in &plan.table_locks {
        let lock = match exclusive {
            true => &statements.lock_table,
            false => &statements.lock_table_shared,
        };
        steps.push((lock, vec![id]));
    }
    if !plan.key_locks.is_empty() {
        steps.push((&statements.lock_keys, vec![&plan.key_locks]));
    }
    let txid_step = steps.len();
    steps.push((&statements.transaction_id, vec![]));
    let tables = plan.tables();
    steps.push((&statements.expiry_columns, vec![&tables]));
    let now = expiry::now_sql();
    for (table, keys) in &plan.reads {
        steps.push((&live.table(table).select_keys, vec![keys, &now]));
    }
    for (table, keys) in &plan.written {
        steps.push((&live.table(table).locked_elsewhere, vec![keys]));
    }
    let answers = match pipeline(client, &steps).await {
        Ok(answers) => answers,
        Err(error) => {
            // The transaction is open and failed: end it (on a broken connection this fails
            // at once, and does not matter).
            let _ = client.query(&statements.rollback, &[]).await;
            return Err(error);
        }
    };
    let txid: i64 = match answers[txid_step].first() {
        Some(row) => row.try_get(0)?,
        None => 0,
    };
    let with_column = answers[txid_step + 1]
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Attempt<Vec<String>>>()?;
    if !tables
        .iter()
        .all(|table| live.layout_matches(table, &with_column))
    {
        client.query(&statements.rollback, &[]).await?;
        return Ok(Err(with_column));
    }
    let mut reads = BTreeMap::new();
    for ((table, keys), rows) in plan.reads.iter().zip(&answers[txid_step + 2..]) {
        let mut values = StoredRows::default();
        for row in rows {
            let (key, value): (String, Option<String>) = (row.try_get(0)?, row.try_get(1)?);
            // A SQL NULL (written by another program) compares as JSON `null`.
            let value = value.unwrap_or_else(|| "null".to_owned());
            if row.try_get(3)? {
                values.expired.insert(key, value);
            } else {
                values.live.insert(key, (value, row.try_get(2)?));
            }
        }
        let keys = keys.iter().map(|key| (*key).to_owned()).collect();
        reads.insert((*table).to_owned(), (keys, values));
    }
    let probes = &answers[txid_step + 2 + plan.reads.len()..];
    let mut locked = Vec::new();
    for ((table, _), rows) in plan.written.iter().zip(probes) {
        for row in rows {
            locked.push(((*table).to_owned(), row.try_get(0)?));
        }
    }
    let probed = plan
        .written
        .iter()
        .map(|(table, keys)| {
            let keys = keys.iter().map(|key| (*key).to_owned()).collect();
            ((*table).to_owned(), keys)
        })
        .collect();
    Ok(Ok(Begun {
        txid,
        table_locks: plan.table_locks.clone(),
        key_locks: plan.key_locks.clone(),
        reads,
        probed,
        locked,
    }))
}

/// The second round trip of a commit, in the transaction `begun` (which covers `plan`): each
/// request decided in order, then the writes, the announcements, the log and `COMMIT`. (If a
/// statement of the trip fails, the server turns the `COMMIT` after it into a rollback.)
/// `on_commit_sent` is called, with the transaction's id and what it decided, just before the
/// trip goes out.
///
/// A transaction that writes nothing is rolled back instead (no commit to flush). If it wrote
/// nothing because requests conflicted, and `may_hold`, it is left open instead
/// ([`Committed::Held`]): the conflicts reported what is committed (no request of it wrote
/// anything), so they can be answered before the transaction ends.
pub(super) async fn finish(
    live: &Live,
    plan: &Plan<'_>,
    begun: Begun,
    prune: bool,
    may_hold: bool,
    on_commit_sent: impl FnOnce(i64, &Decided),
) -> Attempt<Committed> {
    let (client, statements) = (&live.client, &live.statements);
    let locked: Vec<(&str, String)> = begun
        .locked
        .iter()
        .map(|(table, key)| (table.as_str(), key.clone()))
        .collect();
    let waits = waiting_requests(plan.requests, &locked);
    if waits.iter().all(|waits| *waits) {
        // Nothing can be written now: end the transaction, freeing its locks.
        client.query(&statements.rollback, &[]).await?;
        return Ok(Committed::Done(Decided {
            outcomes: vec![None; plan.requests.len()],
            locked: begun.locked,
            tables: BTreeMap::new(),
            announced: Vec::new(),
        }));
    }
    let stored: HashMap<&str, StoredRows> = plan
        .reads
        .keys()
        .filter_map(|table| Some((*table, begun.reads.get(*table)?.1.clone())))
        .collect();

    let going: Vec<Request<'_>> = plan
        .requests
        .iter()
        .zip(&waits)
        .filter(|(_, waits)| !**waits)
        .map(|(request, _)| request.clone())
        .collect();
    let (outcomes, applied) = evaluate(&going, stored);
    let mut outcomes = outcomes.into_iter();
    let outcomes: Vec<Option<Outcome>> = waits
        .iter()
        .map(|waits| match waits {
            true => None,
            false => outcomes.next(),
        })
        .collect();
    let mut tables: BTreeMap<&str, Vec<(&RawOp, i64)>> = BTreeMap::new();
    for (table, op, origin) in applied {
        tables.entry(table).or_default().push((op, origin));
    }
    let merged: BTreeMap<&str, Rows<'_>> = tables
        .into_iter()
        .map(|(table, ops)| (table, Rows::merge(ops)))
        .filter(|(_, rows)| !rows.is_empty())
        .collect();
    let decided = Decided {
        tables: summarize(plan.requests, &outcomes, &merged),
        outcomes,
        locked: begun.locked.clone(),
        announced: Vec::new(),
    };
    if merged.is_empty() {
        let conflicted = decided
            .outcomes
            .iter()
            .any(|outcome| matches!(outcome, Some(Outcome::Conflict { .. })));
        if conflicted && may_hold {
            return Ok(Committed::Held(decided, begun));
        }
        client.query(&statements.rollback, &[]).await?;
        return Ok(Committed::Done(decided));
    }

    let logged: Vec<(&str, LogRows<'_>)> = merged
        .iter()
        .map(|(table, rows)| (*table, rows.logged()))
        .collect();
    let carried: Vec<Option<String>> = merged.values().map(Rows::carried).collect();
    let mut steps: Vec<Step<'_>> = Vec::new();
    for (table, rows) in &merged {
        write_steps(&mut steps, live.table(table), rows);
        if prune {
            steps.push((
                &statements.prune_log,
                vec![table, &log::REVISIONS_KEPT, &log::PRUNE_BATCH_ROWS],
            ));
        }
    }
    // Last, in table order: each revision row's lock orders its table's commits, so it is held
    // briefly, and taken in one order by every transaction.
    let first_log = steps.len();
    for ((table, (keys, origins)), writes) in logged.iter().zip(&carried) {
        steps.push((&statements.log, vec![table, keys, origins, writes]));
    }
    steps.push((&statements.commit, vec![]));
    on_commit_sent(begun.txid, &decided);
    let answers = pipeline(client, &steps).await?;
    let mut decided = decided;
    for (((table, _), writes), rows) in logged.iter().zip(carried).zip(&answers[first_log..]) {
        let rev = match rows.first() {
            Some(row) => row.try_get(0)?,
            None => 0,
        };
        decided
            .announced
            .push(((*table).to_owned(), rev, writes.unwrap_or_default()));
    }
    Ok(Committed::Done(decided))
}

/// Which requests must wait, given the rows (table and key) that other sessions hold locked: a
/// request that writes one, and every later request that shares a key with a waiting one (so
/// that the writes of a key are still committed in the order they were handed over).
fn waiting_requests(requests: &[Request<'_>], locked: &[(&str, String)]) -> Vec<bool> {
    let mut blocked: std::collections::HashSet<(&str, &str)> = locked
        .iter()
        .map(|(table, key)| (*table, key.as_str()))
        .collect();
    requests
        .iter()
        .map(|parts| {
            let keys = || {
                parts.iter().flat_map(|(table, write)| {
                    let checked = write.conditions.iter().map(|(key, _)| key.as_str());
                    checked
                        .chain(write.ops.iter().filter_map(RawOp::key))
                        .map(move |key| (*table, key))
                })
            };
            let waits = !blocked.is_empty() && keys().any(|key| blocked.contains(&key));
            if waits {
                blocked.extend(keys());
            }
            waits
        })
        .collect()
}

/// The steps that apply `rows` to their table.
fn write_steps<'s>(steps: &mut Vec<Step<'s>>, table: &'s TableStatements, rows: &'s Rows<'_>) {
    if rows.cleared {
        steps.push((&table.delete_all, vec![]));
    }
    if !rows.upsert_keys.is_empty() {
        steps.push((
            &table.upsert,
            vec![
                &rows.upsert_keys,
                &rows.upsert_values,
                &rows.upsert_deadlines,
            ],
        ));
    }
    if !rows.delete_keys.is_empty() {
        steps.push((&table.delete, vec![&rows.delete_keys]));
    }
}

/// Per table: its requests (parts of requests), rows written, whether it was cleared, and its
/// conflicts.
fn summarize(
    requests: &[Request<'_>],
    outcomes: &[Option<Outcome>],
    merged: &BTreeMap<&str, Rows<'_>>,
) -> BTreeMap<String, Summary> {
    let mut tables: BTreeMap<String, Summary> = BTreeMap::new();
    let decided = requests.iter().zip(outcomes);
    for (parts, outcome) in decided.filter_map(|(parts, outcome)| Some((parts, outcome.as_ref()?)))
    {
        for (table, _) in parts {
            let summary = tables.entry((*table).to_owned()).or_default();
            summary.requests += 1;
            summary.conflicts += usize::from(matches!(outcome, Outcome::Conflict { .. }));
        }
    }
    for (table, rows) in merged {
        if let Some(summary) = tables.get_mut(*table) {
            summary.rows = rows.upsert_keys.len() + rows.delete_keys.len();
            summary.cleared = rows.cleared;
        }
    }
    tables
}

/// The rows of a table read under the locks, live and expired apart: key to value JSON, and
/// for a live row its deadline.
#[derive(Debug, Default, Clone)]
struct StoredRows {
    live: HashMap<String, (String, Option<i64>)>,
    expired: HashMap<String, String>,
}

/// A value as a request of a group sees it: JSON text and deadline (Unix ms).
type Seen<'a> = (&'a str, Option<i64>);

/// A table as the requests of a group see it, one after the other: what was read, under what
/// the earlier requests of the group did.
#[derive(Default)]
struct Simulated<'a> {
    stored: StoredRows,
    written: HashMap<&'a str, Option<Seen<'a>>>,
    cleared: bool,
}

impl<'a> Simulated<'a> {
    /// The live value under `key`, with its deadline: an expired row is absent.
    fn get(&self, key: &str) -> Option<Seen<'_>> {
        match self.written.get(key) {
            Some(value) => *value,
            None if self.cleared => None,
            None => self
                .stored
                .live
                .get(key)
                .map(|(value, deadline)| (value.as_str(), *deadline)),
        }
    }

    /// The live value's JSON under `key`.
    fn value(&self, key: &str) -> Option<&str> {
        self.get(key).map(|(value, _)| value)
    }

    /// The value of the expired row under `key`, if storage holds one that no earlier request
    /// of the group replaced.
    fn expired(&self, key: &str) -> Option<&str> {
        match self.written.contains_key(key) || self.cleared {
            true => None,
            false => self.stored.expired.get(key).map(String::as_str),
        }
    }

    /// What `op` finds under its key: the live value, or for a sweep the expired one it
    /// deletes (`None`: it deletes nothing).
    fn found(&self, op: &RawOp) -> Option<&str> {
        match op {
            RawOp::Sweep { key } => self.expired(key),
            op => op.key().and_then(|key| self.value(key)),
        }
    }

    fn apply(&mut self, op: &'a RawOp) {
        match op {
            RawOp::Upsert {
                key,
                value,
                expires_at,
            } => {
                self.written.insert(key, Some((value, *expires_at)));
            }
            RawOp::Delete { key } | RawOp::Sweep { key } => {
                self.written.insert(key, None);
            }
            RawOp::DeleteAll => {
                self.written.clear();
                self.cleared = true;
            }
        }
    }
}

/// Decides each request in order against `stored` (per table, the rows read under the locks):
/// a request whose conditions, in every part, hold against the tables as the requests before it
/// left them is applied, every part of it (and seen by the requests after it); one with a
/// condition that fails writes nothing. A sweep op applies only where it finds an expired row
/// that no earlier request replaced; its previous value is that row's (`None`: not swept).
/// Returns the outcomes, and the ops to commit with their tables and their writers' origins.
fn evaluate<'a>(
    requests: &[Request<'a>],
    mut stored: HashMap<&'a str, StoredRows>,
) -> (Vec<Outcome>, Vec<(&'a str, &'a RawOp, i64)>) {
    let mut tables: HashMap<&str, Simulated<'a>> = HashMap::new();
    for (name, _) in requests.iter().flatten() {
        tables.entry(name).or_insert_with(|| Simulated {
            stored: stored.remove(name).unwrap_or_default(),
            ..Simulated::default()
        });
    }
    let mut outcomes = Vec::with_capacity(requests.len());
    let mut applied = Vec::new();
    for parts in requests {
        let holds = parts.iter().all(|(name, write)| {
            let table = &tables[name];
            write.conditions.iter().all(|(key, expected)| {
                condition_holds(table.value(key), expected.as_deref(), write.canonical)
            })
        });
        if !holds {
            let current = parts
                .iter()
                .map(|(name, write)| {
                    let table = &tables[name];
                    write
                        .conditions
                        .iter()
                        .map(|(key, _)| {
                            table
                                .get(key)
                                .map(|(value, deadline)| (value.to_owned(), deadline))
                        })
                        .collect()
                })
                .collect();
            outcomes.push(Outcome::Conflict { current });
            continue;
        }
        let mut previous = Vec::with_capacity(parts.len());
        for (name, write) in parts {
            let table = tables
                .get_mut(name)
                .expect("every request's table is simulated");
            let mut part_previous = write
                .want_previous
                .then(|| Vec::with_capacity(write.ops.len()));
            for op in &write.ops {
                let found = table.found(op);
                if let Some(previous) = &mut part_previous {
                    previous.push(found.map(str::to_owned));
                }
                if matches!(op, RawOp::Sweep { .. }) && found.is_none() {
                    continue;
                }
                table.apply(op);
                applied.push((*name, op, write.origin));
            }
            previous.push(part_previous);
        }
        outcomes.push(Outcome::Applied { previous });
    }
    (outcomes, applied)
}

/// A table's rows of the change log, as the log statement takes them: the keys (`None`:
/// anything) and who wrote each.
type LogRows<'a> = (Vec<Option<&'a str>>, Vec<i64>);

/// What a set of writes does to a table, merged: the last write of each key wins.
#[derive(Debug, Default, PartialEq)]
struct Rows<'a> {
    /// Every row is deleted first.
    cleared: bool,
    /// The origin of the clear, if any.
    cleared_by: i64,
    /// Sorted by key bytes, as are `delete_keys`.
    upsert_keys: Vec<&'a str>,
    upsert_values: Vec<&'a str>,
    /// The deadlines of `upsert_values` (Unix ms, `None`: never).
    upsert_deadlines: Vec<Option<i64>>,
    delete_keys: Vec<&'a str>,
    /// Who wrote each key last: the origins of `upsert_keys`, then of `delete_keys`.
    origins: Vec<i64>,
}

impl<'a> Rows<'a> {
    /// Merges `ops`, each with the origin of the map that wrote it.
    fn merge(ops: impl IntoIterator<Item = (&'a RawOp, i64)>) -> Self {
        let mut rows = Rows::default();
        type Saved<'a> = Option<(&'a str, Option<i64>)>;
        let mut last: BTreeMap<&'a str, (Saved<'a>, i64)> = BTreeMap::new();
        for (op, origin) in ops {
            match op {
                RawOp::Upsert {
                    key,
                    value,
                    expires_at,
                } => {
                    last.insert(key, (Some((value, *expires_at)), origin));
                }
                RawOp::Delete { key } | RawOp::Sweep { key } => {
                    last.insert(key, (None, origin));
                }
                RawOp::DeleteAll => {
                    rows.cleared = true;
                    rows.cleared_by = origin;
                    last.clear();
                }
            }
        }
        let mut delete_origins = Vec::new();
        for (key, (value, origin)) in last {
            match value {
                Some((value, expires_at)) => {
                    rows.upsert_keys.push(key);
                    rows.upsert_values.push(value);
                    rows.upsert_deadlines.push(expires_at);
                    rows.origins.push(origin);
                }
                None => {
                    rows.delete_keys.push(key);
                    delete_origins.push(origin);
                }
            }
        }
        rows.origins.extend(delete_origins);
        rows
    }

    fn is_empty(&self) -> bool {
        !self.cleared && self.upsert_keys.is_empty() && self.delete_keys.is_empty()
    }

    /// The writes the commit's announcement carries (see `notify.rs`): each key's last write
    /// with its origin, as JSON; `None` for a clear, or writes too large for a notification.
    fn carried(&self) -> Option<String> {
        let values: usize = self.upsert_values.iter().map(|value| value.len()).sum();
        let keys: usize = self
            .upsert_keys
            .iter()
            .chain(&self.delete_keys)
            .map(|key| key.len())
            .sum();
        if self.cleared || values + keys > notify::MAX_CARRIED_BYTES {
            return None;
        }
        let saved = self.upsert_values.iter().zip(&self.upsert_deadlines);
        let saved = saved.map(|(value, deadline)| (Some(*value), *deadline));
        let deleted = self.delete_keys.iter().map(|_| (None, None));
        let keys = self.upsert_keys.iter().chain(&self.delete_keys);
        let writes: Vec<(&str, Option<&str>, Option<i64>, i64)> = keys
            .zip(saved.chain(deleted))
            .zip(&self.origins)
            .map(|((key, (value, deadline)), origin)| (*key, value, deadline, *origin))
            .collect();
        let writes = serde_json::to_string(&writes).ok()?;
        (writes.len() <= notify::MAX_CARRIED_BYTES).then_some(writes)
    }

    /// The change log's rows for these writes: each key with the origin that wrote it last,
    /// or one `NULL` key ("anything") for a clear or too many keys.
    fn logged(&self) -> LogRows<'a> {
        let keys = self.upsert_keys.len() + self.delete_keys.len();
        if self.cleared || keys > log::MAX_LOGGED_KEYS {
            // One writer's: skipped by that writer, whose memory has it all. Several writers'
            // (a clear followed by another map's writes): nobody's, so every map reloads.
            let writers = self.origins.iter().copied();
            let mut writers = writers.chain(self.cleared.then_some(self.cleared_by));
            let first = writers.next().unwrap_or(0);
            let origin = if writers.all(|origin| origin == first) {
                first
            } else {
                0
            };
            return (vec![None], vec![origin]);
        }
        let keys = self.upsert_keys.iter().chain(&self.delete_keys);
        (keys.map(|key| Some(*key)).collect(), self.origins.clone())
    }
}

/// The advisory lock of `table` (`key` `None`) or of one of its keys: FNV-1a of their bytes.
/// Two keys that share a lock only wait for each other.
pub(super) fn lock_id(table: &str, key: Option<&str>) -> i32 {
    let separator: &[u8] = if key.is_some() { &[0] } else { &[] };
    let bytes = table
        .as_bytes()
        .iter()
        .chain(separator)
        .chain(key.unwrap_or_default().as_bytes());
    let hash = bytes.fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    });
    i32::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(key: &str, value: &str) -> RawOp {
        RawOp::Upsert {
            key: key.to_owned(),
            value: value.to_owned(),
            expires_at: None,
        }
    }

    fn delete(key: &str) -> RawOp {
        RawOp::Delete {
            key: key.to_owned(),
        }
    }

    fn by(origin: i64, ops: &[RawOp]) -> Vec<(&RawOp, i64)> {
        ops.iter().map(|op| (op, origin)).collect()
    }

    fn rows(rows: &[(&str, &str)]) -> HashMap<String, String> {
        rows.iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn stored(table: &'static str, live: &[(&str, &str)]) -> HashMap<&'static str, StoredRows> {
        stored_with_expired(table, live, &[])
    }

    fn stored_with_expired(
        table: &'static str,
        live: &[(&str, &str)],
        expired: &[(&str, &str)],
    ) -> HashMap<&'static str, StoredRows> {
        let live = rows(live)
            .into_iter()
            .map(|(key, value)| (key, (value, None)))
            .collect();
        let rows = StoredRows {
            live,
            expired: rows(expired),
        };
        HashMap::from([(table, rows)])
    }

    #[test]
    fn merged_rows_keep_the_last_write_of_each_key_sorted_by_key() {
        let ops = [
            upsert("b", "1"),
            upsert("a", "2"),
            delete("b"),
            upsert("c", "3"),
            upsert("a", "4"),
            delete("d"),
        ];
        let rows = Rows::merge(by(7, &ops));
        assert_eq!(rows.upsert_keys, ["a", "c"]);
        assert_eq!(rows.upsert_values, ["4", "3"]);
        assert_eq!(rows.delete_keys, ["b", "d"]);
        assert!(!rows.cleared);
        let (keys, origins) = rows.logged();
        assert_eq!(keys, [Some("a"), Some("c"), Some("b"), Some("d")]);
        assert_eq!(origins, [7, 7, 7, 7]);
    }

    #[test]
    fn each_key_is_logged_with_its_last_writer_and_a_clear_as_anything() {
        let (first, second) = ([upsert("a", "1"), upsert("b", "1")], [upsert("a", "2")]);
        let rows = Rows::merge(by(1, &first).into_iter().chain(by(2, &second)));
        assert_eq!(rows.logged(), (vec![Some("a"), Some("b")], vec![2, 1]));

        let ops = [upsert("a", "1"), RawOp::DeleteAll, upsert("b", "2")];
        let rows = Rows::merge(by(3, &ops));
        assert!(rows.cleared);
        assert_eq!(rows.upsert_keys, ["b"]);
        assert!(rows.delete_keys.is_empty());
        assert_eq!(rows.logged(), (vec![None], vec![3]));

        // A clear and another map's write after it: every map must reload, the clearer too.
        let (clear, later) = ([RawOp::DeleteAll], [upsert("c", "1")]);
        let rows = Rows::merge(by(3, &clear).into_iter().chain(by(4, &later)));
        assert_eq!(rows.logged(), (vec![None], vec![0]));
    }

    #[test]
    fn an_announcement_carries_each_keys_last_write_unless_too_large_or_a_clear() {
        let ops = [upsert("b", "1"), delete("a"), upsert("b", "2")];
        let rows = Rows::merge(by(7, &ops));
        assert_eq!(
            rows.carried().as_deref(),
            Some(r#"[["b","2",null,7],["a",null,null,7]]"#)
        );
        let large = "x".repeat(notify::MAX_CARRIED_BYTES);
        let ops = [upsert("k", &large)];
        assert_eq!(Rows::merge(by(7, &ops)).carried(), None);
        let ops = [RawOp::DeleteAll, upsert("k", "1")];
        assert_eq!(Rows::merge(by(7, &ops)).carried(), None);
    }

    #[test]
    fn locks_are_sorted_and_distinct_and_many_keys_or_a_clear_lock_the_table() {
        let write = Write {
            conditions: vec![("a".into(), None)],
            ops: vec![upsert("b", "1"), delete("a"), upsert("c", "2")],
            ..Write::default()
        };
        let other = Write {
            ops: vec![upsert("a", "1")],
            ..Write::default()
        };
        let requests = [vec![("t", &write)], vec![("u", &other)]];
        let plan = Plan::new(&requests);
        assert_eq!(plan.key_locks.len(), 4);
        assert!(plan.key_locks.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(plan.table_locks.len(), 2);
        assert!(plan
            .table_locks
            .windows(2)
            .all(|pair| pair[0].0 < pair[1].0));
        assert!(plan.table_locks.iter().all(|(_, exclusive)| !exclusive));
        assert_ne!(lock_id("t", Some("a")), lock_id("u", Some("a")));
        assert_ne!(lock_id("t", Some("")), lock_id("t", None));

        let many = Write {
            ops: (0..=MAX_KEY_LOCKS)
                .map(|i| delete(&i.to_string()))
                .collect(),
            ..Write::default()
        };
        let clear = Write {
            ops: vec![RawOp::DeleteAll],
            ..Write::default()
        };
        for write in [&many, &clear] {
            let requests = [vec![("t", write)]];
            let plan = Plan::new(&requests);
            assert_eq!(plan.table_locks, [(lock_id("t", None), true)]);
            assert!(plan.key_locks.is_empty());
        }
    }

    #[test]
    fn keys_sort_by_their_bytes() {
        let ops = [
            upsert("é", "1"),
            upsert("z", "2"),
            upsert("Z", "3"),
            upsert("", "4"),
        ];
        assert_eq!(Rows::merge(by(0, &ops)).upsert_keys, ["", "Z", "z", "é"]);
        assert!(Rows::merge(by(0, &[])).is_empty());
    }

    fn bump(key: &str, from: Option<&str>, to: &str) -> Write {
        Write {
            conditions: vec![(key.to_owned(), from.map(str::to_owned))],
            ops: vec![upsert(key, to)],
            origin: 1,
            ..Write::default()
        }
    }

    #[test]
    fn the_requests_of_a_group_see_the_ones_before_them_in_their_own_table() {
        let (first, second, stale) = (
            bump("n", Some("1"), "2"),
            bump("n", Some("2"), "3"),
            bump("n", Some("1"), "9"),
        );
        let elsewhere = bump("n", None, "1");
        let requests = [
            vec![("t", &first)],
            vec![("u", &elsewhere)],
            vec![("t", &second)],
            vec![("t", &stale)],
        ];
        let (outcomes, applied) = evaluate(&requests, stored("t", &[("n", "1")]));
        let applied_ok = Outcome::Applied {
            previous: vec![None],
        };
        assert_eq!(
            outcomes[..3],
            [applied_ok.clone(), applied_ok.clone(), applied_ok]
        );
        assert_eq!(
            outcomes[3],
            Outcome::Conflict {
                current: vec![vec![Some(("3".to_owned(), None))]]
            }
        );
        let in_t = applied.iter().filter(|(table, _, _)| *table == "t");
        assert_eq!(
            Rows::merge(in_t.map(|(_, op, origin)| (*op, *origin))).upsert_values,
            ["3"]
        );
    }

    #[test]
    fn previous_values_and_json_comparison_follow_the_simulated_table() {
        let object = r#"{"x": 1, "y": 2}"#;
        let insert = Write {
            ops: vec![upsert("a", "5"), delete("a"), upsert("b", "6")],
            want_previous: true,
            ..Write::default()
        };
        let absent_now = Write {
            conditions: vec![("a".into(), None)],
            ops: vec![RawOp::DeleteAll, upsert("c", "1")],
            want_previous: true,
            ..Write::default()
        };
        let requests = [vec![("t", &insert)], vec![("t", &absent_now)]];
        let (outcomes, _) = evaluate(&requests, stored("t", &[("a", object)]));
        assert_eq!(
            outcomes[0],
            Outcome::Applied {
                previous: vec![Some(vec![Some(object.into()), Some("5".into()), None])]
            }
        );
        assert_eq!(
            outcomes[1],
            Outcome::Applied {
                previous: vec![Some(vec![None, None])]
            }
        );
        let reordered = bump("a", Some(r#"{"y":2,"x":1}"#), "7");
        let (outcomes, _) = evaluate(&[vec![("t", &reordered)]], stored("t", &[("a", object)]));
        assert_eq!(
            outcomes[0],
            Outcome::Applied {
                previous: vec![None]
            }
        );
    }

    #[test]
    fn a_request_over_two_tables_is_applied_whole_or_not_at_all() {
        let mut rows = stored("t", &[("n", "1")]);
        rows.extend(stored("u", &[("n", "5")]));
        // Holds in `t`, fails in `u`: neither is written, and both parts say what is stored.
        let (in_t, stale_in_u) = (bump("n", Some("1"), "2"), bump("n", Some("4"), "5"));
        // Both hold, seeing nothing of the request refused before them.
        let (again_in_t, in_u) = (bump("n", Some("1"), "3"), bump("n", Some("5"), "6"));
        let requests = [
            vec![("t", &in_t), ("u", &stale_in_u)],
            vec![("t", &again_in_t), ("u", &in_u)],
        ];
        let plan = Plan::new(&requests);
        assert_eq!(plan.table_locks.len(), 2);
        assert_eq!(plan.key_locks.len(), 2);
        let (outcomes, applied) = evaluate(&requests, rows);
        assert_eq!(
            outcomes,
            [
                Outcome::Conflict {
                    current: vec![
                        vec![Some(("1".into(), None))],
                        vec![Some(("5".into(), None))]
                    ]
                },
                Outcome::Applied {
                    previous: vec![None, None]
                },
            ]
        );
        let written: Vec<(&str, &str)> = applied
            .iter()
            .map(|(table, op, _)| match op {
                RawOp::Upsert { value, .. } => (*table, value.as_str()),
                _ => unreachable!("only upserts were asked for"),
            })
            .collect();
        assert_eq!(written, [("t", "3"), ("u", "6")]);
    }

    fn sweep(key: &str) -> RawOp {
        RawOp::Sweep {
            key: key.to_owned(),
        }
    }

    #[test]
    fn an_expired_row_is_absent_to_conditions_and_previous_values() {
        let insert = Write {
            ops: vec![upsert("old", "2")],
            want_previous: true,
            ..Write::default()
        };
        let claim = bump("lease", None, "\"mine\"");
        let requests = [vec![("t", &insert)], vec![("t", &claim)]];
        let stored = stored_with_expired("t", &[], &[("old", "1"), ("lease", "\"theirs\"")]);
        let (outcomes, applied) = evaluate(&requests, stored);
        assert_eq!(
            outcomes[0],
            Outcome::Applied {
                previous: vec![Some(vec![None])]
            }
        );
        assert!(matches!(outcomes[1], Outcome::Applied { .. }));
        assert_eq!(applied.len(), 2);
    }

    #[test]
    fn a_sweep_deletes_only_rows_still_expired_and_not_replaced_in_its_group() {
        let renew = Write {
            ops: vec![upsert("renewed", "9")],
            ..Write::default()
        };
        let sweeping = Write {
            ops: vec![
                sweep("expired"),
                sweep("renewed"),
                sweep("live"),
                sweep("gone"),
            ],
            want_previous: true,
            origin: 5,
            ..Write::default()
        };
        let requests = [vec![("t", &renew)], vec![("t", &sweeping)]];
        let plan = Plan::new(&requests);
        assert_eq!(plan.reads["t"], ["expired", "gone", "live", "renewed"]);
        let stored =
            stored_with_expired("t", &[("live", "1")], &[("expired", "2"), ("renewed", "3")]);
        let (outcomes, applied) = evaluate(&requests, stored);
        assert_eq!(
            outcomes[1],
            Outcome::Applied {
                previous: vec![Some(vec![Some("2".into()), None, None, None])]
            }
        );
        let rows = Rows::merge(applied.iter().map(|(_, op, origin)| (*op, *origin)));
        assert_eq!(rows.upsert_keys, ["renewed"]);
        assert_eq!(rows.delete_keys, ["expired"]);
        assert_eq!(
            rows.logged(),
            (vec![Some("renewed"), Some("expired")], vec![0, 5])
        );
    }

    #[test]
    fn saved_deadlines_follow_their_values_and_mark_the_tables_that_need_the_column() {
        let expiring = Write {
            ops: vec![
                RawOp::Upsert {
                    key: "a".into(),
                    value: "1".into(),
                    expires_at: Some(1_700_000_000_000),
                },
                upsert("b", "2"),
            ],
            ..Write::default()
        };
        let plain = Write {
            ops: vec![upsert("c", "3")],
            ..Write::default()
        };
        let requests = [vec![("t", &expiring), ("u", &plain)]];
        assert_eq!(Plan::new(&requests).tables_with_deadlines(), ["t"]);
        let rows = Rows::merge(by(0, &expiring.ops));
        assert_eq!(rows.upsert_deadlines, [Some(1_700_000_000_000), None]);
    }

    #[test]
    fn a_conflict_reports_each_value_with_its_deadline() {
        let renew = Write {
            ops: vec![RawOp::Upsert {
                key: "a".into(),
                value: "2".into(),
                expires_at: Some(1_800_000_000_000),
            }],
            ..Write::default()
        };
        let stale = Write {
            conditions: vec![("a".into(), Some("1".into())), ("b".into(), None)],
            ..Write::default()
        };
        let requests = [vec![("t", &renew)], vec![("t", &stale)]];
        let mut stored = stored("t", &[("a", "1")]);
        let table = stored.get_mut("t").unwrap();
        table
            .live
            .insert("b".into(), ("3".into(), Some(1_700_000_000_000)));
        let (outcomes, _) = evaluate(&requests, stored);
        assert_eq!(
            outcomes[1],
            Outcome::Conflict {
                current: vec![vec![
                    Some(("2".into(), Some(1_800_000_000_000))),
                    Some(("3".into(), Some(1_700_000_000_000))),
                ]]
            }
        );
    }
}
