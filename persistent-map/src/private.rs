//! Not public API. Referenced by macro-generated code and by the documentation's examples.
//!
//! The key text format (DESIGN.md, "The key format"; documented on
//! [`PersistentKey`](crate::PersistentKey)) is implemented here, once: `#[derive(PersistentKey)]`
//! writes only the glue that calls these functions. Nothing here is covered by semver.

use std::any::type_name;
use std::array;
use std::borrow::Cow;
use std::error::Error;
use std::fmt::{self, Display, Write as _};
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;

pub use crate::key::{KeyParseError, PersistentKey};
pub use serde;

/// Runs a documentation example on a current-thread runtime and panics with its error, if it
/// fails. Every async example's hidden first and last lines call this, instead of each
/// spelling out a runtime: `# persistent_map::__private::run_example(Box::pin(async {` and
/// `# Ok(()) }));`. (Boxed, so that it is compiled once here, not once per example.)
#[allow(clippy::type_complexity)]
pub fn run_example(example: Pin<Box<dyn Future<Output = Result<(), Box<dyn Error>>>>>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime for the example");
    if let Err(error) = runtime.block_on(example) {
        panic!("the example failed: {error}");
    }
}

/// `Serialize` for `#[persistent_key(serde)]`: the key as its text.
pub fn serialize_key_text<K: Display + ?Sized, S: serde::Serializer>(
    key: &K,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(key)
}

/// `Deserialize` for `#[persistent_key(serde)]`: a string, parsed as the key's text.
pub fn deserialize_key_text<'de, K, D>(deserializer: D) -> Result<K, D::Error>
where
    K: FromStr<Err: Display>,
    D: serde::Deserializer<'de>,
{
    let text = <Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

/// The character that escapes itself and the separator inside a field of a multi-field key.
const ESCAPE: char = '\\';

/// Writes a struct's fields: nothing for none, the one field's text unchanged, or each field's
/// text escaped and joined by `separator`.
pub fn write_fields(
    out: &mut dyn fmt::Write,
    separator: char,
    fields: &[&dyn Display],
) -> fmt::Result {
    match fields {
        [] => Ok(()),
        [only] => write!(out, "{only}"),
        [first, rest @ ..] => {
            let mut escaped = Escaper { out, separator };
            write!(escaped, "{first}")?;
            for field in rest {
                escaped.out.write_char(separator)?;
                write!(escaped, "{field}")?;
            }
            Ok(())
        }
    }
}

/// Writes an enum variant: its name, then (if it has fields) the separator and the fields as
/// [`write_fields`] writes them.
pub fn write_variant(
    out: &mut dyn fmt::Write,
    separator: char,
    name: &str,
    fields: &[&dyn Display],
) -> fmt::Result {
    out.write_str(name)?;
    if fields.is_empty() {
        return Ok(());
    }
    out.write_char(separator)?;
    write_fields(out, separator, fields)
}

/// A `fmt::Write` adapter that escapes the backslash and the separator on the way through, so a
/// field's `Display` is escaped without an intermediate `String`.
struct Escaper<'a> {
    out: &'a mut dyn fmt::Write,
    separator: char,
}

impl fmt::Write for Escaper<'_> {
    fn write_str(&mut self, mut text: &str) -> fmt::Result {
        let separator = self.separator;
        while let Some(at) = text.find([ESCAPE, separator]) {
            let (plain, special) = text.split_at(at);
            let special_char = special
                .chars()
                .next()
                .expect("`find` returned the index of a character");
            self.out.write_str(plain)?;
            self.out.write_char(ESCAPE)?;
            self.out.write_char(special_char)?;
            text = &special[special_char.len_utf8()..];
        }
        self.out.write_str(text)
    }
}

/// Parses the text of one derived key type (or of one of its variants) and builds its
/// [`KeyParseError`]s.
#[derive(Debug, Clone, Copy)]
pub struct KeyParser {
    type_name: &'static str,
    variant: Option<&'static str>,
    separator: char,
}

impl KeyParser {
    /// A parser for the type `type_name` whose fields are joined by `separator`.
    pub const fn new(type_name: &'static str, separator: char) -> Self {
        KeyParser {
            type_name,
            variant: None,
            separator,
        }
    }

