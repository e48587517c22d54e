//! Transactions across maps: the tables served by one session (one connection to a server and
//! database) commit together, as one request of the session.
//!
//! A transaction's parts go to the session as one write request with a part per table, so it
//! is committed by the same code as every other write (see `commit.rs`): its keys' advisory
//! locks are taken with the rest of its group's, in the one global order, all its conditions
//! are checked under them, and either every part is written and logged, or none is. A
//! transaction can share its commit with ordinary writes (group commit).

use std::hash::Hash;
use std::str::FromStr;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::oneshot;

use super::registry::SessionHandle;
use super::session::{Attached, Command, Outcome, Write};
use super::{encode, PostgresBackend};
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

    /// Commits every part in one transaction, if every part's conditions hold; else writes
    /// nothing and returns, per part, per condition, what is stored.
    pub(crate) async fn commit(
        &self,
        parts: Vec<TransactionPart>,
    ) -> Result<Option<Vec<Vec<Option<String>>>>> {
        let (done, committed) = oneshot::channel();
        let parts = parts
            .into_iter()
            .map(|part| (part.table, part.write))
            .collect();
        let stopped = || {
            PersistentError::Backend(
                format!(
                    "the PostgreSQL session for {} has stopped; the transaction was not committed",
                    self.database
                )
                .into(),
            )
        };
        self.session
            .send(Command::Write { parts, done })
            .map_err(|()| stopped())?;
        match committed.await.map_err(|_| stopped())?? {
            Outcome::Applied { .. } => Ok(None),
            // The map reads the keys again, with their deadlines.
            Outcome::Conflict { current } => Ok(Some(
                current
                    .into_iter()
                    .map(|part| {
                        part.into_iter()
                            .map(|now| now.map(|(json, _)| json))
                            .collect()
                    })
                    .collect(),
            )),
        }
    }
}

impl crate::map::sealed::Sealed for PostgresBackend {}

/// Tables of one session commit together: a transaction is one write request of the session.
impl<K, V> crate::TransactionalBackend<K, V> for PostgresBackend
where
    K: Eq
        + Hash
        + Clone
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
        + ToString
        + FromStr,
    <K as FromStr>::Err: std::error::Error + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn __transaction_target(&self) -> crate::__private::TransactionTarget<K, V> {
        let table = self.table_ref();
        crate::map::TransactionTarget {
            store: crate::map::Store::Postgres(TransactionSession {
                session: Arc::clone(&self.shared.session),
                database: self.shared.database.clone(),
            }),
            prepare: Box::new(move |conditions, ops, origin, deadline| {
                let write = Write {
                    conditions: conditions
                        .iter()
                        .map(|c| (c.key.to_string(), c.expected.clone()))
                        .collect(),
                    ops: crate::backends::encode::encode_all(ops, |op| {
                        encode(&table.target.table, op, deadline)
                    })?,
                    want_previous: false,
                    // The map's id, as the log stores it: the same 64 bits.
                    origin: origin as i64,
                };
                Ok(crate::map::Prepared::Postgres(TransactionPart {
                    table: Arc::clone(&table),
                    write,
                }))
            }),
            name: self.table().to_owned(),
        }
    }
}
