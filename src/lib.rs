//! `relay-suite`: the workspace's root package. It hosts the cross-crate
//! integration tests (`tests/`), the criterion benchmarks (`benches/`) and the
//! examples (`examples/`), plus the helpers they share: measurement
//! ([`mod@bench`]), running the real binaries ([`procs`]) and the headless-browser
//! harness ([`browser`]).

pub mod bench;
pub mod browser;
pub mod procs;
