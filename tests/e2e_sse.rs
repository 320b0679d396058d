//! End-to-end tests of the SSE path with the real binaries: a private
//! redis-server, `relay-router` and `relay-sse` as processes, events
//! published with `relay_core::Publisher`, and SSE clients that parse the raw
//! response bytes with `relay_sse::client` (re-chunked at random points, some
//! with every LF rewritten to CRLF as a proxy might).
//!
//! - `every_client_gets_every_event_once_through_gateway_kills_and_pubsub_loss`:
//!   200 jobs × 12 events; clients connect before, during and after each job,
//!   some drop mid-stream and resume with Last-Event-ID; the gateway is
//!   SIGKILLed and restarted twice and its subscriber connection is killed
//!   twice (`CLIENT KILL TYPE pubsub`) while events flow. Every client ends
//!   with every event exactly once, in order, and the terminal `done`.
//! - `eco2_producer_entries_reach_sse_clients_with_wire_md_framing`: entries
//!   XADDed in the Python producer's exact format, routed by
//!   `relay-router --profile eco2`, streamed by `relay-sse --profile eco2` on
//!   `/api/v1/scan/{job}/events` as `id: <stream_id>`, `event: <stage>`,
//!   `data: <routed JSON>`, byte for byte; resume by stream id.
//! - `relayctl_token_opens_the_authenticated_gateway`: `relayctl token` issues
//!   tokens the real gateway (`--auth-secret`) accepts: missing → 401, another
//!   job's → 403, valid → 200 and the whole stream.
//!
//! The fault test runs once per Redis client (`redis_rs::…` and, with
//! `--features fred`, `fred::…`: the router and gateway with
//! `--redis-client fred`, the test's producer on the fred backend); the
//! others exercise the wire format and auth, the same with either client,
//! and run with redis-rs.
//!
//! No timed assertions: every wait is a hang guard that fails with details.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use relay_core::backend::Backend;
use relay_core::cli::RedisClient;
use relay_core::{Domain, Event, KeySpace, Profile, Publisher, PublisherConfig};
use relay_testkit::procs::{wait_port, wait_readyz, Proc};
use relay_testkit::redis::TestRedis;

mod sse_clients;

use sse_clients::{
    check_native, expect_every_event_once, follow, spawn_gateway, spawn_router, step, ClientPlan,
    ClientTask, ClientsReport, Seen, LIMIT,
};

/// Hang guard for one whole test.
const TEST_LIMIT: Duration = Duration::from_secs(90);

/// redis-server + relay-router + relay-sse, killed on drop.
struct Stack {
    // Field order is drop order: the processes go before their Redis.
    router: Proc,
    gateway: Proc,
    addr: SocketAddr,
    backend: Arc<dyn Backend>,
    keys: KeySpace,
    redis: TestRedis,
}

