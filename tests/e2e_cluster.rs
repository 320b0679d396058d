//! Redis Cluster faults under the real binaries: a private cluster of three
//! masters with a replica each (`relay_testkit::cluster::RedisCluster`);
//! `relay-router` and `relay-sse` started with `--redis-cluster <seeds>
//! --shards 6`; a producer (`relay_core::Publisher` on a cluster backend)
//! publishing the events of many jobs in rounds; an SSE client following
//! every job. One test per fault, each mid-run:
//!
//! - `master_killed`: `kill -9` of the master that owns a shard stream and
//!   several jobs; its replica is promoted, the old master returns as a
//!   replica.
//! - `manual_failover`: `CLUSTER FAILOVER` of that master's shard.
//! - `slots_migrating`: the slots of a shard stream and of some jobs move
//!   to another master in steps: part of their keys first (clients get
//!   `ASK` for those while traffic runs), the rest later, then the slots
//!   are handed over (stale clients get `MOVED`).
//! - `live_channel_slots_moved`: the slots of followed jobs' live channels
//!   and of the gateway's probe channel move while clients follow; then
//!   the gateway's subscriber is cut, and it subscribes again on the new
//!   owners.
//! - `scripts_missing_after_promotion`: the promoted replica has no cached
//!   scripts, so the router's first applies there answer `NOSCRIPT`; a
//!   master's script cache is also flushed mid-run.
//!
//! Exact check, in each: every event the producer saw acknowledged is
//! applied once (each job's history is offsets 1..=TOTAL, gap-free) and
//! every SSE client sees every event once, in order, and the terminal
//! `done`.
//!
//! Where a master is killed, the producer and the binaries require one
//! replica to acknowledge each append (`--min-replicas-ack 1`): with
//! asynchronous replication alone an acknowledged append the replica had
//! not received is lost with the master, and no exact check could hold
//! (see `cluster_faults::measure_acknowledged_appends_lost_at_kill` in
//! relay-core's conformance suite for how many).
//!
//! The producer is held back before [`HOLD_FROM`] until the fault is over,
//! so that the last rounds are published on the new topology. No timed
//! assertions: every wait is a hang guard that fails with details.
//!
//! Each test runs once per Redis client (`redis_rs::…` and, with
//! `--features fred`, `fred::…`): the binaries with `--redis-client`, the
//! producer's and the checker's backend of the same client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use relay_core::backend::redis::{ClusterTopology, RedisConfig, RedisTopology, ReplicaAck};
use relay_core::backend::Backend;
use relay_core::cli::RedisClient;
use relay_core::keys::slot;
use relay_core::{Domain, JobId, KeySpace, Profile, Publisher, PublisherConfig};
use relay_testkit::cluster::{NodeRole, RedisCluster};
use relay_testkit::procs::{wait_port, wait_readyz, Proc};

mod fault_run;
mod sse_clients;

use fault_run::{expect_gap_free_histories, follow_every_job, Producer};
use sse_clients::{expect_every_event_once, spawn_gateway, spawn_router, ClientTask, LIMIT};

/// Hang guard for one whole test.
const TEST_LIMIT: Duration = Duration::from_secs(120);
const JOBS: usize = 24;
const TOTAL: u64 = 16;
/// Shard streams (two per master, before any fault).
const SHARDS: u32 = 6;
/// The fault starts once the producer has published this many rounds.
const FAULT_AT: usize = 4;
/// The producer publishes no round from this one on until the fault is
/// over.
const HOLD_FROM: usize = 10;
/// Pause between two rounds.
const PAUSE: Duration = Duration::from_millis(50);

/// A private cluster, relay-router and relay-sse on it, and the
/// producer's backend; killed on drop.
struct Stack {
    // Field order is drop order: the processes go before the cluster.
    _router: Proc,
    _gateway: Proc,
    addr: SocketAddr,
    backend: Arc<dyn Backend>,
    keys: KeySpace,
    cluster: RedisCluster,
}

