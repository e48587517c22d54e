//! What a map asks of its key and value types, named once.
//!
//! [`MapKey`] and [`MapValue`] are the bounds of [`StorageBackend`](crate::StorageBackend)
//! (kept from persistent-map 0.1.3), each implemented for every type that meets them: a bound
//! written out in full satisfies them, and writing `K: MapKey` is the same as writing the whole
//! list. They exist for the compiler's message: a key that is not `Serialize` is reported as
//! not being a map key, with the attribute that fixes it, rather than as serde's trait missing.

use std::hash::Hash;

use serde::{de::DeserializeOwned, Serialize};

/// A type that can key a map: `Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync +
/// 'static`, implemented for every such type.
///
/// A derived key gets `Serialize` and `Deserialize` (through its text) from
/// `#[persistent_key(serde)]`:
///
/// ```
/// use persistent_map::{MapKey, PersistentKey};
///
/// #[derive(PersistentKey, Clone, PartialEq, Eq, Hash)]
/// #[persistent_key(serde)]
/// struct SessionKey {
///     tenant: String,
///     user: u64,
/// }
///
/// fn is_a_map_key<K: MapKey>() {}
/// is_a_map_key::<SessionKey>();
/// is_a_map_key::<String>();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot key a map: a key must be `Eq + Hash + Clone + Send + Sync + 'static` \
               and serde's `Serialize + DeserializeOwned`",
    label = "not a map key",
    note = "a `#[derive(PersistentKey)]` key gets `Serialize` and `Deserialize` (as its text) from \
            `#[persistent_key(serde)]`, and the rest from `#[derive(Clone, PartialEq, Eq, Hash)]`"
)]
pub trait MapKey: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}

// Not recommended: an unmet bound is then reported as `MapKey` missing, with its note, rather
// than as the first of this impl's bounds that the type lacks.
#[diagnostic::do_not_recommend]
impl<T> MapKey for T where
    T: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

/// A type that can be a map's value: `Clone + Serialize + DeserializeOwned + Send + Sync +
/// 'static`, implemented for every such type. Values are stored as their JSON.
///
/// ```
/// use persistent_map::MapValue;
///
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Session {
///     token: String,
/// }
///
/// fn is_a_map_value<V: MapValue>() {}
/// is_a_map_value::<Session>();
/// is_a_map_value::<Vec<u8>>();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a map's value: a value must be `Clone + Send + Sync + 'static` \
               and serde's `Serialize + DeserializeOwned`",
    label = "not a map value",
    note = "values are stored as JSON: `#[derive(Clone, serde::Serialize, serde::Deserialize)]`"
)]
pub trait MapValue: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}

#[diagnostic::do_not_recommend]
impl<T> MapValue for T where T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}
