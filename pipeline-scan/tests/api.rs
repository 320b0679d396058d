//! The scan HTTP API: bad input is rejected with JSON errors and nothing is
//! enqueued; good input is queued; results; idempotency; broker failure.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use pipeline_scan::api::{ApiConfig, ScanApi};
use pipeline_scan::app::start_in_process;
use pipeline_scan::pipeline::Envelope;
use pipeline_scan::scan::{self, LatencyDist, ScanModels};
use pipeline_scan::transport::inprocess::InProcessConfig;
use pipeline_scan::transport::{Transport, TransportError};
use relay_core::backend::memory::MemoryBackend;
use relay_core::backend::redis::RedisBackend;
use relay_core::backend::StreamLog;
use relay_core::{JobId, Profile, Status};
use serde_json::{json, Value};
use tower::ServiceExt;

#[derive(Default)]
struct Recording {
    submitted: Mutex<Vec<Envelope>>,
    broken: AtomicBool,
}

#[async_trait]
impl Transport for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }
    async fn submit(&self, envelope: Envelope) -> Result<(), TransportError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(TransportError::Connection("broker down".into()));
        }
        self.submitted.lock().unwrap().push(envelope);
        Ok(())
    }
}

struct Fixture {
    backend: Arc<MemoryBackend>,
    transport: Arc<Recording>,
    app: axum::Router,
}

fn fixture(config: ApiConfig) -> Fixture {
    let backend = memory();
    let transport = Arc::new(Recording::default());
    let app = ScanApi::new(
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        transport.clone(),
        config,
    )
    .router();
    Fixture {
        backend,
        transport,
        app,
    }
}

async fn call(
    app: &axum::Router,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, v)
}

fn post(body: impl Into<Body>, user: Option<&str>) -> Request<Body> {
    let mut b = Request::post("/api/v1/scan").header("content-type", "application/json");
    if let Some(u) = user {
        b = b.header("x-user-id", u);
    }
    b.body(body.into()).unwrap()
}

fn ok_body() -> String {
    json!({"image_url": "https://images.example.com/can.jpg", "user_input": "where?"}).to_string()
}

