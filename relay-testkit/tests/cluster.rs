//! `RedisCluster` against real processes: the cluster it starts is healthy,
//! `key_slot` agrees with the servers, slot migrations redirect (`ASK`
//! midway, `MOVED` after), failovers and promotions swap the roles, and
//! dropping it stops every process. An integration test (its own process)
//! so its nodes on free ports do not race the unit tests' port probes.
//!
//! Tests that kill nodes use a private cluster whatever
//! `RELAY_TEST_REDIS_CLUSTER` says; the others run against it when set.

use std::path::Path;

use redis::Value;
use relay_testkit::cluster::{key_slot, NodeRole, RedisCluster};

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::SimpleString(s) => s.clone(),
        other => panic!("not a string reply: {other:?}"),
    }
}

/// A plain (non-cluster) connection to one node: it sees the node's own
/// answers, redirections included.
async fn plain(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_three_masters_each_with_a_replica() {
    let cluster = RedisCluster::start();
    let nodes = cluster.nodes().await;
    assert_eq!(nodes.len(), 6);
    if cluster.is_private() {
        assert_eq!(cluster.seeds().len(), 6);
    }
    assert!(cluster.urls().iter().all(|u| u.starts_with("redis://")));
    for node in &nodes {
        let info = text(
            &cluster
                .command(node.port, &["CLUSTER", "INFO"])
                .await
                .expect("INFO"),
        );
        assert!(info.contains("cluster_state:ok"), "{}: {info}", node.addr);
        assert_eq!(node.id.len(), 40, "{node:?}");
    }
    let masters: Vec<_> = nodes
        .iter()
        .filter(|n| n.role == NodeRole::Master)
        .collect();
    assert_eq!(masters.len(), 3, "{nodes:?}");
    assert_eq!(
        nodes.iter().filter(|n| n.role == NodeRole::Replica).count(),
        3
    );
    // Each master has its own replica.
    for master in &masters {
        let replicas = cluster
            .command(master.port, &["CLUSTER", "REPLICAS", &master.id])
            .await
            .expect("CLUSTER REPLICAS");
        assert!(
            matches!(&replicas, Value::Array(r) if r.len() == 1),
            "{replicas:?}"
        );
    }
    // Every slot is served, by one of the masters.
    for slot in [0, 5460, 5461, 10922, 10923, 16383] {
        let owner = cluster.master_of_slot(slot).await.expect("owner");
        assert!(
            masters.iter().any(|m| m.port == owner),
            "slot {slot}: {owner}"
        );
    }
    if cluster.is_private() {
        assert!(nodes.iter().all(|n| n.pid.is_some()));
        let cpu = cluster.info_cpu(nodes[0].port).await.expect("INFO cpu");
        assert!(cpu.as_nanos() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_slot_agrees_with_cluster_keyslot() {
    let cluster = RedisCluster::start();
    let port = cluster.nodes().await[0].port;
    for key in [
        "123456789",
        "foo",
        "{user1000}.following",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "foo{bar}{zap}",
        "{job:42}:hist",
        "relay:stream:0",
        "",
    ] {
        let v = cluster
            .command(port, &["CLUSTER", "KEYSLOT", key])
            .await
            .expect("KEYSLOT");
        assert_eq!(v, Value::Int(i64::from(key_slot(key))), "{key:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_migrated_slot_answers_ask_then_the_moved_slot_moved() {
    let cluster = RedisCluster::start();
    let keys: Vec<String> = (0..5).map(|i| format!("{{migrate}}:{i}")).collect();
    let slot = key_slot(&keys[0]);
    let source = cluster.master_of_slot(slot).await.expect("owner");
    let target = cluster.other_master(slot).await.expect("target");
    assert_ne!(source, target);
    for key in &keys {
        cluster
            .command(source, &["SET", key, key])
            .await
            .expect("SET");
    }

    assert_eq!(
        cluster.begin_migration(slot, target).await.expect("begin"),
        source
    );
    assert_eq!(cluster.migrate_keys(slot, 2).await.expect("migrate"), 2);
    let slot_arg = slot.to_string();
    let left = cluster
        .command(source, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, "10"])
        .await
        .expect("GETKEYSINSLOT");
    let Value::Array(left) = left else {
        panic!("{left:?}")
    };
    assert_eq!(left.len(), 3);
    let moved = keys
        .iter()
        .find(|k| !left.contains(&bulk(k)))
        .expect("a moved key");
    let kept = keys
        .iter()
        .find(|k| left.contains(&bulk(k)))
        .expect("a kept key");
    let mut src = plain(source).await;
    let err = redis::cmd("GET")
        .arg(moved)
        .query_async::<Value>(&mut src)
        .await
        .expect_err("ASK");
    assert_eq!(err.code(), Some("ASK"), "{err}");
    let to_addr = format!("127.0.0.1:{target}");
    assert_eq!(err.redirect_node(), Some((to_addr.as_str(), slot)));
    let v: Value = redis::cmd("GET")
        .arg(kept)
        .query_async(&mut src)
        .await
        .expect("GET");
    assert_eq!(v, bulk(kept), "a key not moved yet is served by the source");
    let mut dst = plain(target).await;
    let (_, v): (Value, Value) = redis::pipe()
        .cmd("ASKING")
        .cmd("GET")
        .arg(moved)
        .query_async(&mut dst)
        .await
        .expect("ASKING GET");
    assert_eq!(v, bulk(moved));

    cluster
        .move_slot(slot, target)
        .await
        .expect("move the rest");
    assert_eq!(cluster.master_of_slot(slot).await.expect("owner"), target);
    for key in &keys {
        let v: Value = redis::cmd("GET")
            .arg(key)
            .query_async(&mut dst)
            .await
            .expect("GET");
        assert_eq!(v, bulk(key), "{key} on the new owner");
    }
    let err = redis::cmd("GET")
        .arg(kept)
        .query_async::<Value>(&mut src)
        .await
        .expect_err("MOVED");
    assert_eq!(err.code(), Some("MOVED"), "{err}");
    assert_eq!(err.redirect_node(), Some((to_addr.as_str(), slot)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_swaps_master_and_replica() {
    let cluster = RedisCluster::start();
    let slot = key_slot("failover");
    let before = cluster.master_of_slot(slot).await.expect("owner");
    cluster
        .command(before, &["SET", "failover", "v"])
        .await
        .expect("SET");
    let p = cluster.failover(slot).await.expect("failover");
    assert_eq!(p.old_master, before);
    assert_ne!(p.new_master, before);
    assert_eq!(
        cluster.master_of_slot(slot).await.expect("owner"),
        p.new_master
    );
    let nodes = cluster.nodes().await;
    let role = |port| nodes.iter().find(|n| n.port == port).map(|n| n.role);
    assert_eq!(role(p.new_master), Some(NodeRole::Master));
    assert_eq!(role(p.old_master), Some(NodeRole::Replica));
    let v = cluster
        .command(p.new_master, &["GET", "failover"])
        .await
        .expect("GET");
    assert_eq!(v, bulk("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_master_promotes_its_replica_and_the_old_master_rejoins() {
    let cluster = RedisCluster::start_private();
    let slot = key_slot("killed");
    let before = cluster.master_of_slot(slot).await.expect("owner");
    cluster
        .command(before, &["SET", "killed", "v"])
        .await
        .expect("SET");
    let acked = cluster
        .command(before, &["WAIT", "1", "10000"])
        .await
        .expect("WAIT");
    assert_eq!(acked, Value::Int(1));

    let p = cluster.kill_master(slot).await.expect("promotion");
    assert_eq!(p.old_master, before);
    assert_ne!(p.new_master, before);
    let nodes = cluster.nodes().await;
    let old = nodes.iter().find(|n| n.port == before).expect("old master");
    assert_eq!((old.role, old.pid), (NodeRole::Down, None));
    let v = cluster
        .command(p.new_master, &["GET", "killed"])
        .await
        .expect("GET");
    assert_eq!(v, bulk("v"));

    cluster.restart_node(before).await.expect("rejoin");
    let nodes = cluster.nodes().await;
    let old = nodes.iter().find(|n| n.port == before).expect("old master");
    assert_eq!(old.role, NodeRole::Replica);
    assert!(old.pid.is_some());
    assert_eq!(
        cluster.master_of_slot(slot).await.expect("owner"),
        p.new_master
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_kills_every_node_and_removes_the_dirs() {
    let cluster = RedisCluster::start_private();
    let pids: Vec<u32> = cluster.nodes().await.iter().filter_map(|n| n.pid).collect();
    assert_eq!(pids.len(), 6);
    let dirs = cluster.dirs();
    assert_eq!(dirs.len(), 6);
    assert!(dirs.iter().all(|d| d.join("nodes.conf").is_file()));
    drop(cluster);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "redis-server {pid} still exists"
        );
    }
    for dir in dirs {
        assert!(!dir.exists(), "{dir:?} not removed");
    }
}