impl Stack {
    /// Starts everything with `client`; with `replica_ack` the producer
    /// and the binaries wait for one replica to acknowledge each append.
    async fn start(client: RedisClient, replica_ack: bool) -> Self {
        let cluster = RedisCluster::start_private();
        let seeds = cluster.seeds();
        let seeds_arg = seeds.join(",");
        let shards = SHARDS.to_string();
        let mut conn = vec![
            "--redis-cluster",
            seeds_arg.as_str(),
            "--shards",
            shards.as_str(),
        ];
        if replica_ack {
            conn.extend(["--min-replicas-ack", "1"]);
        }
        let router = spawn_router(client, &conn);
        let (gateway, addr) = spawn_gateway(client, &conn, &[]);
        wait_port(addr, LIMIT).await;
        wait_readyz(addr, 200, LIMIT).await;

        let topology = ClusterTopology::new(&seeds, "redis://x").expect("topology");
        let config = RedisConfig {
            min_replicas_ack: replica_ack.then_some(ReplicaAck {
                replicas: 1,
                timeout: Duration::from_secs(1),
            }),
            ..RedisConfig::default()
        };
        let backend = client
            .connect_topology(RedisTopology::Cluster(topology), config)
            .await
            .expect("connect to the cluster");
        let keys = KeySpace::new(
            Profile::Native,
            Domain::new("scan").expect("domain"),
            SHARDS,
        );
        Self {
            _router: router,
            _gateway: gateway,
            addr,
            backend,
            keys,
            cluster,
        }
    }

    /// `JOBS` job names for the test `name`.
    fn jobs(name: &str) -> Vec<String> {
        (0..JOBS).map(|j| format!("{name}-job-{j:03}")).collect()
    }

    /// The hash slot of `job`'s keys (its hash and its live channel).
    fn job_slot(&self, job: &str) -> u16 {
        slot(&self.keys.job(&JobId::new(job).expect("job id")).meta)
    }

    /// The slot of shard stream 0 (with its dedupe markers and DLQ).
    fn stream_slot(&self) -> u16 {
        slot(&self.keys.shard_stream(0))
    }

    /// Those of `jobs` whose keys are served by the master at `port`.
    async fn jobs_on(&self, jobs: &[String], port: u16) -> Vec<String> {
        let mut out = Vec::new();
        for job in jobs {
            let owner = self
                .cluster
                .master_of_slot(self.job_slot(job))
                .await
                .expect("slot owner");
            if owner == port {
                out.push(job.clone());
            }
        }
        out
    }

    fn producer(&self, jobs: &[String]) -> Producer {
        let publisher = Publisher::new(
            self.backend.clone(),
            self.keys.clone(),
            PublisherConfig::default(),
        );
        let producer = Producer::new(publisher, jobs, TOTAL, PAUSE);
        producer.hold_from(HOLD_FROM);
        producer
    }

    /// The exact check: every client saw every event once, in order, and
    /// every job's history is gap-free. Returns the clients' reconnects.
    async fn expect_exact(&self, clients: Vec<ClientTask>, jobs: &[String], when: &str) -> usize {
        let report = expect_every_event_once(clients, TOTAL).await;
        expect_gap_free_histories(&*self.backend, &self.keys, jobs, TOTAL, when).await;
        report.reconnects
    }

    /// `INFO <section>` of the node at `port`, as `field -> value`.
    async fn info(&self, port: u16, section: &str) -> Vec<(String, String)> {
        let v = self
            .cluster
            .command(port, &["INFO", section])
            .await
            .expect("INFO");
        text(&v)
            .lines()
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// A field of `INFO <section>`, or of one of its `k=v,...` values
    /// (`field` `errorstat_NOSCRIPT`, `sub` `count`), as a number; 0 when
    /// absent.
    async fn info_number(&self, port: u16, section: &str, field: &str, sub: Option<&str>) -> u64 {
        let info = self.info(port, section).await;
        let Some((_, value)) = info.iter().find(|(k, _)| k == field) else {
            return 0;
        };
        let value = match sub {
            None => value.as_str(),
            Some(sub) => value
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == sub)
                .map_or("0", |(_, v)| v),
        };
        value.parse().unwrap_or(0)
    }

    /// The port of the replica of the master at `master`.
    async fn replica_of(&self, master: u16) -> u16 {
        for node in self.cluster.nodes().await {
            if node.role != NodeRole::Replica {
                continue;
            }
            let role = self
                .cluster
                .command(node.port, &["ROLE"])
                .await
                .expect("ROLE");
            if let Value::Array(items) = &role {
                if items.get(2).map(|p| text(p).parse::<u16>().ok()) == Some(Some(master)) {
                    return node.port;
                }
            }
        }
        panic!("master {master} has no replica");
    }

    /// The channels subscribed on the node at `port` matching `pattern`.
    async fn channels_on(&self, port: u16, pattern: &str) -> Vec<String> {
        let v = self
            .cluster
            .command(port, &["PUBSUB", "CHANNELS", pattern])
            .await
            .expect("PUBSUB CHANNELS");
        match v {
            Value::Array(items) => items.iter().map(text).collect(),
            other => panic!("PUBSUB CHANNELS answered {other:?}"),
        }
    }

