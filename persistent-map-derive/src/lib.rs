//! Placeholder until the derive lands.
use proc_macro::TokenStream;

/// Derives `PersistentKey`.
#[proc_macro_derive(PersistentKey, attributes(persistent_key))]
pub fn derive_persistent_key(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
