//! A Sentinel failover under the real binaries: a master, a replica and
//! three sentinels (`relay_testkit::sentinel::SentinelSet`); `relay-router`
//! and `relay-sse` started with `--redis-sentinel … --redis-master-name …`;
//! a producer (`relay_core::Publisher` on a Sentinel backend) publishing a
//! stream of events for many jobs; SSE clients following every job. The
//! master is killed (`kill -9`) mid-run; after the promotion everything
//! continues, and the old master, restarted, rejoins as a replica.
//!
//! Exact check: every event the producer saw acknowledged is applied once
//! (each job's history is offsets 1..=TOTAL, gap-free), and every SSE
//! client sees every event once, in order, and the terminal `done`.
//!
//! The producer requires one replica to acknowledge each append
//! (`RedisConfig::min_replicas_ack`, the binaries' `--min-replicas-ack`):
//! with asynchronous replication alone, an append the master acknowledged
//! but had not yet replicated is lost at the failover, the job's history
//! then has a gap, and no exact check could hold (see docs/ARCHITECTURE.md,
//! "Topologies").
//!
//! Runs once per Redis client (`redis_rs::…` and, with `--features fred`,
//! `fred::…`): the binaries with `--redis-client`, the producer's and the
//! checker's backend of the same client.
//!
//! No timed assertions: every wait is a hang guard that fails with details.

use std::sync::Arc;
use std::time::Duration;

use relay_core::backend::redis::{RedisConfig, RedisTopology, ReplicaAck, SentinelTopology};
use relay_core::backend::Backend;
use relay_core::cli::RedisClient;
use relay_core::{Domain, KeySpace, Profile, Publisher, PublisherConfig};
use relay_testkit::procs::{wait_port, wait_readyz};
use relay_testkit::sentinel::SentinelSet;

mod fault_run;
mod sse_clients;

use fault_run::{expect_gap_free_histories, follow_every_job, Producer};
use sse_clients::{expect_every_event_once, spawn_gateway, spawn_router, ClientsReport, LIMIT};

/// Hang guard for the whole test.
const TEST_LIMIT: Duration = Duration::from_secs(180);
const JOBS: usize = 40;
const TOTAL: u64 = 24;
/// The master is killed once the producer has published this many rounds.
const KILL_AFTER_ROUND: usize = 8;
/// The producer publishes no round from this one on until the old master
/// is back (as a replica): the last rounds go to the promoted master.
const HOLD_FROM: usize = 16;

async fn master_killed_mid_run_every_acked_event_reaches_every_client_once(client: RedisClient) {
    tokio::time::timeout(TEST_LIMIT, run(client))
        .await
        .expect("test hung");
}

relay_testkit::per_redis_client!(
    relay_core::cli::RedisClient;
    master_killed_mid_run_every_acked_event_reaches_every_client_once,
);

async fn run(client: RedisClient) {
    let set = SentinelSet::start();
    set.wait_ready_for_failover().await;
    let sentinels = set.sentinel_addrs().join(",");
    let topology_args = [
        "--redis-sentinel",
        sentinels.as_str(),
        "--redis-master-name",
        set.master_name(),
    ];
    let mut router = spawn_router(client, &topology_args);
    let (_gateway, addr) = spawn_gateway(client, &topology_args, &[]);
    wait_port(addr, LIMIT).await;
    wait_readyz(addr, 200, LIMIT).await;

    let topology = SentinelTopology::new(&set.sentinel_addrs(), set.master_name(), "redis://x")
        .expect("topology");
    let config = RedisConfig {
        min_replicas_ack: Some(ReplicaAck {
            replicas: 1,
            timeout: Duration::from_secs(1),
        }),
        ..RedisConfig::default()
    };
    let backend: Arc<dyn Backend> = client
        .connect_topology(RedisTopology::Sentinel(topology), config)
        .await
        .expect("connect through the sentinels");
    let keys = KeySpace::new(Profile::Native, Domain::new("scan").expect("domain"), 4);
    let publisher = Publisher::new(backend.clone(), keys.clone(), PublisherConfig::default());

    let jobs: Vec<String> = (0..JOBS).map(|j| format!("sentinel-job-{j:03}")).collect();
    let clients = follow_every_job(addr, &jobs);
    let producer = Producer::new(publisher, &jobs, TOTAL, Duration::from_millis(50));
    producer.hold_from(HOLD_FROM);
    let fail_over = async {
        producer.reached(KILL_AFTER_ROUND).await;
        let old = set.master().await.expect("master").port();
        let new = set.fail_over().await.port();
        let at_round = producer.published();
        // The promoted master has no replica until the old one returns (as
        // its replica, reconfigured by the sentinels): until then the
        // producer's appends cannot be acknowledged by a replica and are
        // retried.
        let old_node = set
            .nodes()
            .iter()
            .find(|n| n.port() == old)
            .expect("old node");
        old_node.restart();
        producer.release();
        (old, new, at_round)
    };
    let ((), (old, new, at_round)) = tokio::join!(producer.run(), fail_over);
    assert_ne!(old, new);
    assert!(
        at_round < HOLD_FROM,
        "the master died mid-run (after round {at_round} of {TOTAL})"
    );

    let ClientsReport { reconnects, .. } = expect_every_event_once(clients, TOTAL).await;
    // Every job's history on the new master: offsets 1..=TOTAL, gap-free,
    // each event once.
    expect_gap_free_histories(&*backend, &keys, &jobs, TOTAL, "after the failover").await;
    eprintln!(
        "e2e_sentinel: master {old} killed after round {at_round}, promoted {new}; \
         {} producer retries, {reconnects} client reconnects; \
         {JOBS} jobs x {TOTAL} events, every client got every event once",
        producer.retries()
    );
    let _ = router.terminate();
}
