//! `relay-suite`: the workspace's root package. It hosts the cross-crate
//! integration tests (`tests/`), the criterion benchmarks (`benches/`) and the
//! examples (`examples/`), plus the measurement helpers they share.

pub mod bench;
