//! `relay-testkit`: the test support of the relay workspace, in one crate
//! that every member's tests, the root package's cross-crate tests and
//! benches, and the load tool depend on.
//!
//! It used to be spread over relay-core (a `test-util` feature), the root
//! package's library and each crate's `tests/common`, with `free_port`
//! written twice and a dependency cycle between the root package and
//! relay-load. One kit that depends on no workspace crate keeps the
//! dependency graph acyclic: relay-core can dev-depend on it, and nothing
//! test-only is compiled into relay-core.
//!
//! - [`mod@redis`]: private `redis-server` processes with fault injection
//!   (kill, restart, kill clients, refuse writes, command statistics) and
//!   [`redis::TestRedis`], the Redis of one test.
//! - [`sentinel`]: a master, a replica and three sentinels, with a real
//!   failover on demand.
//! - [`cluster`]: three masters with a replica each (Redis Cluster), with
//!   promotions, failovers and slot migrations on demand, and
//!   [`cluster::key_slot`].
//! - [`procs`]: the workspace's binaries as child processes and waiting
//!   until something listens.
//! - [`ports`]: loopback ports reserved across the machine's test
//!   processes, below the ephemeral range.
//! - [`wait`]: polling a condition with a hang guard.
//! - [`per_redis_client!`]: one test body run as one test per Redis client
//!   (redis-rs, and fred in `fred` builds).
//! - [`rabbitmq`]: unique queue prefixes on the shared broker, and deleting
//!   a prefix's queues.
//! - [`browser`]: the headless-Chromium harness's prerequisites.
//! - [`mod@bench`]: measurements (CPU time, `redis-benchmark` ceilings,
//!   Prometheus samples).
//!
//! Fixtures that need relay types (a connected `RedisBackend`, an in-process
//! gateway, scan events) stay in the `tests/common` of the crate they test:
//! this kit knows Redis, processes and sockets, not relay.

pub mod bench;
pub mod browser;
pub mod cluster;
mod per_client;
pub mod ports;
pub mod procs;
pub mod rabbitmq;
pub mod redis;
pub mod sentinel;
pub mod wait;
