//! The change log: which keys each commit wrote, so that the other instances re-read just
//! those keys, and a map's position in it.
//!
//! PostgreSQL sequences are not commit-ordered (a transaction can take a number and commit after
//! one that took a later number), so a log numbered by a sequence could not be read past a
//! point. Instead every writing transaction bumps its table's row in
//! `persistent_map_revisions`, as the last statement before `COMMIT`: the row lock it takes
//! makes the transactions of one table commit in the order of their revisions, so a reader that
//! sees revision `n` committed sees every revision before it. The transaction logs its keys
//! under that revision in `persistent_map_log` (one `NULL` key for a clear or for more than
//! [`MAX_LOGGED_KEYS`] keys: "anything"), with the id of the map that wrote them (its origin).
//!
//! A map's position is the revision it has applied (with the backend's epoch and when it last
//! reloaded, see [`Position`]). Catching up reads the log rows of later revisions written by
//! other maps, joined with what the table holds under their keys now, in one statement: one
//! round trip, and one snapshot, so a value read is never older than the log row that named its
//! key, and the revision read is exactly what was read up to. Old rows are pruned in bounded
//! batches by the commits themselves; a position older than what was pruned is answered with a
//! full reload.

use super::session::RawRow;
use crate::ChangePosition;

/// Creates what the log needs if it is missing (under the setup lock: concurrent
/// `CREATE ... IF NOT EXISTS` can fail).
pub(super) const CREATE: &str = "\
    CREATE TABLE IF NOT EXISTS persistent_map_revisions (\
        table_name TEXT PRIMARY KEY, rev BIGINT NOT NULL, pruned BIGINT NOT NULL DEFAULT 0);\
    CREATE TABLE IF NOT EXISTS persistent_map_log (\
        table_name TEXT NOT NULL, rev BIGINT NOT NULL, key TEXT, origin BIGINT NOT NULL);\
    CREATE INDEX IF NOT EXISTS persistent_map_log_by_table ON persistent_map_log (table_name, rev);\
    CREATE TABLE IF NOT EXISTS persistent_map_tables (\
        table_name TEXT PRIMARY KEY, key_layout TEXT NOT NULL);";

/// Whether any of the crate's own tables is missing.
pub(super) const MISSING: &str = "SELECT to_regclass('persistent_map_revisions') IS NULL \
     OR to_regclass('persistent_map_log') IS NULL \
     OR to_regclass('persistent_map_tables') IS NULL";

/// `$1` the table: its revision row, made if missing.
pub(super) const ADD_TABLE: &str =
    "INSERT INTO persistent_map_revisions (table_name, rev, pruned) \
     VALUES ($1, 0, 0) ON CONFLICT (table_name) DO NOTHING";

/// `$1` the table, `$2` the keys (`NULL`: anything), `$3` their origins, `$4` the writes the
/// announcement carries (`NULL`: none, see `notify.rs`): bumps the revision (taking its row lock
/// until `COMMIT`), logs the keys under it, announces it, and returns it.
pub(super) const LOG: &str = "\
    WITH bumped AS (\
        INSERT INTO persistent_map_revisions AS r (table_name, rev, pruned) VALUES ($1, 1, 0) \
        ON CONFLICT (table_name) DO UPDATE SET rev = r.rev + 1 RETURNING rev), \
    logged AS (\
        INSERT INTO persistent_map_log (table_name, rev, key, origin) \
        SELECT $1, bumped.rev, u.key, u.origin \
        FROM bumped, unnest($2::text[], $3::int8[]) AS u(key, origin)) \
    SELECT bumped.rev, pg_notify($1, 'c' || bumped.rev || coalesce(':' || $4::text, '')) \
    FROM bumped";

/// `$1` the table, `$2` how many revisions to keep, `$3` the most rows to delete: deletes log
/// rows of older revisions and records the newest revision deleted.
pub(super) const PRUNE: &str = "\
    WITH gone AS (\
        DELETE FROM persistent_map_log WHERE ctid = ANY(ARRAY(\
            SELECT ctid FROM persistent_map_log \
            WHERE table_name = $1 \
              AND rev <= (SELECT rev FROM persistent_map_revisions WHERE table_name = $1) - $2 \
            LIMIT $3)) \
        RETURNING rev) \
    UPDATE persistent_map_revisions SET pruned = greatest(pruned, (SELECT max(rev) FROM gone)) \
    WHERE table_name = $1 AND EXISTS (SELECT 1 FROM gone)";

