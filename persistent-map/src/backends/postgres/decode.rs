//! Turning stored rows back into keys and values, with errors that name the table and the key.

use std::str::FromStr;

use serde::de::DeserializeOwned;

use super::session::RawRow;
pub(super) use crate::backends::decode::decode_key;
use crate::backends::decode::{decode_value, not_text, Column};
use crate::{Deadline, Result};

/// Decodes one row of `table`, with its deadline.
pub(super) fn decode_row<K, V>(
    table: &str,
    (key, value, expires_at): RawRow,
) -> Result<(K, V, Option<Deadline>)>
where
    K: FromStr + ToString,
    <K as FromStr>::Err: std::error::Error + Send + Sync + 'static,
    V: DeserializeOwned,
{
    let decoded_key = decode_key(table, &key)?;
    let Some(value) = value else {
        return Err(not_text(table, key, Column::Value, "NULL"));
    };
    let deadline = super::expiry::deadline_of(expires_at);
    Ok((decoded_key, decode_value(table, &key, &value)?, deadline))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PersistentError;

    #[test]
    fn errors_name_the_table_and_the_raw_key() {
        let row = |key: &str, value: Option<&str>| (key.to_owned(), value.map(str::to_owned), None);
        let (key, value, deadline): (u64, String, _) =
            decode_row("t", row("7", Some("\"seven\""))).unwrap();
        assert_eq!((key, value.as_str(), deadline), (7, "seven", None));
        let (_, _, deadline) =
            decode_row::<u64, u32>("t", ("7".into(), Some("1".into()), Some(1_700_000_000_000)))
                .unwrap();
        assert_eq!(deadline.map(Deadline::unix_millis), Some(1_700_000_000_000));

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
