//! What the PostgreSQL backend reports through `tracing`, shown by a subscriber: the connect,
//! one debug event per commit and per load, and warnings for faults.
//!
//! It needs a PostgreSQL server and the feature `postgres`:
//!
//! ```text
//! cargo run -p persistent-map-examples --features postgres --example logging -- postgres://postgres@127.0.0.1:5432/test
//! ```
//!
//! The events go to stderr, what the example does to stdout. It uses the table
//! `logging_example` and empties it when done.

use persistent_map::{postgres::PostgresBackend, PersistentMap};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(url) = std::env::args().nth(1) else {
        return Err("usage: logging POSTGRES_URL".into());
    };
    // The library only emits events; the application decides where they go.
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with_writer(std::io::stderr)
        .init();

    let backend = PostgresBackend::with_table(&url, "logging_example").await?;
    let map: PersistentMap<String, u32, PostgresBackend> = PersistentMap::new(backend).await?;

    // Written concurrently, so the backend may commit them together: see `requests` and `rows`
    // in the commit events.
    let writers: Vec<_> = (1..=3)
        .map(|n| {
            let map = map.clone();
            tokio::spawn(async move { map.insert(format!("key-{n}"), n).await })
        })
        .collect();
    for writer in writers {
        writer.await??;
    }
    println!("stored {} entries", map.len());
    map.clear().await?;
    println!("cleared the table");
    Ok(())
}
