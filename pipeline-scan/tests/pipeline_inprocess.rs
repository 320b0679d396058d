//! The generic pipeline engine over the in-process transport (MemoryBackend).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pipeline_scan::pipeline::{
    Disposition, Engine, EngineConfig, Envelope, JobStore, Pipeline, PlainHooks, RetryPolicy,
};
use pipeline_scan::transport::inprocess::{InProcess, InProcessConfig};
use pipeline_scan::transport::Transport;
use relay_core::backend::JobLog;
use relay_core::{Domain, Profile, Status};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn config(max_attempts: u32) -> EngineConfig {
    let mut c = EngineConfig::new(Domain::new("scan").unwrap());
    c.retry = RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
    };
    c
}

fn store(engine: &Engine) -> JobStore {
    engine.control().store().clone()
}

#[tokio::test]
async fn full_job_emits_every_stage_then_one_done_last() {
    let backend = memory();
    let runs = Arc::default();
    let pipeline = Pipeline::new(AddOne {
        runs: Arc::clone(&runs),
    })
    .then(Flaky::new(0, false))
    .then(Shout);
    assert_eq!(pipeline.stage_names(), ["add", "flaky", "shout"]);
    let engine = Arc::new(Engine::new(
        pipeline,
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        Arc::new(PlainHooks),
        config(3),
    ));
    let transport = InProcess::start(engine.clone(), InProcessConfig::default());
    let job = job("full");
    engine.control().queued(&job, json!(null)).await.unwrap();
    transport
        .submit(Envelope::first(job.clone(), "u1", json!(41)))
        .await
        .unwrap();
    assert_eq!(wait_terminal(&store(&engine), &job, WAIT).await, Some(true));
    let evs = wait_done_event(&backend, &keys(Profile::Native), &job, WAIT).await;
    assert_eq!(steps(&evs), add_flaky_shout_steps(true));
    let seqs: Vec<u64> = evs.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [0, 10, 11, 20, 21, 30, 31, 41]);
    let progress: Vec<Option<u8>> = evs.iter().map(|e| e.progress).collect();
    assert_eq!(
        progress,
        [
            Some(0),
            Some(0),
            Some(33),
            Some(33),
            Some(66),
            Some(66),
            Some(100),
            Some(100)
        ]
    );
    assert_eq!(evs.last().unwrap().data, json!("n=42!"));
    assert_eq!(evs.iter().filter(|e| e.is_terminal()).count(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    transport.shutdown().await;
}

#[tokio::test]
async fn retryable_failure_retries_with_backoff_without_failed_events() {
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
        config(3),
    ));
    let transport = InProcess::start(engine.clone(), InProcessConfig::default());
    let job = job("retry");
    transport
        .submit(Envelope::first(job.clone(), "u1", json!(1)))
        .await
        .unwrap();
    assert_eq!(wait_terminal(&store(&engine), &job, WAIT).await, Some(true));
    assert_eq!(*seen.lock().unwrap(), [1, 2, 3]);
    let evs = wait_done_event(&backend, &keys(Profile::Native), &job, WAIT).await;
    assert!(
        evs.iter().all(|e| e.status != Status::Failed),
        "{:?}",
        steps(&evs)
    );
    // The retried stage's `started` is emitted once (idempotent per seq).
    assert_eq!(
        evs.iter().filter(|e| e.stage.as_str() == "flaky").count(),
        2,
        "{:?}",
        steps(&evs)
    );
    assert_eq!(evs.last().unwrap().stage.as_str(), "done");
    assert!(transport.dead_letters().is_empty());
    transport.shutdown().await;
}

#[test]
fn backoff_is_exponential_and_capped() {
    let p = RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(350),
    };
    assert_eq!(p.delay_after(1), Duration::from_millis(100));
    assert_eq!(p.delay_after(2), Duration::from_millis(200));
    assert_eq!(p.delay_after(3), Duration::from_millis(350));
    assert_eq!(p.delay_after(30), Duration::from_millis(350));
}

