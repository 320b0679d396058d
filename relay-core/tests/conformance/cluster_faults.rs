//! Redis Cluster behaviour at the backend: a blocking read holds only its
//! own dedicated connection (an apply to the same node goes through while
//! it blocks); a blocked read released by `CLIENT UNBLOCK … ERROR` or by a
//! failover fails transiently (or returns), and the next read works;
//! applies, pipelined appends and reads go through while their slots are
//! half migrated (`ASK`) and after (`MOVED`); `min_replicas_ack` holds
//! back an append, and the ack of applied entries, until a replica has
//! them; and, as a measurement, how many acknowledged appends a master
//! kill loses with and without it.
//!
//! Tests that fail over or migrate work on any cluster
//! (`RELAY_TEST_REDIS_CLUSTER` too); those that stop or kill processes
//! start a private one.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::redis::Value;
use relay_core::backend::redis::{RedisConfig, ReplicaAck};
use relay_core::backend::{AckRequest, ReadFrom};
use relay_core::keys::{slot, JobKeys};
use relay_core::{BackendError, Offset};
use relay_testkit::cluster::{NodeRole, RedisCluster};
use relay_testkit::wait::wait_until;

use crate::support::{
    apply_job, cluster_topology, ids, missing_from_xrange, offsets, per_client_tests, plain, quiet,
    read_group, spawn_read, RedisClient, RedisRoles, GROUP,
};

/// Hang guard of the waits here.
const LIMIT: Duration = Duration::from_secs(30);

/// A shard-stream-like key of its own hash slot, unique to this test.
fn unique_stream() -> String {
    format!(
        "relay:{{{}}}:events",
        relay_testkit::redis::unique_prefix().trim_end_matches(':')
    )
}

/// The keys of a job (named after `stream`) whose slot is served by the
/// master at `port`, in another slot than `stream`'s.
async fn job_on(cluster: &RedisCluster, port: u16, stream: &str) -> JobKeys {
    for i in 0..1000 {
        let keys = crate::support::job_keys(
            &format!("{}:", stream.replace(['{', '}'], "")),
            &format!("job-{i}"),
        );
        let s = slot(&keys.meta);
        if s != slot(stream) && cluster.master_of_slot(s).await.expect("owner") == port {
            return keys;
        }
    }
    panic!("no job name lands on {port}");
}

/// The text of a string reply.
fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        other => format!("{other:?}"),
    }
}

