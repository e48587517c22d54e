//! The layout fence: what the writer checks at the start of each transaction because another
//! process may have changed it meanwhile.

use rusqlite::{Connection, OptionalExtension};

/// Keeps typed writers from writing keys in a layout that another process has since migrated
/// the table away from (`migrate_keys`). Checking `persistent_map_tables` costs a query, so a
/// table's layout is checked again only after another connection committed to the file
/// (`PRAGMA data_version` moved); in this process `migrate_keys` refuses while a map on the
/// table is open.
#[derive(Default)]
pub(super) struct LayoutFence {
    /// `data_version` when `confirmed` was last valid.
    checked_at: Option<i64>,
    /// (table, layout) pairs found recorded since (a few: one per table and key type).
    confirmed: Vec<(String, &'static str)>,
    /// Which tables have the column `expires_at`, as of the schema this transaction sees.
    /// (Kept here because it is checked at the same moments, for the same reason: another
    /// process may change a table under this writer.)
    pub(super) expiry_columns: super::expiry::ExpiryColumns,
    /// Whether no other connection had committed to the file between this one's last two
    /// transactions: then a group may hold the file's write lock while it gathers.
    pub(super) alone: bool,
    /// Log rows added per table, to prune while idle.
    pub(super) log_backlog: super::log::Backlog,
}

impl LayoutFence {
    /// Called at the start of each transaction.
    pub(super) fn begin(&mut self, connection: &Connection) -> rusqlite::Result<()> {
        let version: i64 = connection
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |row| row.get(0))?;
        self.alone = self.checked_at == Some(version);
        if self.checked_at != Some(version) {
            self.checked_at = Some(version);
            self.confirmed.clear();
        }
        self.expiry_columns.begin(connection)
    }

    /// The layout recorded for `table` if it is not `layout`; `None` if it is (or none is
    /// recorded, or the writer has no layout to check).
    pub(super) fn changed(
        &mut self,
        connection: &Connection,
        table: &str,
        layout: &'static str,
    ) -> rusqlite::Result<Option<String>> {
        let confirmed = |(name, confirmed): &(String, &str)| name == table && *confirmed == layout;
        if layout.is_empty() || self.confirmed.iter().any(confirmed) {
            return Ok(None);
        }
        let recorded: Option<String> = connection
            .prepare_cached("SELECT key_layout FROM persistent_map_tables WHERE table_name = ?1")?
            .query_row([table], |row| row.get(0))
            .optional()?;
        match recorded {
            Some(recorded) if recorded != layout => Ok(Some(recorded)),
            _ => {
                self.confirmed.push((table.to_owned(), layout));
                Ok(None)
            }
        }
    }
}
