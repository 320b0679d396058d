//! Following a Sentinel failover: after the master is killed (or demoted
//! while still running), commands, blocking reads and new subscribers reach
//! the promoted replica, and the calls that fail in between fail with a
//! transient error (so callers retry) — never a permanent one. For each
//! Redis client (`sentinel_faults::redis::…`, `sentinel_faults::fred::…`).

use std::time::Duration;

use bytes::Bytes;
use relay_core::backend::redis::{RedisConfig, ReplicaAck};
use relay_core::backend::ReadFrom;
use relay_core::BackendError;
use relay_testkit::sentinel::SentinelSet;

use crate::support::{
    missing_from_xrange, per_client_tests, plain, read_group, recv, sentinel_topology, RedisClient,
    RedisRoles, GROUP,
};

/// Runs `op` until it succeeds; every failure must be transient. Bounded
/// by a hang guard (a failover takes a few seconds).
async fn until_ok<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BackendError>>,
{
    for _ in 0..600 {
        match op().await {
            Ok(v) => return v,
            Err(e) => assert!(e.is_transient(), "{what}: permanent error {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: never succeeded after the failover");
}

/// Commands, blocking reads and subscribers all end up on the new master.
async fn follows_new_master(set: &SentinelSet, b: &dyn RedisRoles, stream: &str) {
    let master = set.master().await.expect("master").port();
    let id = until_ok("append", || b.append(plain(stream, 99))).await.id;
    let on_master = set
        .nodes()
        .iter()
        .find(|n| n.port() == master)
        .expect("known node")
        .command(&["XRANGE", stream, &id.to_string(), &id.to_string()])
        .await
        .expect("XRANGE");
    assert!(
        matches!(&on_master, ::redis::Value::Array(found) if found.len() == 1),
        "the append went to the new master: {on_master:?}"
    );
    let read = until_ok("blocking read", || {
        read_group(
            b,
            stream,
            "c",
            ReadFrom::New,
            10,
            Some(Duration::from_millis(200)),
        )
    })
    .await;
    assert_eq!(read.last().map(|e| e.id), Some(id));
    let ch = format!("{stream}:ch");
    let mut sub = until_ok("subscriber", || b.subscriber()).await;
    sub.handle
        .subscribe(std::slice::from_ref(&ch))
        .await
        .expect("subscribe");
    until_ok("publish", || b.publish(&ch, Bytes::from_static(b"after"))).await;
    assert_eq!(recv(&mut sub).await.1, Bytes::from_static(b"after"));
}

/// Two replicated entries and an open subscription before the failover.
async fn before_failover(
    set: &SentinelSet,
    b: &dyn RedisRoles,
    stream: &str,
) -> relay_core::backend::Subscriber {
    b.ensure_group(stream, GROUP).await.expect("group");
    for i in 0..2 {
        b.append(plain(stream, i)).await.expect("append");
    }
    // Replicated before the failover, so the promoted replica has them.
    set.master()
        .await
        .expect("master")
        .command(&["WAIT", "1", "10000"])
        .await
        .expect("WAIT");
    let sub = b.subscriber().await.expect("subscriber");
    sub.handle
        .subscribe(&[format!("{stream}:old")])
        .await
        .expect("subscribe");
    sub
}

async fn master_killed_everything_moves_to_the_promoted_replica(client: RedisClient) {
    let set = SentinelSet::start();
    let b = client
        .backend(sentinel_topology(&set), RedisConfig::default())
        .await;
    let stream = "s:killed";
    let mut sub = before_failover(&set, &*b, stream).await;
    set.fail_over().await;
    // The subscriber on the killed master ends, telling its owner to
    // reconnect (and catch up).
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while sub.messages.recv().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the old subscription must end");
    follows_new_master(&set, &*b, stream).await;
}

async fn demoted_master_answers_readonly_and_the_backend_moves(client: RedisClient) {
    let set = SentinelSet::start();
    let b = client
        .backend(sentinel_topology(&set), RedisConfig::default())
        .await;
    let stream = "s:demoted";
    let _sub = before_failover(&set, &*b, stream).await;
    let old = set.master().await.expect("master").port();
    set.switch_over().await;
    // The demoted master answers a write on an open connection with
    // READONLY, or its connections are gone (the sentinels kill its
    // clients when they demote it): either must be transient, and a retry
    // lands on the new master. (READONLY's mapping is unit-tested in
    // `backend::redis::link`.)
    let first = b.set("k", Bytes::from_static(b"v"), None).await;
    if let Err(e) = &first {
        assert!(e.is_transient(), "READONLY must be transient: {e:?}");
    }
    until_ok("set", || b.set("k", Bytes::from_static(b"v"), None)).await;
    let new = set.master().await.expect("master").port();
    assert_ne!(old, new);
    follows_new_master(&set, &*b, stream).await;
}

async fn connect_finds_the_master_when_the_first_sentinel_is_unreachable(client: RedisClient) {
    let set = SentinelSet::start();
    let mut addrs = vec!["127.0.0.1:1".to_owned()];
    addrs.extend(set.sentinel_addrs());
    let topology = relay_core::backend::redis::SentinelTopology::new(
        &addrs,
        set.master_name(),
        "redis://ignored",
    )
    .expect("valid");
    let b = client
        .try_backend(
            relay_core::backend::redis::RedisTopology::Sentinel(topology),
            RedisConfig::default(),
        )
        .await
        .expect("connect through the second sentinel");
    b.ping().await.expect("ping");
    let unknown = relay_core::backend::redis::SentinelTopology::new(
        &set.sentinel_addrs(),
        "no-such-master",
        "redis://ignored",
    )
    .expect("valid");
    let err = client
        .try_backend(
            relay_core::backend::redis::RedisTopology::Sentinel(unknown),
            RedisConfig::default(),
        )
        .await
        .err()
        .expect("no sentinel monitors that name");
    assert!(err.to_string().contains("no-such-master"), "{err}");
}

async fn min_replicas_ack_waits_for_the_replica_and_fails_transiently_without_it(
    client: RedisClient,
) {
    let set = SentinelSet::start();
    let config = RedisConfig {
        min_replicas_ack: Some(ReplicaAck {
            replicas: 1,
            timeout: Duration::from_millis(300),
        }),
        ..RedisConfig::default()
    };
    let b = client.backend(sentinel_topology(&set), config).await;
    set.wait_ready_for_failover().await;
    let id = b
        .append(plain("s:ack", 0))
        .await
        .expect("replicated append")
        .id;
    // Acknowledged means on the replica too.
    let replica = &set.nodes()[1];
    let there = replica
        .command(&["XRANGE", "s:ack", &id.to_string(), &id.to_string()])
        .await
        .expect("XRANGE on the replica");
    assert!(
        matches!(&there, ::redis::Value::Array(found) if found.len() == 1),
        "{there:?}"
    );
    replica.stop();
    let err = b
        .append(plain("s:ack", 1))
        .await
        .expect_err("no replica to acknowledge");
    assert!(matches!(err, BackendError::Unavailable(_)), "{err:?}");
    assert!(err.is_transient());
}

/// Appends from 4 concurrent producers while the master is killed (after
/// 500 acknowledged appends); returns (acknowledged, acknowledged but
/// missing on the promoted master).
async fn acked_appends_across_kill(client: RedisClient, ack: Option<ReplicaAck>) -> (usize, usize) {
    let set = SentinelSet::start();
    set.wait_ready_for_failover().await;
    let config = RedisConfig {
        min_replicas_ack: ack,
        ..RedisConfig::default()
    };
    let b = client.backend(sentinel_topology(&set), config).await;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (b, acked) = (b.clone(), acked.clone());
            tokio::spawn(async move {
                // Until the first failure: the master died under it.
                while let Ok(out) = b.append(plain("s:loss", p)).await {
                    acked.lock().expect("lock").push(out.id);
                }
            })
        })
        .collect();
    relay_testkit::wait::wait_until(Duration::from_secs(30), "500 appends", || {
        std::future::ready(acked.lock().expect("lock").len() >= 500)
    })
    .await;
    let master = set.fail_over().await;
    for p in producers {
        p.await.expect("producer");
    }
    let on_master = master
        .command(&["XRANGE", "s:loss", "-", "+"])
        .await
        .expect("XRANGE");
    let acked = acked.lock().expect("lock").clone();
    (acked.len(), missing_from_xrange(&acked, &on_master))
}

