//! The rule every table name must follow, checked before a name reaches SQL.

use crate::{PersistentError, Result};

/// Checks that `name` can be a map's table: `[A-Za-z_][A-Za-z0-9_]*`, not starting with
/// `sqlite_` in any case (SQLite reserves those names), and not `persistent_map_tables` (where
/// the SQLite backend records each table's key layout).
///
/// Backends call this before they touch the database; `#[derive(PersistentKey)]` applies the same
/// rule at compile time.
///
/// ```
/// use persistent_map::{validate_table_name, PersistentError};
///
/// assert!(validate_table_name("user_sessions").is_ok());
/// let err = validate_table_name("users; DROP TABLE kv").unwrap_err();
/// assert!(matches!(err, PersistentError::InvalidTableName { .. }));
/// assert!(err.to_string().contains("users; DROP TABLE kv"));
/// assert!(validate_table_name("SQLite_master").is_err());
/// ```
pub fn validate_table_name(name: &str) -> Result<()> {
    match table_name_problem(name) {
        None => Ok(()),
        Some(reason) => Err(PersistentError::InvalidTableName {
            name: name.to_owned(),
            reason,
        }),
    }
}

fn table_name_problem(name: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    let first = match chars.next() {
        None => return Some("a table name cannot be empty"),
        Some(first) => first,
    };
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Some("a table name must start with an ASCII letter or `_`");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Some("a table name may hold only ASCII letters, digits and `_`");
    }
    if name.len() >= 7 && name[..7].eq_ignore_ascii_case("sqlite_") {
        return Some("names starting with `sqlite_` are reserved by SQLite");
    }
    if name.eq_ignore_ascii_case("persistent_map_tables") {
        return Some(
            "`persistent_map_tables` is where persistent-map records each table's key layout",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_identifiers() {
        for name in [
            "kv",
            "_",
            "_private",
            "SessionKey",
            "t1",
            "sqlite",
            "sqlitex_y",
        ] {
            assert!(validate_table_name(name).is_ok(), "{name} should be valid");
        }
    }

    #[test]
    fn rejects_everything_else_with_the_name_in_the_message() {
        for name in [
            "",
            "1abc",
            "a-b",
            "a b",
            "a\"b",
            "é",
            "a;",
            "sqlite_master",
            "SQLITE_x",
            "Sqlite_",
        ] {
            let err = validate_table_name(name).expect_err(name);
            assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
        }
    }
}
