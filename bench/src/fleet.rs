//! The fleet's hot counter (feature `postgres`): `--instances N` processes, each with one
//! connection and [`TASKS_PER_INSTANCE`] tasks incrementing one key for `--seconds` (default 3),
//! all started at once.
//!
//! - `pm-bench run fleet-update pg`: each process is an instance of our map on the PostgreSQL
//!   backend, its tasks calling `update(+1)` on the key `hot`;
//! - `pm-bench run fleet-update raw-pg`: each process holds one tokio-postgres connection, its
//!   tasks sending `UPDATE ... SET v = v + 1` (pipelined on the connection).
//!
//! This process only coordinates: it makes the table and the row, starts the members
//! (`pm-bench run fleet-member IMPL --table T ...`), tells them to go once all are ready, sums
//! what they acknowledged, and checks that the stored counter equals that sum.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use persistent_map::postgres::tokio_postgres::{self, NoTls};
use persistent_map::postgres::PostgresBackend;
use persistent_map::PersistentMap;

use crate::rows::TASKS_PER_INSTANCE;
use crate::workload::{report, BenchResult, Options, RESULT_PREFIX};

/// What a member prints once connected, and reads before it starts.
const READY: &str = "ready";
const GO: &str = "go";

/// The counter's key.
const HOT: &str = "hot";

/// `pm-bench run fleet-update IMPL` (the coordinator) or `fleet-member IMPL` (one instance).
pub(crate) fn run(
    workload: &str,
    implementation: &str,
    url: &str,
    options: &Options,
) -> BenchResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match workload {
        "fleet-update" => coordinate(&runtime, implementation, url, options),
        "fleet-member" => member(&runtime, implementation, url, options),
        other => Err(format!("the fleet has no workload `{other}`").into()),
    }
}

fn seconds(options: &Options) -> BenchResult<f64> {
    Ok(match options.text("seconds") {
        Ok(text) => text.parse()?,
        Err(_) => 3.0,
    })
}

/// The table's definition and its one row: our map's layout, or a plain counter.
fn schema(implementation: &str, table: &str) -> BenchResult<String> {
    Ok(match implementation {
        "pg" => format!(
            "CREATE TABLE \"{table}\" (key TEXT PRIMARY KEY, value JSONB NOT NULL); \
             INSERT INTO \"{table}\" VALUES ('{HOT}', '0')"
        ),
        "raw-pg" => format!(
            "CREATE TABLE \"{table}\" (key TEXT PRIMARY KEY, v BIGINT NOT NULL); \
             INSERT INTO \"{table}\" VALUES ('{HOT}', 0)"
        ),
        other => return Err(format!("the fleet has no implementation `{other}`").into()),
    })
}

fn coordinate(
    runtime: &tokio::runtime::Runtime,
    implementation: &str,
    url: &str,
    options: &Options,
) -> BenchResult {
    let instances = match options.text("instances") {
        Ok(text) => text.parse::<usize>()?.max(1),
        Err(_) => 3,
    };
    let seconds = seconds(options)?;
    let table = format!("pm_bench_fleet_{}", std::process::id());
    let admin = runtime.block_on(connect(url))?;
    let schema = schema(implementation, &table)?;
    runtime.block_on(async {
        crate::postgres::drop_table(url, &table).await?;
        admin.batch_execute(&schema).await?;
        BenchResult::Ok(())
    })?;
    let measured = run_members(implementation, &table, seconds, instances);
    let stored = runtime.block_on(stored_counter(&admin, implementation, &table));
    runtime.block_on(crate::postgres::drop_table(url, &table))?;
    let (acknowledged, elapsed, mut metrics) = measured?;
    let stored = stored?;
    if stored != acknowledged {
        return Err(format!(
            "the counter holds {stored}, but the instances acknowledged {acknowledged} increments"
        )
        .into());
    }
    metrics.insert(0, ("ops_per_sec", acknowledged as f64 / elapsed));
    metrics.push(("ops", acknowledged as f64));
    report(&metrics)
}

