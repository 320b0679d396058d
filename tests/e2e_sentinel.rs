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
//! No timed assertions: every wait is a hang guard that fails with details.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relay_core::backend::redis::{
    RedisBackend, RedisConfig, RedisTopology, ReplicaAck, SentinelTopology,
};
use relay_core::backend::Backend;
use relay_core::{Domain, Event, JobId, KeySpace, Offset, Profile, Publisher, PublisherConfig};
use relay_testkit::procs::{wait_port, wait_readyz};
use relay_testkit::sentinel::SentinelSet;

mod sse_clients;

use sse_clients::{
    expect_every_event_once, follow, spawn_gateway, spawn_router, step, ClientPlan, ClientTask,
    ClientsReport, LIMIT,
};

/// Hang guard for the whole test.
const TEST_LIMIT: Duration = Duration::from_secs(180);
const JOBS: usize = 40;
const TOTAL: u64 = 24;
/// The master is killed once the producer has published this many rounds.
const KILL_AFTER_ROUND: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_mid_run_every_acked_event_reaches_every_client_once() {
    tokio::time::timeout(TEST_LIMIT, run())
        .await
        .expect("test hung");
}

async fn run() {
    let set = SentinelSet::start();
    set.wait_ready_for_failover().await;
    let sentinels = set.sentinel_addrs().join(",");
    let topology_args = [
        "--redis-sentinel",
        sentinels.as_str(),
        "--redis-master-name",
        set.master_name(),
    ];
    let mut router = spawn_router(&topology_args);
    let (_gateway, addr) = spawn_gateway(&topology_args, &[]);
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
    let backend: Arc<dyn Backend> = Arc::new(
        RedisBackend::connect_topology(RedisTopology::Sentinel(topology), config)
            .await
            .expect("connect through the sentinels"),
    );
    let keys = KeySpace::new(Profile::Native, Domain::new("scan").expect("domain"), 4);
    let publisher = Publisher::new(backend.clone(), keys.clone(), PublisherConfig::default());

    let job_name = |j: usize| format!("sentinel-job-{j:03}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("http client");
    let clients: Vec<ClientTask> = (0..JOBS)
        .map(|j| {
            let url = format!("http://{addr}/v1/jobs/{}/events", job_name(j));
            let plan = ClientPlan {
                drop_every: (j % 4 == 0).then_some(5),
                crlf: j % 3 == 0,
                seed: j as u64 + 1,
            };
            let task = tokio::spawn(follow(http.clone(), url, plan, &["done"]));
            (job_name(j), "follower", task)
        })
        .collect();

    // The producer publishes round n (event n of every job) and retries a
    // round until it is acknowledged: failures in between must be
    // transient. Relay's apply is idempotent by seq, so a retried round
    // whose first attempt did land is applied once.
    let published = AtomicUsize::new(0);
    let mut retries = 0usize;
    let produce = async {
        for n in 1..=TOTAL {
            let batch: Vec<Event> = (0..JOBS).map(|j| step(&job_name(j), n, TOTAL)).collect();
            loop {
                match publisher.publish_batch(&batch).await {
                    Ok(_) => break,
                    Err(relay_core::PublishError::Backend(e)) if e.is_transient() => {
                        retries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("round {n}: permanent error {e:?}"),
                }
            }
            published.store(n as usize, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let fail_over = async {
        relay_testkit::wait::wait_until(LIMIT, "producer mid-run", || {
            std::future::ready(published.load(Ordering::SeqCst) >= KILL_AFTER_ROUND)
        })
        .await;
        let old = set.master().await.expect("master").port();
        let new = set.fail_over().await.port();
        let at_round = published.load(Ordering::SeqCst);
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
        (old, new, at_round)
    };
    let ((), (old, new, at_round)) = tokio::join!(produce, fail_over);
    assert_ne!(old, new);
    assert!(
        at_round < TOTAL as usize,
        "the master died mid-run (after round {at_round} of {TOTAL})"
    );

    let ClientsReport { reconnects, .. } = expect_every_event_once(clients, TOTAL).await;
    // Every job's history on the new master: offsets 1..=TOTAL, gap-free,
    // each event once.
    for j in 0..JOBS {
        let job = JobId::new(job_name(j)).expect("job id");
        let page = backend
            .read_history(&keys.job(&job), Offset(0), TOTAL as usize * 2)
            .await
            .expect("history");
        let offsets: Vec<u64> = page.records.iter().map(|r| r.offset.0).collect();
        assert_eq!(
            offsets,
            (1..=TOTAL).collect::<Vec<_>>(),
            "{}: history after the failover",
            job_name(j)
        );
    }
    eprintln!(
        "e2e_sentinel: master {old} killed after round {at_round}, promoted {new}; \
         {retries} producer retries, {reconnects} client reconnects; \
         {JOBS} jobs x {TOTAL} events, every client got every event once"
    );
    let _ = router.terminate();
}