impl Stack {
    async fn start(client: RedisClient, profile: Profile, gateway_extra: &[&str]) -> Self {
        let redis = TestRedis::private();
        let url = redis.url().to_owned();
        let profile_s = profile.to_string();
        let conn = ["--redis-url", url.as_str(), "--profile", profile_s.as_str()];
        let router = spawn_router(client, &conn);
        let (gateway, addr) = spawn_gateway(client, &conn, gateway_extra);
        let backend = client.connect(redis.url()).await.expect("connect to redis");
        let keys = KeySpace::new(profile, Domain::new("scan").expect("domain"), 4);
        let s = Self {
            redis,
            router,
            gateway,
            addr,
            backend,
            keys,
        };
        s.wait_gateway_ready().await;
        s
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until the gateway process answers `/readyz` with 200.
    async fn wait_gateway_ready(&self) {
        wait_port(self.addr, LIMIT).await;
        wait_readyz(self.addr, 200, LIMIT).await;
    }

    /// SIGKILL the gateway and start it again on the same port.
    async fn kill_and_restart_gateway(
        &mut self,
        down_for: Duration,
        publish_while_down: impl std::future::Future<Output = ()>,
    ) {
        self.gateway.kill9();
        publish_while_down.await;
        tokio::time::sleep(down_for).await;
        self.gateway.restart();
        self.wait_gateway_ready().await;
    }
}

async fn every_client_gets_every_event_once_through_gateway_kills_and_pubsub_loss(
    client: RedisClient,
) {
    tokio::time::timeout(TEST_LIMIT, full_run(client))
        .await
        .expect("test hung");
}

relay_testkit::per_redis_client!(
    relay_core::cli::RedisClient;
    every_client_gets_every_event_once_through_gateway_kills_and_pubsub_loss,
);

async fn full_run(client: RedisClient) {
    const JOBS: usize = 200;
    const TOTAL: u64 = 12;
    const STAGGER: usize = 5;
    let mut stack = Stack::start(client, Profile::Native, &[]).await;
    let publisher = Publisher::new(
        stack.backend.clone(),
        stack.keys.clone(),
        PublisherConfig::default(),
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("http client");
    let job_name = |j: usize| format!("e2e-job-{j:03}");
    let events_url = |s: &Stack, j: usize| s.url(&format!("/v1/jobs/{}/events", job_name(j)));

    let mut clients: Vec<ClientTask> = Vec::new();
    let spawn_client =
        |clients: &mut Vec<_>, j: usize, kind: &'static str, plan: ClientPlan, url: String| {
            let http = http.clone();
            clients.push((
                job_name(j),
                kind,
                tokio::spawn(follow(http, url, plan, &["done"])),
            ));
        };
    // Before: every job has a client waiting before its first event; half
    // of the jobs also one that drops every few events and resumes.
    for j in 0..JOBS {
        let url = events_url(&stack, j);
        spawn_client(
            &mut clients,
            j,
            "before",
            ClientPlan {
                drop_every: None,
                crlf: j % 3 == 0,
                seed: j as u64 + 1,
            },
            url.clone(),
        );
        if j % 2 == 0 {
            let plan = ClientPlan {
                drop_every: Some(2 + j % 4),
                crlf: j % 4 == 0,
                seed: 1000 + j as u64,
            };
            spawn_client(&mut clients, j, "dropper", plan, url);
        }
    }

    // Job j publishes event n in round (j % STAGGER) + n - 1.
    let rounds = TOTAL as usize + STAGGER - 1;
    for round in 0..rounds {
        let batch: Vec<Event> = (0..JOBS)
            .filter_map(|j| {
                let n = round as i64 - (j % STAGGER) as i64 + 1;
                (1..=TOTAL as i64)
                    .contains(&n)
                    .then(|| step(&job_name(j), n as u64, TOTAL))
            })
            .collect();
        let publish = async {
            publisher.publish_batch(&batch).await.expect("publish");
        };
        match round {
            // The gateway dies (SIGKILL) with hundreds of streams open; a
            // round is published while it is down; it restarts on its port.
            3 | 11 => {
                stack
                    .kill_and_restart_gateway(Duration::from_millis(150), publish)
                    .await
            }
            // The gateway's subscriber connection is killed and the round
            // is published right away: those Pub/Sub messages are lost.
            6 | 9 => {
                let killed = stack
                    .redis
                    .client_kill(&["TYPE", "pubsub"])
                    .await
                    .expect("client kill");
                assert!(killed >= 1, "the gateway has a subscriber connection");
                publish.await;
            }
            _ => publish.await,
        }
        // During and after: clients that join mid-job and after `done`.
        for j in 0..JOBS {
            let published = round as i64 - (j % STAGGER) as i64 + 1;
            if published == TOTAL as i64 / 2 {
                let plan = ClientPlan {
                    drop_every: (j % 5 == 0).then_some(3),
                    crlf: j % 2 == 1,
                    seed: 2000 + j as u64,
                };
                spawn_client(&mut clients, j, "during", plan, events_url(&stack, j));
            }
            if published == TOTAL as i64 {
                let plan = ClientPlan {
                    drop_every: None,
                    crlf: j % 2 == 0,
                    seed: 3000 + j as u64,
                };
                spawn_client(&mut clients, j, "after", plan, events_url(&stack, j));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And a late wave after everything is done.
    for j in (0..JOBS).step_by(7) {
        let plan = ClientPlan {
            drop_every: Some(4),
            crlf: true,
            seed: 4000 + j as u64,
        };
        spawn_client(&mut clients, j, "late", plan, events_url(&stack, j));
    }

    let n_clients = clients.len();
    let ClientsReport { kinds, reconnects } = expect_every_event_once(clients, TOTAL).await;
    eprintln!("e2e: {n_clients} clients {kinds:?}, {reconnects} reconnects, all got {TOTAL} events exactly once");
    // Both faults really cut streams (the clients resumed).
    assert!(
        reconnects > JOBS,
        "gateway kills forced the open clients to resume ({reconnects})"
    );
    let _ = stack.router.terminate();
}

// ---------------------------------------------------------------------------
// eco2 wire compatibility through the real processes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eco2_producer_entries_reach_sse_clients_with_wire_md_framing() {
    tokio::time::timeout(TEST_LIMIT, eco2_run())
        .await
        .expect("test hung");
}

async fn eco2_run() {
    let stack = Stack::start(RedisClient::RedisRs, Profile::Eco2, &[]).await;
    // docs/ECO2_WIRE.md's test vector: shard 0 of 4.
    let job = "fc052f15-449f-4ce4-aa96-99d400ed7865";
    assert_eq!(
        stack
            .keys
            .shard_of(&relay_core::JobId::new(job).expect("job")),
        0
    );
    let client = redis::Client::open(stack.redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let trace = [
        ("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("span_id", "00f067aa0ba902b7"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ];
    // (stage, status, seq, progress, result) in the producer's field order;
    // `queued` (the API's event) has no trace fields.
    let entries: Vec<(&str, &str, &str, &str, &str)> = vec![
        ("queued", "started", "0", "0", ""),
        ("vision", "started", "10", "10", ""),
        ("vision", "completed", "11", "25", ""),
        ("rule", "started", "20", "", ""),
        (
            "rule",
            "completed",
            "21",
            "50",
            r#"{"rules": ["깨끗이 헹구기"]}"#,
        ),
        ("answer", "started", "30", "60", ""),
        ("answer", "completed", "31", "75", ""),
        ("reward", "started", "40", "80", ""),
        ("reward", "completed", "41", "90", ""),
        (
            "done",
            "completed",
            "51",
            "100",
            r#"{"task_id": "x", "status": "completed", "message": "종이류"}"#,
        ),
    ];
    // A client is already waiting when the first entry lands.
    let url = stack.url(&format!("/api/v1/scan/{job}/events"));
    let http = reqwest::Client::new();
    let plan = ClientPlan {
        drop_every: None,
        crlf: false,
        seed: 7,
    };
    let early = tokio::spawn(follow(
        http.clone(),
        url.clone(),
        plan.clone(),
        &["done", "error"],
    ));
    let dropper = tokio::spawn(follow(
        http.clone(),
        url.clone(),
        ClientPlan {
            drop_every: Some(3),
            crlf: true,
            seed: 9,
        },
        &["done", "error"],
    ));

    let mut ids = Vec::new();
    for (i, (stage, status, seq, progress, result)) in entries.iter().enumerate() {
        let mut cmd = redis::cmd("XADD");
        cmd.arg("scan:events:0")
            .arg("MAXLEN")
            .arg("~")
            .arg(10000)
            .arg("*");
        cmd.arg("job_id")
            .arg(job)
            .arg("stage")
            .arg(*stage)
            .arg("status")
            .arg(*status);
        cmd.arg("seq")
            .arg(*seq)
            .arg("ts")
            .arg(format!("1766899796.{:06}", 475_799 + i));
        cmd.arg("progress")
            .arg(*progress)
            .arg("result")
            .arg(*result);
        if *stage != "queued" {
            for (k, v) in trace {
                cmd.arg(k).arg(v);
            }
        }
        let id: String = cmd.query_async(&mut conn).await.expect("xadd");
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    // The exact routed JSON of docs/ECO2_WIRE.md for each entry.
    let expected: Vec<(String, String, String)> = entries
        .iter()
        .enumerate()
        .map(|(i, (stage, status, seq, progress, result))| {
            let progress_json = if progress.is_empty() { "\"\"".to_owned() } else { progress.to_string() };
            let result_json = if result.is_empty() {
                "\"\"".to_owned()
            } else {
                serde_json::to_string(&serde_json::from_str::<serde_json::Value>(result).expect("json")).expect("json")
            };
            let trace_json = if *stage == "queued" {
                String::new()
            } else {
                format!(r#","trace_id":"{}","span_id":"{}","traceparent":"{}""#, trace[0].1, trace[1].1, trace[2].1)
            };
            let data = format!(
                r#"{{"job_id":"{job}","stage":"{stage}","status":"{status}","seq":{seq},"ts":"1766899796.{:06}","progress":{progress_json},"result":{result_json}{trace_json},"stream_id":"{}"}}"#,
                475_799 + i,
                ids[i]
            );
            (ids[i].clone(), stage.to_string(), data)
        })
        .collect();
    let as_tuples = |seen: &Seen| -> Vec<(String, String, String)> {
        seen.events
            .iter()
            .map(|e| {
                (
                    e.id.clone().unwrap_or_default(),
                    e.event.clone(),
                    e.data.clone(),
                )
            })
            .collect()
    };
    let early = early.await.expect("task").expect("early client");
    assert_eq!(
        as_tuples(&early),
        expected,
        "early client: docs/ECO2_WIRE.md framing, byte-exact data"
    );
    let dropper = dropper.await.expect("task").expect("dropping client");
    assert!(dropper.connections > 1);
    assert_eq!(
        as_tuples(&dropper),
        expected,
        "resuming by stream id: no duplicate, no gap"
    );

    // A client after the job: the whole job replayed; and the raw framing.
    let resp = http.get(&url).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let body = resp.text().await.expect("body");
    let frames: Vec<&str> = body
        .split("\n\n")
        .filter(|f| f.starts_with("id: "))
        .collect();
    assert_eq!(frames.len(), expected.len(), "{body}");
    for (frame, (id, stage, data)) in frames.iter().zip(&expected) {
        assert_eq!(*frame, format!("id: {id}\nevent: {stage}\ndata: {data}"));
    }
    // Resume from the middle with the eco2 Last-Event-ID (a stream id).
    let resp = http
        .get(&url)
        .header("Last-Event-ID", &ids[4])
        .send()
        .await
        .expect("request");
    let body = resp.text().await.expect("body");
    let got: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    let want: Vec<&str> = ids[5..].iter().map(String::as_str).collect();
    assert_eq!(got, want);

    // The eco2 stream route and a failed job (`event: error`, terminal).
    let failed_job = "904fb02f-3e06-482c-b271-e641d3275d6b";
    for (stage, status, seq) in [
        ("queued", "started", "0"),
        ("vision", "started", "10"),
        ("vision", "failed", "12"),
    ] {
        let _: String = redis::cmd("XADD")
            .arg("scan:events:1")
            .arg("*")
            .arg("job_id")
            .arg(failed_job)
            .arg("stage")
            .arg(stage)
            .arg("status")
            .arg(status)
            .arg("seq")
            .arg(seq)
            .arg("ts")
            .arg("1766899800.5")
            .arg("progress")
            .arg("")
            .arg("result")
            .arg("")
            .query_async(&mut conn)
            .await
            .expect("xadd");
    }
    let seen = follow(
        http.clone(),
        stack.url(&format!("/api/v1/stream?job_id={failed_job}")),
        plan,
        &["done", "error"],
    )
    .await
    .expect("failed job client");
    let names: Vec<&str> = seen.events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["queued", "vision", "error"]);
    let last: serde_json::Value = serde_json::from_str(&seen.events[2].data).expect("json");
    assert_eq!(last["status"], "failed");
    assert_eq!(last["seq"], 12);
    // Short job ids are refused the Python way.
    let r = http
        .get(stack.url("/api/v1/scan/short/events"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["code"], "INVALID_JOB_ID");
}

// ---------------------------------------------------------------------------
// Auth: relayctl token + the real gateway with --auth-secret.

fn relayctl_token(job: &str, secret: &str, json: bool) -> String {
    let mut cmd = std::process::Command::new(relay_testkit::procs::bin_path("relayctl"));
    cmd.args(["token", job, "--ttl", "600"])
        .env("RELAY_AUTH_SECRET", secret)
        .env("RUST_LOG", "warn");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run relayctl");
    assert!(
        out.status.success(),
        "relayctl token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayctl_token_opens_the_authenticated_gateway() {
    tokio::time::timeout(TEST_LIMIT, auth_run())
        .await
        .expect("test hung");
}

async fn auth_run() {
    let secret = "e2e-shared-secret";
    let stack = Stack::start(
        RedisClient::RedisRs,
        Profile::Native,
        &["--auth-secret", secret],
    )
    .await;
    let job = "auth-job-1";
    let token = relayctl_token(job, secret, false);
    let other = relayctl_token("auth-job-2", secret, false);
    let json: serde_json::Value =
        serde_json::from_str(&relayctl_token(job, secret, true)).expect("--json output");
    assert_eq!(json["job_id"], job);
    assert_eq!(json["ttl"], 600);
    let now = relay_core::auth::now_unix();
    let exp = json["expires_at"].as_u64().expect("expires_at");
    assert!(exp > now && exp <= now + 600);
    // Every token relayctl prints verifies with the secret (and only it).
    let jid = relay_core::JobId::new(job).expect("job");
    for t in [&token, json["token"].as_str().expect("token")] {
        assert_eq!(
            relay_core::auth::verify(secret.as_bytes(), Some(t), &jid, now),
            Ok(())
        );
        assert!(relay_core::auth::verify(b"wrong", Some(t), &jid, now).is_err());
    }

    let publisher = Publisher::new(
        stack.backend.clone(),
        stack.keys.clone(),
        PublisherConfig::default(),
    );
    for n in 1..=4 {
        publisher.publish(&step(job, n, 4)).await.expect("publish");
    }
    let http = reqwest::Client::new();
    let url = stack.url(&format!("/v1/jobs/{job}/events"));
    let r = http.get(&url).send().await.expect("request");
    assert_eq!(r.status(), 401, "missing token");
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = http
        .get(&url)
        .bearer_auth(&other)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 403, "another job's token");
    let r = http
        .get(format!("{url}?token=not.a.token"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 401, "garbage token");
    let wrong_secret = relay_core::auth::issue(b"other-secret", &jid, Duration::from_secs(600));
    let r = http
        .get(&url)
        .bearer_auth(&wrong_secret)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 401, "token signed with another secret");
    let expired = relay_core::auth::issue_at(secret.as_bytes(), &jid, now.saturating_sub(1));
    let r = http
        .get(&url)
        .bearer_auth(&expired)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 401, "expired token");

    // Valid, as a header and as the query parameter an EventSource uses.
    let plan = ClientPlan {
        drop_every: None,
        crlf: false,
        seed: 3,
    };
    let http_auth = reqwest::Client::builder()
        .default_headers({
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
            h
        })
        .build()
        .expect("client");
    let seen = follow(http_auth, url.clone(), plan.clone(), &["done"])
        .await
        .expect("bearer stream");
    check_native(job, &seen, 4).expect("bearer stream content");
    let seen = follow(
        http,
        format!("{url}?token={token}"),
        ClientPlan {
            drop_every: Some(1),
            ..plan
        },
        &["done"],
    )
    .await
    .expect("query-token stream");
    check_native(job, &seen, 4).expect("query-token stream content");
}
