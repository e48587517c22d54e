//! The derive's compile errors, each on the tokens that cause it (`tests/ui/*.rs` and their
//! `.stderr`), in one trybuild run. Regenerate with `TRYBUILD=overwrite` and read every diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("*.rs");
}