/// The ids of the clients of the node at `port` blocked in `XREADGROUP`.
async fn blocked_readers(cluster: &RedisCluster, port: u16) -> HashSet<String> {
    let list = cluster
        .command(port, &["CLIENT", "LIST"])
        .await
        .expect("CLIENT LIST");
    text(&list)
        .lines()
        .filter(|l| l.contains(" cmd=xreadgroup ") && l.contains(" flags=b"))
        .filter_map(|l| l.split_whitespace().find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

/// Waits until the node at `port` has a reader blocked in `XREADGROUP`
/// that is not in `before`; its client id.
async fn new_blocked_reader(cluster: &RedisCluster, port: u16, before: &HashSet<String>) -> String {
    let found = Mutex::new(None);
    wait_until(LIMIT, &format!("a read blocked on {port}"), || async {
        let now = blocked_readers(cluster, port).await;
        let new = now.difference(before).next().cloned();
        let blocked = new.is_some();
        *found.lock().expect("lock") = new;
        blocked
    })
    .await;
    found.into_inner().expect("lock").expect("found")
}

/// Runs `op` until it succeeds; every failure must be transient.
async fn until_ok<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BackendError>>,
{
    for _ in 0..300 {
        match op().await {
            Ok(v) => return v,
            Err(e) => assert!(e.is_transient(), "{what}: permanent error {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: never succeeded");
}

/// The next read after a released one: an entry appended now is read.
async fn next_read_works(b: &dyn RedisRoles, stream: &str, after: &str) {
    let id = until_ok(&format!("append after {after}"), || {
        b.append(plain(stream, 7))
    })
    .await
    .id;
    let got = until_ok(&format!("read after {after}"), || async {
        let got = read_group(
            b,
            stream,
            "c",
            ReadFrom::New,
            10,
            Some(Duration::from_millis(500)),
        )
        .await?;
        // A read that found nothing yet is retried like a failed one.
        if got.iter().any(|e| e.id == id) {
            Ok(got)
        } else {
            Err(BackendError::Unavailable("not read yet".into()))
        }
    })
    .await;
    assert!(ids(&got).contains(&id), "{after}: read {got:?}");
}

async fn apply_on_the_node_of_a_blocked_read_goes_through(client: RedisClient) {
    const BLOCK: Duration = Duration::from_secs(3);
    const APPLIES: u64 = 10;
    let cluster = RedisCluster::start();
    let b = client
        .backend(cluster_topology(&cluster.seeds()), RedisConfig::default())
        .await;
    let stream = unique_stream();
    let node = cluster.master_of_slot(slot(&stream)).await.expect("owner");
    let job = job_on(&cluster, node, &stream).await;
    b.ensure_group(&stream, GROUP).await.expect("group");
    // The scripts loaded and the job created before the measured applies.
    b.apply(&[apply_job(&job, 1, &[1])], &quiet())
        .await
        .expect("first apply");

    let before = blocked_readers(&cluster, node).await;
    let read = spawn_read(b.clone(), &stream, "c", 10, BLOCK);
    new_blocked_reader(&cluster, node, &before).await;
    let mut latencies = Vec::new();
    for seq in 2..2 + APPLIES {
        let started = Instant::now();
        let r = b
            .apply(&[apply_job(&job, 1, &[seq])], &quiet())
            .await
            .expect("apply while a read blocks on the same node");
        latencies.push(started.elapsed());
        assert_eq!(offsets(&r[0]), [(seq, true)]);
    }
    // Behaviour, not timing: had the applies queued behind the BLOCK on a
    // shared connection, they would have returned only after the read.
    assert!(
        !read.is_finished(),
        "every apply returned while the read on {node} was still blocked"
    );
    let id = b.append(plain(&stream, 0)).await.expect("append").id;
    let got = read.await.expect("read task").expect("blocked read");
    assert_eq!(ids(&got), [id], "the blocked read returns the new entry");
    latencies.sort_unstable();
    eprintln!(
        "cluster_faults: {APPLIES} applies on node {node} while a read blocked there: \
         min {:?}, median {:?}, max {:?}",
        latencies[0],
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
}

async fn blocked_read_released_by_unblock_or_failover_fails_transiently(client: RedisClient) {
    let cluster = RedisCluster::start();
    let b = client
        .backend(cluster_topology(&cluster.seeds()), RedisConfig::default())
        .await;
    let stream = unique_stream();
    let s = slot(&stream);
    b.ensure_group(&stream, GROUP).await.expect("group");

    // CLIENT UNBLOCK … ERROR answers the blocked read with UNBLOCKED.
    let node = cluster.master_of_slot(s).await.expect("owner");
    let before = blocked_readers(&cluster, node).await;
    let read = spawn_read(b.clone(), &stream, "c", 10, Duration::from_secs(20));
    let client = new_blocked_reader(&cluster, node, &before).await;
    cluster
        .command(node, &["CLIENT", "UNBLOCK", &client, "ERROR"])
        .await
        .expect("CLIENT UNBLOCK");
    let err = tokio::time::timeout(LIMIT, read)
        .await
        .expect("the released read returns")
        .expect("read task")
        .expect_err("UNBLOCKED is an error reply");
    assert!(err.is_transient(), "UNBLOCKED must be transient: {err:?}");
    next_read_works(&*b, &stream, "CLIENT UNBLOCK").await;

    // A failover of the read's node while it blocks: the demoted master
    // releases it (UNBLOCKED), or the read outlives the switch; either
    // way no permanent error and no panic.
    let before = blocked_readers(&cluster, node).await;
    let read = spawn_read(b.clone(), &stream, "c", 10, Duration::from_secs(20));
    new_blocked_reader(&cluster, node, &before).await;
    let promotion = cluster.failover(s).await.expect("failover");
    assert_eq!(promotion.old_master, node);
    let released = tokio::time::timeout(LIMIT, read)
        .await
        .expect("the read returns")
        .expect("the read task did not panic");
    if let Err(e) = &released {
        assert!(e.is_transient(), "a failover is transient: {e:?}");
    }
    next_read_works(&*b, &stream, "the failover").await;
    eprintln!("cluster_faults: read across the failover returned {released:?}");
}

/// The entries of `stream` from the start, through the backend.
async fn entry_count(b: &dyn RedisRoles, stream: &str) -> usize {
    b.range(stream, None, 10_000).await.expect("XRANGE").len()
}

async fn calls_on_a_migrating_slot_go_through(client: RedisClient) {
    let cluster = RedisCluster::start();
    let b = client
        .backend(cluster_topology(&cluster.seeds()), RedisConfig::default())
        .await;
    let stream = unique_stream();
    let stream_slot = slot(&stream);
    let source = cluster.master_of_slot(stream_slot).await.expect("owner");
    let target = cluster.other_master(stream_slot).await.expect("target");
    let job = job_on(&cluster, source, &stream).await;
    let job_slot = slot(&job.meta);
    b.ensure_group(&stream, GROUP).await.expect("group");
    b.append(plain(&stream, 0)).await.expect("append");
    let opts = quiet();
    let apply = |seq: u64| {
        let (b, opts, jobs) = (&b, &opts, [apply_job(&job, 1, &[seq])]);
        async move { b.apply(&jobs, opts).await }
    };
    assert_eq!(offsets(&apply(1).await.expect("apply")[0]), [(1, true)]);
    let appends = |n: u32| b.append_batch((0..n).map(|i| plain(&stream, i)).collect());

    for s in [stream_slot, job_slot] {
        cluster.begin_migration(s, target).await.expect("migrating");
    }
    // The keys still on the source: it serves them. (The apply names the
    // job hash only: a key that does not exist, such as the live channel,
    // would make the nodes answer TRYAGAIN until the slot has moved.)
    assert_eq!(
        offsets(&apply(2).await.expect("apply on the source")[0]),
        [(2, true)]
    );
    assert_eq!(appends(3).await.expect("appends on the source").len(), 3);
    // Moved to the target: the source answers ASK, the target serves
    // calls that come with ASKING, pipelines of several commands too.
    cluster
        .command(
            source,
            &[
                "MIGRATE",
                "127.0.0.1",
                &target.to_string(),
                "",
                "0",
                "5000",
                "KEYS",
                &stream,
            ],
        )
        .await
        .expect("MIGRATE the stream");
    while cluster.migrate_keys(job_slot, 10).await.expect("migrate") > 0 {}
    assert_eq!(
        offsets(&apply(3).await.expect("apply after ASK")[0]),
        [(3, true)]
    );
    assert_eq!(appends(3).await.expect("appends after ASK").len(), 3);
    let read = read_group(
        &*b,
        &stream,
        "c",
        ReadFrom::New,
        100,
        Some(Duration::from_millis(200)),
    )
    .await
    .expect("blocking read after ASK");
    assert!(read.len() >= 7, "every entry so far: {}", read.len());
    // Handed over: the old slot map answers MOVED.
    for s in [stream_slot, job_slot] {
        cluster
            .finish_migration(s, target)
            .await
            .expect("handed over");
    }
    assert_eq!(
        offsets(&apply(4).await.expect("apply after MOVED")[0]),
        [(4, true)]
    );
    let before = entry_count(&*b, &stream).await;
    assert_eq!(appends(3).await.expect("appends after MOVED").len(), 3);
    assert_eq!(entry_count(&*b, &stream).await, before + 3);
    let page = b.read_history(&job, Offset(0), 10).await.expect("history");
    assert_eq!(
        page.records.iter().map(|r| r.offset.0).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
}

/// Stops (`SIGSTOP`) a process until dropped (`SIGCONT`).
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Self {
        signal("-STOP", pid);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(sig: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// The pid of the replica of the master at `master`.
async fn replica_of(cluster: &RedisCluster, master: u16) -> u32 {
    for node in cluster.nodes().await {
        if node.role != NodeRole::Replica {
            continue;
        }
        let role = cluster.command(node.port, &["ROLE"]).await.expect("ROLE");
        let follows = matches!(&role, Value::Array(items)
            if items.get(2).and_then(|p| match p {
                Value::Int(n) => u16::try_from(*n).ok(),
                other => text(other).parse().ok(),
            }) == Some(master));
        if follows {
            return node.pid.expect("a replica process");
        }
    }
    panic!("master {master} has no replica");
}

async fn min_replicas_ack_holds_back_appends_and_acks_until_replicated(client: RedisClient) {
    let cluster = RedisCluster::start_private();
    let config = RedisConfig {
        min_replicas_ack: Some(ReplicaAck {
            replicas: 1,
            timeout: Duration::from_millis(300),
        }),
        ..RedisConfig::default()
    };
    let b = client
        .backend(cluster_topology(&cluster.seeds()), config)
        .await;
    let stream = unique_stream();
    let stream_node = cluster.master_of_slot(slot(&stream)).await.expect("owner");
    let other = cluster
        .other_master(slot(&stream))
        .await
        .expect("another master");
    // The job on another node than its shard stream: on a cluster the
    // apply and the ack are two calls on two nodes.
    assert_ne!(stream_node, other);
    let job = job_on(&cluster, other, &stream).await;
    b.ensure_group(&stream, GROUP).await.expect("group");
    let id = b
        .append(plain(&stream, 0))
        .await
        .expect("replicated append")
        .id;
    let read = read_group(&*b, &stream, "c", ReadFrom::New, 10, None)
        .await
        .expect("read");
    assert_eq!(ids(&read), [id]);
    let opts = quiet();
    let ack = || AckRequest {
        stream: &stream,
        group: GROUP,
        ids: std::slice::from_ref(&id),
    };

    {
        // The replicas of both nodes stop answering: nothing written there
        // can be confirmed.
        let _stream_replica = Stopped::new(replica_of(&cluster, stream_node).await);
        let _job_replica = Stopped::new(replica_of(&cluster, other).await);
        let err = b
            .append(plain(&stream, 1))
            .await
            .expect_err("no replica acknowledges the append");
        assert!(matches!(err, BackendError::Unavailable(_)), "{err:?}");
        // The apply goes through on the job's master (its script, not
        // loaded yet on this new cluster, is loaded on the masters: the
        // hung replicas do not hold that up), but an apply its replica may
        // not have must not be acked: were the master to die now, the
        // promoted replica would lack it while the entry, acked on the
        // stream's node, would never be delivered again.
        let err = b
            .apply_and_ack(&[apply_job(&job, 1, &[1])], &opts, ack())
            .await
            .expect_err("the apply is not confirmed by a replica");
        assert!(err.is_transient(), "{err:?}");
        let page = b.read_history(&job, Offset(0), 10).await.expect("history");
        assert_eq!(page.records.len(), 1, "the apply itself went through");
        let stats = b.group_stats(&stream, GROUP).await.expect("stats");
        assert_eq!(stats.pending, 1, "the entry stays pending");
    }
    // With the replica back the retried apply is a no-op and the ack lands.
    let r = until_ok("apply and ack with the replica back", || {
        let (b, opts, jobs) = (&b, &opts, [apply_job(&job, 1, &[1])]);
        async move { b.apply_and_ack(&jobs, opts, ack()).await }
    })
    .await;
    assert_eq!(offsets(&r[0]), [(1, false)], "applied once");
    let stats = b.group_stats(&stream, GROUP).await.expect("stats");
    assert_eq!(stats.pending, 0);
    let page = b.read_history(&job, Offset(0), 10).await.expect("history");
    assert_eq!(page.records.len(), 1);
}

/// Appends from 4 concurrent producers to one stream while its master is
/// killed (after 500 acknowledged appends), until the replica is promoted;
/// returns (acknowledged, acknowledged but missing on the promoted master).
async fn acked_appends_across_kill(client: RedisClient, ack: Option<ReplicaAck>) -> (usize, usize) {
    let cluster = RedisCluster::start_private();
    let config = RedisConfig {
        min_replicas_ack: ack,
        ..RedisConfig::default()
    };
    let b = client
        .backend(cluster_topology(&cluster.seeds()), config)
        .await;
    let stream = unique_stream();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (b, acked, stop, stream) = (b.clone(), acked.clone(), stop.clone(), stream.clone());
            tokio::spawn(async move {
                // Until the first failure (the master died under it), or
                // the promotion.
                while !stop.load(Ordering::Acquire) {
                    match b.append(plain(&stream, p)).await {
                        Ok(out) => acked.lock().expect("lock").push(out.id),
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    wait_until(LIMIT, "500 appends", || {
        std::future::ready(acked.lock().expect("lock").len() >= 500)
    })
    .await;
    let promotion = cluster.kill_master(slot(&stream)).await.expect("promotion");
    stop.store(true, Ordering::Release);
    for p in producers {
        p.await.expect("producer");
    }
    let on_master = cluster
        .command(promotion.new_master, &["XRANGE", &stream, "-", "+"])
        .await
        .expect("XRANGE");
    let acked = acked.lock().expect("lock").clone();
    (acked.len(), missing_from_xrange(&acked, &on_master))
}

/// Measurement, not a check: how many acknowledged appends a `kill -9` of
/// a cluster master loses, without and with `min_replicas_ack` 1. Run with
/// `cargo test -p relay-core --test conformance -- --ignored cluster_faults::measure --nocapture`.
async fn measure_acknowledged_appends_lost_at_kill(client: RedisClient) {
    let (acked, lost) = acked_appends_across_kill(client, None).await;
    assert!(lost <= acked);
    eprintln!(
        "cluster ({client:?}), no WAIT: {lost} of {acked} acknowledged appends lost at the kill"
    );
    let ack = ReplicaAck {
        replicas: 1,
        timeout: Duration::from_secs(1),
    };
    let (acked, lost) = acked_appends_across_kill(client, Some(ack)).await;
    assert!(lost <= acked);
    eprintln!(
        "cluster ({client:?}), min_replicas_ack 1: {lost} of {acked} acknowledged appends lost at the kill"
    );
}

per_client_tests!(
    apply_on_the_node_of_a_blocked_read_goes_through,
    blocked_read_released_by_unblock_or_failover_fails_transiently,
    calls_on_a_migrating_slot_go_through,
    min_replicas_ack_holds_back_appends_and_acks_until_replicated,
);

/// The measurement, per client, run only on request (`--ignored`).
mod measure {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement; prints the loss"]
    async fn redis() {
        super::measure_acknowledged_appends_lost_at_kill(crate::support::RedisClient::RedisRs)
            .await;
    }

    #[cfg(feature = "fred")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement; prints the loss"]
    async fn fred() {
        super::measure_acknowledged_appends_lost_at_kill(crate::support::RedisClient::Fred).await;
    }
}
