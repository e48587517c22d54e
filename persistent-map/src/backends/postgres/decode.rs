//! Turning stored rows back into keys and values, with errors that name the table and the key.

use std::str::FromStr;

use serde::de::DeserializeOwned;

use super::session::RawRow;
use crate::{PersistentError, Result};

/// Decodes one row of `table`.
pub(super) fn decode_row<K, V>(table: &str, (key, value): RawRow) -> Result<(K, V)>
where
    K: FromStr,
    <K as FromStr>::Err: std::error::Error + Send + Sync + 'static,
    V: DeserializeOwned,
{
    let decoded_key = decode_key(table, &key)?;
    let Some(value) = value else {
        return Err(PersistentError::InvalidStoredValue {
            table: table.to_owned(),
            key,
            source: "the value is NULL".into(),
        });
    };
    match serde_json::from_str(&value) {
        Ok(decoded_value) => Ok((decoded_key, decoded_value)),
        Err(source) => Err(PersistentError::InvalidStoredValue {
            table: table.to_owned(),
            key,
            source: Box::new(source),
        }),
    }
}

/// Parses a key text of `table`.
pub(super) fn decode_key<K>(table: &str, key: &str) -> Result<K>
where
    K: FromStr,
    <K as FromStr>::Err: std::error::Error + Send + Sync + 'static,
{
    key.parse()
        .map_err(|source| PersistentError::InvalidStoredKey {
            table: table.to_owned(),
            key: key.to_owned(),
            source: Box::new(source),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_table_and_the_raw_key() {
        let row = |key: &str, value: Option<&str>| (key.to_owned(), value.map(str::to_owned));
        let (key, value): (u64, String) = decode_row("t", row("7", Some("\"seven\""))).unwrap();
        assert_eq!((key, value.as_str()), (7, "seven"));

        let err = decode_row::<u64, String>("t", row("seven", Some("\"x\""))).unwrap_err();
        assert!(
            matches!(&err, PersistentError::InvalidStoredKey { table, key, .. } if table == "t" && key == "seven"),
            "{err}"
        );
        let err = decode_row::<u64, String>("t", row("7", Some("7"))).unwrap_err();
        assert!(
            matches!(&err, PersistentError::InvalidStoredValue { key, .. } if key == "7"),
            "{err}"
        );
        let err = decode_row::<u64, String>("t", row("7", None)).unwrap_err();
        assert!(err.to_string().contains("NULL"), "{err}");
    }
}
