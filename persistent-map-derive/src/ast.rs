//! The input as a typed model: a struct's fields, or an enum's variants and their texts. Each
//! node keeps the syn node it came from, for spans.

use proc_macro2::{Ident, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::{Data as SynData, DataUnion, DeriveInput, Fields, Generics, Index, Member, Path, Type};

use crate::attr::{self, TextMode, TypeAttrs, VariantAttrs};
use crate::case::RenameRule;
use crate::ctxt::Ctxt;

/// The separator when `#[persistent_key(separator = ...)]` does not set one.
const DEFAULT_SEPARATOR: char = ':';

pub(crate) struct Input<'a> {
    pub(crate) original: &'a DeriveInput,
    pub(crate) attrs: TypeAttrs,
    pub(crate) data: Data<'a>,
}

pub(crate) enum Data<'a> {
    Struct(Vec<Field<'a>>),
    Enum(Vec<Variant<'a>>),
    /// Rejected by `valid` unless the text is the type's own.
    Union(&'a DataUnion),
}

pub(crate) struct Variant<'a> {
    pub(crate) original: &'a syn::Variant,
    pub(crate) attrs: VariantAttrs,
    pub(crate) fields: Vec<Field<'a>>,
    /// The variant's name in the key text: its `rename`, else its name under `rename_all`.
    pub(crate) text: String,
}

pub(crate) struct Field<'a> {
    pub(crate) original: &'a syn::Field,
    pub(crate) member: Member,
    /// The field's name (or index, for a tuple field) in parse errors.
    pub(crate) name: String,
    /// Whether the type mentions a type parameter, so the impls need a bound on it.
    pub(crate) contains_generic: bool,
}

impl<'a> Input<'a> {
    /// Reads `node`; problems with its attributes are recorded in `cx`, and what did parse is
    /// kept, so the fallback can still write the impls that fit.
    pub(crate) fn from_syn(node: &'a DeriveInput, cx: &Ctxt) -> Self {
        let attrs = attr::type_attrs(cx, &node.attrs);
        let generics = &node.generics;
        let data = match &node.data {
            SynData::Struct(data) => {
                Data::Struct(Field::multiple_from_syn(cx, &data.fields, generics))
            }
            SynData::Enum(data) => {
                let rename_all = attrs.rename_all.as_ref().map(|rule| rule.value);
                Data::Enum(
                    data.variants
                        .iter()
                        .map(|variant| Variant::from_syn(cx, variant, rename_all, generics))
                        .collect(),
                )
            }
            SynData::Union(data) => Data::Union(data),
        };
        Input {
            original: node,
            attrs,
            data,
        }
    }

    /// The type's name as written, without `r#`: what parse errors call it.
    pub(crate) fn type_name(&self) -> String {
        self.original.ident.unraw().to_string()
    }

    pub(crate) fn generics(&self) -> &'a Generics {
        &self.original.generics
    }

    pub(crate) fn separator(&self) -> char {
        self.attrs
            .separator
            .as_ref()
            .map_or(DEFAULT_SEPARATOR, |separator| separator.value)
    }

    pub(crate) fn text_mode(&self) -> TextMode {
        self.attrs
            .text
            .as_ref()
            .map_or(TextMode::Derive, |text| text.value)
    }

    /// The table: `table = "..."`, else the type's name in snake_case.
    pub(crate) fn table_name(&self) -> String {
        match &self.attrs.table {
            Some(table) => table.value.clone(),
            None => RenameRule::SnakeCase.apply(&self.type_name()),
        }
    }

    /// How the derived text is laid out, for `PersistentKey::KEY_LAYOUT`: the key format version,
    /// the separator, and the fields (and variant texts) in order. The SQLite backend records it
    /// with the table and refuses a table recorded with another layout, which could misparse.
    /// Type names are left out (renaming a type does not change its text); field names are in
    /// (swapping two fields of one type would not fail to parse, it would misparse).
    pub(crate) fn key_layout(&self) -> String {
        let shape = match &self.data {
            Data::Struct(fields) => format!("struct{}", fields_layout(fields)),
            Data::Enum(variants) => {
                let variants: Vec<String> = variants
                    .iter()
                    .map(|variant| format!("{}{}", variant.text, fields_layout(&variant.fields)))
                    .collect();
                format!("enum {{{}}}", variants.join(", "))
            }
            Data::Union(_) => return String::new(),
        };
        format!("v1 separator {:?} {shape}", self.separator())
    }

    /// The path to the runtime crate: `crate = "..."`, else `::persistent_map`.
    pub(crate) fn krate(&self) -> Path {
        match &self.attrs.krate {
            Some(krate) => krate.value.clone(),
            None => syn::parse_quote!(::persistent_map),
        }
    }
}

