//! What to emit when the input is wrong: the errors, plus impls whose bodies are
//! `unreachable!()`, so the user sees only the real errors and not a cascade of "`Key` does not
//! implement `Display`" wherever the key is used (thiserror's `impl/src/fallback.rs`).

use proc_macro2::TokenStream;
use quote::quote;

use crate::ast::Input;
use crate::attr::TextMode;
use crate::expand::{impl_persistent_key, impl_serde, own_text_bounds};

pub(crate) fn expand(input: &Input<'_>, error: syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    let serde = impl_serde(input);
    let impls = match input.text_mode() {
        TextMode::Display => {
            let persistent_key = impl_persistent_key(input, "", "", own_text_bounds(input));
            quote! {
                #error
                #persistent_key
            }
        }
        TextMode::Derive => {
            let persistent_key = impl_persistent_key(input, "", "", Vec::new());
            let text = placeholder_text_impls(input);
            quote! {
                #error
                #text
                #persistent_key
            }
        }
    };
    quote! {
        #impls
        #serde
    }
}

/// `Display` and `FromStr` that are never called: the crate does not compile.
fn placeholder_text_impls(input: &Input<'_>) -> TokenStream {
    let krate = input.krate();
    let ident = &input.original.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics().split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_generics ::core::fmt::Display for #ident #ty_generics #where_clause {
            fn fmt(&self, _: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::unreachable!()
            }
        }

        #[automatically_derived]
        impl #impl_generics ::core::str::FromStr for #ident #ty_generics #where_clause {
            type Err = #krate::__private::KeyParseError;

            fn from_str(_: &str) -> ::core::result::Result<Self, <Self as ::core::str::FromStr>::Err> {
                ::core::unreachable!()
            }
        }
    }
}