async fn with_min_replicas_ack_no_acknowledged_append_is_lost_at_failover(client: RedisClient) {
    let ack = ReplicaAck {
        replicas: 1,
        timeout: Duration::from_secs(1),
    };
    let (acked, lost) = acked_appends_across_kill(client, Some(ack)).await;
    assert!(acked >= 500);
    assert_eq!(lost, 0, "{lost} of {acked} acknowledged appends lost");
}

/// Measurement, not a check: how many acknowledged appends asynchronous
/// replication loses at a `kill -9` failover without `WAIT`. Run with
/// `cargo test -p relay-core --test conformance -- --ignored measure_`;
/// the result is in docs/ARCHITECTURE.md ("Topologies").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; prints the loss"]
async fn measure_acknowledged_appends_lost_without_replica_ack() {
    let (acked, lost) = acked_appends_across_kill(RedisClient::RedisRs, None).await;
    assert!(lost <= acked);
    eprintln!("without WAIT: {lost} of {acked} acknowledged appends lost at the failover");
}

per_client_tests!(
    master_killed_everything_moves_to_the_promoted_replica,
    demoted_master_answers_readonly_and_the_backend_moves,
    connect_finds_the_master_when_the_first_sentinel_is_unreachable,
    min_replicas_ack_waits_for_the_replica_and_fails_transiently_without_it,
    with_min_replicas_ack_no_acknowledged_append_is_lost_at_failover,
);
