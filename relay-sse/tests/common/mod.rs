//! Shared helpers for the gateway tests: an in-process gateway on a free
//! port, event production through `Backend::apply`, and an SSE client.
//! (What is not about the gateway, such as waiting and reading metrics, is
//! in `relay-testkit`.)
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use relay_core::backend::{ApplyEvent, ApplyJob, ApplyOptions, Backend};
use relay_core::{Domain, Encoding, Epoch, Event, JobId, KeySpace, Offset, Payload, Status};
use relay_sse::client::{SseEvent, SseItem, SseReader};
use relay_sse::{Gateway, GatewayOptions};
use relay_testkit::bench::prometheus_sample;
use relay_testkit::wait::wait_until;

/// Upper bound on any single wait (a hang guard, never a timing assertion).
pub const LIMIT: Duration = Duration::from_secs(30);

pub struct TestGateway {
    pub gateway: Gateway,
    pub addr: SocketAddr,
    pub backend: Arc<dyn Backend>,
    pub keys: KeySpace,
}

impl TestGateway {
    pub async fn start(backend: Arc<dyn Backend>, opts: GatewayOptions) -> Self {
        Self::start_with(backend, opts, false).await
    }

    /// Served by `axum::serve` on `Gateway::router` (the embedding path)
    /// instead of the gateway's own front.
    pub async fn start_axum(backend: Arc<dyn Backend>, opts: GatewayOptions) -> Self {
        Self::start_with(backend, opts, true).await
    }

    /// Live messages come from `pubsub` instead of `backend`: with a pubsub
    /// nobody publishes to, clients learn of new events only by reading
    /// history (catch-up, heartbeat polls).
    pub async fn start_split(
        backend: Arc<dyn Backend>,
        pubsub: Arc<dyn Backend>,
        opts: GatewayOptions,
    ) -> Self {
        Self::start_full(backend, Some(pubsub), opts, false).await
    }

    /// [`TestGateway::start_axum`] when `axum`, else [`TestGateway::start`].
    pub async fn start_with(backend: Arc<dyn Backend>, opts: GatewayOptions, axum: bool) -> Self {
        Self::start_full(backend, None, opts, axum).await
    }

    async fn start_full(
        backend: Arc<dyn Backend>,
        pubsub: Option<Arc<dyn Backend>>,
        opts: GatewayOptions,
        axum: bool,
    ) -> Self {
        let keys = KeySpace::new(
            opts.profile,
            Domain::new(opts.domain.clone()).unwrap(),
            opts.shards,
        );
        let pubsub = pubsub.unwrap_or_else(|| backend.clone());
        let gateway = Gateway::with_pubsub(backend.clone(), pubsub, opts).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gw = gateway.clone();
        tokio::spawn(async move {
            if axum {
                let _ = axum::serve(listener, gw.router()).await;
            } else {
                let _ = gw.serve(listener, std::future::pending()).await;
            }
        });
        let t = Self {
            gateway,
            addr,
            backend,
            keys,
        };
        t.wait_ready().await;
        t
    }

    pub async fn wait_ready(&self) {
        wait_until(LIMIT, "gateway subscriber ready", || {
            std::future::ready(self.gateway.is_ready())
        })
        .await;
    }

    /// `relay_sse_rejected_total{reason}` (0 before the first rejection).
    pub fn rejected(&self, reason: &str) -> u64 {
        let series = format!("relay_sse_rejected_total{{reason=\"{reason}\"}}");
        prometheus_sample(&self.gateway.metrics().render(), &series).unwrap_or(0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Applies (routes) one native event; returns its position.
    pub async fn apply(&self, ev: &Event) -> (Epoch, Offset) {
        apply_payload(
            &*self.backend,
            &self.keys,
            &ev.job_id,
            ev.seq,
            Payload::from_event(ev, Encoding::Json).unwrap(),
        )
        .await
    }
}

pub fn opts() -> GatewayOptions {
    GatewayOptions {
        heartbeat: Duration::from_millis(200),
        pending_job: Duration::from_millis(300),
        probe_interval: Duration::from_millis(200),
        ..GatewayOptions::default()
    }
}

pub async fn apply_payload(
    b: &dyn Backend,
    ks: &KeySpace,
    job: &JobId,
    seq: u64,
    payload: Payload,
) -> (Epoch, Offset) {
    let r = b
        .apply(
            &[ApplyJob {
                keys: ks.job(job),
                epoch: Epoch::random(),
                events: vec![ApplyEvent { seq, payload }],
                extra_channel: None,
            }],
            &ApplyOptions::default(),
        )
        .await
        .unwrap();
    (r[0].epoch, r[0].applied[0].offset)
}

/// The `n`-th event of a 12-step scan job (the last one is `done`).
pub fn step(job: &str, n: u64, total: u64) -> Event {
    let stages = ["queued", "vision", "rule", "answer", "reward"];
    if n == total {
        return Event::new("scan", job, n, "done", Status::Completed).unwrap();
    }
    let stage = stages[(n as usize) % stages.len()];
    Event::new(
        "scan",
        job,
        n,
        stage,
        if n.is_multiple_of(2) {
            Status::Started
        } else {
            Status::Completed
        },
    )
    .unwrap()
    .with_progress((n * 100 / total) as u8)
    .with_data(serde_json::json!({"n": n}))
}

pub struct Client {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub reader: Option<SseReader<reqwest::Error>>,
    pub body: Option<String>,
}

pub async fn connect(url: &str, last_event_id: Option<&str>) -> Client {
    connect_with(url, |r| match last_event_id {
        Some(id) => r.header("Last-Event-ID", id),
        None => r,
    })
    .await
}

pub async fn connect_with(
    url: &str,
    f: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> Client {
    let client = reqwest::Client::new();
    let resp = tokio::time::timeout(LIMIT, f(client.get(url)).send())
        .await
        .expect("request hung")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let is_sse = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if is_sse {
        Client {
            status,
            headers,
            reader: Some(SseReader::new(resp.bytes_stream())),
            body: None,
        }
    } else {
        let body = resp.text().await.unwrap();
        Client {
            status,
            headers,
            reader: None,
            body: Some(body),
        }
    }
}

impl Client {
    pub fn reader(&mut self) -> &mut SseReader<reqwest::Error> {
        self.reader.as_mut().expect("not an event stream")
    }

    /// Next event (skipping comments); `None` when the stream ended.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        match tokio::time::timeout(LIMIT, self.reader().next_event())
            .await
            .expect("no event within the limit")
        {
            Some(Ok(e)) => Some(e),
            Some(Err(_)) | None => None,
        }
    }

    pub async fn next_item(&mut self) -> Option<SseItem> {
        match tokio::time::timeout(LIMIT, self.reader().next_item())
            .await
            .expect("no item within the limit")
        {
            Some(Ok(i)) => Some(i),
            _ => None,
        }
    }

    /// All events until the stream ends.
    pub async fn collect(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.next_event().await {
            out.push(e);
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.body.as_deref().unwrap_or("null")).unwrap()
    }
}

pub fn offset_of(e: &SseEvent) -> u64 {
    e.id.as_deref()
        .and_then(|id| id.rsplit(':').next())
        .and_then(|o| o.parse().ok())
        .expect("id with offset")
}

pub async fn wait_for(mut cond: impl FnMut() -> bool) {
    wait_until(LIMIT, "condition", || std::future::ready(cond())).await;
}

pub fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}
