//! The scan pipeline end to end over the in-process transport.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pipeline_scan::app::start_in_process;
use pipeline_scan::pipeline::{Envelope, JobControl, Stage, StageContext};
use pipeline_scan::scan::types::{Answered, FinalAnswer, ScanRequest, VisionResult};
use pipeline_scan::scan::{
    self, LatencyDist, RewardStage, RuleSet, ScanModels, SimulatedVision, Taxonomy, TemplateAnswer,
};
use pipeline_scan::transport::inprocess::InProcessConfig;
use pipeline_scan::transport::Transport;
use relay_core::backend::memory::MemoryBackend;
use relay_core::backend::{KvStore, StreamLog};
use relay_core::{JobId, Profile};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

async fn submit(control: &JobControl, transport: &dyn Transport, user: &str, url: &str) -> JobId {
    let job = job("scan");
    control
        .queued(&job, json!({"image_url": url}))
        .await
        .unwrap();
    let req = ScanRequest {
        image_url: url.into(),
        user_input: None,
        model: None,
    };
    transport
        .submit(Envelope::first(
            job.clone(),
            user,
            serde_json::to_value(req).unwrap(),
        ))
        .await
        .unwrap();
    job
}

async fn stored_result(backend: &MemoryBackend, job: &JobId) -> Value {
    let raw = backend
        .get(&scan::result_key(job))
        .await
        .unwrap()
        .expect("result stored");
    serde_json::from_slice(&raw).unwrap()
}

#[tokio::test]
async fn scan_job_completes_with_wire_result_stored_before_done() {
    let backend = memory();
    let models = ScanModels::simulated(LatencyDist {
        mean_ms: 5,
        jitter_ms: 5,
    });
    let (engine, transport) = start_in_process(
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        &models,
        scan::engine_config(),
        InProcessConfig::default(),
    );
    let url = "https://images.example.com/bottle-17.jpg";
    let job = submit(engine.control(), &transport, "user-1", url).await;
    assert_eq!(
        wait_terminal(engine.control().store(), &job, WAIT).await,
        Some(true)
    );
    let evs = wait_done_event(&backend, &keys(Profile::Native), &job, WAIT).await;
    assert_eq!(steps(&evs), full_scan_steps());
    let seqs: Vec<u64> = evs.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [0, 10, 11, 20, 21, 30, 31, 40, 41, 51]);

    let result = stored_result(&backend, &job).await;
    assert_eq!(
        evs.last().unwrap().data,
        result,
        "done carries the stored result"
    );
    let obj = result.as_object().unwrap();
    let mut fields: Vec<&str> = obj.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "error",
            "message",
            "pipeline_result",
            "reward",
            "status",
            "task_id"
        ]
    );
    assert_eq!(result["task_id"], job.as_str());
    assert_eq!(result["status"], "completed");
    assert!(result["error"].is_null());
    let pr = &result["pipeline_result"];
    let expected = SimulatedVision::new(Arc::new(Taxonomy::default_dataset()), LatencyDist::ZERO)
        .classify_now(url);
    let got: VisionResult = serde_json::from_value(pr["classification_result"].clone()).unwrap();
    assert_eq!(got, expected);
    assert!(pr["disposal_rules"].is_object());
    assert!(!pr["final_answer"]["user_answer"]
        .as_str()
        .unwrap()
        .is_empty());
    assert_eq!(result["reward"]["already_owned"], false);

    // Same user, same item again: the character is not granted twice.
    let again = submit(engine.control(), &transport, "user-1", url).await;
    assert_eq!(
        wait_terminal(engine.control().store(), &again, WAIT).await,
        Some(true)
    );
    let r2 = stored_result(&backend, &again).await;
    assert_eq!(
        r2["reward"]["character_id"],
        result["reward"]["character_id"]
    );
    assert_eq!(r2["reward"]["already_owned"], true);

    // Another user gets it.
    let other = submit(engine.control(), &transport, "user-2", url).await;
    assert_eq!(
        wait_terminal(engine.control().store(), &other, WAIT).await,
        Some(true)
    );
    assert_eq!(
        stored_result(&backend, &other).await["reward"]["already_owned"],
        false
    );
    transport.shutdown().await;
}

#[tokio::test]
async fn unknown_item_completes_without_rules_and_without_reward() {
    let backend = memory();
    let models = ScanModels::simulated(LatencyDist::ZERO);
    let (engine, transport) = start_in_process(
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        &models,
        scan::engine_config(),
        InProcessConfig::default(),
    );
    let job = submit(
        engine.control(),
        &transport,
        "u",
        "https://images.example.com/unknown-item.png",
    )
    .await;
    assert_eq!(
        wait_terminal(engine.control().store(), &job, WAIT).await,
        Some(true)
    );
    let r = stored_result(&backend, &job).await;
    assert!(r["pipeline_result"]["disposal_rules"].is_null());
    assert!(r["reward"].is_null());
    assert_eq!(
        r["pipeline_result"]["final_answer"]["insufficiencies"],
        json!(["no_matching_rules"])
    );
    let evs = wait_done_event(&backend, &keys(Profile::Native), &job, WAIT).await;
    assert_eq!(steps(&evs), full_scan_steps());
    transport.shutdown().await;
}

fn eco2_assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eco2")
}