/// `$1` the table: its revision now (no row: 0).
pub(super) const REVISION: &str =
    "SELECT coalesce((SELECT rev FROM persistent_map_revisions WHERE table_name = $1), 0)";

/// The statement that reads the changes of the table `quoted` (its name, quoted; `expiring`:
/// it has the column `expires_at`). `$1` the table's name, `$2` the position's revision, `$3`
/// the asking map's origin, `$4` the most log rows to read, `$5` now (Unix ms): the revision
/// row, and each key others logged after `$2` (once; a `NULL` key is "anything") with how many
/// log rows named it and the table's live row under it now (`t.key` `NULL`: none) with its
/// deadline, all in one snapshot. A row whose count is `NULL` is the revision row alone
/// (nothing logged). The last column says whether the table has the column `expires_at` in
/// that snapshot (the statement holds the table's lock from before its snapshot is taken, so a
/// column added by another instance is either seen or waits for the statement): a connection
/// whose statements are for the other layout reads again after preparing them anew.
pub(super) fn since(quoted: &str, expiring: bool) -> String {
    // A table without the column still mentions `$5`, so that both take the same parameters.
    let (deadline, columns, live) = if expiring {
        (
            "t.expires_at",
            "t.key, t.value, t.expires_at",
            "AND (t.expires_at IS NULL OR t.expires_at > $5::int8)",
        )
    } else {
        ("NULL::int8", "t.key, t.value", "AND $5::int8 IS NOT NULL")
    };
    // Each logged key's row is looked up by the primary key (the `LIMIT` keeps the planner
    // from turning the lookups into a scan of the whole table, which it chose for small
    // tables: 0.34 ms against 0.10 ms for one key of a 1,000-row table).
    format!(
        "SELECT r.rev, r.pruned, l.logged, l.key, t.key, t.value::text, {deadline}, \
             EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(quote_ident($1)) \
                     AND attname = 'expires_at' AND NOT attisdropped) \
         FROM persistent_map_revisions r \
         LEFT JOIN (\
             SELECT key, count(*) AS logged FROM (\
                 SELECT key FROM persistent_map_log \
                 WHERE table_name = $1 AND rev > $2 AND origin <> $3 LIMIT $4) AS recent \
             GROUP BY key) AS l ON true \
         LEFT JOIN LATERAL (\
             SELECT {columns} FROM {quoted} t WHERE t.key = l.key {live} LIMIT 1) t ON true \
         WHERE r.table_name = $1"
    )
}

/// A commit of more keys than this logs one "anything" row: followers reload the table.
pub(super) const MAX_LOGGED_KEYS: usize = 65_536;

/// A map more keys than this behind reloads instead of reading them from the log.
pub(super) const MAX_CATCH_UP_ROWS: i64 = 100_000;

/// The log keeps the rows of about this many of each table's newest revisions.
pub(super) const REVISIONS_KEPT: i64 = 16_384;

/// Every this many commits of a session, its commit also prunes that many rows at most.
pub(super) const PRUNE_EVERY_COMMITS: u64 = 256;
pub(super) const PRUNE_BATCH_ROWS: i64 = 10_000;

/// The log since a revision, and the rows of the keys it names, as read.
#[derive(Debug, Default)]
pub(super) struct LogRead {
    /// Whether the table has a revision row (a table written by this crate does).
    pub(super) known: bool,
    pub(super) rev: i64,
    pub(super) pruned: i64,
    /// How many log rows were read (at most [`MAX_CATCH_UP_ROWS`]).
    pub(super) rows: i64,
    /// The keys logged since, by others, each once (`None`: anything), with the table's row
    /// under each (`None`: no row).
    pub(super) keys: Vec<(Option<String>, Option<RawRow>)>,
}

