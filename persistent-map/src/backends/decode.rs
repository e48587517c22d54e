//! Turning stored text back into keys and values, with errors that name the table and the raw
//! key. Every backend that stores keys as text and values as JSON decodes through here.

use std::str::FromStr;

use serde::de::DeserializeOwned;

use crate::error::NonCanonicalKey;
use crate::{PersistentError, Result};

/// Parses the key text `key` of a row of `table`, and checks that it is the key's own text.
///
/// A text that parses but is not what the key writes (`007` for the number 7) is refused: the
/// map would hold the key 7, and its writes would go to the row `7`, leaving `007` in place to
/// come back (or clash with `7`) on the next load.
pub(crate) fn decode_key<K>(table: &str, key: &str) -> Result<K>
where
    K: FromStr + ToString,
    <K as FromStr>::Err: std::error::Error + Send + Sync + 'static,
{
    let invalid = |source| PersistentError::InvalidStoredKey {
        table: table.to_owned(),
        key: key.to_owned(),
        source,
    };
    let parsed: K = key.parse().map_err(|source| invalid(Box::new(source)))?;
    let own = parsed.to_string();
    if own != key {
        return Err(invalid(Box::new(NonCanonicalKey { own })));
    }
    Ok(parsed)
}

/// Deserializes the JSON `value` stored under the key text `key` in `table`.
pub(crate) fn decode_value<V: DeserializeOwned>(table: &str, key: &str, value: &str) -> Result<V> {
    serde_json::from_str(value).map_err(|source| PersistentError::InvalidStoredValue {
        table: table.to_owned(),
        key: key.to_owned(),
        source: Box::new(source),
    })
}

/// Which cell of a row was not text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// A key cell that is not text is SQLite's alone (PostgreSQL's column is `TEXT NOT NULL`).
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) enum Column {
    Key,
    Value,
}

/// A row whose key or value cell holds `found` (`"NULL"`, `"a blob"`, ...) instead of text.
pub(crate) fn not_text(table: &str, key: String, column: Column, found: &str) -> PersistentError {
    let table = table.to_owned();
    match column {
        Column::Key => PersistentError::InvalidStoredKey {
            table,
            key,
            source: format!("the key is {found}, not text").into(),
        },
        Column::Value => PersistentError::InvalidStoredValue {
            table,
            key,
            source: format!("the value is {found}, not text").into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_table_and_the_raw_key() {
        assert_eq!(decode_key::<u64>("t", "7").unwrap(), 7);
        let err = decode_key::<u64>("t", "007").unwrap_err();
        assert!(
            err.to_string().contains(r#"stored key "007""#) && err.to_string().contains(r#""7""#),
            "{err}"
        );
        let err = decode_key::<u64>("t", "seven").unwrap_err();
        assert!(
            matches!(&err, PersistentError::InvalidStoredKey { table, key, .. } if table == "t" && key == "seven"),
            "{err}"
        );
        let err = decode_value::<String>("t", "7", "7").unwrap_err();
        assert!(
            matches!(&err, PersistentError::InvalidStoredValue { key, .. } if key == "7"),
            "{err}"
        );
        let err = not_text("t", "7".into(), Column::Value, "NULL");
        assert!(err.to_string().contains("the value is NULL"), "{err}");
        let err = not_text("t", "7".into(), Column::Key, "a blob");
        assert!(
            matches!(err, PersistentError::InvalidStoredKey { .. }),
            "{err}"
        );
    }
}