/// ` {a, b}` for named fields, ` (2)` for tuple fields, nothing for none.
fn fields_layout(fields: &[Field<'_>]) -> String {
    match fields.first().map(|field| &field.member) {
        None => String::new(),
        Some(Member::Unnamed(_)) => format!(" ({})", fields.len()),
        Some(Member::Named(_)) => {
            let names: Vec<&str> = fields.iter().map(|field| field.name.as_str()).collect();
            format!(" {{{}}}", names.join(", "))
        }
    }
}

impl<'a> Variant<'a> {
    fn from_syn(
        cx: &Ctxt,
        node: &'a syn::Variant,
        rename_all: Option<RenameRule>,
        generics: &Generics,
    ) -> Self {
        let attrs = attr::variant_attrs(cx, &node.attrs);
        let name = node.ident.unraw().to_string();
        let text = match (&attrs.rename, rename_all) {
            (Some(rename), _) => rename.value.clone(),
            (None, Some(rule)) => rule.apply(&name),
            (None, None) => name,
        };
        Variant {
            original: node,
            fields: Field::multiple_from_syn(cx, &node.fields, generics),
            attrs,
            text,
        }
    }

    /// The variant's name as written, without `r#`: what parse errors call it.
    pub(crate) fn name(&self) -> String {
        self.original.ident.unraw().to_string()
    }

    /// Where the variant's text comes from, for errors about it: its `rename`, else its name.
    pub(crate) fn text_origin(&self) -> TokenStream {
        match &self.attrs.rename {
            Some(rename) => rename.to_token_stream(),
            None => self.original.ident.to_token_stream(),
        }
    }
}

impl<'a> Field<'a> {
    fn multiple_from_syn(cx: &Ctxt, fields: &'a Fields, generics: &Generics) -> Vec<Self> {
        fields
            .iter()
            .enumerate()
            .map(|(index, field)| Field::from_syn(cx, index, field, generics))
            .collect()
    }

    fn from_syn(cx: &Ctxt, index: usize, node: &'a syn::Field, generics: &Generics) -> Self {
        attr::reject_field_attrs(cx, &node.attrs);
        let (member, name) = match &node.ident {
            Some(ident) => (Member::Named(ident.clone()), ident.unraw().to_string()),
            None => (Member::Unnamed(Index::from(index)), index.to_string()),
        };
        Field {
            original: node,
            member,
            name,
            contains_generic: mentions_type_param(&node.ty, generics),
        }
    }

    pub(crate) fn ty(&self) -> &'a Type {
        &self.original.ty
    }
}

/// Whether `ty` names one of the type parameters of `generics` anywhere in its tokens (`T`,
/// `Vec<T>`, `[T; 2]`, `<T as Trait>::Out`).
fn mentions_type_param(ty: &Type, generics: &Generics) -> bool {
    let params: Vec<&Ident> = generics.type_params().map(|param| &param.ident).collect();
    !params.is_empty() && tokens_mention(ty.to_token_stream(), &params)
}

fn tokens_mention(tokens: TokenStream, idents: &[&Ident]) -> bool {
    tokens.into_iter().any(|token| match token {
        TokenTree::Ident(ident) => idents.contains(&&ident),
        TokenTree::Group(group) => tokens_mention(group.stream(), idents),
        TokenTree::Punct(_) | TokenTree::Literal(_) => false,
    })
}
