//! The record of each table's key layout, and moving stored keys to a new layout.
//!
//! A derived key type describes how its text is laid out ([`PersistentKey::KEY_LAYOUT`]). The
//! first typed open of a table records that layout in `persistent_map_tables`; later typed opens
//! must match it, so keys are never parsed by a key type laid out differently from the one that
//! wrote them.

use std::collections::HashSet;
use std::path::Path;

use rusqlite::TransactionBehavior;

use super::load::{self, RawRow};
use super::SqliteBackend;
use crate::{PersistentError, PersistentKey, Result};

/// Rewrites every key stored by the key type `Old` as the key `convert` makes of it, of type
/// `New`, in one transaction, and records `New`'s layout. Returns how many entries moved.
///
/// This is the way to change a derived key type whose text is already on disk: keep the old
/// type (renamed, with `#[persistent_key(table = "...")]` naming the table it wrote), derive the
/// new one, and migrate before opening maps on these tables. The entries move from
/// `Old::TABLE_NAME` to `New::TABLE_NAME` (they may be the same table); values are copied as
/// they are stored. If an old key does not parse, or two old keys convert to the same new key,
/// it fails and changes nothing.
///
/// A map open on either table in this process would go on writing keys in the old layout, so
/// migrating then is refused with [`PersistentError::TableInUse`]: drop those maps first. A map
/// open on the table in another process refuses its next write with
/// [`PersistentError::IncompatibleKeyLayout`] instead of writing the old layout.
///
/// ```
/// use persistent_map::sqlite::{migrate_keys, SqliteBackend};
/// use persistent_map::{PersistentError, PersistentKey, PersistentMap};
/// use serde::{Deserialize, Serialize};
///
/// /// The key as version 1 of the app wrote it.
/// #[derive(PersistentKey, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
/// #[persistent_key(table = "sessions")]
/// struct SessionKeyV1 { user: u64, tenant: String }
///
/// /// The key now: fields swapped, so the old texts would misparse.
/// #[derive(PersistentKey, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
/// #[persistent_key(table = "sessions")]
/// struct SessionKey { tenant: String, user: u64 }
///
/// # persistent_map::__private::run_example(Box::pin(async {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("app.db");
/// let old: PersistentMap<SessionKeyV1, u32, SqliteBackend> = PersistentMap::open(&path).await?;
/// old.insert(SessionKeyV1 { user: 42, tenant: "acme".into() }, 7).await?;
/// drop(old);
///
/// // The new layout is refused until the stored keys are migrated...
/// let refused = PersistentMap::<SessionKey, u32, SqliteBackend>::open(&path).await;
/// assert!(matches!(refused, Err(PersistentError::IncompatibleKeyLayout { .. })));
///
/// let moved = migrate_keys(&path, |old: SessionKeyV1| SessionKey { tenant: old.tenant, user: old.user }).await?;
/// assert_eq!(moved, 1);
/// let map: PersistentMap<SessionKey, u32, SqliteBackend> = PersistentMap::open(&path).await?;
/// assert_eq!(map.get(&SessionKey { tenant: "acme".into(), user: 42 }), Some(7));
/// # Ok(()) }));
/// ```
pub async fn migrate_keys<Old, New>(
    path: impl AsRef<Path>,
    mut convert: impl FnMut(Old) -> New,
) -> Result<usize>
where
    Old: PersistentKey,
    New: PersistentKey,
{
    let old = SqliteBackend::with_table(&path, Old::TABLE_NAME).await?;
    let new = SqliteBackend::with_table(&path, New::TABLE_NAME).await?;
    for (backend, table) in [(&old, Old::TABLE_NAME), (&new, New::TABLE_NAME)] {
        if crate::map::is_open(&backend.storage_id_of(table)) {
            return Err(PersistentError::TableInUse {
                table: table.to_owned(),
                path: path.as_ref().to_path_buf(),
            });
        }
    }
    let rows = load::raw_rows(&old.writer, Old::TABLE_NAME).await?;

    let mut moved: Vec<RawRow> = Vec::with_capacity(rows.len());
    let mut new_keys = HashSet::with_capacity(rows.len());
    for (old_key, value, expires_at) in rows {
        let key = old_key
            .parse::<Old>()
            .map_err(|source| PersistentError::InvalidStoredKey {
                table: Old::TABLE_NAME.to_owned(),
                key: old_key.clone(),
                source: Box::new(source),
            })?;
        let key = convert(key).to_string();
        if !new_keys.insert(key.clone()) {
            return Err(PersistentError::DuplicateKey {
                table: New::TABLE_NAME.to_owned(),
                key,
            });
        }
        moved.push((key, value, expires_at));
    }

    let count = moved.len();
    let (old_table, new_table) = (old.table.clone(), new.table.clone());
    // Nobody's: every map on these tables, in any process, must hear of it.
    let origin = 0;
    let layout = New::KEY_LAYOUT;
    new.writer
        .run(move |connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            transaction.execute(&old_table.delete_all, [])?;
            // Deadlines move with their rows; a table gains the column only if one has one.
            let expiring = moved.iter().any(|(_, _, expires_at)| expires_at.is_some());
            if expiring && !super::expiry::has_column(&transaction, &new_table.name)? {
                super::expiry::add_column(&transaction, &new_table.name)?;
            }
            if expiring {
                let mut insert = transaction.prepare(&new_table.upsert_expiring)?;
                for (key, value, expires_at) in &moved {
                    insert.execute((key, value, expires_at))?;
                }
            } else {
                let mut insert = transaction.prepare(&new_table.upsert)?;
                for (key, value, _) in &moved {
                    insert.execute((key, value))?;
                }
            }
            transaction.execute(
                "DELETE FROM persistent_map_tables WHERE table_name IN (?1, ?2)",
                (&old_table.name, &new_table.name),
            )?;
            if !layout.is_empty() {
                transaction.execute(
                    "INSERT INTO persistent_map_tables (table_name, key_layout) VALUES (?1, ?2)",
                    (&new_table.name, layout),
                )?;
            }
            // Every key of both tables may have changed: maps elsewhere reload them.
            for table in [&old_table.name, &new_table.name] {
                transaction.execute(
                    "INSERT INTO persistent_map_log (table_name, key, origin, writer) \
                     VALUES (?1, NULL, ?2, 0)",
                    (table, origin),
                )?;
            }
            transaction.commit()
        })
        .await?;
    tracing::info!(
        path = %path.as_ref().display(),
        from = Old::TABLE_NAME,
        to = New::TABLE_NAME,
        entries = count,
        "migrated stored keys to a new layout"
    );
    Ok(count)
}
