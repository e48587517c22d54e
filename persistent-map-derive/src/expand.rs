//! Writes the impls of a valid input: `Display` and `FromStr` (unless the type keeps its own
//! text) and `PersistentKey`.
//!
//! The generated code is glue: the key format itself lives in the runtime's `__private`
//! module, reached through the crate path (`::persistent_map` unless `crate = "..."`), and
//! everything else is fully qualified, so the code means the same whatever the user imported.

use proc_macro2::{Group, Ident, Literal, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{parse_quote, DeriveInput, Generics, Type, WherePredicate};

use crate::ast::{Data, Field, Input, Variant};
use crate::attr::TextMode;
use crate::ctxt::Ctxt;
use crate::{fallback, valid};

/// An impl's header (`impl ... for Type where ...`) and its items, apart.
struct Impl {
    header: TokenStream,
    items: TokenStream,
}

/// The whole derive: read, check, then write the impls, or the errors and placeholder impls.
pub(crate) fn derive(node: &DeriveInput) -> TokenStream {
    let cx = Ctxt::default();
    let input = Input::from_syn(node, &cx);
    valid::check(&input, &cx);
    match cx.check() {
        Ok(()) => expand(&input),
        Err(error) => fallback::expand(&input, error),
    }
}

fn expand(input: &Input<'_>) -> TokenStream {
    let text_and_key = expand_text_and_key(input);
    let serde = impl_serde(input);
    quote! {
        #text_and_key
        #serde
    }
}

fn expand_text_and_key(input: &Input<'_>) -> TokenStream {
    let table_name = input.table_name();
    match input.text_mode() {
        // The type's own text is not ours to describe: no layout.
        TextMode::Display => impl_persistent_key(input, &table_name, "", own_text_bounds(input)),
        TextMode::Derive => {
            let display = impl_display(input);
            let from_str = impl_from_str(input);
            let mut bounds = display_bounds(input);
            bounds.extend(from_str_bounds(input));
            let layout = input.key_layout();
            let persistent_key = impl_persistent_key(input, &table_name, &layout, bounds);
            // Through a local macro whose name is the fix: when the type also has its own
            // `Display` or `FromStr`, rustc's conflict (E0119), which no attribute can word,
            // then says that it "originates in the macro" named so.
            // The bodies are the macro's arguments, so an error in them (a field without
            // `Display`) is not said to originate in it.
            let (display_header, display_items) = (display.header, display.items);
            let (from_str_header, from_str_items) = (from_str.header, from_str.items);
            quote! {
                const _: () = {
                    macro_rules! to_keep_your_own_Display_and_FromStr_add_persistent_key_text_display {
                        ({ $($display:tt)* } { $($from_str:tt)* }) => {
                            #[automatically_derived]
                            #display_header { $($display)* }
                            #[automatically_derived]
                            #from_str_header { $($from_str)* }
                        };
                    }
                    to_keep_your_own_Display_and_FromStr_add_persistent_key_text_display! {
                        { #display_items } { #from_str_items }
                    }
                };
                #persistent_key
            }
        }
    }
}

/// `impl PersistentKey`, with `TABLE_NAME = table_name` and `KEY_LAYOUT = key_layout`, under
/// the extra `bounds`.
pub(crate) fn impl_persistent_key(
    input: &Input<'_>,
    table_name: &str,
    key_layout: &str,
    bounds: Vec<WherePredicate>,
) -> TokenStream {
    let krate = input.krate();
    let ident = &input.original.ident;
    let generics = with_bounds(input.generics(), bounds);
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_generics #krate::__private::PersistentKey for #ident #ty_generics #where_clause {
            const TABLE_NAME: &'static str = #table_name;
            const KEY_LAYOUT: &'static str = #key_layout;
        }
    }
}

