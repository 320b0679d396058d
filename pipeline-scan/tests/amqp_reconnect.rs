//! Broker connections force-closed mid-run (rabbitmqctl): the worker
//! supervisor and the producer reconnect and every job completes exactly once.
//! Only this test's connections are closed (by their connection name), so
//! other clients of the shared broker are not disturbed.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use pipeline_scan::pipeline::{Engine, EngineConfig, Envelope, Pipeline, PlainHooks, RetryPolicy};
use pipeline_scan::pipeline::{Stage, StageContext, StageError};
use pipeline_scan::transport::amqp::{AmqpConfig, AmqpProducer, AmqpWorker};
use pipeline_scan::transport::Transport;
use relay_core::{Domain, Profile};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Closes every broker connection whose name starts with `name_prefix`;
/// returns how many were closed.
fn close_connections(name_prefix: &str) -> usize {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in text.lines() {
        // client_properties holds {"connection_name",longstr,"<name>"}.
        let Some((pid, props)) = line.split_once('\t') else {
            continue;
        };
        if props.contains(&format!("\"{name_prefix}")) {
            let status = Command::new("rabbitmqctl")
                .args(["close_connection", pid.trim(), "test"])
                .status()
                .expect("rabbitmqctl runs");
            if status.success() {
                closed += 1;
            }
        }
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_producer_reconnect_after_connections_are_closed() {
    let prefix = queue_prefix("reconnect");
    let name = format!("ps-{prefix}");
    let config = AmqpConfig {
        prefix: prefix.clone(),
        connection_name: name.clone(),
        prefetch: 4,
        reconnect_max: Duration::from_millis(500),
        ..AmqpConfig::new(AMQP_URL)
    };
    let backend = memory();
    let slow_runs: Arc<AtomicU32> = Arc::default();
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let mut engine_config = EngineConfig::new(Domain::new("scan").unwrap());
    engine_config.retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
    };
    let engine = Arc::new(Engine::new(
        Pipeline::new(Gated {
            open: gate_rx,
            runs: Arc::clone(&slow_runs),
        })
        .then(AddOne {
            runs: Arc::default(),
        })
        .then(Flaky::new(0, false)),
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        Arc::new(PlainHooks),
        engine_config,
    ));
    let worker = AmqpWorker::new(engine.clone(), config.clone());
    let topology = worker.topology().clone();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move { worker.run(s).await });
    let producer = AmqpProducer::new(config, topology.clone());

    let mut jobs = Vec::new();
    for i in 0..20 {
        let j = job(&format!("rc{i}"));
        producer
            .submit(Envelope::first(j.clone(), "u", json!(i)))
            .await
            .unwrap();
        jobs.push(j);
    }
    // Mid-run: the first stage has started for some jobs and is held at the
    // gate, so nothing has completed when the connections are closed.
    let ks = keys(Profile::Native);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while events(&backend, &ks, &jobs[0]).await.is_empty() && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let closed = tokio::task::spawn_blocking({
        let name = name.clone();
        move || close_connections(&name)
    })
    .await
    .unwrap();
    assert!(
        closed >= 2,
        "worker and producer connections closed, got {closed}"
    );
    assert_eq!(
        slow_runs.load(Ordering::SeqCst),
        0,
        "the close happened mid-run"
    );
    gate_tx.send(true).unwrap();

    // The producer reconnects for new submissions.
    for i in 20..25 {
        let j = job(&format!("rc{i}"));
        producer
            .submit(Envelope::first(j.clone(), "u", json!(i)))
            .await
            .unwrap();
        jobs.push(j);
    }
    for j in &jobs {
        assert_eq!(
            wait_terminal(engine.control().store(), j, Duration::from_secs(90)).await,
            Some(true),
            "{j}"
        );
        let evs = wait_done_event(&backend, &ks, j, Duration::from_secs(30)).await;
        assert_eq!(
            steps(&evs),
            pairs(&[
                ("gated", "started"),
                ("gated", "completed"),
                ("add", "started"),
                ("add", "completed"),
                ("flaky", "started"),
                ("flaky", "completed"),
                ("done", "completed"),
            ]),
            "{j}"
        );
    }
    stop.cancel();
    let _ = task.await;
    producer.close().await;
    delete_queues(&topology.all_queues()).await;
}

/// Waits until the gate opens, then adds one.
struct Gated {
    open: tokio::sync::watch::Receiver<bool>,
    runs: Arc<AtomicU32>,
}

#[async_trait]
impl Stage for Gated {
    type Input = Num;
    type Output = Num;
    const NAME: &'static str = "gated";
    async fn run(&self, _ctx: &StageContext, input: Num) -> Result<Num, StageError> {
        let mut open = self.open.clone();
        open.wait_for(|o| *o)
            .await
            .map_err(|_| StageError::retryable("gate dropped"))?;
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(Num(input.0 + 1))
    }
}