async fn assert_rejected(f: &Fixture, req: Request<Body>, status: StatusCode, code: &str) {
    let (s, _, v) = call(&f.app, req).await;
    assert_eq!(s, status, "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
    assert!(
        f.transport.submitted.lock().unwrap().is_empty(),
        "nothing enqueued"
    );
}

#[tokio::test]
async fn bad_input_is_rejected_with_json_and_nothing_is_enqueued() {
    let f = fixture(ApiConfig::default());
    assert_rejected(
        &f,
        post(ok_body(), None),
        StatusCode::UNAUTHORIZED,
        "MISSING_USER_ID",
    )
    .await;
    assert_rejected(
        &f,
        post(ok_body(), Some("bad user")),
        StatusCode::BAD_REQUEST,
        "INVALID_USER_ID",
    )
    .await;
    assert_rejected(
        &f,
        post("{not json", Some("u1")),
        StatusCode::BAD_REQUEST,
        "INVALID_JSON",
    )
    .await;
    assert_rejected(
        &f,
        post("", Some("u1")),
        StatusCode::BAD_REQUEST,
        "INVALID_JSON",
    )
    .await;
    assert_rejected(
        &f,
        post(json!({"user_input": "x"}).to_string(), Some("u1")),
        StatusCode::UNPROCESSABLE_ENTITY,
        "VALIDATION_ERROR",
    )
    .await;
    assert_rejected(
        &f,
        post(json!({"image_url": 42}).to_string(), Some("u1")),
        StatusCode::UNPROCESSABLE_ENTITY,
        "VALIDATION_ERROR",
    )
    .await;
    assert_rejected(
        &f,
        post("[1,2]", Some("u1")),
        StatusCode::UNPROCESSABLE_ENTITY,
        "VALIDATION_ERROR",
    )
    .await;
    for url in [
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "no-scheme.jpg",
    ] {
        assert_rejected(
            &f,
            post(json!({"image_url": url}).to_string(), Some("u1")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_IMAGE_URL",
        )
        .await;
    }
    for url in [
        "http://127.0.0.1/a.jpg",
        "http://10.0.0.8/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/a.jpg",
        "http://localhost/a.jpg",
    ] {
        assert_rejected(
            &f,
            post(json!({"image_url": url}).to_string(), Some("u1")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "IMAGE_URL_NOT_ALLOWED",
        )
        .await;
    }
    assert_rejected(
        &f,
        post(
            json!({"image_url": "https://images.example.com/a.jpg", "model": "gpt-999"})
                .to_string(),
            Some("u1"),
        ),
        StatusCode::UNPROCESSABLE_ENTITY,
        "UNSUPPORTED_MODEL",
    )
    .await;
    // 2 MiB body.
    let big = json!({"image_url": "https://images.example.com/a.jpg", "user_input": "x".repeat(2 * 1024 * 1024)}).to_string();
    assert_rejected(
        &f,
        post(big.clone(), Some("u1")),
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
    )
    .await;
    // Also without a Content-Length (streamed body).
    let stream = futures::stream::iter(
        big.into_bytes()
            .chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    assert_rejected(
        &f,
        post(Body::from_stream(stream), Some("u1")),
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
    )
    .await;
    let bad_key = Request::post("/api/v1/scan")
        .header("x-user-id", "u1")
        .header("x-idempotency-key", "has space")
        .body(Body::from(ok_body()))
        .unwrap();
    assert_rejected(
        &f,
        bad_key,
        StatusCode::BAD_REQUEST,
        "INVALID_IDEMPOTENCY_KEY",
    )
    .await;
    // Nothing reached the event store either.
    let ks = keys(Profile::Native);
    for s in ks.shard_streams() {
        assert_eq!(f.backend.stream_len(&s).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn host_allow_list_and_private_opt_in() {
    let f = fixture(ApiConfig {
        allowed_hosts: vec!["images.example.com".into()],
        ..ApiConfig::default()
    });
    assert_rejected(
        &f,
        post(
            json!({"image_url": "https://evil.example.org/a.jpg"}).to_string(),
            Some("u1"),
        ),
        StatusCode::UNPROCESSABLE_ENTITY,
        "IMAGE_URL_NOT_ALLOWED",
    )
    .await;
    let (s, _, _) = call(&f.app, post(ok_body(), Some("u1"))).await;
    assert_eq!(s, StatusCode::OK);

    let open = fixture(ApiConfig {
        allow_private_hosts: true,
        ..ApiConfig::default()
    });
    let (s, _, v) = call(
        &open.app,
        post(
            json!({"image_url": "http://127.0.0.1:9/a.jpg"}).to_string(),
            Some("u1"),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn submit_emits_queued_then_enqueues_and_returns_wire_shape() {
    let f = fixture(ApiConfig::default());
    let (s, _, v) = call(&f.app, post(ok_body(), Some("user-7"))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let job = JobId::new(v["job_id"].as_str().unwrap()).unwrap();
    assert_eq!(v["stream_url"], format!("/api/v1/scan/{job}/events"));
    assert_eq!(v["result_url"], format!("/api/v1/scan/{job}/result"));
    assert_eq!(v["status"], "queued");
    let sub = f.transport.submitted.lock().unwrap().clone();
    assert_eq!(sub.len(), 1);
    assert_eq!(sub[0].job_id, job);
    assert_eq!(sub[0].user_id, "user-7");
    assert_eq!(sub[0].stage, 0);
    assert_eq!(
        sub[0].input["image_url"],
        "https://images.example.com/can.jpg"
    );
    let evs = events(&f.backend, &keys(Profile::Native), &job).await;
    assert_eq!(steps(&evs), pairs(&[("queued", "started")]));
    assert_eq!(evs[0].seq, 0);

    // Result while running: 202 + Retry-After.
    let (s, h, v) = call(
        &f.app,
        Request::get(format!("/api/v1/scan/{job}/result"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(h.get("retry-after").unwrap(), "2");
    assert_eq!(v["status"], "processing");
    assert_eq!(v["current_stage"], "queued");
}

#[tokio::test]
async fn idempotency_key_returns_the_first_response_and_enqueues_once() {
    let f = fixture(ApiConfig::default());
    let req = || {
        Request::post("/api/v1/scan")
            .header("x-user-id", "u1")
            .header("x-idempotency-key", "abc-123")
            .body(Body::from(ok_body()))
            .unwrap()
    };
    let (s1, _, v1) = call(&f.app, req()).await;
    let (s2, _, v2) = call(&f.app, req()).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(v1, v2);
    assert_eq!(f.transport.submitted.lock().unwrap().len(), 1);
    // Concurrent duplicates: still one job.
    let f = fixture(ApiConfig::default());
    let calls: Vec<_> = (0..8).map(|_| call(&f.app, req())).collect();
    let results = futures::future::join_all(calls).await;
    let ids: std::collections::HashSet<String> = results
        .iter()
        .map(|(_, _, v)| v["job_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(f.transport.submitted.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn broker_failure_fails_the_job_instead_of_orphaning_it() {
    let f = fixture(ApiConfig::default());
    f.transport.broken.store(true, Ordering::SeqCst);
    let (s, _, v) = call(&f.app, post(ok_body(), Some("u1"))).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["code"], "QUEUE_UNAVAILABLE");
    // Find the job through its events: queued, then the terminal failure.
    let ks = keys(Profile::Native);
    let mut all = Vec::new();
    for stream in ks.shard_streams() {
        for e in f.backend.range(&stream, None, 100).await.unwrap() {
            all.push(relay_core::codec::parse_native(&e.fields).unwrap().event);
        }
    }
    assert_eq!(
        steps(&all),
        pairs(&[("queued", "started"), ("done", "failed")])
    );
    assert_eq!(all[1].status, Status::Failed);
    assert_eq!(all[1].seq, 59);
    let job = all[0].job_id.clone();
    let (s, _, v) = call(
        &f.app,
        Request::get(format!("/api/v1/scan/{job}/result"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "failed");
    assert!(v["error"].as_str().unwrap().contains("enqueue failed"));
}

#[tokio::test]
async fn result_route_404_and_invalid_job_id() {
    let f = fixture(ApiConfig::default());
    let (s, _, v) = call(
        &f.app,
        Request::get("/api/v1/scan/no-such-job-123/result")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["code"], "RESULT_NOT_FOUND");
    let (s, _, v) = call(
        &f.app,
        Request::get("/api/v1/scan/bad%20id!/result")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["code"], "INVALID_JOB_ID");
    let long = "x".repeat(200);
    let (s, _, v) = call(
        &f.app,
        Request::get(format!("/api/v1/scan/{long}/result"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["code"], "INVALID_JOB_ID");
}

#[tokio::test]
async fn api_with_in_process_workers_serves_the_done_result() {
    // The composition the demo uses: MemoryBackend + InProcess + API router.
    let backend = memory();
    let models = ScanModels::simulated(LatencyDist::ZERO);
    let (engine, transport) = start_in_process(
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        &models,
        scan::engine_config(),
        InProcessConfig::default(),
    );
    let app = ScanApi::new(
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        Arc::new(transport.clone()),
        ApiConfig::default(),
    )
    .router();
    let (s, _, v) = call(&app, post(ok_body(), Some("demo-user"))).await;
    assert_eq!(s, StatusCode::OK);
    let job = JobId::new(v["job_id"].as_str().unwrap()).unwrap();
    assert_eq!(
        wait_terminal(engine.control().store(), &job, Duration::from_secs(20)).await,
        Some(true)
    );
    let (s, _, v) = call(
        &app,
        Request::get(format!("/api/v1/scan/{job}/result"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "completed");
    assert_eq!(v["task_id"], job.as_str());
    let evs = wait_done_event(
        &backend,
        &keys(Profile::Native),
        &job,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(steps(&evs), full_scan_steps());
    transport.shutdown().await;
}

fn keyed(user: &str, key: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post("/api/v1/scan")
        .header("content-type", "application/json")
        .header("x-user-id", user)
        .header("x-idempotency-key", key)
        .body(body.into())
        .unwrap()
}

fn with_secret() -> ApiConfig {
    ApiConfig {
        auth_secret: Some(b"idempotency-test-secret".to_vec()),
        ..ApiConfig::default()
    }
}

/// `X-User-ID: alice` + key `kx29947:tail` and `X-User-ID: alice:kx29947` +
/// key `tail` used to be stored under the same record: the second caller got
/// alice's job id and stream token.
#[tokio::test]
async fn idempotency_keys_of_different_users_never_collide() {
    let f = fixture(with_secret());
    let (s1, _, alice) = call(&f.app, keyed("alice", "kx29947:tail", ok_body())).await;
    let (s2, _, mallory) = call(&f.app, keyed("alice:kx29947", "tail", ok_body())).await;
    assert_eq!(
        (s1, s2),
        (StatusCode::OK, StatusCode::OK),
        "{alice} {mallory}"
    );
    assert_ne!(alice["job_id"], mallory["job_id"], "two users, two jobs");
    assert!(alice["token"].is_string() && mallory["token"].is_string());
    assert_ne!(
        alice["token"], mallory["token"],
        "no token leaks across users"
    );
    let sub = f.transport.submitted.lock().unwrap().clone();
    assert_eq!(sub.len(), 2);
    assert_eq!(sub[0].user_id, "alice");
    assert_eq!(sub[1].user_id, "alice:kx29947");
    // The same key by two unrelated users: two jobs too.
    let (_, _, a) = call(&f.app, keyed("u1", "same-key", ok_body())).await;
    let (_, _, b) = call(&f.app, keyed("u2", "same-key", ok_body())).await;
    assert_ne!(a["job_id"], b["job_id"]);
}

/// Reusing a key with another request is a client bug: 422, nothing enqueued,
/// instead of silently answering with the first job.
#[tokio::test]
async fn idempotency_key_reused_with_a_different_body_is_422() {
    let f = fixture(ApiConfig::default());
    let (s, _, first) = call(&f.app, keyed("u1", "k-1", ok_body())).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    for other in [
        json!({"image_url": "https://images.example.com/other.jpg"}),
        json!({"image_url": "https://images.example.com/can.jpg", "user_input": "elsewhere?"}),
        json!({"image_url": "https://images.example.com/can.jpg", "user_input": "where?", "model": "gpt-4o"}),
    ] {
        let (s, _, v) = call(&f.app, keyed("u1", "k-1", other.to_string())).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{other}: {v}");
        assert_eq!(v["code"], "IDEMPOTENCY_KEY_REUSED", "{v}");
        assert!(
            v["detail"]
                .as_str()
                .is_some_and(|d| d.contains("different")),
            "{v}"
        );
        assert!(
            v.get("job_id").is_none(),
            "the first job is not disclosed: {v}"
        );
    }
    assert_eq!(f.transport.submitted.lock().unwrap().len(), 1);
    // The original request still replays.
    let (s, _, again) = call(&f.app, keyed("u1", "k-1", ok_body())).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["job_id"], first["job_id"]);
}

/// Same user, same key, same request (byte-different but equal JSON): the
/// first job and token again, enqueued once.
#[tokio::test]
async fn idempotency_replay_with_the_same_body_returns_the_first_job_and_token() {
    let f = fixture(with_secret());
    let (s1, _, v1) = call(&f.app, keyed("u1", "replay:1", ok_body())).await;
    let reordered = r#"{ "user_input" : "where?",
        "image_url": "https://images.example.com/can.jpg" }"#;
    let (s2, _, v2) = call(&f.app, keyed("u1", "replay:1", reordered)).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK), "{v1} {v2}");
    assert_eq!(v1, v2, "the stored first response, token included");
    assert!(v1["token"].is_string());
    assert_eq!(f.transport.submitted.lock().unwrap().len(), 1);
}

/// Image URLs naming a host inside the deployment, in literal forms the old
/// check let through (IPv4-embedding IPv6, NAT64, site-local, 192.0.0/24,
/// single-label and cluster names): refused before anything is enqueued.
#[tokio::test]
async fn image_urls_pointing_inside_are_refused() {
    let f = fixture(ApiConfig::default());
    for url in [
        "http://[::ffff:0:7f00:1]/a.jpg",
        "http://[::ffff:127.0.0.1]/a.jpg",
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "http://[fec0::1]/a.jpg",
        "http://[::127.0.0.1]/a.jpg",
        "http://[2002:7f00:1::1]/a.jpg",
        "http://192.0.0.1/a.jpg",
        "http://0x7f.1/a.jpg",
        "http://0177.0.0.1/a.jpg",
        "http://2130706433/a.jpg",
        "http://100.64.0.1/a.jpg",
        "http://metadata/computeMetadata/v1/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://kubernetes.default.svc/api",
        "http://printer.local/a.jpg",
        "http://LocalHost./a.jpg",
    ] {
        assert_rejected(
            &f,
            post(json!({ "image_url": url }).to_string(), Some("u1")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "IMAGE_URL_NOT_ALLOWED",
        )
        .await;
    }
    // Parser-differential spellings are refused outright.
    for url in [
        "http://example.com\\@127.0.0.1/a.jpg",
        "http://images.example.com\t/a.jpg",
    ] {
        assert_rejected(
            &f,
            post(json!({ "image_url": url }).to_string(), Some("u1")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_IMAGE_URL",
        )
        .await;
    }
}

/// The canonical serialization of the checked URL is what the job carries
/// (the worker's input and the `queued` event), never the raw string.
#[tokio::test]
async fn the_canonical_image_url_is_forwarded_not_the_raw_string() {
    let f = fixture(ApiConfig::default());
    let raw = "HTTP://Images.EXAMPLE.com:80/./x/../can.jpg?q=1";
    let (s, _, v) = call(
        &f.app,
        post(json!({ "image_url": raw }).to_string(), Some("u1")),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let canonical = "http://images.example.com/can.jpg?q=1";
    let sub = f.transport.submitted.lock().unwrap().clone();
    assert_eq!(sub[0].input["image_url"], canonical);
    let job = JobId::new(v["job_id"].as_str().unwrap()).unwrap();
    let evs = events(&f.backend, &keys(Profile::Native), &job).await;
    let data = &evs[0].data;
    assert_eq!(data["image_url"], canonical, "{data}");
}

/// D7: after Redis dropped the API's connections (`CLIENT KILL`), the next
/// submit is accepted, with or without an idempotency key, instead of one
/// 503 per drop while the connection is re-established.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_after_a_dropped_redis_connection_is_accepted() {
    let redis = relay_testkit::redis::TestRedis::private();
    let backend = Arc::new(
        RedisBackend::connect(redis.url())
            .await
            .expect("connect to redis"),
    );
    let transport = Arc::new(Recording::default());
    let app = ScanApi::new(
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        transport.clone(),
        ApiConfig::default(),
    )
    .router();
    let (s, _, v) = call(&app, post(ok_body(), Some("u1"))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for round in 0..3 {
        for keyed_submit in [true, false] {
            let killed = redis.client_kill(&["TYPE", "normal"]).await.unwrap();
            assert!(killed >= 1);
            // The API is idle meanwhile: it learns of the drop only from
            // its next command.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let req = if keyed_submit {
                keyed("u1", &format!("d7-{round}"), ok_body())
            } else {
                post(ok_body(), Some("u1"))
            };
            let (s, _, v) = call(&app, req).await;
            assert_eq!(
                s,
                StatusCode::OK,
                "round {round}, keyed {keyed_submit}: {v}"
            );
        }
    }
    assert_eq!(transport.submitted.lock().unwrap().len(), 7);
}

/// A transport that stands for an API process dying mid-submit: while
/// `hang` is set its `submit` never returns (the request's future is then
/// dropped, as a `kill -9` would end it); otherwise it waits `delay`, records
/// the envelope and hands it to `inner` (the in-process workers), if any.
struct Stalling {
    hang: AtomicBool,
    delay: Duration,
    submitted: Mutex<Vec<Envelope>>,
    inner: Option<Arc<dyn Transport>>,
}

impl Stalling {
    fn new(delay: Duration, inner: Option<Arc<dyn Transport>>) -> Arc<Self> {
        Arc::new(Self {
            hang: AtomicBool::new(false),
            delay,
            submitted: Mutex::default(),
            inner,
        })
    }

    fn submitted(&self) -> Vec<Envelope> {
        self.submitted.lock().unwrap().clone()
    }
}

#[async_trait]
impl Transport for Stalling {
    fn name(&self) -> &'static str {
        "stalling"
    }
    async fn submit(&self, envelope: Envelope) -> Result<(), TransportError> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.delay).await;
        self.submitted.lock().unwrap().push(envelope.clone());
        match &self.inner {
            Some(inner) => inner.submit(envelope).await,
            None => Ok(()),
        }
    }
}

/// Every event in the backend's streams, any job.
async fn all_events(backend: &MemoryBackend) -> Vec<relay_core::Event> {
    let mut all = Vec::new();
    for stream in keys(Profile::Native).shard_streams() {
        for e in backend.range(&stream, None, 1000).await.unwrap() {
            all.push(relay_core::codec::parse_native(&e.fields).unwrap().event);
        }
    }
    all
}

/// The first request claims its key, emits `queued` and dies before its
/// enqueue is confirmed (its future is dropped while `submit` hangs). The
/// job id it chose is the one retries get: it must be enqueued by them,
/// not only reported.
async fn crash_mid_submit(
    app: &axum::Router,
    transport: &Stalling,
    backend: &MemoryBackend,
    key: &str,
) -> JobId {
    transport.hang.store(true, Ordering::SeqCst);
    let crashed = tokio::time::timeout(
        Duration::from_millis(500),
        call(app, keyed("u1", key, ok_body())),
    )
    .await;
    assert!(crashed.is_err(), "the first request hangs in submit");
    transport.hang.store(false, Ordering::SeqCst);
    assert!(transport.submitted().is_empty(), "nothing was enqueued");
    let evs = all_events(backend).await;
    assert_eq!(
        steps(&evs),
        pairs(&[("queued", "started")]),
        "the crashed request got as far as `queued`"
    );
    evs[0].job_id.clone()
}

fn short_lease(config: ApiConfig) -> ApiConfig {
    ApiConfig {
        idempotency_pending_lease: Duration::from_millis(200),
        ..config
    }
}

/// Chaos-soak finding: the idempotency record was written (`SET NX`) before
/// the job was enqueued, so after a crash between the two every retry with
/// the same key answered 200 with a job that never ran. Now the retry
/// enqueues that same job (same id, same token), and later replays answer
/// from the committed record without enqueueing it again.
#[tokio::test]
async fn a_retry_after_a_crash_mid_submit_enqueues_the_same_job() {
    let backend = memory();
    let transport = Stalling::new(Duration::ZERO, None);
    let app = ScanApi::new(
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        transport.clone(),
        short_lease(with_secret()),
    )
    .router();
    let job = crash_mid_submit(&app, &transport, &backend, "crash-1").await;

    let (s, _, v) = call(&app, keyed("u1", "crash-1", ok_body())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["job_id"], job.as_str(), "the crashed request's job");
    assert!(v["token"].is_string(), "{v}");
    let sub = transport.submitted();
    assert_eq!(sub.len(), 1, "the retry enqueued the job");
    assert_eq!(sub[0].job_id, job);
    assert_eq!(sub[0].user_id, "u1");
    assert_eq!(sub[0].stage, 0);

    let (s, _, again) = call(&app, keyed("u1", "crash-1", ok_body())).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again, v, "the same response, token included");
    assert_eq!(
        transport.submitted().len(),
        1,
        "committed: not enqueued again"
    );
    let other = json!({"image_url": "https://images.example.com/other.jpg"});
    let (s, _, v) = call(&app, keyed("u1", "crash-1", other.to_string())).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["code"], "IDEMPOTENCY_KEY_REUSED");
    // Another user's request with the same key is its own job.
    let (s, _, v) = call(&app, keyed("u2", "crash-1", ok_body())).await;
    assert_eq!(s, StatusCode::OK);
    assert_ne!(v["job_id"], job.as_str());
    assert_eq!(
        all_events(&backend)
            .await
            .iter()
            .filter(|e| e.job_id == job)
            .count(),
        1,
        "the repeated `queued` event was deduplicated"
    );
}

/// The same crash with the in-process workers behind the API: the retried
/// job runs to its terminal `done`, exactly once.
#[tokio::test]
async fn a_retry_after_a_crash_mid_submit_runs_the_job_to_done() {
    let backend = memory();
    let (engine, workers) = start_in_process(
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        &ScanModels::simulated(LatencyDist::ZERO),
        scan::engine_config(),
        InProcessConfig::default(),
    );
    let transport = Stalling::new(Duration::ZERO, Some(Arc::new(workers.clone())));
    let app = ScanApi::new(
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        transport.clone(),
        short_lease(ApiConfig::default()),
    )
    .router();
    let job = crash_mid_submit(&app, &transport, &backend, "crash-2").await;

    let (s, _, v) = call(&app, keyed("u1", "crash-2", ok_body())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["job_id"], job.as_str());
    assert_eq!(
        wait_terminal(engine.control().store(), &job, Duration::from_secs(20)).await,
        Some(true)
    );
    let evs = wait_done_event(
        &backend,
        &keys(Profile::Native),
        &job,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(steps(&evs), full_scan_steps());
    assert_eq!(evs.iter().filter(|e| e.is_terminal()).count(), 1);
    workers.shutdown().await;
}

/// A duplicate that arrives while the first request is still (slowly)
/// submitting waits for it instead of enqueueing the job a second time.
#[tokio::test]
async fn a_duplicate_during_a_slow_live_submit_waits_and_enqueues_once() {
    let backend = memory();
    let transport = Stalling::new(Duration::from_millis(300), None);
    let app = ScanApi::new(
        publisher(backend.clone(), Profile::Native),
        backend.clone(),
        transport.clone(),
        ApiConfig::default(),
    )
    .router();
    let first = call(&app, keyed("u1", "slow-1", ok_body()));
    let second = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        call(&app, keyed("u1", "slow-1", ok_body())).await
    };
    let ((s1, _, v1), (s2, _, v2)) = tokio::join!(first, second);
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK), "{v1} {v2}");
    assert_eq!(v1, v2);
    assert_eq!(transport.submitted().len(), 1);
}