#[tokio::test]
async fn exhausted_retries_fail_the_job_once_and_dead_letter_then_replay_completes() {
    let backend = memory();
    // Fails 3 times: the 3 attempts are exhausted; the replay's run succeeds.
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
        config(3),
    ));
    let transport = InProcess::start(engine.clone(), InProcessConfig::default());
    let job = job("dlq");
    transport
        .submit(Envelope::first(job.clone(), "u1", json!(5)))
        .await
        .unwrap();
    assert_eq!(
        wait_terminal(&store(&engine), &job, WAIT).await,
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
    let seqs: Vec<u64> = evs.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [10, 11, 20, 22, 49]);
    assert_eq!(evs.last().unwrap().data["stage"], "flaky");
    assert_eq!(runs.load(Ordering::SeqCst), 3);

    // Dead-lettered with its last attempt.
    let dead = {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let d = transport.dead_letters();
            if !d.is_empty() || tokio::time::Instant::now() > deadline {
                break d;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].envelope.stage, 1);
    assert_eq!(dead[0].envelope.attempt, 3);
    assert!(dead[0].reason.contains("flaky"), "{}", dead[0].reason);

    // Replay re-runs the failed stage (not the completed one) and finishes.
    assert_eq!(transport.replay_dead_letters().await.unwrap(), 1);
    assert_eq!(wait_terminal(&store(&engine), &job, WAIT).await, Some(true));
    let evs = {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let evs = events(&backend, &ks, &job).await;
            if evs
                .iter()
                .any(|e| e.stage.as_str() == "done" && e.status == Status::Completed)
                || tokio::time::Instant::now() > deadline
            {
                break evs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    assert_eq!(evs.last().unwrap().stage.as_str(), "done");
    assert_eq!(evs.last().unwrap().status, Status::Completed);
    assert_eq!(evs.last().unwrap().data, json!("n=6!"));
    // The replay is run 1: every seq shifted by the run stride (100), so the
    // restarted stage's `started` is a new event and `done` outranks `failed`.
    assert_eq!(
        steps(&evs[5..]),
        pairs(&[
            ("flaky", "started"),
            ("flaky", "completed"),
            ("shout", "started"),
            ("shout", "completed"),
            ("done", "completed"),
        ])
    );
    let seqs: Vec<u64> = evs.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [10, 11, 20, 22, 49, 120, 121, 130, 131, 141]);
    // So the router's state (highest seq wins) ends at the replay's `done`.
    let router =
        relay_core::Router::new(backend.clone(), relay_core::RouterConfig::new(ks.clone())).spawn();
    let state = {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let st = backend.get_state(&ks.job(&job)).await.unwrap();
            if st.as_ref().is_some_and(|s| s.seq == 141) || tokio::time::Instant::now() > deadline {
                break st.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    assert_eq!(state.seq, 141);
    router.shutdown().await;
    transport.shutdown().await;
}

#[tokio::test]
async fn fatal_error_fails_without_retry() {
    let backend = memory();
    let flaky = Flaky::new(1, true);
    let runs = flaky.runs.clone();
    let engine = Engine::new(
        Pipeline::new(flaky).then(Shout),
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        Arc::new(PlainHooks),
        config(5),
    );
    let job = job("fatal");
    let d = engine
        .process(Envelope::first(job.clone(), "u", json!(1)))
        .await;
    assert!(matches!(d, Disposition::DeadLetter { .. }), "{d:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let evs = events(&backend, &keys(Profile::Native), &job).await;
    assert_eq!(
        steps(&evs),
        pairs(&[
            ("flaky", "started"),
            ("flaky", "failed"),
            ("done", "failed")
        ])
    );
}

#[tokio::test]
async fn stage_timeout_is_retryable() {
    let backend = memory();
    let mut c = config(2);
    c.stage_timeout = Duration::from_millis(50);
    let engine = Engine::new(
        Pipeline::new(Sleepy),
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        Arc::new(PlainHooks),
        c,
    );
    let job = job("timeout");
    let d = engine
        .process(Envelope::first(job.clone(), "u", json!(1)))
        .await;
    match d {
        Disposition::Retry { envelope, .. } => assert_eq!(envelope.attempt, 2),
        other => panic!("expected retry, got {other:?}"),
    }
    let d = engine
        .process(Envelope {
            attempt: 2,
            ..Envelope::first(job.clone(), "u", json!(1))
        })
        .await;
    match d {
        Disposition::DeadLetter { reason, .. } => assert!(reason.contains("timed out"), "{reason}"),
        other => panic!("expected dead letter, got {other:?}"),
    }
}

#[tokio::test]
async fn redelivered_steps_are_idempotent() {
    let backend = memory();
    let runs = Arc::default();
    let engine = Engine::new(
        Pipeline::new(AddOne {
            runs: Arc::clone(&runs),
        })
        .then(Shout2),
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        Arc::new(PlainHooks),
        config(3),
    );
    let job = job("redeliver");
    let first = Envelope::first(job.clone(), "u", json!(1));
    let a = engine.process(first.clone()).await;
    // The same message delivered again (e.g. the ack was lost).
    let b = engine.process(first).await;
    assert_eq!(a, b, "same forward both times");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "a completed stage never runs twice"
    );
    let Disposition::Forward(next) = a else {
        panic!("expected forward")
    };
    assert_eq!(engine.process(next.clone()).await, Disposition::Finished);
    // Redelivery after the job finished: nothing more is emitted.
    assert_eq!(engine.process(next).await, Disposition::Finished);
    let evs = events(&backend, &keys(Profile::Native), &job).await;
    assert_eq!(
        steps(&evs),
        pairs(&[
            ("add", "started"),
            ("add", "completed"),
            ("shout2", "started"),
            ("shout2", "completed"),
            ("done", "completed"),
        ])
    );
}

/// Num → Text, for the two-stage idempotency test.
struct Shout2;

#[async_trait::async_trait]
impl pipeline_scan::pipeline::Stage for Shout2 {
    type Input = Num;
    type Output = Text;
    const NAME: &'static str = "shout2";
    async fn run(
        &self,
        _ctx: &pipeline_scan::pipeline::StageContext,
        input: Num,
    ) -> Result<Text, pipeline_scan::pipeline::StageError> {
        Ok(Text(format!("{}!", input.0)))
    }
}

#[tokio::test]
async fn undecodable_input_fails_the_job() {
    let backend = memory();
    let engine = Engine::new(
        Pipeline::new(AddOne {
            runs: Arc::default(),
        }),
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        Arc::new(PlainHooks),
        config(3),
    );
    let job = job("badinput");
    let d = engine
        .process(Envelope::first(
            job.clone(),
            "u",
            json!({"not": "a number"}),
        ))
        .await;
    assert!(matches!(d, Disposition::DeadLetter { .. }), "{d:?}");
    let unknown = engine
        .process(Envelope {
            stage: 7,
            ..Envelope::first(job.clone(), "u", json!(1))
        })
        .await;
    assert!(matches!(unknown, Disposition::DeadLetter { .. }));
    let evs = events(&backend, &keys(Profile::Native), &job).await;
    assert_eq!(evs.iter().filter(|e| e.is_terminal()).count(), 1);
}

#[tokio::test]
async fn many_concurrent_jobs_all_complete() {
    let backend = memory();
    let engine = Arc::new(Engine::new(
        Pipeline::new(AddOne {
            runs: Arc::default(),
        })
        .then(Flaky::new(0, false))
        .then(Shout),
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        Arc::new(PlainHooks),
        config(3),
    ));
    let transport = InProcess::start(
        engine.clone(),
        InProcessConfig {
            capacity: 4,
            concurrency: 3,
            stage_concurrency: vec![("shout".into(), 1)],
        },
    );
    let jobs: Vec<_> = (0..50).map(|i| job(&format!("many{i}"))).collect();
    for (i, j) in jobs.iter().enumerate() {
        transport
            .submit(Envelope::first(j.clone(), "u", json!(i)))
            .await
            .unwrap();
    }
    for j in &jobs {
        assert_eq!(
            wait_terminal(&store(&engine), j, WAIT).await,
            Some(true),
            "{j}"
        );
    }
    transport.shutdown().await;
}

/// A stage whose output (and `completed` data) is a JSON object.
struct Describe;

#[async_trait::async_trait]
impl pipeline_scan::pipeline::Stage for Describe {
    type Input = Num;
    type Output = serde_json::Value;
    const NAME: &'static str = "describe";
    async fn run(
        &self,
        _ctx: &pipeline_scan::pipeline::StageContext,
        input: Num,
    ) -> Result<serde_json::Value, pipeline_scan::pipeline::StageError> {
        Ok(json!({ "n": input.0 }))
    }
}

/// The `SimulatedLatency` decorator is an ordinary stage to the engine: same
/// name and types as the stage it wraps, its sleep reported as `model_ms` in
/// the `completed` data, and cut off by the stage timeout like any work.
#[tokio::test]
async fn simulated_latency_decorator_reports_model_ms_and_obeys_the_timeout() {
    use pipeline_scan::sim::{LatencyDist, SimulatedLatency};
    let backend = memory();
    let ms = |mean_ms| LatencyDist {
        mean_ms,
        jitter_ms: 0,
    };
    let pipeline = Pipeline::new(SimulatedLatency::new(
        AddOne {
            runs: Arc::default(),
        },
        ms(5),
    ))
    .then(SimulatedLatency::new(Describe, ms(25)));
    assert_eq!(pipeline.stage_names(), ["add", "describe"]);
    let engine = Arc::new(Engine::new(
        pipeline,
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        Arc::new(PlainHooks),
        config(3),
    ));
    let transport = InProcess::start(engine.clone(), InProcessConfig::default());
    let id = job("simlat");
    transport
        .submit(Envelope::first(id.clone(), "u", json!(1)))
        .await
        .unwrap();
    assert_eq!(wait_terminal(&store(&engine), &id, WAIT).await, Some(true));
    let evs = wait_done_event(&backend, &keys(Profile::Native), &id, WAIT).await;
    let completed = |stage: &str| {
        evs.iter()
            .find(|e| e.stage.as_str() == stage && e.status == Status::Completed)
            .map(|e| e.data.clone())
            .expect("completed event")
    };
    // A number is not an object: nothing to add `model_ms` to.
    assert_eq!(completed("add"), json!(2));
    assert_eq!(completed("describe"), json!({ "n": 2, "model_ms": 25 }));
    transport.shutdown().await;

    // The decorator's sleep runs inside the stage timeout.
    let mut short = config(1);
    short.stage_timeout = Duration::from_millis(20);
    let engine = Engine::new(
        Pipeline::new(SimulatedLatency::new(Describe, ms(60_000))),
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        Arc::new(PlainHooks),
        short,
    );
    let d = engine
        .process(Envelope::first(job("simlat-timeout"), "u", json!(1)))
        .await;
    match d {
        Disposition::DeadLetter { reason, .. } => assert!(reason.contains("timed out"), "{reason}"),
        other => panic!("expected a timeout dead letter, got {other:?}"),
    }
}

/// Fails every success hook (e.g. its result store is down).
struct FailingHooks;

#[async_trait::async_trait]
impl pipeline_scan::pipeline::JobHooks for FailingHooks {
    async fn on_success(
        &self,
        _job: &pipeline_scan::pipeline::JobInfo,
        _output: &serde_json::Value,
    ) -> Result<serde_json::Value, pipeline_scan::pipeline::StageError> {
        Err(pipeline_scan::pipeline::StageError::retryable(
            "result store down",
        ))
    }

    async fn on_failure(
        &self,
        _job: &pipeline_scan::pipeline::JobInfo,
        _stage: Option<&str>,
        error: &str,
    ) -> Result<serde_json::Value, pipeline_scan::pipeline::StageError> {
        Ok(json!({ "error": error }))
    }
}

/// `JobControl` errors are typed: the hook's `StageError` and the
/// publisher's `PublishError` are kept as sources (not flattened to text),
/// and `is_transient` tells a retryable cause from a permanent one.
#[tokio::test]
async fn job_control_errors_keep_their_typed_source() {
    use pipeline_scan::pipeline::{ControlError, JobInfo, StageError};
    use std::error::Error as _;

    let backend = memory();
    let engine = Engine::new(
        Pipeline::new(AddOne {
            runs: Arc::default(),
        }),
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        Arc::new(FailingHooks),
        config(3),
    );
    let info = JobInfo {
        job_id: job("ctl-hook"),
        user_id: "u".into(),
        run: 0,
    };
    let err = engine
        .control()
        .complete(&info, &json!(1), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ControlError::Hook(StageError::Retryable { .. })),
        "{err:?}"
    );
    assert!(err.is_transient());
    let source = err.source().expect("source kept");
    assert_eq!(
        source.downcast_ref::<StageError>(),
        Some(&StageError::retryable("result store down"))
    );

    // An event over the publisher's size limit: a permanent publish error.
    let tiny = relay_core::Publisher::new(
        backend.clone(),
        keys(Profile::Native),
        relay_core::PublisherConfig {
            max_event_bytes: 64,
            ..pipeline_scan::pipeline::publisher_config()
        },
    );
    let engine = Engine::new(
        Pipeline::new(AddOne {
            runs: Arc::default(),
        }),
        tiny,
        backend.clone(),
        Arc::new(PlainHooks),
        config(3),
    );
    let err = engine
        .control()
        .queued(&job("ctl-big"), json!({ "blob": "x".repeat(1024) }))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ControlError::Publish(relay_core::PublishError::TooLarge { .. })
        ),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(err
        .source()
        .and_then(|s| s.downcast_ref::<relay_core::PublishError>())
        .is_some());
}
