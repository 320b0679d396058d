//! The gateway's HTTP/1.1 front: request-head parsing (`httparse`), the
//! SSE-or-hyper routing decision, and the routing of an accepted SSE request
//! through the gateway's axum router (path and query extraction, `token`
//! auth, `Last-Event-ID` resume) against an in-memory backend holding one
//! native and one eco2-sized job.
//!
//! Input: the bytes a client sends first on a connection.
//!
//! Invariants: the head length lies within the bytes and depends on nothing
//! after it (the same request comes out of the head alone; no shorter prefix
//! is a complete head); the front only takes `GET`s of SSE paths over
//! HTTP/1.1 without a body, upgrade or `Expect`; `close` is set exactly when a
//! `Connection` header says `close`; the router answers every such request
//! without a server error, and a 200 is an event stream.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use relay_core::backend::memory::MemoryBackend;
use relay_core::backend::{ApplyEvent, ApplyJob, ApplyOptions, JobLog};
use relay_core::{Domain, Encoding, Epoch, Event, JobId, KeySpace, Payload, Profile, Status};
use relay_sse::fuzzing::{parse_head, Head};
use relay_sse::{Gateway, GatewayOptions};
use tower::ServiceExt;

struct World {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    _gateway: Gateway,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (gateway, router) = rt.block_on(async {
        let backend = Arc::new(MemoryBackend::new());
        let keys = KeySpace::new(Profile::Native, Domain::new("scan").unwrap(), 4);
        for job in relay_fuzz::seeds::FRONT_JOBS {
            let job = JobId::new(*job).unwrap();
            let events = (1..=3)
                .map(|seq| {
                    let stage = if seq == 3 { "done" } else { "vision" };
                    let ev =
                        Event::new("scan", job.as_str(), seq, stage, Status::Completed).unwrap();
                    ApplyEvent {
                        seq,
                        payload: Payload::from_event(&ev, Encoding::Json).unwrap(),
                    }
                })
                .collect();
            backend
                .apply(
                    &[ApplyJob {
                        keys: keys.job(&job),
                        epoch: Epoch(relay_fuzz::seeds::FRONT_EPOCH),
                        events,
                        extra_channel: None,
                    }],
                    &ApplyOptions::default(),
                )
                .await
                .unwrap();
        }
        let opts = GatewayOptions {
            auth_secret: Some(relay_fuzz::seeds::SECRET.to_vec()),
            pending_job: Duration::ZERO,
            heartbeat: Duration::from_secs(3600),
            probe_interval: Duration::from_secs(3600),
            max_stream: Duration::from_secs(3600),
            allow_origins: vec!["https://app.example".into()],
            ..GatewayOptions::default()
        };
        let gateway = Gateway::new(backend, opts).unwrap();
        let router = gateway.router();
        (gateway, router)
    });
    World {
        rt,
        router,
        _gateway: gateway,
    }
});

fn is_sse_path(path: &str) -> bool {
    path == "/api/v1/stream"
        || ((path.starts_with("/v1/jobs/") || path.starts_with("/api/v1/"))
            && path.ends_with("/events"))
}

/// Method, URI and headers (a `Request<Body>` is not comparable).
fn parts(req: &Request<Body>) -> (String, String, Vec<(String, Vec<u8>)>) {
    (
        req.method().to_string(),
        req.uri().to_string(),
        req.headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Head::Sse(req, len, close) = parse_head(data) else {
        return;
    };
    assert!(len > 0 && len <= data.len());
    match parse_head(&data[..len]) {
        Head::Sse(again, len2, close2) => {
            assert_eq!((len2, close2), (len, close));
            assert_eq!(parts(&again), parts(&req));
        }
        _ => panic!("the head alone is not the same request"),
    }
    for cut in [len - 1, len / 2] {
        assert!(
            !matches!(parse_head(&data[..cut]), Head::Sse(..)),
            "a prefix of {cut} bytes is already a complete head"
        );
    }

    assert_eq!(req.method(), "GET");
    assert_eq!(req.version(), axum::http::Version::HTTP_11);
    // The decision is made on the raw request target (the router sees the
    // parsed URI, which drops a `#fragment`: it then routes elsewhere, and
    // the front serves that answer like any other).
    let mut hs = [httparse::EMPTY_HEADER; 48];
    let mut raw = httparse::Request::new(&mut hs);
    assert!(matches!(raw.parse(&data[..len]), Ok(httparse::Status::Complete(n)) if n == len));
    let target = raw.path.unwrap();
    assert!(is_sse_path(target.split('?').next().unwrap()), "{target}");
    assert!(
        target.starts_with(req.uri().path()),
        "{target} vs {}",
        req.uri()
    );
    let h = req.headers();
    for refused in ["transfer-encoding", "upgrade", "expect"] {
        assert!(!h.contains_key(refused), "{refused} accepted");
    }
    for cl in h.get_all("content-length") {
        assert_eq!(cl.as_bytes().trim_ascii(), b"0");
    }
    let says_close = h.get_all("connection").iter().any(|v| {
        v.as_bytes()
            .to_ascii_lowercase()
            .windows(5)
            .any(|w| w == b"close")
    });
    assert_eq!(close, says_close);

    let world = &*WORLD;
    let resp = world
        .rt
        .block_on(world.router.clone().oneshot(*req))
        .unwrap_or_else(|e| match e {});
    let status = resp.status();
    assert!(
        [
            StatusCode::OK,
            // Resuming at a finished job's end: the stream has nothing
            // left to send, and a browser EventSource stops on 204.
            StatusCode::NO_CONTENT,
            StatusCode::BAD_REQUEST,
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND,
            StatusCode::UNPROCESSABLE_ENTITY,
        ]
        .contains(&status),
        "unexpected status {status}"
    );
    if status == StatusCode::OK {
        assert_eq!(
            resp.headers().get("content-type").map(|v| v.as_bytes()),
            Some(&b"text/event-stream"[..])
        );
    }
    // Ends the stream (its session, hub membership and connection slot).
    drop(resp);
    world.rt.block_on(tokio::task::yield_now());
});
