//! `relay-suite`: the workspace's root package. It hosts the cross-crate
//! integration tests (`tests/`), the criterion benchmarks (`benches/`) and the
//! examples (`examples/`), plus the helpers they share: measurement
//! ([`bench`]) and running the real binaries ([`procs`]).

pub mod bench;
pub mod procs;
