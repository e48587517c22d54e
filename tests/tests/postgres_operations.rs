//! What an operator does with the PostgreSQL backend: drop a map's table and what the crate
//! keeps about it, and keep the crate's advisory locks apart from the application's.
//!
//! Needs the server named by `PM_TEST_POSTGRES_URL`.

use std::time::{Duration, Instant};

use persistent_map::postgres::{tokio_postgres, PostgresBackend};
use persistent_map::{PersistentError, PersistentKey, PersistentMap};
use serde::{Deserialize, Serialize};

mod postgres_common;
use postgres_common::*;

#[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Ticket {
    queue: String,
    number: u64,
}

/// How many rows the crate's own tables hold about `table`.
async fn rows_about(admin: &tokio_postgres::Client, table: &str) -> i64 {
    let mut rows = 0;
    for own in [
        "persistent_map_log",
        "persistent_map_revisions",
        "persistent_map_tables",
    ] {
        let count: i64 = admin
            .query_one(
                &format!("SELECT count(*) FROM {own} WHERE table_name = $1"),
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        rows += count;
    }
    rows
}

async fn exists(admin: &tokio_postgres::Client, relation: &str) -> bool {
    admin
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("\"{relation}\"")],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_table_removes_a_maps_table_index_and_rows_in_the_crates_tables() {
    let table = TestTable::new("dropped");
    let admin = admin().await;
    let builder = || {
        PostgresBackend::builder(&url())
            .key::<Ticket>()
            .table(table.name())
    };
    let map: PersistentMap<Ticket, String, PostgresBackend> =
        PersistentMap::new(builder().connect().await.unwrap())
            .await
            .unwrap();
    let ticket = |number| Ticket {
        queue: "support".into(),
        number,
    };
    map.insert(ticket(1), "open".into()).await.unwrap();
    map.insert_with_ttl(ticket(2), "snoozed".into(), Duration::from_secs(60))
        .await
        .unwrap();
    drop(map);
    let index = format!("persistent_map_expiry_{}", table.name());
    assert!(exists(&admin, table.name()).await && exists(&admin, &index).await);
    assert!(
        rows_about(&admin, table.name()).await >= 3,
        "log, revision, key layout"
    );

    assert!(builder().drop_table().await.unwrap(), "the table existed");
    assert!(!exists(&admin, table.name()).await);
    assert!(!exists(&admin, &index).await);
    assert_eq!(rows_about(&admin, table.name()).await, 0);
    assert!(
        !builder().drop_table().await.unwrap(),
        "nothing left to drop"
    );

    // A map opened under the name again starts empty.
    let map: PersistentMap<Ticket, String, PostgresBackend> =
        PersistentMap::new(builder().connect().await.unwrap())
            .await
            .unwrap();
    assert!(map.is_empty());

    let err = PostgresBackend::builder(&url())
        .table("bad name")
        .drop_table()
        .await
        .unwrap_err();
    assert!(
        matches!(err, PersistentError::InvalidTableName { .. }),
        "{err}"
    );
}

/// The crate's lock id of `table` (FNV-1a of its bytes), as `commit.rs` computes it.
fn table_lock_id(table: &str) -> i32 {
    let hash = table.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    i32::from_ne_bytes(hash.to_ne_bytes())
}

/// Whether a write through a backend whose lock classes start at `first` waits for an
/// advisory lock that the application holds on the table's id in class `held`.
async fn write_waits(table: &TestTable, first: i32, held: i32) -> bool {
    let backend = PostgresBackend::builder(&url())
        .table(table.name())
        .advisory_lock_classes(first)
        .operation_timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    let map: Map = PersistentMap::new(backend).await.unwrap();
    let mut application = admin().await;
    let transaction = application.transaction().await.unwrap();
    transaction
        .execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&held, &table_lock_id(table.name())],
        )
        .await
        .unwrap();
    let start = Instant::now();
    let written = map.insert("k".into(), 1).await;
    transaction.rollback().await.unwrap();
    match written {
        Ok(_) => false,
        Err(err) => {
            assert!(err.to_string().contains("lock timeout"), "{err}");
            assert!(start.elapsed() >= Duration::from_millis(200), "{err}");
            true
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_advisory_lock_classes_are_configurable() {
    const MINE: i32 = 0x4d50;
    let table = TestTable::new("lock_classes");
    // The table's lock is in the second class: the default's 28782, or MINE + 1.
    assert!(write_waits(&table, 0x706d, 0x706e).await);
    assert!(!write_waits(&table, MINE, 0x706e).await);
    assert!(write_waits(&table, MINE, MINE + 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_go_to_the_search_path_and_a_role_without_create_uses_tables_made_for_it() {
    let admin = admin().await;
    let (schema, role) = (
        format!("pm_ops_{}", std::process::id()),
        format!("pm_ops_role_{}", std::process::id()),
    );
    let own_tables = "persistent_map_revisions, persistent_map_log, persistent_map_tables";
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; DROP ROLE IF EXISTS {role}; \
             CREATE SCHEMA {schema}; CREATE ROLE {role} LOGIN"
        ))
        .await
        .unwrap();
    let url_in = |user: Option<&str>| {
        let mut url = with_parameter(&url(), "options", &format!("-c%20search_path%3D{schema}"));
        if let Some(user) = user {
            url = url.replacen("postgres@", &format!("{user}@"), 1);
        }
        url
    };
    // The owner's first open makes the table and the crate's tables in the schema.
    let owner: Map = PersistentMap::new(
        PostgresBackend::with_table(&url_in(None), "visits")
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    owner.insert("a".into(), 1).await.unwrap();
    for relation in ["visits", "persistent_map_log", "persistent_map_revisions"] {
        let found: bool = admin
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("{schema}.{relation}")],
            )
            .await
            .unwrap()
            .get(0);
        assert!(found, "{schema}.{relation}");
    }

    // A role with only USAGE and row rights works on those tables...
    admin
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {schema} TO {role}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.visits TO {role}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {role}",
            own_tables
                .split(", ")
                .map(|table| format!("{schema}.{table}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await
        .unwrap();
    let limited: Map = PersistentMap::new(
        PostgresBackend::with_table(&url_in(Some(&role)), "visits")
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(limited.get("a"), Some(1));
    limited.insert("b".into(), 2).await.unwrap();
    // ... but cannot create a table, nor give one the column `expires_at`.
    let err = PostgresBackend::with_table(&url_in(Some(&role)), "other")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    let err = limited
        .insert_with_ttl("c".into(), 3, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("owner"), "{err}");
    drop((owner, limited));
    admin
        .batch_execute(&format!(
            "DROP SCHEMA {schema} CASCADE; DROP OWNED BY {role}; DROP ROLE {role}"
        ))
        .await
        .unwrap();
}