/// What the members did together: increments acknowledged, the longest run in seconds, and
/// their other metrics summed.
type Together = (u64, f64, Vec<(&'static str, f64)>);

/// Starts the members, lets them go together, and sums their results.
fn run_members(
    implementation: &str,
    table: &str,
    seconds: f64,
    instances: usize,
) -> BenchResult<Together> {
    let mut members = Vec::with_capacity(instances);
    for _ in 0..instances {
        members.push(Member::start(implementation, table, seconds)?);
    }
    for member in &mut members {
        member.wait_until_ready()?;
    }
    for member in &mut members {
        writeln!(member.stdin, "{GO}")?;
        member.stdin.flush()?;
    }
    let (mut acknowledged, mut elapsed) = (0, 0.0_f64);
    let mut sums: Vec<(&'static str, f64)> = ["commits", "writes", "conflicts"]
        .into_iter()
        .map(|name| (name, 0.0))
        .collect();
    for member in members {
        let result = member.result()?;
        acknowledged += result["acknowledged"] as u64;
        elapsed = elapsed.max(result["elapsed"]);
        for (name, sum) in &mut sums {
            *sum += result.get(*name).copied().unwrap_or(0.0);
        }
    }
    if implementation != "pg" {
        sums.clear();
    }
    Ok((acknowledged, elapsed, sums))
}

/// One member process.
struct Member {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Member {
    fn start(implementation: &str, table: &str, seconds: f64) -> BenchResult<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["run", "fleet-member", implementation, "--table", table])
            .args(["--seconds", &seconds.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("a member has no stdin")?;
        let stdout = child.stdout.take().ok_or("a member has no stdout")?;
        Ok(Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    fn next_line(&mut self) -> BenchResult<String> {
        match self.lines.next() {
            Some(line) => Ok(line?),
            None => Err(format!("a fleet member ended ({})", self.child.wait()?).into()),
        }
    }

    fn wait_until_ready(&mut self) -> BenchResult {
        match self.next_line()?.as_str() {
            READY => Ok(()),
            other => Err(format!("a fleet member said `{other}` instead of `{READY}`").into()),
        }
    }

    /// The member's result line, once it has ended.
    fn result(mut self) -> BenchResult<std::collections::HashMap<String, f64>> {
        let line = self.next_line()?;
        let json = line
            .strip_prefix(RESULT_PREFIX)
            .ok_or_else(|| format!("a fleet member said `{line}` instead of its result"))?;
        let metrics = serde_json::from_str(json)?;
        self.child.wait()?;
        Ok(metrics)
    }
}

async fn connect(url: &str) -> BenchResult<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn stored_counter(
    admin: &tokio_postgres::Client,
    implementation: &str,
    table: &str,
) -> BenchResult<u64> {
    let column = match implementation {
        "pg" => "(value #>> '{}')::bigint",
        _ => "v",
    };
    let row = admin
        .query_one(
            &format!("SELECT {column} FROM \"{table}\" WHERE key = $1"),
            &[&HOT],
        )
        .await?;
    Ok(u64::try_from(row.get::<_, i64>(0))?)
}

/// One instance: connects, says it is ready, waits for the word, then increments for the
/// given seconds with [`TASKS_PER_INSTANCE`] tasks and reports what was acknowledged.
fn member(
    runtime: &tokio::runtime::Runtime,
    implementation: &str,
    url: &str,
    options: &Options,
) -> BenchResult {
    let table = options.text("table")?.to_owned();
    let run_for = Duration::from_secs_f64(seconds(options)?);
    let increment: Incrementer = match implementation {
        "pg" => runtime.block_on(ours(url, &table))?,
        "raw-pg" => runtime.block_on(raw(url, &table))?,
        other => return Err(format!("the fleet has no implementation `{other}`").into()),
    };
    println!("{READY}");
    std::io::stdout().flush()?;
    let mut word = String::new();
    std::io::stdin().read_line(&mut word)?;
    if word.trim() != GO {
        return Err(format!("a fleet member was told `{}`", word.trim()).into());
    }
    let (acknowledged, elapsed) = runtime.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..TASKS_PER_INSTANCE)
            .map(|_| {
                let increment = increment.clone();
                tokio::spawn(async move {
                    let mut done = 0_u64;
                    while start.elapsed() < run_for {
                        increment.step().await?;
                        done += 1;
                    }
                    BenchResult::Ok(done)
                })
            })
            .collect();
        let mut acknowledged = 0;
        for task in tasks {
            acknowledged += task.await??;
        }
        BenchResult::Ok((acknowledged, start.elapsed().as_secs_f64()))
    })?;
    let mut metrics = vec![("acknowledged", acknowledged as f64), ("elapsed", elapsed)];
    if let Incrementer::Ours(map) = &increment {
        metrics.extend(crate::postgres::stats_metrics(map.backend().stats()));
    }
    report(&metrics)
}

/// How a member's tasks increment the counter.
#[derive(Clone)]
enum Incrementer {
    Ours(PersistentMap<String, u64, PostgresBackend>),
    Raw(std::sync::Arc<(tokio_postgres::Client, tokio_postgres::Statement)>),
}

impl Incrementer {
    async fn step(&self) -> BenchResult {
        match self {
            Incrementer::Ours(map) => {
                map.update(&HOT.to_owned(), |n| Some(n.copied().unwrap_or(0) + 1))
                    .await?;
            }
            Incrementer::Raw(raw) => {
                let (client, statement) = &**raw;
                client.execute(statement, &[]).await?;
            }
        }
        Ok(())
    }
}

async fn ours(url: &str, table: &str) -> BenchResult<Incrementer> {
    let backend = PostgresBackend::builder(url).table(table).connect().await?;
    Ok(Incrementer::Ours(PersistentMap::new(backend).await?))
}

async fn raw(url: &str, table: &str) -> BenchResult<Incrementer> {
    let client = connect(url).await?;
    let statement = client
        .prepare(&format!(
            "UPDATE \"{table}\" SET v = v + 1 WHERE key = '{HOT}'"
        ))
        .await?;
    Ok(Incrementer::Raw(std::sync::Arc::new((client, statement))))
}
