//! Transactions across maps: the tables served by one session (one connection to a server and
//! database) commit together, as one request of the session.
//!
//! A transaction's parts go to the session as one write request with a part per table, so it
//! is committed by the same code as every other write (see `commit.rs`): its keys' advisory
//! locks are taken with the rest of its group's, in the one global order, all its conditions
//! are checked under them, and either every part is written and logged, or none is. A
//! transaction can share its commit with ordinary writes (group commit).

use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::oneshot;

use super::registry::SessionHandle;
use super::session::{Attached, Command, Outcome, Write};
use super::{encode, PostgresBackend};
use crate::map::Answer;
use crate::{PersistentError, Result};

/// The session a transaction commits through; two maps can commit together if theirs is the
/// same session (backends opened with the same connection string and timeouts, so on the same
/// server and database).
#[derive(Clone)]
pub(crate) struct TransactionSession {
    session: Arc<SessionHandle>,
    /// `postgres://host:port/database`, as errors name it.
    database: String,
}

/// One map's share of a transaction: its table, conditions and writes.
pub(crate) struct TransactionPart {
    table: Arc<Attached>,
    write: Write,
}

impl TransactionSession {
    pub(crate) fn same(&self, other: &TransactionSession) -> bool {
        Arc::ptr_eq(&self.session, &other.session)
    }

    /// The database, and which connection of the process serves it: two backends on one
    /// database opened with different timeouts have connections of their own, and cannot
    /// commit together.
    pub(crate) fn describe(&self) -> String {
        format!(
            "PostgreSQL database {} (connection {:p})",
            self.database,
            Arc::as_ptr(&self.session)
        )
    }

    /// Commits every part in one transaction, if every part's conditions hold; what the
    /// storage did with each.
    pub(crate) async fn commit(
        &self,
        parts: Vec<TransactionPart>,
        want_previous: bool,
    ) -> Result<Vec<Answer>> {
        let Some(first) = parts.first().map(|part| Arc::clone(&part.table)) else {
            return Ok(Vec::new());
        };
        let (done, committed) = oneshot::channel();
        let parts = parts
            .into_iter()
            .map(|mut part| {
                part.write.want_previous = want_previous;
                (part.table, part.write)
            })
            .collect();
        let stopped = || {
            PersistentError::Backend(
                format!(
                    "the PostgreSQL session for {} has stopped; the write was not committed",
                    self.database
                )
                .into(),
            )
        };
        (self.session).send(&first.target, Command::Write { parts, done }, stopped)?;
        Ok(answers(committed.await.map_err(|_| stopped())??))
    }
}

/// What a request did, part by part.
pub(super) fn answers(outcome: Outcome) -> Vec<Answer> {
    match outcome {
        Outcome::Applied { previous } => previous
            .into_iter()
            .map(|previous| Answer::Applied { previous })
            .collect(),
        Outcome::Conflict { current } => current
            .into_iter()
            .map(|current| Answer::Conflict {
                current: current
                    .into_iter()
                    .map(|now| now.map(|(json, at)| (json, super::expiry::deadline_of(at))))
                    .collect(),
            })
            .collect(),
    }
}

/// `write` as the session executes it on `table`, by the map with id `origin`.
pub(super) fn write_part<K, V>(
    table: &str,
    write: &crate::map::Write<K, V>,
    origin: u64,
) -> Result<Write>
where
    K: ToString + Sync,
    V: Serialize + DeserializeOwned + Sync,
{
    Ok(Write {
        conditions: write
            .conditions
            .iter()
            .map(|c| (c.key.to_string(), c.expected.clone()))
            .collect(),
        ops: crate::backends::encode::encode_all(&write.ops, |op| encode(table, op))?,
        want_previous: write.want_previous,
        // The map's id, as the log stores it: the same 64 bits.
        origin: origin as i64,
        canonical: crate::backends::encode::canonical_json::<V>,
    })
}

impl crate::map::sealed::Sealed for PostgresBackend {}

impl PostgresBackend {
    /// Where a map on this backend writes.
    pub(super) fn target<K, V>(&self) -> crate::__private::TransactionTarget<K, V>
    where
        K: ToString + Sync,
        V: Serialize + DeserializeOwned + Sync,
    {
        let table = self.table_ref();
        crate::map::TransactionTarget {
            store: crate::map::Store::Postgres(TransactionSession {
                session: Arc::clone(&self.shared.session),
                database: self.shared.database.clone(),
            }),
            prepare: Box::new(move |write, origin| {
                let write = write_part(&table.target.table, write, origin)?;
                Ok(crate::map::Prepared::Postgres(TransactionPart {
                    table: Arc::clone(&table),
                    write,
                }))
            }),
            name: self.table().to_owned(),
        }
    }
}
