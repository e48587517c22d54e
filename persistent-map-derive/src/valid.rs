//! The rules an input must follow beyond what parsing one attribute can see. Each broken rule
//! is an error on the tokens that break it.

use std::collections::HashMap;

use quote::quote;

use crate::ast::{Data, Input, Variant};
use crate::attr::TextMode;
use crate::ctxt::Ctxt;

const ESCAPE: char = '\\';

/// Records in `cx` every rule that `input` breaks.
pub(crate) fn check(input: &Input<'_>, cx: &Ctxt) {
    check_table_name(input, cx);
    match input.text_mode() {
        TextMode::Derive => check_derived_text(input, cx),
        TextMode::Display => check_display_text(input, cx),
    }
}

fn check_table_name(input: &Input<'_>, cx: &Ctxt) {
    let name = input.table_name();
    let Some(problem) = table_name_problem(&name) else {
        return;
    };
    match &input.attrs.table {
        Some(table) => {
            cx.error_spanned_by(table, format!("invalid table name {name:?}: {problem}"))
        }
        None => cx.error_spanned_by(
            &input.original.ident,
            format!(
                "the table name {name:?}, made from the type's name, is invalid: {problem}; \
                 name the table with #[persistent_key(table = \"...\")]"
            ),
        ),
    }
}

/// Why `name` cannot be a table, if it cannot: it must be `[A-Za-z_][A-Za-z0-9_]*`, not start
/// with `sqlite_` in any case, and not be `persistent_map_tables`.
///
/// The same rule as `persistent_map::validate_table_name`, which this crate cannot call (the
/// runtime depends on it, not the other way round); the test below uses the runtime's cases.
fn table_name_problem(name: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Some("a table name cannot be empty");
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

fn check_derived_text(input: &Input<'_>, cx: &Ctxt) {
    let separator = input.separator();
    if let Some(attr) = &input.attrs.separator
        && attr.value == ESCAPE
    {
        cx.error_spanned_by(
                attr,
                "the separator cannot be a backslash: the backslash escapes the separator inside fields",
            );
    }
    match &input.data {
        Data::Struct(_) => {
            if let Some(rename_all) = &input.attrs.rename_all {
                cx.error_spanned_by(
                    rename_all,
                    "`rename_all` renames enum variants; a struct has none",
                );
            }
        }
        Data::Enum(variants) if variants.is_empty() => reject_empty_enum(input, cx),
        Data::Enum(variants) => check_variant_texts(variants, separator, cx),
        Data::Union(data) => {
            let union_token = data.union_token;
            let ident = &input.original.ident;
            cx.error_spanned_by(
                quote!(#union_token #ident),
                "PersistentKey cannot be derived for a union; use a struct or an enum, \
                 or write Display and FromStr by hand and add #[persistent_key(text = \"display\")]",
            );
        }
    }
}

fn reject_empty_enum(input: &Input<'_>, cx: &Ctxt) {
    let node = input.original;
    let syn::Data::Enum(data) = &node.data else {
        return;
    };
    let (enum_token, ident) = (data.enum_token, &node.ident);
    cx.error_spanned_by(
        quote!(#enum_token #ident),
        "an enum with no variants has no value to be a key; add a variant or use a unit struct",
    );
}

/// Each variant's text can be found again in a key: no separator or backslash inside it, and
/// no two variants alike.
fn check_variant_texts(variants: &[Variant<'_>], separator: char, cx: &Ctxt) {
    let mut seen: HashMap<&str, &Variant<'_>> = HashMap::new();
    for variant in variants {
        let text = variant.text.as_str();
        let name = variant.name();
        if text.contains(separator) {
            cx.error_spanned_by(
                variant.text_origin(),
                format!(
                    "the text {text:?} of variant `{name}` contains the separator `{separator}`, \
                     so a parse could not tell where the variant name ends"
                ),
            );
        } else if text.contains(ESCAPE) {
            cx.error_spanned_by(
                variant.text_origin(),
                format!(
                    "the text {text:?} of variant `{name}` contains a backslash, \
                     which the key format keeps for escapes"
                ),
            );
        }
        match seen.get(text) {
            Some(first) => cx.error_spanned_by(
                variant.text_origin(),
                format!(
                    "variant `{name}` has the same text {text:?} as variant `{}`, \
                     so a parse could not tell them apart",
                    first.name()
                ),
            ),
            None => {
                seen.insert(text, variant);
            }
        }
    }
}

/// With `text = "display"` the type writes its own text: the attributes that shape a derived
/// text would silently do nothing, so they are errors.
fn check_display_text(input: &Input<'_>, cx: &Ctxt) {
    const NO_EFFECT: &str = "has no effect with `text = \"display\"`, \
        where the type's own Display and FromStr make the text";
    if let Some(separator) = &input.attrs.separator {
        cx.error_spanned_by(separator, format!("`separator` {NO_EFFECT}"));
    }
    if let Some(rename_all) = &input.attrs.rename_all {
        cx.error_spanned_by(rename_all, format!("`rename_all` {NO_EFFECT}"));
    }
    if let Data::Enum(variants) = &input.data {
        for rename in variants
            .iter()
            .filter_map(|variant| variant.attrs.rename.as_ref())
        {
            cx.error_spanned_by(rename, format!("`rename` {NO_EFFECT}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_follow_the_runtime_rule() {
        for name in [
            "kv",
            "_",
            "_private",
            "SessionKey",
            "t1",
            "sqlite",
            "sqlitex_y",
        ] {
            assert_eq!(table_name_problem(name), None, "{name}");
        }
        for name in [
            "",
            "1abc",
            "a-b",
            "a b",
            "é",
            "a;",
            "sqlite_master",
            "SQLITE_x",
            "Sqlite_",
            "persistent_map_tables",
            "Persistent_Map_Tables",
        ] {
            assert!(table_name_problem(name).is_some(), "{name}");
        }
    }
}
