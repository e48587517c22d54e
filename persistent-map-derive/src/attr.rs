//! Parses `#[persistent_key(...)]` on the type, on variants and on fields.
//!
//! Every problem is recorded in the [`Ctxt`] and parsing goes on, so the user sees all the
//! errors of one input at once, and the caller still gets the attributes that did parse.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Lit, LitStr, Path};

use crate::case::RenameRule;
use crate::ctxt::Ctxt;

const ATTRIBUTE: &str = "persistent_key";

/// The keys allowed on the type.
const TYPE_KEYS: &[&str] = &["table", "separator", "rename_all", "text", "crate", "serde"];

/// The keys allowed on a variant.
const VARIANT_KEYS: &[&str] = &["rename"];

/// An attribute's value, with the `key = value` tokens it was written as, for spans.
pub(crate) struct Attr<T> {
    pub(crate) tokens: TokenStream,
    pub(crate) value: T,
}

impl<T> ToTokens for Attr<T> {
    /// The whole `key = value`, so an error on it underlines both.
    fn to_tokens(&self, tokens: &mut TokenStream) {
        self.tokens.to_tokens(tokens);
    }
}

/// Where the key's text comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextMode {
    /// `Display` and `FromStr` are derived (the default).
    Derive,
    /// The type's own `Display` and `FromStr` are kept; only the `PersistentKey` impl is
    /// derived (`text = "display"`).
    Display,
}

/// The attributes of the type itself.
#[derive(Default)]
pub(crate) struct TypeAttrs {
    pub(crate) table: Option<Attr<String>>,
    pub(crate) separator: Option<Attr<char>>,
    pub(crate) rename_all: Option<Attr<RenameRule>>,
    pub(crate) text: Option<Attr<TextMode>>,
    pub(crate) krate: Option<Attr<Path>>,
    /// `serde`: derive `Serialize` and `Deserialize` through the key's text.
    pub(crate) serde: Option<Attr<()>>,
}

/// The attributes of one enum variant.
#[derive(Default)]
pub(crate) struct VariantAttrs {
    pub(crate) rename: Option<Attr<String>>,
}

/// Parses the attributes of the type.
pub(crate) fn type_attrs(cx: &Ctxt, attrs: &[Attribute]) -> TypeAttrs {
    let mut parsed = TypeAttrs::default();
    for attr in our_attrs(attrs) {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("table") {
                let literal: LitStr = meta.value()?.parse()?;
                set_once(cx, &meta, &mut parsed.table, &literal, literal.value())
            } else if meta.path.is_ident("separator") {
                let literal: Lit = meta.value()?.parse()?;
                let separator = separator_char(&literal)?;
                set_once(cx, &meta, &mut parsed.separator, &literal, separator)
            } else if meta.path.is_ident("rename_all") {
                let literal: LitStr = meta.value()?.parse()?;
                let rule = rename_rule(&literal)?;
                set_once(cx, &meta, &mut parsed.rename_all, &literal, rule)
            } else if meta.path.is_ident("text") {
                let literal: LitStr = meta.value()?.parse()?;
                let mode = text_mode(&literal)?;
                set_once(cx, &meta, &mut parsed.text, &literal, mode)
            } else if meta.path.is_ident("crate") {
                let literal: LitStr = meta.value()?.parse()?;
                let path = literal.parse::<Path>()?;
                set_once(cx, &meta, &mut parsed.krate, &literal, path)
            } else if meta.path.is_ident("serde") {
                if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                    return Err(meta.error(
                        "`serde` takes no value: write `#[persistent_key(serde)]` to derive \
                         Serialize and Deserialize through the key's text",
                    ));
                }
                set_flag_once(cx, &meta, &mut parsed.serde)
            } else if meta.path.is_ident("rename") {
                Err(meta.error(
                    "`rename` goes on an enum variant; on the type, use `rename_all` or `table`",
                ))
            } else {
                Err(unknown_key(&meta, TYPE_KEYS))
            }
        });
        if let Err(error) = result {
            cx.push(error);
        }
    }
    parsed
}

