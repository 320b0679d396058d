//! The generic pipeline engine on a Redis Cluster (3 masters, a replica
//! each): its events, stage records and terminal marker live in the
//! cluster, each job's records in the slot of its `{job}` hash tag, and the
//! events in the shard streams the publisher picks. The in-process tests
//! run the same flows on `MemoryBackend`; these show the engine's key
//! layout and its multi-key reads hold on a cluster. Each test runs once
//! per Redis client ([`per_redis_client!`]).
//!
//! [`per_redis_client!`]: relay_testkit::per_redis_client

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pipeline_scan::pipeline::{Disposition, Engine, EngineConfig, Envelope, Pipeline, PlainHooks};
use pipeline_scan::transport::inprocess::{InProcess, InProcessConfig};
use pipeline_scan::transport::Transport;
use relay_core::backend::redis::{ClusterTopology, RedisConfig, RedisTopology};
use relay_core::backend::{Backend, KvStore};
use relay_core::cli::RedisClient;
use relay_core::{Domain, JobId, Profile};
use relay_testkit::cluster::{key_slot, RedisCluster};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// The relay's backend and the engine's store on `cluster`, one connection.
async fn connect(
    client: RedisClient,
    cluster: &RedisCluster,
) -> (Arc<dyn Backend>, Arc<dyn KvStore>) {
    let topology = ClusterTopology::new(&cluster.seeds(), "redis://cluster").expect("seeds");
    client
        .connect_topology_with_kv(RedisTopology::Cluster(topology), RedisConfig::default())
        .await
        .expect("connect to the cluster")
}

fn engine<I: 'static, O: 'static>(
    pipeline: Pipeline<I, O>,
    (backend, kv): &(Arc<dyn Backend>, Arc<dyn KvStore>),
) -> Engine {
    Engine::new(
        pipeline,
        publisher(backend.clone(), Profile::Native),
        kv.clone(),
        Arc::new(PlainHooks),
        EngineConfig::new(Domain::new("scan").expect("domain")),
    )
}

async fn jobs_spread_over_the_slots_complete_with_every_event(client: RedisClient) {
    let cluster = RedisCluster::start();
    let handles = connect(client, &cluster).await;
    let backend = handles.0.clone();
    let runs = Arc::default();
    let engine = Arc::new(engine(
        Pipeline::new(AddOne {
            runs: Arc::clone(&runs),
        })
        .then(Flaky::new(0, false))
        .then(Shout),
        &handles,
    ));
    let transport = InProcess::start(engine.clone(), InProcessConfig::default());
    // Three jobs on each master: a job's records live in its `{job}` slot.
    let mut by_node: BTreeMap<u16, Vec<JobId>> = BTreeMap::new();
    for i in 0..500 {
        let job = job(&format!("cluster-{i}"));
        let node = cluster
            .master_of_slot(key_slot(&format!("{{{job}}}")))
            .await
            .expect("master of the slot");
        let on_node = by_node.entry(node).or_default();
        if on_node.len() < 3 {
            on_node.push(job);
        }
        if by_node.len() == 3 && by_node.values().all(|j| j.len() == 3) {
            break;
        }
    }
    assert_eq!(by_node.len(), 3, "jobs on every master: {by_node:?}");
    let jobs: Vec<JobId> = by_node.into_values().flatten().collect();
    assert_eq!(jobs.len(), 9);
    for (i, job) in jobs.iter().enumerate() {
        engine.control().queued(job, json!(null)).await.unwrap();
        transport
            .submit(Envelope::first(job.clone(), "u1", json!(i)))
            .await
            .unwrap();
    }
    let store = engine.control().store().clone();
    for job in &jobs {
        assert_eq!(wait_terminal(&store, job, WAIT).await, Some(true), "{job}");
        let evs = wait_done_event(&backend, &keys(Profile::Native), job, WAIT).await;
        assert_eq!(steps(&evs), add_flaky_shout_steps(true), "{job}");
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        9,
        "each stage ran once per job"
    );
    transport.shutdown().await;
}

async fn redelivered_steps_read_their_records_from_the_cluster(client: RedisClient) {
    let cluster = RedisCluster::start();
    let handles = connect(client, &cluster).await;
    let backend = handles.0.clone();
    let runs = Arc::default();
    let engine = engine(
        Pipeline::new(AddOne {
            runs: Arc::clone(&runs),
        })
        .then(Flaky::new(0, false))
        .then(Shout),
        &handles,
    );
    let job = job("cluster-redeliver");
    let first = Envelope::first(job.clone(), "u", json!(1));
    let a = engine.process(first.clone()).await;
    // The same message again (a lost ack): the stage record, read from the
    // job's slot, answers without running the stage.
    assert_eq!(engine.process(first).await, a);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "a completed stage ran twice"
    );
    let Disposition::Forward(second) = a else {
        panic!("expected a forward, got {a:?}")
    };
    let Disposition::Forward(last) = engine.process(second).await else {
        panic!("expected a forward to the last stage")
    };
    assert_eq!(engine.process(last.clone()).await, Disposition::Finished);
    // After the terminal marker: nothing runs, nothing new is emitted.
    assert_eq!(engine.process(last).await, Disposition::Finished);
    let evs = events(&backend, &keys(Profile::Native), &job).await;
    assert_eq!(steps(&evs), add_flaky_shout_steps(false));
}

relay_testkit::per_redis_client!(
    relay_core::cli::RedisClient;
    jobs_spread_over_the_slots_complete_with_every_event,
    redelivered_steps_read_their_records_from_the_cluster,
);
