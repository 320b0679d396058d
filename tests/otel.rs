//! OpenTelemetry traces end to end, against OTLP receivers started here:
//! one scan job submitted with a `traceparent` header must come out as one
//! trace — `scan.submit`, the four `pipeline.stage.*` spans, `router.apply`
//! and `gateway.deliver` — whose parent links form a tree rooted at the
//! submit span, itself the child of the caller's span.
//!
//! - `demo_exports_one_trace_per_job_over_http_protobuf`: `pipeline-scan
//!   demo` (API, in-process workers, router and gateway in one process)
//!   exporting over OTLP/HTTP (protobuf) to an axum receiver.
//! - `split_deployment_exports_one_trace_per_job_over_grpc`: `pipeline-scan
//!   api` → RabbitMQ → `pipeline-scan worker` → a harness redis-server →
//!   `relay-router` → `relay-sse`, four processes exporting over OTLP/gRPC
//!   to a tonic receiver: the trace crosses the AMQP hop (the envelope's
//!   `traceparent`) and the eco2 stream entries.
//!
//! Each process is stopped with SIGTERM before the spans are checked: its
//! telemetry guard sends what is still queued, so the test waits on exits,
//! not on time. Needs the workspace binaries (`cargo test --workspace`
//! builds them), `redis-server` and RabbitMQ for the split deployment
//! (`scripts/test.sh` starts it).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use pipeline_scan::app::PipelineArgs;
use prost::Message;
use relay_sse::client::SseReader;
use relay_testkit::procs::{free_addr, wait_port, Proc};
use relay_testkit::redis::{unique_prefix, TestRedis};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(90);
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The caller's span: the parent of the job's `scan.submit` span.
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const STAGES: [&str; 4] = ["vision", "rule", "answer", "reward"];