/// With `serde`, `Serialize` and `Deserialize` through the key's text (nothing without it).
/// They need only the type's `Display` and `FromStr`, whichever wrote them, so they are
/// emitted next to the fallback's placeholders too, sparing the user a cascade of "`Key` does
/// not implement `Serialize`" where the key meets a map.
pub(crate) fn impl_serde(input: &Input<'_>) -> TokenStream {
    if input.attrs.serde.is_none() {
        return TokenStream::new();
    }
    let krate = input.krate();
    let ident = &input.original.ident;
    let generic = !input.generics().params.is_empty();
    let serialize_bounds: Vec<WherePredicate> = match generic {
        true => vec![parse_quote!(Self: ::core::fmt::Display)],
        false => Vec::new(),
    };
    let serialize_generics = with_bounds(input.generics(), serialize_bounds);
    let (impl_generics, ty_generics, where_clause) = serialize_generics.split_for_impl();
    let serialize = quote! {
        #[automatically_derived]
        impl #impl_generics #krate::__private::serde::Serialize for #ident #ty_generics #where_clause {
            fn serialize<__S>(&self, __serializer: __S) -> ::core::result::Result<__S::Ok, __S::Error>
            where
                __S: #krate::__private::serde::Serializer,
            {
                #krate::__private::serialize_key_text(self, __serializer)
            }
        }
    };
    let deserialize_bounds: Vec<WherePredicate> = match generic {
        true => vec![
            parse_quote!(Self: ::core::str::FromStr),
            parse_quote!(<Self as ::core::str::FromStr>::Err: ::core::fmt::Display),
        ],
        false => Vec::new(),
    };
    let mut deserialize_generics = with_bounds(input.generics(), deserialize_bounds);
    deserialize_generics.params.insert(0, parse_quote!('__de));
    let (impl_generics, _, where_clause) = deserialize_generics.split_for_impl();
    let deserialize = quote! {
        #[automatically_derived]
        impl #impl_generics #krate::__private::serde::Deserialize<'__de> for #ident #ty_generics #where_clause {
            fn deserialize<__D>(__deserializer: __D) -> ::core::result::Result<Self, __D::Error>
            where
                __D: #krate::__private::serde::Deserializer<'__de>,
            {
                #krate::__private::deserialize_key_text(__deserializer)
            }
        }
    };
    quote! {
        #serialize
        #deserialize
    }
}

/// With `text = "display"`, a generic type is a key wherever its own `Display` and `FromStr`
/// are there to be used. A type without generics needs no bound: a missing impl is then
/// reported on the type's name.
pub(crate) fn own_text_bounds(input: &Input<'_>) -> Vec<WherePredicate> {
    if input.generics().params.is_empty() {
        return Vec::new();
    }
    let ty: Type = parse_quote!(Self);
    let mut bounds = vec![display_bound(&ty)];
    bounds.extend(from_str_bounds_of(&ty));
    bounds
}