    /// The masters' ports.
    async fn masters(&self) -> Vec<u16> {
        self.cluster
            .nodes()
            .await
            .into_iter()
            .filter(|n| n.role == NodeRole::Master)
            .map(|n| n.port)
            .collect()
    }
}

/// The text of a string reply.
fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::Int(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// Runs `test` under the hang guard.
async fn guarded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("test hung");
}

async fn master_killed(client: RedisClient) {
    guarded(async {
        let stack = Stack::start(client, true).await;
        let jobs = Stack::jobs("kill");
        let slot = stack.stream_slot();
        let victim = stack.cluster.master_of_slot(slot).await.expect("owner");
        let doomed = stack.jobs_on(&jobs, victim).await;
        assert!(
            doomed.len() >= 3,
            "the killed master serves several followed jobs ({doomed:?})"
        );
        let clients = follow_every_job(stack.addr, &jobs);
        let producer = stack.producer(&jobs);
        let fault = async {
            producer.reached(FAULT_AT).await;
            let promotion = stack.cluster.kill_master(slot).await.expect("promotion");
            let at_round = producer.published();
            // With --min-replicas-ack 1 the promoted master takes no
            // appends until it has a replica again: the old master,
            // restarted, rejoins as its replica.
            stack
                .cluster
                .restart_node(promotion.old_master)
                .await
                .expect("old master back as a replica");
            producer.release();
            (promotion, at_round)
        };
        let ((), (promotion, at_round)) = tokio::join!(producer.run(), fault);
        assert_eq!(promotion.old_master, victim);
        assert!(at_round < HOLD_FROM, "killed mid-run (round {at_round})");
        let reconnects = stack
            .expect_exact(clients, &jobs, "after the master was killed")
            .await;
        eprintln!(
            "e2e_cluster master_killed: {victim} (shard 0, {} of {JOBS} jobs) killed after \
             round {at_round}, {} promoted; {} producer retries, {reconnects} client reconnects",
            doomed.len(),
            promotion.new_master,
            producer.retries()
        );
    })
    .await;
}

async fn manual_failover(client: RedisClient) {
    guarded(async {
        let stack = Stack::start(client, false).await;
        let jobs = Stack::jobs("failover");
        let slot = stack.stream_slot();
        let old = stack.cluster.master_of_slot(slot).await.expect("owner");
        let moved = stack.jobs_on(&jobs, old).await;
        assert!(!moved.is_empty(), "the old master serves followed jobs");
        let clients = follow_every_job(stack.addr, &jobs);
        let producer = stack.producer(&jobs);
        let fault = async {
            producer.reached(FAULT_AT).await;
            let promotion = stack.cluster.failover(slot).await.expect("failover");
            let at_round = producer.published();
            producer.release();
            (promotion, at_round)
        };
        let ((), (promotion, at_round)) = tokio::join!(producer.run(), fault);
        assert_eq!(promotion.old_master, old);
        assert!(
            at_round < HOLD_FROM,
            "failed over mid-run (round {at_round})"
        );
        let reconnects = stack
            .expect_exact(clients, &jobs, "after the failover")
            .await;
        eprintln!(
            "e2e_cluster manual_failover: {old} -> {} after round {at_round}; {} producer \
             retries, {reconnects} client reconnects",
            promotion.new_master,
            producer.retries()
        );
    })
    .await;
}