    /// The same parser, inside the variant whose Rust name is `variant`.
    pub const fn variant(self, variant: &'static str) -> Self {
        KeyParser {
            variant: Some(variant),
            ..self
        }
    }

    /// Splits a struct's text into its `N` fields, the inverse of [`write_fields`].
    pub fn split_fields<'t, const N: usize>(
        self,
        text: &'t str,
    ) -> Result<[Cow<'t, str>; N], KeyParseError> {
        match N {
            0 if text.is_empty() => Ok(array::from_fn(|_| Cow::Borrowed(""))),
            0 => Err(self.error(text, "the empty text")),
            1 => Ok(array::from_fn(|_| Cow::Borrowed(text))),
            _ => self.split_escaped(text),
        }
    }

    /// The variant name at the start of an enum's text: everything up to the first separator.
    pub fn variant_name(self, text: &str) -> &str {
        text.split_once(self.separator)
            .map_or(text, |(name, _payload)| name)
    }

    /// Splits the text of a whole enum value into the `N` fields of its variant, the inverse of
    /// [`write_variant`]: a variant without fields takes nothing after its name, a variant with
    /// fields takes the separator and its fields.
    pub fn split_payload<'t, const N: usize>(
        self,
        text: &'t str,
    ) -> Result<[Cow<'t, str>; N], KeyParseError> {
        let name = self.variant_name(text);
        match (text.split_once(self.separator), N) {
            (None, 0) => Ok(array::from_fn(|_| Cow::Borrowed(""))),
            (Some(_), 0) => Err(self.error(text, format!("nothing after `{name}`"))),
            (None, _) => Err(self.error(
                text,
                format!("`{name}{}` followed by {}", self.separator, self.fields(N)),
            )),
            (Some((_name, payload)), _) => self.split_fields(payload),
        }
    }

    /// What parsing one field's (unescaped) `text` as its type gave: `parsed` is that type's
    /// `from_str(text)`, its error boxed; an error becomes the [`KeyParseError`] that names
    /// the field and keeps the parse error as its source.
    ///
    /// The derive writes the `from_str` and the boxing itself, spanned at the field's type, so
    /// that a type without `FromStr`, or whose error is not an `Error`, is reported on the
    /// field in the words of `std` (no bound here to name in the compiler's notes).
    pub fn parsed_field<T>(
        self,
        field: &'static str,
        text: &str,
        parsed: Result<T, Box<dyn Error + Send + Sync>>,
    ) -> Result<T, KeyParseError> {
        parsed.map_err(|source| {
            self.error(text, format!("a valid `{}`", type_name::<T>()))
                .in_field(field, source)
        })
    }

    /// The error for an enum text whose variant name is none of `names`.
    pub fn unknown_variant(self, text: &str, names: &[&str]) -> KeyParseError {
        self.error(text, format!("one of {}", names.join(", ")))
    }

    fn error(self, text: &str, expected: impl Into<Cow<'static, str>>) -> KeyParseError {
        KeyParseError::new(self.type_name, self.variant, text, expected)
    }

    fn fields(self, count: usize) -> String {
        match count {
            1 => "1 field".to_owned(),
            _ => format!("{count} fields separated by `{}`", self.separator),
        }
    }

    /// Splits `text` at each separator that is not escaped and unescapes every field.
    fn split_escaped<'t, const N: usize>(
        self,
        text: &'t str,
    ) -> Result<[Cow<'t, str>; N], KeyParseError> {
        let mut fields = array::from_fn(|_| Cow::Borrowed(""));
        let mut found = 0;
        let mut rest = text;
        loop {
            let (field, after) = self.unescape_field(text, rest)?;
            if let Some(slot) = fields.get_mut(found) {
                *slot = field;
            }
            found += 1;
            match after {
                Some(after) => rest = after,
                None => break,
            }
        }
        if found == N {
            Ok(fields)
        } else {
            Err(self.error(text, self.fields(N)))
        }
    }

    /// Reads the field at the start of `rest` (a suffix of `text`): returns it unescaped, and
    /// what follows the separator that ends it, or `None` when it ends the text.
    fn unescape_field<'t>(
        self,
        text: &'t str,
        rest: &'t str,
    ) -> Result<(Cow<'t, str>, Option<&'t str>), KeyParseError> {
        // Stays `None` (and the field is borrowed) until the first escape.
        let mut unescaped: Option<String> = None;
        let mut copied_up_to = 0;
        let mut chars = rest.char_indices();
        while let Some((at, c)) = chars.next() {
            if c == self.separator {
                let field = finish_field(rest, unescaped, copied_up_to, at);
                return Ok((field, Some(&rest[at + c.len_utf8()..])));
            }
            if c != ESCAPE {
                continue;
            }
            let escaped = match chars.next() {
                Some((_, next)) if next == ESCAPE || next == self.separator => next,
                _ => {
                    let byte = text.len() - rest.len() + at;
                    return Err(self.error(
                        text,
                        format!(
                            "`\\\\` or `\\{}` at byte {byte}, where a backslash starts an escape",
                            self.separator
                        ),
                    ));
                }
            };
            let buffer = unescaped.get_or_insert_with(String::new);
            buffer.push_str(&rest[copied_up_to..at]);
            buffer.push(escaped);
            copied_up_to = at + ESCAPE.len_utf8() + escaped.len_utf8();
        }
        Ok((
            finish_field(rest, unescaped, copied_up_to, rest.len()),
            None,
        ))
    }
}