/// What the log says changed since a revision.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Logged {
    /// These key texts, sorted and distinct, possibly none, with the table's row under each
    /// (`None`: no row) as of the revision read.
    Entries(Vec<(String, Option<RawRow>)>),
    /// Anything may have changed: reload.
    Unknown,
}

impl LogRead {
    /// What changed after `since`, judged from this read.
    pub(super) fn since(self, since: i64) -> Logged {
        let truncated = self.rows >= MAX_CATCH_UP_ROWS;
        // A revision below the position: the bookkeeping was reset by hand.
        if !self.known || since > self.rev || since < self.pruned || truncated {
            return Logged::Unknown;
        }
        let mut entries = Vec::with_capacity(self.keys.len());
        for (key, row) in self.keys {
            match key {
                Some(key) => entries.push((key, row)),
                None => return Logged::Unknown,
            }
        }
        entries.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        Logged::Entries(entries)
    }
}

/// A map's place, packed in a [`ChangePosition`]: the revision applied, the backend's epoch
/// when it was taken (see `notify.rs`), and when (tenths of a second since the backend was made) the map
/// last reloaded everything, for the periodic reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    pub(super) rev: i64,
    pub(super) epoch: u32,
    pub(super) reloaded_at: u32,
}

impl Position {
    pub(super) fn to_change_position(self) -> ChangePosition {
        ChangePosition::new(
            (u128::from(self.rev as u64) << 64)
                | (u128::from(self.epoch) << 32)
                | u128::from(self.reloaded_at),
        )
    }

    pub(super) fn from_change_position(position: ChangePosition) -> Self {
        let bits = position.get();
        Self {
            rev: (bits >> 64) as u64 as i64,
            epoch: (bits >> 32) as u32,
            reloaded_at: bits as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_survives_its_packing() {
        for position in [
            Position {
                rev: 0,
                epoch: 0,
                reloaded_at: 0,
            },
            Position {
                rev: i64::MAX,
                epoch: u32::MAX,
                reloaded_at: 77,
            },
        ] {
            let packed = position.to_change_position();
            assert_eq!(Position::from_change_position(packed), position);
        }
    }

    /// A read of `keys` (the key, whether the table has a row under it), one log row each.
    fn read(rev: i64, pruned: i64, keys: &[(Option<&str>, bool)]) -> LogRead {
        LogRead {
            known: true,
            rev,
            pruned,
            rows: keys.len() as i64,
            keys: keys
                .iter()
                .map(|&(key, stored)| {
                    let row = key
                        .filter(|_| stored)
                        .map(|key| (key.to_owned(), Some(format!("\"{key}\"")), None));
                    (key.map(str::to_owned), row)
                })
                .collect(),
        }
    }

    #[test]
    fn the_log_names_keys_with_their_rows_and_reloads_when_it_cannot_say() {
        let changed = read(9, 0, &[(Some("b"), false), (Some("a"), true)]).since(5);
        let a_row = ("a".to_owned(), Some("\"a\"".to_owned()), None);
        assert_eq!(
            changed,
            Logged::Entries(vec![("a".into(), Some(a_row.clone())), ("b".into(), None)])
        );
        assert_eq!(read(9, 0, &[]).since(9), Logged::Entries(vec![]));
        let anything = read(9, 0, &[(Some("a"), true), (None, false)]);
        assert_eq!(anything.since(5), Logged::Unknown);
        // Pruned past the position, or reset below it, or never written by us.
        assert_eq!(read(9, 6, &[]).since(5), Logged::Unknown);
        assert_eq!(
            read(9, 5, &[(Some("a"), true)]).since(5),
            Logged::Entries(vec![("a".into(), Some(a_row))])
        );
        assert_eq!(read(3, 0, &[]).since(5), Logged::Unknown);
        assert_eq!(LogRead::default().since(0), Logged::Unknown);
        // As many log rows as a catch-up reads: more may follow, so reload.
        let mut full = read(9, 0, &[(Some("a"), true)]);
        full.rows = MAX_CATCH_UP_ROWS;
        assert_eq!(full.since(5), Logged::Unknown);
    }
}
