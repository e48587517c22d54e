//! An operator's work on the crate's tables: dropping a map's table and what the crate keeps
//! about it.

use tokio_postgres::types::ToSql;

use super::commit::lock_id;
use super::connect::{describe_error, Endpoint, Target};
use crate::Result;

/// Drops `table` and its rows in the crate's own tables, on a connection of its own to
/// `endpoint` (see [`PostgresBuilder::drop_table`](super::PostgresBuilder::drop_table)).
/// Returns whether the table existed.
pub(super) async fn drop_table(endpoint: &Endpoint, table: &str) -> Result<bool> {
    let target = Target {
        host: endpoint.host.clone(),
        table: table.to_owned(),
    };
    let timeout = endpoint.connect_timeout;
    let connecting = endpoint.config.connect(endpoint.tls.clone());
    let (mut client, connection) = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(error)) => return Err(target.connect_error(describe_error(&error))),
        Err(_elapsed) => {
            return Err(target.connect_error(format!("no answer within {timeout:?}")));
        }
    };
    let reader = tokio::spawn(connection);
    let dropped = drop_in_transaction(&mut client, endpoint, table)
        .await
        .map_err(|error| target.postgres_error(error));
    drop(client);
    // The connection ends with its client; how it ended does not matter any more.
    let _ = reader.await;
    dropped
}

async fn drop_in_transaction(
    client: &mut tokio_postgres::Client,
    endpoint: &Endpoint,
    table: &str,
) -> std::result::Result<bool, tokio_postgres::Error> {
    let quoted = format!("\"{table}\"");
    let transaction = client.transaction().await?;
    // Every commit of this crate holds the table's lock shared: wait for those in flight.
    let lock: [&(dyn ToSql + Sync); 2] = [&endpoint.lock_classes.table(), &lock_id(table, None)];
    transaction
        .execute("SELECT pg_advisory_xact_lock($1, $2)", &lock)
        .await?;
    let existed: bool = transaction
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&quoted])
        .await?
        .try_get(0)?;
    transaction
        .batch_execute(&format!("DROP TABLE IF EXISTS {quoted}"))
        .await?;
    for (own_table, forget) in [
        (
            "persistent_map_log",
            "DELETE FROM persistent_map_log WHERE table_name = $1",
        ),
        (
            "persistent_map_revisions",
            "DELETE FROM persistent_map_revisions WHERE table_name = $1",
        ),
        (
            "persistent_map_tables",
            "DELETE FROM persistent_map_tables WHERE table_name = $1",
        ),
    ] {
        let exists: bool = transaction
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&own_table])
            .await?
            .try_get(0)?;
        if exists {
            transaction.execute(forget, &[&table]).await?;
        }
    }
    transaction
        .execute("SELECT pg_notify($1, 'reload')", &[&table])
        .await?;
    transaction.commit().await?;
    tracing::info!(table = %table, existed, "dropped the table and its rows in the crate's own tables");
    Ok(existed)
}
