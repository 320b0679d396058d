//! The k6 scripts (`load/k6/`) classify a job with constants of their own —
//! the seqs a successful scan emits and the terminal stage — since a k6
//! script cannot link the Rust crates. These tests keep those constants equal
//! to the ones `relay-load scan` uses, so the two tools call the same job
//! complete (the scripts' own logic is checked by `scripts/k6.sh check`).

use std::path::Path;

fn sse_js() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../load/k6/lib/sse.js");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The right-hand side of `export const NAME = ...;` in `js`.
fn js_const<'a>(js: &'a str, name: &str) -> &'a str {
    let decl = format!("export const {name} = ");
    let start = js
        .find(&decl)
        .unwrap_or_else(|| panic!("load/k6/lib/sse.js declares no {name}"))
        + decl.len();
    let len = js[start..]
        .find(';')
        .unwrap_or_else(|| panic!("{name} has no terminating ';'"));
    js[start..start + len].trim()
}

#[test]
fn k6_expected_seqs_match_relay_load() {
    let js = sse_js();
    let list: Vec<u64> = serde_json::from_str(js_const(&js, "EXPECTED_SEQS"))
        .expect("EXPECTED_SEQS is a JSON array of integers");
    assert_eq!(list, relay_load::scan::expected_seqs());
}

#[test]
fn k6_terminal_stage_matches_relay_core() {
    let js = sse_js();
    let stage: String = serde_json::from_str(&js_const(&js, "DONE_STAGE").replace('\'', "\""))
        .expect("DONE_STAGE is a string literal");
    assert_eq!(stage, relay_core::event::DONE_STAGE);
}
