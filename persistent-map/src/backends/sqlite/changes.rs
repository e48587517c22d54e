//! What other writers changed: the change log's reading side.
//!
//! Every transaction of this crate logs the keys it wrote in `persistent_map_log` (see
//! `writer.rs`), numbered in commit order (SQLite commits one transaction at a time). A map's
//! place in that history is the last number it has applied, with the file's
//! `PRAGMA data_version` at the time: the version moves when any other connection commits, so
//! when it moved and no other connection logged anything, a program that does not log (the
//! `sqlite3` shell, a script, an older version of this crate) committed, and the map reloads.
//! (When another process of this crate logged in the same interval, such a commit goes
//! unnoticed until the next one: `load` catches it.)

use rusqlite::OptionalExtension;

use super::writer::Writer;
use crate::{ChangePosition, Result};

/// Where the file's history stands, for one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Place {
    /// The newest log row's number (0: none).
    seq: i64,
    /// The writer connection's `PRAGMA data_version`.
    data_version: i64,
}

impl Place {
    pub(super) fn to_position(self) -> ChangePosition {
        let high = u128::from(self.seq as u64) << 64;
        ChangePosition::new(high | u128::from(self.data_version as u64))
    }

    pub(super) fn from_position(position: ChangePosition) -> Self {
        let bits = position.get();
        Self {
            seq: (bits >> 64) as u64 as i64,
            data_version: bits as u64 as i64,
        }
    }
}

/// What the log says changed in a table since a place.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Logged {
    /// These key texts (written by other backends than the asking one), possibly none.
    Keys(Vec<String>),
    /// Anything may have changed.
    Unknown,
}

/// Where the file's history stands now.
pub(super) async fn place(writer: &Writer) -> Result<Place> {
    writer.run(|connection| current(connection)).await
}

fn current(connection: &rusqlite::Connection) -> rusqlite::Result<Place> {
    let data_version = connection
        .prepare_cached("PRAGMA data_version")?
        .query_row([], |row| row.get(0))?;
    let seq = connection
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM persistent_map_log")?
        .query_row([], |row| row.get(0))?;
    Ok(Place { seq, data_version })
}

/// What changed in `table` after `since`, written by backends other than `origin`, and the
/// place to ask from next time.
pub(super) async fn since(
    writer: &Writer,
    table: &str,
    origin: i64,
    since: Option<Place>,
) -> Result<(Logged, Place)> {
    let table = table.to_owned();
    let me = writer.id();
    writer
        .run(move |connection| {
            let now = current(connection)?;
            let Some(since) = since else {
                return Ok((Logged::Unknown, now));
            };
            let oldest: Option<i64> = connection
                .prepare_cached("SELECT min(seq) FROM persistent_map_log")?
                .query_row([], |row| row.get(0))
                .optional()?
                .flatten();
            let pruned_past = oldest.is_some_and(|oldest| since.seq < oldest - 1);
            // A newest row older than the place: the log was emptied by hand.
            if since.seq > now.seq || pruned_past {
                return Ok((Logged::Unknown, now));
            }
            if now.data_version != since.data_version {
                // Another connection committed. If none logged anything since, it was a
                // program that does not log, and what it changed is unknown.
                let logged_by_others: i64 = connection
                    .prepare_cached(
                        "SELECT count(*) FROM persistent_map_log \
                         WHERE seq > ?1 AND seq <= ?2 AND writer <> ?3",
                    )?
                    .query_row((since.seq, now.seq, me), |row| row.get(0))?;
                if logged_by_others == 0 {
                    return Ok((Logged::Unknown, now));
                }
            }
            let mut select = connection.prepare_cached(
                "SELECT key FROM persistent_map_log \
                 WHERE table_name = ?1 AND seq > ?2 AND seq <= ?3 AND origin <> ?4",
            )?;
            let mut rows = select.query((&table, since.seq, now.seq, origin))?;
            let mut keys = Vec::new();
            while let Some(row) = rows.next()? {
                match row.get::<_, Option<String>>(0)? {
                    Some(key) => keys.push(key),
                    None => return Ok((Logged::Unknown, now)),
                }
            }
            keys.sort_unstable();
            keys.dedup();
            Ok((Logged::Keys(keys), now))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_survives_its_position() {
        for place in [
            Place {
                seq: 0,
                data_version: 1,
            },
            Place {
                seq: 123_456_789,
                data_version: i64::MAX,
            },
        ] {
            assert_eq!(Place::from_position(place.to_position()), place);
        }
    }
}