async fn slots_migrating(client: RedisClient) {
    guarded(async {
        let stack = Stack::start(client, false).await;
        let jobs = Stack::jobs("migrate");
        let stream = stack.keys.shard_stream(0);
        let stream_slot = stack.stream_slot();
        let source = stack
            .cluster
            .master_of_slot(stream_slot)
            .await
            .expect("owner");
        let target = stack
            .cluster
            .other_master(stream_slot)
            .await
            .expect("target");
        // Four jobs on the same source, in slots of their own.
        let moving: Vec<String> = stack
            .jobs_on(&jobs, source)
            .await
            .into_iter()
            .filter(|j| stack.job_slot(j) != stream_slot)
            .take(4)
            .collect();
        assert_eq!(moving.len(), 4, "four followed jobs on {source}");
        let mut slots: Vec<u16> = moving.iter().map(|j| stack.job_slot(j)).collect();
        slots.sort_unstable();
        slots.dedup();
        let redirected = |kind: &'static str| {
            let stack = &stack;
            async move {
                stack
                    .info_number(source, "errorstats", kind, Some("count"))
                    .await
            }
        };
        let (ask_before, moved_before) = (
            redirected("errorstat_ASK").await,
            redirected("errorstat_MOVED").await,
        );
        let clients = follow_every_job(stack.addr, &jobs);
        let producer = stack.producer(&jobs);
        let fault = async {
            producer.reached(FAULT_AT).await;
            for &s in slots.iter().chain([&stream_slot]) {
                stack
                    .cluster
                    .begin_migration(s, target)
                    .await
                    .expect("migrating");
            }
            // Part of the keys: the shard stream (its group and pending
            // entries with it) but not the router's lease beside it, and
            // the first half of the jobs' hashes. Commands on moved keys
            // get ASK from the source, on the others the source answers.
            let migrate = [
                "MIGRATE",
                "127.0.0.1",
                &target.to_string(),
                "",
                "0",
                "5000",
                "KEYS",
                &stream,
            ];
            stack
                .cluster
                .command(source, &migrate)
                .await
                .expect("MIGRATE the shard stream");
            for job in &moving[..2] {
                stack
                    .cluster
                    .migrate_keys(stack.job_slot(job), 10)
                    .await
                    .expect("migrate a job's keys");
            }
            let half_from = producer.published();
            // Traffic in the half-moved state.
            producer.reached(FAULT_AT + 3).await;
            let half_to = producer.published();
            let asked = redirected("errorstat_ASK").await - ask_before;
            for &s in slots.iter().chain([&stream_slot]) {
                while stack.cluster.migrate_keys(s, 100).await.expect("migrate") > 0 {}
                stack
                    .cluster
                    .finish_migration(s, target)
                    .await
                    .expect("slot handed over");
            }
            producer.release();
            (half_from, half_to, asked)
        };
        let ((), (half_from, half_to, asked)) = tokio::join!(producer.run(), fault);
        let moved = redirected("errorstat_MOVED").await - moved_before;
        // The source redirected clients: ASK for the keys it no longer had
        // while the slots were half moved, MOVED to those with an old slot
        // map afterwards.
        assert!(asked >= 1, "ASK from {source} while half moved");
        assert!(moved >= 1, "MOVED from {source} after the hand-over");
        assert!(
            half_to > half_from,
            "rounds were published while the slots were half moved ({half_from}..{half_to})"
        );
        for s in slots.iter().chain([&stream_slot]) {
            assert_eq!(
                stack.cluster.master_of_slot(*s).await.expect("owner"),
                target
            );
        }
        let reconnects = stack
            .expect_exact(clients, &jobs, "after the slots moved")
            .await;
        eprintln!(
            "e2e_cluster slots_migrating: slots {slots:?} and {stream_slot} ({stream}) moved \
             {source} -> {target}, rounds {half_from}..{half_to} half moved ({asked} ASK, \
             {moved} MOVED from the source); {} producer retries, {reconnects} client reconnects",
            producer.retries()
        );
    })
    .await;
}

async fn live_channel_slots_moved(client: RedisClient) {
    guarded(async {
        let stack = Stack::start(client, false).await;
        let jobs = Stack::jobs("channels");
        let clients = follow_every_job(stack.addr, &jobs);
        let producer = stack.producer(&jobs);
        let fault = async {
            producer.reached(FAULT_AT).await;
            // The gateway's own probe channel, found where it subscribed it.
            let mut probe = None;
            for port in stack.masters().await {
                if let Some(ch) = stack
                    .channels_on(port, "relay:scan:probe:*")
                    .await
                    .into_iter()
                    .next()
                {
                    probe = Some((ch, port));
                }
            }
            let (probe, probe_owner) = probe.expect("the gateway subscribed its probe channel");
            // Three followed jobs' live channels (= their jobs' slots), and
            // the probe channel's slot, each to another master.
            let mut moves: Vec<(String, u16)> = jobs[..3]
                .iter()
                .map(|j| {
                    let live = stack.keys.job(&JobId::new(j.clone()).expect("id")).live;
                    let s = slot(&live);
                    (live, s)
                })
                .collect();
            moves.push((probe.clone(), slot(&probe)));
            let mut moved = Vec::new();
            for (channel, s) in &moves {
                let from = stack.cluster.master_of_slot(*s).await.expect("owner");
                let to = stack.cluster.other_master(*s).await.expect("target");
                stack.cluster.move_slot(*s, to).await.expect("slot moved");
                moved.push((channel.clone(), from, to));
            }
            // Traffic with the subscriptions on the old owners.
            producer.reached(FAULT_AT + 2).await;
            // Cut the gateway's subscriber: it subscribes again on the
            // masters of the new slot map and catches its clients up.
            let killed = stack
                .cluster
                .command(probe_owner, &["CLIENT", "KILL", "TYPE", "pubsub"])
                .await
                .expect("CLIENT KILL");
            assert!(
                matches!(killed, Value::Int(n) if n >= 1),
                "the subscriber's connection to {probe_owner} was cut ({killed:?})"
            );
            for (channel, _, to) in &moved {
                relay_testkit::wait::wait_until(
                    LIMIT,
                    &format!("{channel} subscribed again on its new owner {to}"),
                    || async { !stack.channels_on(*to, channel).await.is_empty() },
                )
                .await;
            }
            producer.release();
            moved
        };
        let ((), moved) = tokio::join!(producer.run(), fault);
        let reconnects = stack
            .expect_exact(clients, &jobs, "after the channels' slots moved")
            .await;
        eprintln!(
            "e2e_cluster live_channel_slots_moved: {moved:?}; {} producer retries, \
             {reconnects} client reconnects",
            producer.retries()
        );
    })
    .await;
}

