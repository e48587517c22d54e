//! What one commit group's transaction already knows about the keys it touches.
//!
//! A group that writes one key many times (a hot key: every write of it joins the same
//! commit) would otherwise read the key's stored value once per write, for conditions and
//! previous values, and log the key once per write. Inside the writer's `IMMEDIATE`
//! transaction no other connection can write, so what this transaction read or wrote is what
//! storage holds until it commits: the first write of a key reads it, the later ones are
//! answered from here, and the key is logged once per writing map.

use std::collections::HashMap;

/// A key's state as this transaction knows it.
#[derive(Default)]
struct KeyState {
    /// What the key holds (`Some(None)`: nothing), if known: the JSON and its deadline
    /// (Unix milliseconds).
    held: Option<Option<(String, Option<i64>)>>,
    /// The origins (writing maps) already logged for this key in this transaction.
    logged: Vec<i64>,
}

/// Per table name (not per backend: two handles on one table share a table's rows), per key
/// text. Created for one transaction and dropped with it, so a rolled-back transaction's
/// knowledge goes with it.
#[derive(Default)]
pub(super) struct Known {
    tables: HashMap<String, HashMap<String, KeyState>>,
}

impl Known {
    /// What `key` of `table` holds at `now` (Unix milliseconds), if this transaction knows:
    /// its JSON and deadline, or `Some(None)` for nothing or an entry expired by `now`.
    pub(super) fn held(
        &self,
        table: &str,
        key: &str,
        now: i64,
    ) -> Option<Option<(&str, Option<i64>)>> {
        let held = self.tables.get(table)?.get(key)?.held.as_ref()?;
        Some(match held {
            Some((value, deadline)) if deadline.is_none_or(|deadline| deadline > now) => {
                Some((value.as_str(), *deadline))
            }
            _ => None,
        })
    }

    /// Records that `key` of `table` now holds `held` (the JSON and its deadline, or nothing).
    pub(super) fn set(&mut self, table: &str, key: &str, held: Option<(String, Option<i64>)>) {
        self.state(table, key).held = Some(held);
    }

    /// Forgets everything known of `table`'s keys (after deleting all its rows, say); its log
    /// rows are kept track of still.
    pub(super) fn forget_values(&mut self, table: &str) {
        if let Some(keys) = self.tables.get_mut(table) {
            keys.values_mut().for_each(|state| state.held = None);
        }
    }

    /// Whether `key` of `table` still needs a log row for `origin` in this transaction; records
    /// that it has one from now on.
    pub(super) fn first_log(&mut self, table: &str, key: &str, origin: i64) -> bool {
        let logged = &mut self.state(table, key).logged;
        if logged.contains(&origin) {
            return false;
        }
        logged.push(origin);
        true
    }

    fn state(&mut self, table: &str, key: &str) -> &mut KeyState {
        if !self.tables.contains_key(table) {
            self.tables.insert(table.to_owned(), HashMap::new());
        }
        let keys = self.tables.get_mut(table).expect("inserted just above");
        if !keys.contains_key(key) {
            keys.insert(key.to_owned(), KeyState::default());
        }
        keys.get_mut(key).expect("inserted just above")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_values_and_their_deadlines() {
        let mut known = Known::default();
        assert_eq!(known.held("t", "a", 0), None);
        known.set("t", "a", Some(("1".into(), None)));
        known.set("t", "b", Some(("2".into(), Some(100))));
        known.set("u", "a", None);
        assert_eq!(known.held("t", "a", 0), Some(Some(("1", None))));
        assert_eq!(known.held("t", "b", 99), Some(Some(("2", Some(100)))));
        assert_eq!(
            known.held("t", "b", 100),
            Some(None),
            "expired at its deadline"
        );
        assert_eq!(known.held("u", "a", 0), Some(None));
        known.forget_values("t");
        assert_eq!(known.held("t", "a", 0), None);
        assert_eq!(known.held("u", "a", 0), Some(None));
    }

    #[test]
    fn logs_a_key_once_per_origin() {
        let mut known = Known::default();
        assert!(known.first_log("t", "a", 1));
        assert!(!known.first_log("t", "a", 1));
        assert!(known.first_log("t", "a", 2));
        assert!(known.first_log("u", "a", 1));
        known.forget_values("t");
        assert!(
            !known.first_log("t", "a", 1),
            "forgetting values keeps the log"
        );
    }
}
