//! The backend conformance suite: one module per backend trait, each case
//! generated per backend by [`conformance_tests!`](support::conformance_tests),
//! so `cargo test` shows `stream_log::memory::…`, `stream_log::redis::…`,
//! `stream_log::redis_cluster_mode::…`, `stream_log::redis_sentinel::…`
//! (a master found through three sentinels) and `stream_log::redis_cluster::…`;
//! with the `fred` feature also `stream_log::fred::…`, `…::fred_cluster_mode::…`,
//! `…::fred_sentinel::…` and `…::fred_cluster::…` (`FredBackend` on the same servers). Redis-only behaviour
//! (connection handling, fault injection) is in `redis_faults`, and
//! following a Sentinel failover in `sentinel_faults`, and Redis Cluster
//! faults (blocked reads, failovers, replica acknowledgements) in
//! `cluster_faults`.
//!
//! Run: `cargo test -p relay-core --test conformance` (add `--features fred`
//! for the fred backend).
//! The Redis tests start a private `redis-server` each (or use `REDIS_URL`
//! with a unique key prefix); a missing `redis-server` fails them loudly.

mod support;

mod backend;
mod cluster_faults;
mod coordination;
mod job_log;
mod kv;
mod pubsub;
mod redis_faults;
mod sentinel_faults;
mod stream_log;
