//! The derive's compile errors, each on the tokens that cause it (`tests/ui/*.rs` and their
//! `.stderr`). Regenerate with `TRYBUILD=overwrite` and read every diff.

#[test]
#[cfg_attr(
    feature = "postgres",
    ignore = "rustc's hints list the implementors of `FromStr` in every loaded crate, so the \
              expected output holds without extra features: the plain `cargo test --workspace` \
              runs this suite"
)]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/*.rs");
}