fn impl_display(input: &Input<'_>) -> Impl {
    let krate = input.krate();
    let separator = input.separator();
    let body = match &input.data {
        Data::Struct(fields) => {
            let pattern = destructure(quote!(Self), fields);
            let displays = field_displays(fields);
            quote! {
                let #pattern = self;
                #krate::__private::write_fields(__formatter, #separator, &[#(#displays),*])
            }
        }
        Data::Enum(variants) => {
            let arms = variants.iter().map(|variant| {
                let ident = &variant.original.ident;
                let pattern = destructure(quote!(Self::#ident), &variant.fields);
                let text = &variant.text;
                let displays = field_displays(&variant.fields);
                quote! {
                    #pattern => #krate::__private::write_variant(
                        __formatter, #separator, #text, &[#(#displays),*],
                    ),
                }
            });
            quote! {
                match self {
                    #(#arms)*
                }
            }
        }
        Data::Union(_) => unreachable!("`valid::check` rejects a union whose text is derived"),
    };
    let generics = with_bounds(input.generics(), display_bounds(input));
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let ident = &input.original.ident;
    Impl {
        header: quote! {
            impl #impl_generics ::core::fmt::Display for #ident #ty_generics #where_clause
        },
        items: quote! {
            fn fmt(&self, __formatter: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                #body
            }
        },
    }
}

fn impl_from_str(input: &Input<'_>) -> Impl {
    let krate = input.krate();
    let type_name = input.type_name();
    let separator = input.separator();
    let body = match &input.data {
        Data::Struct(fields) => {
            let bindings = bindings(fields);
            let count = Literal::usize_unsuffixed(fields.len());
            let construct = construct(quote!(Self), fields);
            quote! {
                let [#(#bindings),*] = __parser.split_fields::<#count>(__text)?;
                ::core::result::Result::Ok(#construct)
            }
        }
        Data::Enum(variants) => {
            let arms = variants.iter().map(variant_arm);
            let texts = variants.iter().map(|variant| &variant.text);
            quote! {
                match __parser.variant_name(__text) {
                    #(#arms)*
                    _ => ::core::result::Result::Err(
                        __parser.unknown_variant(__text, &[#(#texts),*]),
                    ),
                }
            }
        }
        Data::Union(_) => unreachable!("`valid::check` rejects a union whose text is derived"),
    };
    let generics = with_bounds(input.generics(), from_str_bounds(input));
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let ident = &input.original.ident;
    Impl {
        header: quote! {
            impl #impl_generics ::core::str::FromStr for #ident #ty_generics #where_clause
        },
        items: quote! {
            type Err = #krate::__private::KeyParseError;

            fn from_str(__text: &str) -> ::core::result::Result<Self, <Self as ::core::str::FromStr>::Err> {
                let __parser = #krate::__private::KeyParser::new(#type_name, #separator);
                #body
            }
        },
    }
}

/// The `match` arm that parses one variant, given its text as the name.
fn variant_arm(variant: &Variant<'_>) -> TokenStream {
    let text = &variant.text;
    let name = variant.name();
    let ident = &variant.original.ident;
    let bindings = bindings(&variant.fields);
    let count = Literal::usize_unsuffixed(variant.fields.len());
    let construct = construct(quote!(Self::#ident), &variant.fields);
    quote! {
        #text => {
            let __parser = __parser.variant(#name);
            let [#(#bindings),*] = __parser.split_payload::<#count>(__text)?;
            ::core::result::Result::Ok(#construct)
        }
    }
}

/// The local that holds the field at `index` while it is written or parsed.
fn binding(index: usize) -> Ident {
    format_ident!("__field{}", index)
}

fn bindings(fields: &[Field<'_>]) -> Vec<Ident> {
    (0..fields.len()).map(binding).collect()
}

/// `path { member: __field0, ... }`: braces fit named, tuple and unit shapes alike.
fn destructure(path: TokenStream, fields: &[Field<'_>]) -> TokenStream {
    let members = fields.iter().map(|field| &field.member);
    let bindings = bindings(fields);
    quote!(#path { #(#members: #bindings),* })
}

/// `path { member: <parsed __field0>, ... }`.
fn construct(path: TokenStream, fields: &[Field<'_>]) -> TokenStream {
    let members = fields.iter().map(|field| &field.member);
    let parsed = fields.iter().zip(bindings(fields)).map(|(field, binding)| {
        let ty = field.ty();
        let name = &field.name;
        let text = at_type(binding, ty);
        // Spanned at the field's type: a type without `FromStr`, or whose error is not an
        // `Error`, is reported there, by the `from_str` call or the cast of its error. The
        // type's own tokens get that one span too, so the two places that need `FromStr`
        // report it once.
        let ty_tokens = respan(ty.to_token_stream(), ty.span());
        quote_spanned! {ty.span()=>
            __parser.parsed_field(
                #name,
                &#text,
                <#ty_tokens as ::core::str::FromStr>::from_str(&#text).map_err(|__error| {
                    ::std::boxed::Box::new(__error)
                        as ::std::boxed::Box<
                            dyn ::core::error::Error + ::core::marker::Send + ::core::marker::Sync,
                        >
                }),
            )?
        }
    });
    quote!(#path { #(#members: #parsed),* })
}

/// Each field as a `&dyn Display`, a cast spanned at the field's type: a type without
/// `Display` is reported there, as a cast that needs it.
fn field_displays(fields: &[Field<'_>]) -> Vec<TokenStream> {
    fields
        .iter()
        .zip(bindings(fields))
        .map(|(field, binding)| {
            let ty = field.ty();
            let binding = at_type(binding, ty);
            quote_spanned!(ty.span()=> #binding as &dyn ::core::fmt::Display)
        })
        .collect()
}

/// `tokens` with every span (inside groups too) set to `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                token = TokenTree::Group(respanned);
            }
            token.set_span(span);
            token
        })
        .collect()
}

/// The local `binding`, spanned at the field's type so that an error about it points there.
/// (Both spans resolve at the derive's call site, so it is the same local.)
fn at_type(binding: Ident, ty: &Type) -> Ident {
    Ident::new(&binding.to_string(), ty.span())
}

/// The field types that mention a type parameter, each once: only they need a bound.
fn generic_field_types<'a>(input: &Input<'a>) -> Vec<&'a Type> {
    let fields: Vec<&Field<'a>> = match &input.data {
        Data::Struct(fields) => fields.iter().collect(),
        Data::Enum(variants) => variants.iter().flat_map(|v| &v.fields).collect(),
        Data::Union(_) => Vec::new(),
    };
    let mut types: Vec<&'a Type> = Vec::new();
    for field in fields.into_iter().filter(|field| field.contains_generic) {
        if !types.contains(&field.ty()) {
            types.push(field.ty());
        }
    }
    types
}

fn display_bounds(input: &Input<'_>) -> Vec<WherePredicate> {
    generic_field_types(input)
        .into_iter()
        .map(display_bound)
        .collect()
}

fn from_str_bounds(input: &Input<'_>) -> Vec<WherePredicate> {
    generic_field_types(input)
        .into_iter()
        .flat_map(from_str_bounds_of)
        .collect()
}

fn display_bound(ty: &Type) -> WherePredicate {
    parse_quote!(#ty: ::core::fmt::Display)
}

/// `ty: FromStr` with an error that `PersistentKey` can carry as a source.
fn from_str_bounds_of(ty: &Type) -> [WherePredicate; 2] {
    [
        parse_quote!(#ty: ::core::str::FromStr),
        parse_quote!(
            <#ty as ::core::str::FromStr>::Err: ::core::error::Error
                + ::core::marker::Send
                + ::core::marker::Sync
                + 'static
        ),
    ]
}

fn with_bounds(generics: &Generics, bounds: Vec<WherePredicate>) -> Generics {
    let mut generics = generics.clone();
    if !bounds.is_empty() {
        generics.make_where_clause().predicates.extend(bounds);
    }
    generics
}
