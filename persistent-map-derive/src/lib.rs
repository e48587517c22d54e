//! `#[derive(PersistentKey)]`: an implementation detail of the `persistent-map` crate.
//!
//! Use it through `persistent-map` (`use persistent_map::PersistentKey;`), whose `PersistentKey`
//! trait documents the key format and every attribute. The stages live one per file: `ast`
//! reads the input into a typed model, `attr` parses `#[persistent_key(...)]`, `valid`
//! checks the rules that span several fields or variants, `expand` writes the impls, and
//! `fallback` writes placeholder impls next to the errors when the input is wrong.

mod ast;
mod attr;
mod case;
mod ctxt;
mod expand;
mod fallback;
mod valid;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// The key format and the attributes are documented on `persistent_map::PersistentKey`.
#[proc_macro_derive(PersistentKey, attributes(persistent_key))]
pub fn derive_persistent_key(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
