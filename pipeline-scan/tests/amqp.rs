//! The AMQP transport against the real RabbitMQ on 127.0.0.1:5672
//! (guest/guest), one queue prefix per test.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use pipeline_scan::api::{ApiConfig, ScanApi};
use pipeline_scan::pipeline::{Engine, EngineConfig, Envelope, Pipeline, PlainHooks, RetryPolicy};
use pipeline_scan::scan::{self, LatencyDist, ScanModels};
use pipeline_scan::transport::amqp::{AmqpConfig, AmqpProducer, AmqpWorker, Dlq, Topology};
use pipeline_scan::transport::Transport;
use relay_core::backend::KvStore;
use relay_core::{Domain, JobId, Profile, Status};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(60);

fn amqp(prefix: &str) -> AmqpConfig {
    AmqpConfig {
        prefix: prefix.to_owned(),
        connection_name: format!("pipeline-scan-{prefix}"),
        ..AmqpConfig::new(AMQP_URL)
    }
}

fn retry_config(max_attempts: u32) -> EngineConfig {
    let mut c = EngineConfig::new(Domain::new("scan").unwrap());
    c.retry = RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
    };
    c
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    topology: Topology,
}

impl Running {
    fn start(engine: Arc<Engine>, config: AmqpConfig) -> Self {
        let worker = AmqpWorker::new(engine, config);
        let topology = worker.topology().clone();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move { worker.run(s).await });
        Self {
            stop,
            task,
            topology,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
        delete_queues(&self.topology.all_queues()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_scan_job_over_amqp_through_the_api() {
    let prefix = queue_prefix("full");
    let backend = memory();
    let models = ScanModels::simulated(LatencyDist {
        mean_ms: 20,
        jitter_ms: 10,
    });
    let engine = Arc::new(scan::engine(
        &models,
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        scan::engine_config(),
    ));
    let running = Running::start(engine.clone(), amqp(&prefix));
    let producer = Arc::new(AmqpProducer::new(amqp(&prefix), running.topology.clone()));
    let app = ScanApi::new(
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        producer.clone(),
        ApiConfig::default(),
    )
    .router();

    let mut jobs = Vec::new();
    for i in 0..5 {
        let req = Request::post("/api/v1/scan")
            .header("x-user-id", format!("amqp-user-{i}"))
            .body(Body::from(
                json!({"image_url": format!("https://images.example.com/{i}.jpg")}).to_string(),
            ))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        jobs.push(JobId::new(v["job_id"].as_str().unwrap()).unwrap());
    }
    let ks = keys(Profile::Native);
    for job in &jobs {
        assert_eq!(
            wait_terminal(engine.control().store(), job, WAIT).await,
            Some(true),
            "{job}"
        );
        let evs = wait_done_event(&backend, &ks, job, WAIT).await;
        assert_eq!(steps(&evs), full_scan_steps(), "{job}");
        let result = backend.get(&scan::result_key(job)).await.unwrap().unwrap();
        let result: serde_json::Value = serde_json::from_slice(&result).unwrap();
        assert_eq!(result["status"], "completed");
        assert_eq!(evs.last().unwrap().data, result);
    }
    producer.close().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_twice_then_succeeding_retries_through_delay_queues() {
    let prefix = queue_prefix("retry");
    let backend = memory();
    let flaky = Flaky::new(2, false);
    let seen = flaky.attempts_seen.clone();
    let engine = Arc::new(Engine::new(
        Pipeline::new(AddOne {
            runs: Arc::default(),
        })
        .then(flaky)
        .then(Shout),
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        Arc::new(PlainHooks),
        retry_config(3),
    ));
    let running = Running::start(engine.clone(), amqp(&prefix));
    // Two distinct backoff delay queues per stage: 50 ms and 100 ms.
    assert!(running
        .topology
        .all_queues()
        .contains(&format!("{prefix}.flaky.retry.100ms")));
    let producer = AmqpProducer::new(amqp(&prefix), running.topology.clone());
    let job = job("amqp-retry");
    producer
        .submit(Envelope::first(job.clone(), "u", json!(1)))
        .await
        .unwrap();
    assert_eq!(
        wait_terminal(engine.control().store(), &job, WAIT).await,
        Some(true)
    );
    assert_eq!(*seen.lock().unwrap(), [1, 2, 3]);
    let evs = wait_done_event(&backend, &keys(Profile::Native), &job, WAIT).await;
    assert!(evs.iter().all(|e| e.status != Status::Failed));
    assert_eq!(evs.last().unwrap().data, json!("n=2!"));
    assert_eq!(evs.iter().filter(|e| e.is_terminal()).count(), 1);
    producer.close().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_stage_lands_in_dlq_job_fails_and_replay_reruns_it() {
    let prefix = queue_prefix("dlq");
    let backend = memory();
    // 3 attempts fail; the replayed 4th run succeeds.
    let flaky = Flaky::new(3, false);
    let runs = flaky.runs.clone();
    let engine = Arc::new(Engine::new(
        Pipeline::new(AddOne {
            runs: Arc::default(),
        })
        .then(flaky)
        .then(Shout),
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        Arc::new(PlainHooks),
        retry_config(3),
    ));
    let running = Running::start(engine.clone(), amqp(&prefix));
    let producer = AmqpProducer::new(amqp(&prefix), running.topology.clone());
    let job = job("amqp-dlq");
    producer
        .submit(Envelope::first(job.clone(), "u", json!(9)))
        .await
        .unwrap();
    assert_eq!(
        wait_terminal(engine.control().store(), &job, WAIT).await,
        Some(false)
    );
    let ks = keys(Profile::Native);
    let evs = wait_done_event(&backend, &ks, &job, WAIT).await;
    assert_eq!(
        steps(&evs),
        pairs(&[
            ("add", "started"),
            ("add", "completed"),
            ("flaky", "started"),
            ("flaky", "failed"),
            ("done", "failed"),
        ])
    );
    assert_eq!(runs.load(Ordering::SeqCst), 3);

    let dlq = Dlq::connect(&amqp(&prefix), running.topology.clone())
        .await
        .unwrap();
    let listed = {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let l = dlq.list(10).await.unwrap();
            if !l.is_empty() || tokio::time::Instant::now() > deadline {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].job_id.as_deref(), Some(job.as_str()));
    assert_eq!(listed[0].stage.as_deref(), Some("flaky"));
    assert_eq!(listed[0].attempt, Some(3));
    assert!(listed[0].reason.as_deref().unwrap().contains("3 attempt"));
    // Listing does not consume.
    assert_eq!(dlq.list(10).await.unwrap().len(), 1);

    let replayed = dlq.replay(engine.control().store(), 10).await.unwrap();
    assert_eq!(replayed, 1);
    assert_eq!(
        wait_terminal(engine.control().store(), &job, WAIT).await,
        Some(true)
    );
    let evs = {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let evs = events(&backend, &ks, &job).await;
            if evs
                .iter()
                .any(|e| e.is_terminal() && e.status == Status::Completed)
                || tokio::time::Instant::now() > deadline
            {
                break evs;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let last = evs.last().unwrap();
    assert_eq!(
        (last.stage.as_str(), last.status),
        ("done", Status::Completed)
    );
    assert_eq!(last.data, json!("n=10!"));
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    assert!(dlq.is_empty().await.unwrap());
    dlq.close().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_is_dead_lettered_and_purge_empties_the_dlq() {
    let prefix = queue_prefix("poison");
    let backend = memory();
    let engine = Arc::new(Engine::new(
        Pipeline::new(AddOne {
            runs: Arc::default(),
        }),
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        Arc::new(PlainHooks),
        retry_config(2),
    ));
    let running = Running::start(engine.clone(), amqp(&prefix));
    let dlq = Dlq::connect(&amqp(&prefix), running.topology.clone())
        .await
        .unwrap();
    // Raw garbage straight into the stage queue.
    let conn = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_publish(
        "".into(),
        running.topology.stage_queue(0).into(),
        lapin::options::BasicPublishOptions::default(),
        b"\xffnot json",
        lapin::BasicProperties::default(),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let listed = loop {
        let l = dlq.list(10).await.unwrap();
        if !l.is_empty() || tokio::time::Instant::now() > deadline {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(listed.len(), 1);
    assert!(listed[0]
        .reason
        .as_deref()
        .unwrap()
        .starts_with("undecodable"));
    assert!(listed[0].job_id.is_none());
    // Replay leaves undecodable messages where they are.
    assert_eq!(dlq.replay(engine.control().store(), 10).await.unwrap(), 0);
    assert_eq!(dlq.purge().await.unwrap(), 1);
    assert!(dlq.is_empty().await.unwrap());
    let _ = conn.close(200, "done".into()).await;
    dlq.close().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_steps() {
    let prefix = queue_prefix("graceful");
    let backend = memory();
    let runs = Arc::default();
    let engine = Arc::new(Engine::new(
        Pipeline::new(Slow {
            ms: 400,
            runs: Arc::clone(&runs),
        }),
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        Arc::new(PlainHooks),
        retry_config(2),
    ));
    let running = Running::start(engine.clone(), amqp(&prefix));
    let producer = AmqpProducer::new(amqp(&prefix), running.topology.clone());
    let job = job("graceful");
    producer
        .submit(Envelope::first(job.clone(), "u", json!(1)))
        .await
        .unwrap();
    // Wait until the step is running, then stop the worker.
    let ks = keys(Profile::Native);
    let deadline = tokio::time::Instant::now() + WAIT;
    while events(&backend, &ks, &job).await.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.stop.cancel();
    let _ = running.task.await;
    // The in-flight step finished (and its job completed) before run() returned.
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        engine.control().store().terminal(&job).await.unwrap(),
        Some(true)
    );
    producer.close().await;
    delete_queues(&running.topology.all_queues()).await;
}
