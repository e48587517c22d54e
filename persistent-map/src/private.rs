//! Not public API. Referenced by macro-generated code.
