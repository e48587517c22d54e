//! The raw anchors of the PostgreSQL rows (feature `postgres`): tokio-postgres over the same
//! server, doing the same work as our map the plain way (see `postgres.rs` for what each does).

use std::time::Instant;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use persistent_map::postgres::tokio_postgres::{self, AsyncMessage, NoTls};
use tokio::sync::mpsc;

use crate::propagation::{self, Plan};
use crate::workload::{key, per_second, report, value, BenchResult, Budget, Options, TASKS};

/// Our map's layout, so that both sides write the same rows.
fn create(table: &str) -> String {
    format!("CREATE TABLE \"{table}\" (key TEXT PRIMARY KEY, value JSONB NOT NULL)")
}

fn upsert(table: &str) -> String {
    format!(
        "INSERT INTO \"{table}\" (key, value) VALUES ($1, $2::text::jsonb) \
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
    )
}

/// [`TASKS`] tasks inserting `--n` distinct keys each through a pool of [`TASKS`] connections,
/// each insert its own transaction.
pub(crate) fn concurrent(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    table: &str,
    options: &Options,
) -> BenchResult {
    let per_task = options.number("n")?;
    runtime.block_on(async {
        let config: tokio_postgres::Config = url.parse()?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager).max_size(TASKS as usize).build()?;
        pool.get().await?.batch_execute(&create(table)).await?;
        // Every connection of the pool open and its statement prepared before the clock runs.
        let mut warm = Vec::new();
        for _ in 0..TASKS {
            let client = pool.get().await?;
            client.prepare_cached(&upsert(table)).await?;
            warm.push(client);
        }
        drop(warm);
        let budget = Budget::start(options)?;
        let began = Instant::now();
        let writers: Vec<_> = (0..TASKS)
            .map(|task| {
                let (pool, sql) = (pool.clone(), upsert(table));
                tokio::spawn(async move {
                    let mut done = 0_u64;
                    for index in task * per_task..(task + 1) * per_task {
                        if !budget.left() {
                            break;
                        }
                        let json = serde_json::to_string(&value(index))?;
                        let client = pool.get().await?;
                        let statement = client.prepare_cached(&sql).await?;
                        client.execute(&statement, &[&key(index), &json]).await?;
                        done += 1;
                    }
                    BenchResult::Ok(done)
                })
            })
            .collect();
        let mut done = 0;
        for writer in writers {
            done += writer.await??;
        }
        let ops_per_sec = per_second(done, began.elapsed());
        report(&[("ops_per_sec", ops_per_sec), ("ops", done as f64)])
    })
}

/// A plain LISTEN/NOTIFY loop: the plan's writes one at a time, each an upsert (its own
/// transaction) and then a `NOTIFY` carrying the value, timed from the upsert's answer to a
/// listener on another connection receiving the notification.
pub(crate) fn propagation(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    table: &str,
    options: &Options,
) -> BenchResult {
    let plan = Plan::from_options(options)?;
    let channel = format!("{table}_changes");
    let (writer, (plain, notify), _listener, mut heard) = runtime.block_on(async {
        let (writer, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(connection);
        writer.batch_execute(&create(table)).await?;
        let initial = plan.initial();
        let plain = writer.prepare(&upsert(table)).await?;
        for (key, value) in &initial {
            writer
                .execute(&plain, &[key, &serde_json::to_string(value)?])
                .await?;
        }
        let notify = writer.prepare("SELECT pg_notify($1, $2)").await?;
        let (listener, heard) = listen(url, &channel).await?;
        BenchResult::Ok((writer, (plain, notify), listener, heard))
    })?;
    let times = propagation::time_writes(
        &plan,
        |key, value| {
            let json = serde_json::to_string(&value)?;
            runtime.block_on(writer.execute(&plain, &[&key, &json]))?;
            Ok(())
        },
        |i| {
            // The announcement goes out once the upsert is acknowledged.
            let (_, value) = propagation::write(i, &plan);
            let json = serde_json::to_string(&value)?;
            runtime.block_on(writer.query(&notify, &[&channel, &json]))?;
            let (payload, seen) = runtime
                .block_on(heard.recv())
                .ok_or("the listener stopped")?;
            let received: crate::workload::Session = serde_json::from_str(&payload)?;
            if received != value {
                return Err(format!("write {i} was awaited, another value was heard").into());
            }
            Ok(seen)
        },
    );
    propagation::report_times(times?, options)
}

/// Hears the notifications of one connection: each payload, with the moment it arrived.
type Heard = mpsc::UnboundedReceiver<(String, i128)>;

/// A second connection listening on `channel` (kept open while the client is held).
async fn listen(url: &str, channel: &str) -> BenchResult<(tokio_postgres::Client, Heard)> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    let (heard, hearing) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(notification) = message {
                let Ok(now) = propagation::now_ns() else {
                    return;
                };
                if heard
                    .send((notification.payload().to_owned(), now))
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await?;
    Ok((client, hearing))
}
