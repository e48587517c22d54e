//! Expiry in PostgreSQL: the `expires_at` column, and reading and sweeping by it.
//!
//! `expires_at BIGINT` holds a row's deadline in Unix milliseconds of the writer's wall clock
//! (`NULL`: never). A table gains it in place (`ALTER TABLE ... ADD COLUMN IF NOT EXISTS`, with
//! a partial index over the rows that have a deadline) just before the first commit that saves
//! a value with a time to live to it, in a transaction of its own that holds the table's
//! advisory lock exclusively: the commits of every instance hold it shared, so none runs while
//! the column appears, and two instances adding it at once take turns (the second finds it
//! there). A table that never sees a time to live keeps its two columns.
//!
//! Each connection prepares a table's statements for the layout it found (see `connect.rs`),
//! and checks that layout where it matters: every commit reads the tables' columns after
//! taking their advisory locks, and every load and key read after locking the table against
//! schema changes (`LOCK TABLE ... IN ACCESS SHARE MODE`); statements prepared for the other
//! layout are prepared again and the work is redone. So an instance that attached a table
//! before another instance gave it the column never writes or reads it as if it had none.
//!
//! Every read compares `expires_at` with the reading instance's wall clock, passed as a
//! parameter (as SQLite's reads use the process's clock): a row whose deadline is at or before
//! that instant is absent to loads, to key reads, and to the conditions and previous values of
//! writes. Instances whose clocks disagree disagree on expiry by as much: one whose clock runs
//! ahead sees entries expire early, one behind sees them late, and a sweep deletes what the
//! sweeping instance's clock says has expired.

use super::connect::Live;
use crate::Deadline;

/// `$1` table names: the ones that have the column `expires_at` (resolved as `to_regclass`
/// resolves a name on the connection's search path).
pub(super) const COLUMNS: &str = "\
    SELECT n FROM unnest($1::text[]) AS n \
    WHERE EXISTS (SELECT 1 FROM pg_attribute \
        WHERE attrelid = to_regclass(quote_ident(n)) AND attname = 'expires_at' \
          AND NOT attisdropped)";

/// This instance's wall clock in Unix milliseconds, as the column holds deadlines.
pub(super) fn now_sql() -> i64 {
    i64::try_from(crate::deadline::now_millis()).unwrap_or(i64::MAX)
}

/// A deadline as the column holds it.
pub(super) fn deadline_to_sql(deadline: Option<Deadline>) -> Option<i64> {
    deadline.map(|deadline| i64::try_from(deadline.unix_millis()).unwrap_or(i64::MAX))
}

/// The deadline in an `expires_at` cell; a negative one (written by another program) is none.
pub(super) fn deadline_of(cell: Option<i64>) -> Option<Deadline> {
    cell.and_then(|millis| u64::try_from(millis).ok())
        .and_then(Deadline::from_unix_millis)
}

/// The name of `table`'s partial index on `expires_at`. PostgreSQL cuts names at 63 bytes,
/// which could make two long tables' names one (and `CREATE INDEX IF NOT EXISTS` would then
/// skip the second): a long name is cut and told apart by a hash of the whole.
fn index_name(table: &str) -> String {
    let name = format!("persistent_map_expiry_{table}");
    if name.len() <= 63 {
        return name;
    }
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    // Table names are ASCII, so any cut is at a character boundary.
    format!("{}_{hash:016x}", &name[..46])
}

/// Gives `table` the column `expires_at` and its partial index if it has not got them, in a
/// transaction of its own under the table's exclusive advisory lock (`lock_id`), then prepares
/// the table's statements for the new layout.
pub(super) async fn add_column(
    live: &mut Live,
    table: &str,
    lock_id: i32,
) -> std::result::Result<(), tokio_postgres::Error> {
    let quoted = format!("\"{table}\"");
    let index = index_name(table);
    let result = async {
        live.client.query(&live.statements.begin, &[]).await?;
        live.client
            .query(&live.statements.lock_table, &[&lock_id])
            .await?;
        live.client
            .batch_execute(&format!(
                "ALTER TABLE {quoted} ADD COLUMN IF NOT EXISTS expires_at BIGINT; \
                 CREATE INDEX IF NOT EXISTS \"{index}\" ON {quoted} (expires_at) \
                 WHERE expires_at IS NOT NULL"
            ))
            .await?;
        live.client.query(&live.statements.commit, &[]).await
    }
    .await;
    if let Err(error) = result {
        let _ = live.client.query(&live.statements.rollback, &[]).await;
        return Err(error);
    }
    tracing::info!(table = %table, "added the column expires_at for entries with a time to live");
    super::connect::reprepare_table(live, table, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_fit_postgres_and_stay_apart() {
        assert_eq!(index_name("sessions"), "persistent_map_expiry_sessions");
        let (a, b) = ("a".repeat(62) + "x", "a".repeat(62) + "y");
        let (index_a, index_b) = (index_name(&a), index_name(&b));
        assert!(index_a.len() <= 63 && index_b.len() <= 63);
        assert_ne!(index_a, index_b);
    }

    #[test]
    fn deadlines_round_trip_and_negative_cells_are_none() {
        let deadline = Deadline::from_unix_millis(1_700_000_000_123).unwrap();
        assert_eq!(deadline_of(deadline_to_sql(Some(deadline))), Some(deadline));
        assert_eq!(deadline_of(None), None);
        assert_eq!(deadline_of(Some(-5)), None);
    }
}
