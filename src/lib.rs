//! `relay-suite`: the workspace's root package. It hosts the cross-crate
//! integration tests (`tests/`), the criterion benchmarks (`benches/`) and the
//! examples (`examples/`). It publishes nothing.
