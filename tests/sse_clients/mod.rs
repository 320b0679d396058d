//! The SSE test client of the end-to-end tests (`e2e_sse`, `e2e_sentinel`,
//! `e2e_cluster`): the events a scan job publishes, a client that follows a
//! job's stream through drops, gateway deaths and Redis failovers (resuming
//! with Last-Event-ID, parsing the raw bytes re-chunked at random points),
//! and the check that it saw every event once, in order; and the
//! `relay-router` and `relay-sse` processes they follow, started with the
//! same flags apart from where Redis is and which Redis client they use
//! (`--redis-client`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use relay_core::cli::RedisClient;
use relay_core::{Event, Status};
use relay_sse::client::{SseEvent, SseItem, SseParser};
use relay_testkit::procs::{free_port, Proc};

/// Hang guard for one wait inside a test.
pub const LIMIT: Duration = Duration::from_secs(40);

/// The `n`-th (1-based) of `total` events of a scan job; the last is `done`.
pub fn step(job: &str, n: u64, total: u64) -> Event {
    if n == total {
        return Event::new("scan", job, n, "done", Status::Completed)
            .expect("event")
            .with_progress(100)
            .with_data(
                serde_json::json!({"n": n, "result": {"answer": "종이류: 깨끗이 펴서 배출"}}),
            );
    }
    if n == 1 {
        return Event::new("scan", job, n, "queued", Status::Started).expect("event");
    }
    let stages = ["vision", "rule", "answer", "reward"];
    let stage = stages[((n as usize - 2) / 2) % stages.len()];
    let status = if n.is_multiple_of(2) {
        Status::Started
    } else {
        Status::Completed
    };
    Event::new("scan", job, n, stage, status)
        .expect("event")
        .with_progress((n * 100 / total) as u8)
        // Text with characters that must survive the framing untouched.
        .with_data(serde_json::json!({"n": n, "note": format!("line one\nline two: {n}\r\n: not a comment")}))
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// How a test client behaves.
#[derive(Clone, Debug)]
pub struct ClientPlan {
    /// Drop the connection after this many events on it (then resume).
    pub drop_every: Option<usize>,
    /// Rewrite every LF of the response to CRLF before parsing.
    pub crlf: bool,
    pub seed: u64,
}

/// What a client saw, across all its connections.
#[derive(Debug, Default)]
pub struct Seen {
    pub events: Vec<SseEvent>,
    pub connections: usize,
    pub retries_hint: usize,
}

/// Follows `url` until the terminal event, reconnecting with Last-Event-ID
/// after drops, gateway deaths and stream ends. Feeds the raw body bytes to
/// [`SseParser`] in random slices.
pub async fn follow(
    http: reqwest::Client,
    url: String,
    plan: ClientPlan,
    terminal: &'static [&'static str],
) -> Result<Seen, String> {
    let mut rng = Rng(plan.seed | 1);
    let mut seen = Seen::default();
    let mut last_id: Option<String> = None;
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "no terminal event after {LIMIT:?}; saw {} events",
                seen.events.len()
            ));
        }
        let mut req = http.get(&url);
        if let Some(id) = &last_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(_) => {
                // Gateway down (killed): retry like an EventSource would.
                tokio::time::sleep(Duration::from_millis(50 + rng.below(100))).await;
                continue;
            }
        };
        if resp.status() != 200 {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(format!("HTTP {status}: {body}"));
        }
        seen.connections += 1;
        let mut parser = SseParser::new();
        let mut body = resp.bytes_stream();
        let mut on_this = 0usize;
        'conn: while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            let bytes: Vec<u8> = if plan.crlf {
                let mut v = Vec::with_capacity(chunk.len() + 16);
                for &b in chunk.iter() {
                    if b == b'\n' {
                        v.push(b'\r');
                    }
                    v.push(b);
                }
                v
            } else {
                chunk.to_vec()
            };
            // Chunk boundaries anywhere: feed random slices (often 1–3 bytes).
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let max = if rng.below(4) == 0 {
                    3
                } else {
                    rest.len() as u64
                };
                let n = (1 + rng.below(max)) as usize;
                let (piece, tail) = rest.split_at(n.min(rest.len()));
                rest = tail;
                for item in parser.push(piece) {
                    match item {
                        SseItem::Event(e) => {
                            let end = terminal.contains(&e.event.as_str());
                            last_id = e.id.clone().or(last_id);
                            seen.events.push(e);
                            on_this += 1;
                            if end {
                                return Ok(seen);
                            }
                            if plan.drop_every.is_some_and(|k| on_this >= k) {
                                break 'conn;
                            }
                        }
                        SseItem::Retry(_) => seen.retries_hint += 1,
                        SseItem::Comment(_) => {}
                    }
                }
            }
        }
        // Dropped, killed or ended without the terminal event: resume.
    }
}

