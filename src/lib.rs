//! `relay-suite`: the workspace's root package. It hosts the cross-crate
//! integration tests (`tests/`) and the criterion benchmarks (`benches/`);
//! it has no code of its own.
//!
//! The helpers those share (private Redis servers, running the binaries,
//! the browser harness, measurements) are the `relay-testkit` crate, which
//! every member's tests use too. This library exists only because a package
//! needs a library or binary target.