async fn scripts_missing_after_promotion(client: RedisClient) {
    guarded(async {
        let stack = Stack::start(client, false).await;
        let jobs = Stack::jobs("noscript");
        let slot = stack.stream_slot();
        let old = stack.cluster.master_of_slot(slot).await.expect("owner");
        let promoted_jobs = stack.jobs_on(&jobs, old).await;
        assert!(!promoted_jobs.is_empty(), "the promoted master serves jobs");
        let replica = stack.replica_of(old).await;
        let clients = follow_every_job(stack.addr, &jobs);
        let producer = stack.producer(&jobs);
        let fault = async {
            producer.reached(FAULT_AT).await;
            // Redis does not replicate its script cache: a replica started
            // or added after the scripts were loaded has none. Make sure
            // this one is such a replica, then promote it.
            stack
                .cluster
                .command(replica, &["SCRIPT", "FLUSH"])
                .await
                .expect("SCRIPT FLUSH");
            let cached = stack
                .info_number(replica, "memory", "number_of_cached_scripts", None)
                .await;
            assert_eq!(cached, 0, "the replica has no scripts before its promotion");
            let promotion = stack.cluster.failover(slot).await.expect("failover");
            assert_eq!(promotion.new_master, replica);
            producer.reached(FAULT_AT + 2).await;
            // And a master's cache flushed under load (SCRIPT FLUSH, a
            // restart with persistence).
            let other = stack.cluster.other_master(slot).await.expect("other");
            let before = stack
                .info_number(other, "errorstats", "errorstat_NOSCRIPT", Some("count"))
                .await;
            stack
                .cluster
                .command(other, &["SCRIPT", "FLUSH"])
                .await
                .expect("SCRIPT FLUSH");
            producer.release();
            (promotion, other, before)
        };
        let ((), (promotion, other, before)) = tokio::join!(producer.run(), fault);
        let reconnects = stack
            .expect_exact(clients, &jobs, "after scripts went missing")
            .await;
        // The promoted master answered NOSCRIPT, was given the scripts,
        // and ran the router's applies.
        let new = promotion.new_master;
        let noscript = stack
            .info_number(new, "errorstats", "errorstat_NOSCRIPT", Some("count"))
            .await;
        let evalsha = stack
            .info_number(new, "commandstats", "cmdstat_evalsha", Some("calls"))
            .await;
        let failed = stack
            .info_number(new, "commandstats", "cmdstat_evalsha", Some("failed_calls"))
            .await;
        let cached = stack
            .info_number(new, "memory", "number_of_cached_scripts", None)
            .await;
        assert!(noscript >= 1, "NOSCRIPT on the promoted master {new}");
        assert!(
            evalsha > failed,
            "applies ran on the promoted master ({evalsha} EVALSHA, {failed} failed)"
        );
        assert!(cached >= 1, "the scripts were loaded on {new}");
        let after = stack
            .info_number(other, "errorstats", "errorstat_NOSCRIPT", Some("count"))
            .await;
        assert!(after > before, "NOSCRIPT on {other} after its flush");
        eprintln!(
            "e2e_cluster scripts_missing_after_promotion: {} promoted with no scripts: {noscript} \
             NOSCRIPT, {evalsha} EVALSHA ({failed} failed); {other} flushed: {} NOSCRIPT; {} \
             producer retries, {reconnects} client reconnects",
            new,
            after - before,
            producer.retries()
        );
    })
    .await;
}

relay_testkit::per_redis_client!(
    relay_core::cli::RedisClient;
    master_killed,
    manual_failover,
    slots_migrating,
    live_channel_slots_moved,
    scripts_missing_after_promotion,
);