#[tokio::test]
async fn eco2_mode_uses_eco2_data_and_wire_seqs() {
    let backend = memory();
    let a = eco2_assets();
    let taxonomy = Arc::new(
        Taxonomy::load(
            &a.join("item_class_list.yaml"),
            &a.join("situation_tags.yaml"),
        )
        .unwrap(),
    );
    let models = ScanModels {
        vision: Arc::new(SimulatedVision::new(taxonomy.clone(), LatencyDist::ZERO)),
        rules: Arc::new(RuleSet::load_dir(&a.join("source")).unwrap()),
        answer: Arc::new(TemplateAnswer),
        stage_latency: Vec::new(),
    };
    let (engine, transport) = start_in_process(
        publisher(backend.clone(), Profile::Eco2),
        backend.clone(),
        &models,
        scan::engine_config(),
        InProcessConfig::default(),
    );
    let job = submit(
        engine.control(),
        &transport,
        "u",
        "https://img.example.com/x.jpg",
    )
    .await;
    assert_eq!(
        wait_terminal(engine.control().store(), &job, WAIT).await,
        Some(true)
    );
    let ks = keys(Profile::Eco2);
    let evs = wait_done_event(&backend, &ks, &job, WAIT).await;
    assert_eq!(steps(&evs), full_scan_steps());
    for e in &evs {
        assert_eq!(
            e.seq,
            relay_core::eco2::seq_for(e.stage.as_str(), e.status.as_str()),
            "{e:?}"
        );
    }
    // The raw entries are the Python producer's flat fields.
    let raw = backend
        .range(&ks.shard_stream(ks.shard_of(&job)), None, 1000)
        .await
        .unwrap();
    let done = raw
        .iter()
        .rev()
        .find(|e| {
            e.fields
                .iter()
                .any(|(k, v)| k == "job_id" && v.as_ref() == job.as_str().as_bytes())
        })
        .unwrap();
    let names: Vec<&str> = done.fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        &names[..7],
        ["job_id", "stage", "status", "seq", "ts", "progress", "result"]
    );
    let result = stored_result(&backend, &job).await;
    let class = &result["pipeline_result"]["classification_result"]["classification"];
    assert!(taxonomy
        .entries
        .iter()
        .any(|c| c.major_category == class["major_category"]));
    assert!(result["pipeline_result"]["disposal_rules"].is_object());
    transport.shutdown().await;
}

#[tokio::test]
async fn reward_rerun_by_the_same_job_reports_the_same_grant() {
    let backend = memory();
    let rules = RuleSet::default_dataset();
    let vision = VisionResult {
        classification: pipeline_scan::scan::types::Classification {
            major_category: "recyclable".into(),
            middle_category: "metal".into(),
            minor_category: "drink can".into(),
        },
        situation_tags: vec![],
    };
    let (key, doc) = rules.lookup(&vision.classification).unwrap();
    let input = Answered {
        request: ScanRequest {
            image_url: "https://x.example/a.jpg".into(),
            user_input: None,
            model: None,
        },
        vision,
        rule_key: Some(key.to_owned()),
        disposal_rules: Some(doc.clone()),
        final_answer: FinalAnswer {
            disposal_steps: vec!["1. x".into()],
            user_answer: "ok".into(),
            insufficiencies: vec![],
        },
    };
    let ctx = |job: &JobId| StageContext {
        job_id: job.clone(),
        user_id: "rew-user".into(),
        stage: "reward",
        stage_index: 3,
        attempt: 1,
        max_attempts: 3,
        deadline: std::time::Instant::now() + Duration::from_secs(5),
        span: tracing::Span::none(),
        publisher: publisher(backend.clone(), Profile::Native),
        backend: backend.clone(),
    };
    let j1 = job("rew1");
    let first = RewardStage.run(&ctx(&j1), input.clone()).await.unwrap();
    let rerun = RewardStage.run(&ctx(&j1), input.clone()).await.unwrap();
    assert_eq!(first, rerun);
    let r = first.reward.unwrap();
    assert_eq!(r.character_id, "rivet");
    assert!(!r.already_owned);
    let j2 = job("rew2");
    let second = RewardStage.run(&ctx(&j2), input.clone()).await.unwrap();
    assert!(second.reward.unwrap().already_owned);

    // Shortcomings in the answer: no reward.
    let mut weak = input;
    weak.final_answer.insufficiencies = vec!["unclear_photo".into()];
    assert!(RewardStage
        .run(&ctx(&j2), weak)
        .await
        .unwrap()
        .reward
        .is_none());
}

/// Simulated model time reaches each stage's `completed` data as `model_ms`:
/// the simulators' own sleeps (vision) and the per-stage extra latency
/// (`--sim-stage-latency-ms`, here on `rule`); stages without simulated
/// time carry none.
#[tokio::test]
async fn simulated_model_time_is_reported_as_model_ms_per_stage() {
    let backend = memory();
    let mut models = ScanModels::simulated(LatencyDist {
        mean_ms: 30,
        jitter_ms: 0,
    });
    models.stage_latency = vec![(
        "rule".into(),
        LatencyDist {
            mean_ms: 20,
            jitter_ms: 0,
        },
    )];
    let (engine, transport) = start_in_process(
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        &models,
        scan::engine_config(),
        InProcessConfig::default(),
    );
    let job = submit(
        engine.control(),
        &transport,
        "user-ms",
        "https://images.example.com/bottle-3.jpg",
    )
    .await;
    assert_eq!(
        wait_terminal(engine.control().store(), &job, WAIT).await,
        Some(true)
    );
    let evs = wait_done_event(&backend, &keys(Profile::Native), &job, WAIT).await;
    let model_ms = |stage: &str| {
        evs.iter()
            .find(|e| e.stage.as_str() == stage && e.status.to_string() == "completed")
            .map(|e| e.data.get("model_ms").cloned())
            .expect("completed event")
    };
    assert_eq!(model_ms("vision"), Some(json!(30)));
    assert_eq!(model_ms("rule"), Some(json!(20)));
    assert_eq!(model_ms("answer"), None);
    assert_eq!(model_ms("reward"), None);
    transport.shutdown().await;
}