/// Checks one native-profile client's events: offsets 1..=total in order
/// under one epoch, seqs 1..=total, the last one `done`, data intact.
pub fn check_native(job: &str, seen: &Seen, total: u64) -> Result<(), String> {
    let mut epoch = None;
    let mut offsets = Vec::new();
    for e in &seen.events {
        let id = e.id.as_deref().ok_or("event without id")?;
        let (ep, off) = id.split_once(':').ok_or_else(|| format!("bad id {id}"))?;
        if *epoch.get_or_insert(ep.to_owned()) != ep {
            return Err(format!("epoch changed: {id}"));
        }
        let off: u64 = off.parse().map_err(|_| format!("bad offset in {id}"))?;
        let ev: Event =
            serde_json::from_str(&e.data).map_err(|err| format!("bad data {err}: {}", e.data))?;
        let want = step(job, off, total);
        if ev.job_id.as_str() != job
            || ev.seq != off
            || ev.stage != want.stage
            || ev.status != want.status
            || ev.data != want.data
        {
            return Err(format!("offset {off}: got {ev:?}, want {want:?}"));
        }
        if e.event != want.stage.as_str() {
            return Err(format!(
                "offset {off}: event name {} != stage {}",
                e.event, want.stage
            ));
        }
        offsets.push(off);
    }
    let want: Vec<u64> = (1..=total).collect();
    if offsets != want {
        return Err(format!("offsets {offsets:?}"));
    }
    Ok(())
}

/// A running client: (job id, kind of client, task).
pub type ClientTask = (
    String,
    &'static str,
    tokio::task::JoinHandle<Result<Seen, String>>,
);

/// What the clients of a run did, once all of them passed.
#[derive(Debug, Default)]
pub struct ClientsReport {
    /// Clients per kind.
    pub kinds: BTreeMap<&'static str, usize>,
    /// Reconnects over all clients.
    pub reconnects: usize,
}

/// Awaits every client and checks (with [`check_native`]) that each saw
/// every one of its job's `total` events once, in order, ending with the
/// terminal, and got a `retry:` hint.
///
/// # Panics
/// When any client failed, naming up to eight.
pub async fn expect_every_event_once(clients: Vec<ClientTask>, total: u64) -> ClientsReport {
    let n_clients = clients.len();
    let mut failures = Vec::new();
    let mut report = ClientsReport::default();
    for (job, kind, handle) in clients {
        match handle.await.expect("client task") {
            Ok(seen) => {
                *report.kinds.entry(kind).or_default() += 1;
                report.reconnects += seen.connections.saturating_sub(1);
                assert!(seen.retries_hint >= 1, "the gateway sends a retry: hint");
                if let Err(e) = check_native(&job, &seen, total) {
                    failures.push(format!("{job} ({kind}): {e}"));
                }
            }
            Err(e) => failures.push(format!("{job} ({kind}): {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n_clients} clients failed, e.g. {:#?}",
        failures.len(),
        &failures[..failures.len().min(8)]
    );
    report
}

/// Starts `relay-router` with `client` and `conn` (where Redis is, and the
/// profile): consumer `r1`, short blocks and claims.
pub fn spawn_router(client: RedisClient, conn: &[&str]) -> Proc {
    let mut args = vec!["--redis-client", client.as_str()];
    args.extend_from_slice(conn);
    args.extend([
        "--consumer",
        "r1",
        "--metrics-addr",
        "127.0.0.1:0",
        "--block-ms",
        "200",
        "--claim-idle-ms",
        "1000",
    ]);
    Proc::spawn("relay-router", &args, &[])
}

/// Starts `relay-sse` with `client`, `conn` and `extra` flags on a free
/// port, with fast heartbeats and probes; returns it and its address (not
/// yet waited for).
pub fn spawn_gateway(client: RedisClient, conn: &[&str], extra: &[&str]) -> (Proc, SocketAddr) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "--listen",
        listen.as_str(),
        "--redis-client",
        client.as_str(),
    ];
    args.extend_from_slice(conn);
    args.extend([
        // Clients connect before their job's first event: wait long.
        "--pending-job-secs",
        "60",
        "--heartbeat-secs",
        "1",
        "--probe-secs",
        "0.5",
        "--retry-ms",
        "200",
        "--max-connections",
        "5000",
    ]);
    args.extend_from_slice(extra);
    let gateway = Proc::spawn("relay-sse", &args, &[]);
    (gateway, listen.parse().expect("addr"))
}