/// One span as an OTLP receiver got it.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    /// Empty for a root span.
    parent: String,
    links: Vec<String>,
    attrs: HashMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Got>>>;

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn record(spans: &Spans, req: ExportTraceServiceRequest) {
    let mut out = spans.lock().expect("spans lock");
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(text)
            .unwrap_or_default();
        for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
            out.push(Got {
                service: service.clone(),
                name: s.name,
                trace_id: hex(&s.trace_id),
                span_id: hex(&s.span_id),
                parent: hex(&s.parent_span_id),
                links: s.links.iter().map(|l| hex(&l.span_id)).collect(),
                attrs: s
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(kv)))
                    .collect(),
            });
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`.
async fn http_receiver() -> (String, Spans) {
    let spans = Spans::default();
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(req) => {
                        record(&sink, req);
                        let resp = ExportTraceServiceResponse::default().encode_to_vec();
                        (
                            axum::http::StatusCode::OK,
                            [("content-type", "application/x-protobuf")],
                            resp,
                        )
                    }
                    Err(e) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        [("content-type", "text/plain")],
                        e.to_string().into_bytes(),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("receiver addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans)
}

/// An OTLP/gRPC receiver: the collector's `TraceService`.
struct Collector(Spans);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        record(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn grpc_receiver() -> (String, Spans) {
    let spans = Spans::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("receiver addr");
    let service = TraceServiceServer::new(Collector(spans.clone()));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    (format!("http://{addr}"), spans)
}

/// The `OTEL_*` settings of every traced process.
fn otel_env<'a>(endpoint: &'a str, protocol: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]
}

/// Submits a scan with `traceparent`; the API's answer.
async fn submit(api: SocketAddr, traceparent: &str) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("http://{api}/api/v1/scan"))
        .header("x-user-id", "otel-user")
        .header("traceparent", traceparent)
        .json(&json!({ "image_url": "https://images.example.com/items/drink-can.jpg" }))
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status(), 200, "submit rejected");
    resp.json().await.expect("submit JSON")
}

/// Follows the job's SSE stream to its end; the events' names.
async fn follow(gateway: SocketAddr, stream_url: &str) -> Vec<String> {
    let resp = reqwest::Client::new()
        .get(format!("http://{gateway}{stream_url}"))
        .send()
        .await
        .expect("GET stream");
    assert_eq!(resp.status(), 200);
    let mut reader = SseReader::new(resp.bytes_stream());
    let mut names = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while let Some(ev) = reader.next_event().await {
            names.push(ev.expect("stream").event);
        }
    })
    .await
    .expect("the stream did not end after done");
    assert_eq!(names.last().map(String::as_str), Some("done"), "{names:?}");
    names
}

fn stop(p: &mut Proc, what: &str) {
    let status = p
        .terminate()
        .unwrap_or_else(|| panic!("{what} was not running"));
    assert!(status.success(), "{what} exited with {status}");
}

/// The spans under `parent`, one a line, indented by depth (printed with
/// each check: what the trace looked like).
fn tree(spans: &[Got], parent: &str, depth: usize) -> String {
    let mut out = String::new();
    for s in spans.iter().filter(|s| s.parent == parent) {
        let links = if s.links.is_empty() {
            String::new()
        } else {
            format!(" (+{} link(s))", s.links.len())
        };
        out.push_str(&format!(
            "{}{} [{}]{links}\n",
            "  ".repeat(depth),
            s.name,
            s.service
        ));
        out.push_str(&tree(spans, &s.span_id, depth + 1));
    }
    out
}

/// The job's trace: every span in `trace_id`, the expected names, and a
/// tree rooted at `scan.submit` (child of [`CLIENT_SPAN`]); `delivered`
/// events each have their `gateway.deliver` span. Returns the spans by id.
fn check_trace(spans: &[Got], trace_id: &str, delivered: usize) -> HashMap<String, Got> {
    assert!(!spans.is_empty(), "no span received");
    let by_id: HashMap<String, Got> = spans
        .iter()
        .map(|s| (s.span_id.clone(), s.clone()))
        .collect();
    assert_eq!(by_id.len(), spans.len(), "span ids repeat: {spans:#?}");
    for s in spans {
        assert_eq!(s.trace_id, trace_id, "span outside the job's trace: {s:#?}");
        assert!(
            s.parent == CLIENT_SPAN || by_id.contains_key(&s.parent),
            "span whose parent is not in the trace: {s:#?}"
        );
    }
    eprintln!("{}", tree(spans, CLIENT_SPAN, 0));
    let named = |name: &str| -> Vec<&Got> { spans.iter().filter(|s| s.name == name).collect() };

    // The root: the one span whose parent is the caller's.
    let submit = named("scan.submit");
    assert_eq!(submit.len(), 1, "one submit span: {spans:#?}");
    let submit = submit[0];
    assert_eq!(submit.parent, CLIENT_SPAN);
    assert_eq!(
        submit
            .attrs
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
    let roots: Vec<&Got> = spans.iter().filter(|s| s.parent == CLIENT_SPAN).collect();
    assert_eq!(roots.len(), 1, "one root: {roots:#?}");
    // Every span descends from it (no cycle: at most `len` steps up).
    for s in spans {
        let mut at = s;
        let mut steps = 0;
        while at.span_id != submit.span_id {
            at = &by_id[&at.parent];
            steps += 1;
            assert!(steps <= spans.len(), "parent cycle at {s:#?}");
        }
    }

    // The stages run in order, each the child of the one before.
    let mut parent = submit.span_id.clone();
    let mut producers = vec![submit.span_id.clone()];
    for stage in STAGES {
        let runs = named(&format!("pipeline.stage.{stage}"));
        assert_eq!(runs.len(), 1, "one {stage} run: {spans:#?}");
        assert_eq!(runs[0].parent, parent, "{stage} follows the previous step");
        assert_eq!(runs[0].attrs.get("stage").map(String::as_str), Some(stage));
        parent = runs[0].span_id.clone();
        producers.push(parent.clone());
    }

    // The router applied every producer's events, under their spans.
    let applies = named("router.apply");
    assert!(!applies.is_empty(), "no router.apply span");
    let applied: HashSet<&String> = applies
        .iter()
        .flat_map(|a| std::iter::once(&a.parent).chain(&a.links))
        .collect();
    for p in &producers {
        assert!(
            applied.contains(p),
            "no router.apply for producer {}",
            by_id[p].name
        );
    }
    for a in &applies {
        assert!(
            producers.contains(&a.parent),
            "router.apply under a non-producer: {a:#?}"
        );
    }

    // The gateway delivered each event under its producer's span.
    let deliveries = named("gateway.deliver");
    assert_eq!(
        deliveries.len(),
        delivered,
        "one delivery span per event: {deliveries:#?}"
    );
    for p in &producers {
        assert!(
            deliveries.iter().any(|d| &d.parent == p),
            "no delivery under producer {}",
            by_id[p].name
        );
    }
    by_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_exports_one_trace_per_job_over_http_protobuf() {
    let (endpoint, spans) = http_receiver().await;
    let listen = free_addr();
    let mut demo = Proc::spawn(
        "pipeline-scan",
        &[
            "demo",
            "--listen",
            &listen.to_string(),
            "--vision-latency-ms",
            "20",
            "--answer-latency-ms",
            "20",
        ],
        &otel_env(&endpoint, "http/protobuf"),
    );
    wait_port(listen, LIMIT).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = submit(listen, &format!("00-{trace_id}-{CLIENT_SPAN}-01")).await;
    let stream_url = body["stream_url"].as_str().expect("stream_url");
    let events = follow(listen, stream_url).await;
    stop(&mut demo, "pipeline-scan demo");

    let spans = spans.lock().expect("spans lock").clone();
    check_trace(&spans, trace_id, events.len());
    for s in &spans {
        assert_eq!(s.service, "pipeline-scan-demo", "{s:#?}");
    }
}

/// The broker settings every process of the split test shares (a unique
/// prefix).
fn pipeline_args() -> PipelineArgs {
    PipelineArgs {
        amqp_url: AMQP_URL.into(),
        queue_prefix: format!(
            "otel.{}",
            unique_prefix().trim_end_matches(':').replace(':', "-")
        ),
        max_attempts: 3,
        backoff_ms: 200,
        max_backoff_ms: 30_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_deployment_exports_one_trace_per_job_over_grpc() {
    let (endpoint, spans) = grpc_receiver().await;
    let env = otel_env(&endpoint, "grpc");
    let redis = TestRedis::private();
    let url = redis.url();
    let p = pipeline_args();
    let conn = ["--redis-url", url, "--profile", "eco2"];
    // The processes' retry flags are `p`'s, so the teardown deletes the
    // delay queues they declared.
    let backoff = p.backoff_ms.to_string();
    let broker = [
        "--amqp-url",
        p.amqp_url.as_str(),
        "--queue-prefix",
        p.queue_prefix.as_str(),
        "--backoff-ms",
        backoff.as_str(),
    ];
    let spawn = |name: &str, parts: &[&[&str]]| Proc::spawn(name, &parts.concat(), &env);

    let mut router = spawn(
        "relay-router",
        &[
            &conn,
            &[
                "--consumer",
                "r1",
                "--metrics-addr",
                "127.0.0.1:0",
                "--block-ms",
                "200",
            ],
        ],
    );
    let sse = free_addr();
    let sse_listen = sse.to_string();
    let mut gateway = spawn("relay-sse", &[&conn, &["--listen", &sse_listen]]);
    let mut worker = spawn(
        "pipeline-scan",
        &[
            &conn,
            &broker,
            &[
                "worker",
                "--metrics-addr",
                "127.0.0.1:0",
                "--sim-latency-ms",
                "20",
            ],
        ],
    );
    let api = free_addr();
    let api_listen = api.to_string();
    let mut api_proc = spawn(
        "pipeline-scan",
        &[&conn, &broker, &["api", "--listen", &api_listen]],
    );
    wait_port(api, LIMIT).await;
    wait_port(sse, LIMIT).await;

    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let body = submit(api, &format!("00-{trace_id}-{CLIENT_SPAN}-01")).await;
    let stream_url = body["stream_url"].as_str().expect("stream_url");
    let events = follow(sse, stream_url).await;
    stop(&mut api_proc, "pipeline-scan api");
    stop(&mut worker, "pipeline-scan worker");
    stop(&mut router, "relay-router");
    stop(&mut gateway, "relay-sse");
    if let Err(e) = p.topology().delete_all(&p.amqp()).await {
        eprintln!("queue cleanup failed: {e}");
    }

    let spans = spans.lock().expect("spans lock").clone();
    let by_id = check_trace(&spans, trace_id, events.len());
    // Each process reports under its own service name.
    let service_of = |name: &str| -> HashSet<&str> {
        by_id
            .values()
            .filter(|s| s.name.starts_with(name))
            .map(|s| s.service.as_str())
            .collect()
    };
    assert_eq!(
        service_of("scan.submit"),
        HashSet::from(["pipeline-scan-api"])
    );
    assert_eq!(
        service_of("pipeline.stage."),
        HashSet::from(["pipeline-scan-worker"])
    );
    assert_eq!(service_of("router.apply"), HashSet::from(["relay-router"]));
    assert_eq!(service_of("gateway.deliver"), HashSet::from(["relay-sse"]));
}