/// The field `rest[..end]`: borrowed when it held no escape, else the unescaped prefix plus the
/// plain run `rest[copied_up_to..end]`.
fn finish_field(
    rest: &str,
    unescaped: Option<String>,
    copied_up_to: usize,
    end: usize,
) -> Cow<'_, str> {
    match unescaped {
        None => Cow::Borrowed(&rest[..end]),
        Some(mut buffer) => {
            buffer.push_str(&rest[copied_up_to..end]);
            Cow::Owned(buffer)
        }
    }
}

/// Where a map's share of a transaction goes (see `TransactionalBackend`).
pub use crate::map::TransactionTarget;

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders fields the way a derived struct's `Display` does.
    struct Fields<'a>(char, &'a [&'a str]);

    impl Display for Fields<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let fields: Vec<&dyn Display> = self.1.iter().map(|s| s as &dyn Display).collect();
            write_fields(f, self.0, &fields)
        }
    }

    const PARSER: KeyParser = KeyParser::new("Key", ':');

    fn split<const N: usize>(text: &str) -> Result<[String; N], KeyParseError> {
        PARSER
            .split_fields::<N>(text)
            .map(|fields| fields.map(Cow::into_owned))
    }

    #[test]
    fn writes_no_field_as_the_empty_text() {
        assert_eq!(Fields(':', &[]).to_string(), "");
    }

    #[test]
    fn writes_one_field_unescaped() {
        assert_eq!(Fields(':', &[r"a:b\c"]).to_string(), r"a:b\c");
    }

    #[test]
    fn escapes_and_joins_several_fields() {
        assert_eq!(Fields(':', &["acme", "42"]).to_string(), "acme:42");
        assert_eq!(Fields(':', &["a:b", "42"]).to_string(), r"a\:b:42");
        assert_eq!(Fields(':', &[r"\", ""]).to_string(), r"\\:");
        assert_eq!(Fields('/', &["a/b:c", "é"]).to_string(), r"a\/b:c/é");
        assert_eq!(Fields('é', &["aéb", "c"]).to_string(), r"a\ébéc");
    }

    #[test]
    fn writes_variants() {
        let mut text = String::new();
        write_variant(&mut text, ':', "Admin", &[]).unwrap();
        assert_eq!(text, "Admin");
        text.clear();
        write_variant(&mut text, ':', "Tag", &[&"a:b"]).unwrap();
        assert_eq!(text, "Tag:a:b");
        text.clear();
        write_variant(&mut text, ':', "Repo", &[&1, &"x:y"]).unwrap();
        assert_eq!(text, r"Repo:1:x\:y");
    }

    #[test]
    fn splits_and_unescapes() {
        assert_eq!(split::<0>("").unwrap(), [""; 0]);
        assert_eq!(split::<1>(r"a:b\").unwrap(), [r"a:b\"]);
        assert_eq!(split::<2>("acme:42").unwrap(), ["acme", "42"]);
        assert_eq!(split::<2>(r"a\:b:42").unwrap(), ["a:b", "42"]);
        assert_eq!(split::<3>(r"\\::").unwrap(), [r"\", "", ""]);
        assert_eq!(split::<2>(":").unwrap(), ["", ""]);
    }

    #[test]
    fn borrows_fields_without_escapes() {
        let fields = PARSER.split_fields::<2>(r"plain:a\:b").unwrap();
        assert!(matches!(fields[0], Cow::Borrowed("plain")));
        assert!(matches!(&fields[1], Cow::Owned(field) if field == "a:b"));
    }

    #[test]
    fn rejects_a_wrong_field_count() {
        let err = split::<2>("a:b:c").unwrap_err();
        assert_eq!(err.text(), "a:b:c");
        assert_eq!(err.expected(), "2 fields separated by `:`");
        assert_eq!(split::<2>("ab").unwrap_err().text(), "ab");
        assert_eq!(split::<0>("x").unwrap_err().expected(), "the empty text");
    }

    #[test]
    fn rejects_a_backslash_that_escapes_nothing() {
        for text in [r"a\b:c", r"a:b\", r"\", r"a\\\:b\x:c"] {
            let err = split::<2>(text).unwrap_err();
            assert_eq!(err.text(), text);
            assert!(err.expected().contains("backslash"), "{err}");
        }
        assert!(split::<2>(r"a\x:b")
            .unwrap_err()
            .expected()
            .contains("byte 1"));
    }

    #[test]
    fn splits_variants() {
        assert_eq!(PARSER.variant_name("Repo:1:x"), "Repo");
        assert_eq!(PARSER.variant_name("Admin"), "Admin");
        assert_eq!(PARSER.variant_name(":x"), "");

        let repo = PARSER.variant("Repo");
        let [org, name] = repo.split_payload::<2>(r"Repo:1:x\:y").unwrap();
        assert_eq!((&*org, &*name), ("1", "x:y"));
        let [tag] = repo.split_payload::<1>("Tag:a:b").unwrap();
        assert_eq!(tag, "a:b");
        let [] = repo.split_payload::<0>("Admin").unwrap();

        let err = repo.split_payload::<0>("Admin:").unwrap_err();
        assert_eq!(err.expected(), "nothing after `Admin`");
        let err = repo.split_payload::<1>("Tag").unwrap_err();
        assert_eq!(err.expected(), "`Tag:` followed by 1 field");
        let err = repo.split_payload::<2>("Repo:1").unwrap_err();
        assert_eq!(err.variant(), Some("Repo"));
        assert_eq!(err.text(), "1");
    }

    #[test]
    fn names_the_field_and_keeps_its_error() {
        let parsed = "x".parse::<u64>().map_err(|error| error.into());
        let err = PARSER
            .variant("Repo")
            .parsed_field("org", "x", parsed)
            .unwrap_err();
        assert_eq!(err.type_name(), "Key");
        assert_eq!(err.variant(), Some("Repo"));
        assert_eq!(err.field(), Some("org"));
        assert_eq!(err.text(), "x");
        assert_eq!(err.expected(), "a valid `u64`");
        assert!(err.source().unwrap().is::<std::num::ParseIntError>());
        assert_eq!(
            err.to_string(),
            r#"cannot parse Key::Repo field `org` from "x": expected a valid `u64`"#
        );
    }

    #[test]
    fn lists_the_variants_it_knows() {
        let err = PARSER.unknown_variant("Owner", &["Admin", "Member", "guest-user"]);
        assert_eq!(err.expected(), "one of Admin, Member, guest-user");
        assert_eq!(
            err.to_string(),
            r#"cannot parse Key from "Owner": expected one of Admin, Member, guest-user"#
        );
        assert!(err.source().is_none());
    }
}