/// Parses the attributes of an enum variant.
pub(crate) fn variant_attrs(cx: &Ctxt, attrs: &[Attribute]) -> VariantAttrs {
    let mut parsed = VariantAttrs::default();
    for attr in our_attrs(attrs) {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                let literal: LitStr = meta.value()?.parse()?;
                set_once(cx, &meta, &mut parsed.rename, &literal, literal.value())
            } else if TYPE_KEYS.iter().any(|key| meta.path.is_ident(key)) {
                let key = meta.path.to_token_stream();
                Err(meta.error(format_args!("`{key}` goes on the type, not on a variant")))
            } else {
                Err(unknown_key(&meta, VARIANT_KEYS))
            }
        });
        if let Err(error) = result {
            cx.push(error);
        }
    }
    parsed
}

/// Fields take no attribute: each `#[persistent_key]` on one is an error.
pub(crate) fn reject_field_attrs(cx: &Ctxt, attrs: &[Attribute]) {
    for attr in our_attrs(attrs) {
        cx.error_spanned_by(
            attr,
            "a field takes no persistent_key attribute; the key's text is made of the fields' own `Display`",
        );
    }
}

fn our_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|attr| attr.path().is_ident(ATTRIBUTE))
}

/// Sets a flag (a key without a value), unless it was already given: that is an error on the
/// repetition.
fn set_flag_once(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    slot: &mut Option<Attr<()>>,
) -> syn::Result<()> {
    if slot.is_some() {
        cx.push(duplicate(meta));
        return Ok(());
    }
    *slot = Some(Attr {
        tokens: meta.path.to_token_stream(),
        value: (),
    });
    Ok(())
}

fn duplicate(meta: &ParseNestedMeta<'_>) -> syn::Error {
    let key = meta.path.to_token_stream();
    meta.error(format_args!("duplicate persistent_key attribute `{key}`"))
}

/// Stores `value`, written as `literal`, unless the key was already given: that is an error on
/// the repetition.
fn set_once<T>(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    slot: &mut Option<Attr<T>>,
    literal: &impl ToTokens,
    value: T,
) -> syn::Result<()> {
    let key = &meta.path;
    if slot.is_some() {
        cx.push(duplicate(meta));
        return Ok(());
    }
    *slot = Some(Attr {
        tokens: quote!(#key = #literal),
        value,
    });
    Ok(())
}

/// The error for a key that is none of `expected`.
fn unknown_key(meta: &ParseNestedMeta<'_>, expected: &[&str]) -> syn::Error {
    let key = meta.path.to_token_stream();
    let expected: Vec<String> = expected.iter().map(|key| format!("`{key}`")).collect();
    meta.error(format_args!(
        "unknown persistent_key attribute `{key}`; expected {}",
        expected.join(", ")
    ))
}

fn rename_rule(name: &LitStr) -> syn::Result<RenameRule> {
    RenameRule::from_name(&name.value()).ok_or_else(|| {
        syn::Error::new_spanned(
            name,
            format!(
                "unknown case {:?}; expected one of {}",
                name.value(),
                RenameRule::all_names()
            ),
        )
    })
}

/// The separator: one character, written as a character literal (a string of exactly one
/// character is taken too).
fn separator_char(literal: &Lit) -> syn::Result<char> {
    let text = match literal {
        Lit::Char(character) => return Ok(character.value()),
        Lit::Str(text) => text.value(),
        _ => return Err(one_character_expected(literal, String::new())),
    };
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(only), None) => Ok(only),
        _ => {
            let count = text.chars().count();
            Err(one_character_expected(
                literal,
                format!(": {text:?} has {count} characters"),
            ))
        }
    }
}

fn one_character_expected(literal: &Lit, why: String) -> syn::Error {
    syn::Error::new_spanned(
        literal,
        format!("the separator is one character, written like `separator = '/'`{why}"),
    )
}

fn text_mode(mode: &LitStr) -> syn::Result<TextMode> {
    match mode.value().as_str() {
        "derive" => Ok(TextMode::Derive),
        "display" => Ok(TextMode::Display),
        _ => Err(syn::Error::new_spanned(
            mode,
            "expected `text = \"display\"` (keep the type's own Display and FromStr) or `text = \"derive\"` (the default)",
        )),
    }
}
