//! Case conversion for `rename_all` and the default table name (serde_derive's
//! `internals/case.rs`).
//!
//! Unlike serde, a name is first split into words, taking a run of capitals as one word, so
//! `HTTPRequestKey` is `HTTP`, `Request`, `Key` (→ `http_request_key`, not
//! `h_t_t_p_request_key`). A word boundary falls before a capital that follows a lowercase
//! letter or a digit, before the last capital of a run that a lowercase letter follows, and at
//! any character that is neither a letter nor a digit (`_`), which is dropped.

/// The cases of `#[persistent_key(rename_all = "...")]`, spelled as serde spells them.
// The variants are named after the case names users write, which all end in "case".
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RenameRule {
    LowerCase,
    UpperCase,
    PascalCase,
    CamelCase,
    SnakeCase,
    ScreamingSnakeCase,
    KebabCase,
    ScreamingKebabCase,
}

const RENAME_RULES: &[(&str, RenameRule)] = &[
    ("lowercase", RenameRule::LowerCase),
    ("UPPERCASE", RenameRule::UpperCase),
    ("PascalCase", RenameRule::PascalCase),
    ("camelCase", RenameRule::CamelCase),
    ("snake_case", RenameRule::SnakeCase),
    ("SCREAMING_SNAKE_CASE", RenameRule::ScreamingSnakeCase),
    ("kebab-case", RenameRule::KebabCase),
    ("SCREAMING-KEBAB-CASE", RenameRule::ScreamingKebabCase),
];

impl RenameRule {
    /// The rule named `name`, as written in the attribute.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        RENAME_RULES
            .iter()
            .find(|(rule_name, _)| *rule_name == name)
            .map(|(_, rule)| *rule)
    }

    /// Every rule's name, quoted and comma-separated, for error messages.
    pub(crate) fn all_names() -> String {
        let names: Vec<String> = RENAME_RULES
            .iter()
            .map(|(name, _)| format!("\"{name}\""))
            .collect();
        names.join(", ")
    }

    /// `name` (a Rust identifier) written in this case.
    pub(crate) fn apply(self, name: &str) -> String {
        let words = split_words(name);
        let (case, joiner): (fn(usize, &str) -> String, &str) = match self {
            RenameRule::LowerCase => (|_, word| word.to_lowercase(), ""),
            RenameRule::UpperCase => (|_, word| word.to_uppercase(), ""),
            RenameRule::PascalCase => (|_, word| capitalize(word), ""),
            RenameRule::CamelCase => (
                |index, word| match index {
                    0 => word.to_lowercase(),
                    _ => capitalize(word),
                },
                "",
            ),
            RenameRule::SnakeCase => (|_, word| word.to_lowercase(), "_"),
            RenameRule::ScreamingSnakeCase => (|_, word| word.to_uppercase(), "_"),
            RenameRule::KebabCase => (|_, word| word.to_lowercase(), "-"),
            RenameRule::ScreamingKebabCase => (|_, word| word.to_uppercase(), "-"),
        };
        let cased: Vec<String> = words
            .iter()
            .enumerate()
            .map(|(index, word)| case(index, word))
            .collect();
        cased.join(joiner)
    }
}

/// The words of an identifier (see the module docs for where the boundaries fall).
fn split_words(name: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = name.char_indices().collect();
    let mut words = Vec::new();
    let mut word_start = None;
    for (position, &(at, c)) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if let Some(start) = word_start.take() {
                words.push(&name[start..at]);
            }
            continue;
        }
        let previous = position.checked_sub(1).map(|index| chars[index].1);
        let next = chars.get(position + 1).map(|&(_, next)| next);
        let starts_word = c.is_uppercase()
            && previous.is_some_and(|previous| {
                previous.is_lowercase()
                    || previous.is_numeric()
                    || (previous.is_uppercase() && next.is_some_and(char::is_lowercase))
            });
        match word_start {
            Some(start) if starts_word => {
                words.push(&name[start..at]);
                word_start = Some(at);
            }
            Some(_) => {}
            None => word_start = Some(at),
        }
    }
    if let Some(start) = word_start {
        words.push(&name[start..]);
    }
    words
}

/// `word` with its first character uppercase and the rest lowercase.
fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words_like_a_reader_would() {
        let cases: &[(&str, &[&str])] = &[
            ("SessionKey", &["Session", "Key"]),
            ("HTTPRequestKey", &["HTTP", "Request", "Key"]),
            ("HttpRequestKey", &["Http", "Request", "Key"]),
            ("V2Key", &["V2", "Key"]),
            ("Key2", &["Key2"]),
            ("Ipv4Addr", &["Ipv4", "Addr"]),
            ("IO", &["IO"]),
            ("A", &["A"]),
            ("my_key", &["my", "key"]),
            ("_Leading__Under_", &["Leading", "Under"]),
            ("ÉtéCléKey", &["Été", "Clé", "Key"]),
        ];
        for (name, words) in cases {
            assert_eq!(split_words(name), *words, "{name}");
        }
    }

    #[test]
    fn applies_every_rule() {
        let expected = [
            ("lowercase", "guestuser", "httpproxy"),
            ("UPPERCASE", "GUESTUSER", "HTTPPROXY"),
            ("PascalCase", "GuestUser", "HttpProxy"),
            ("camelCase", "guestUser", "httpProxy"),
            ("snake_case", "guest_user", "http_proxy"),
            ("SCREAMING_SNAKE_CASE", "GUEST_USER", "HTTP_PROXY"),
            ("kebab-case", "guest-user", "http-proxy"),
            ("SCREAMING-KEBAB-CASE", "GUEST-USER", "HTTP-PROXY"),
        ];
        for (rule_name, guest_user, http_proxy) in expected {
            let rule = RenameRule::from_name(rule_name).expect(rule_name);
            assert_eq!(rule.apply("GuestUser"), guest_user, "{rule_name}");
            assert_eq!(rule.apply("HTTPProxy"), http_proxy, "{rule_name}");
        }
        assert_eq!(RenameRule::SnakeCase.apply("Admin"), "admin");
    }

    #[test]
    fn knows_only_serdes_spellings() {
        assert_eq!(RenameRule::from_name("snake"), None);
        assert_eq!(RenameRule::from_name("SnakeCase"), None);
        assert!(RenameRule::all_names().contains("\"SCREAMING-KEBAB-CASE\""));
    }
}
