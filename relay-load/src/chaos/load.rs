//! The load's shared model: the context the producers and the SSE clients
//! share, and the record of each scan (its submission and what its client
//! received), which the checker reads after the run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// One SSE event as a client received it.
#[derive(Clone, Debug, Serialize)]
pub struct Got {
    /// Seconds since the run started.
    pub t: f64,
    /// Gateway index.
    pub gw: u8,
    /// Connection number of this client (1-based).
    pub conn: u32,
    /// `id:` field.
    pub id: Option<String>,
    /// `event:` name.
    pub event: String,
    /// `data:`.
    pub data: String,
}

/// A client's view of one job.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Follow {
    /// Everything received, in order, across connections.
    pub got: Vec<Got>,
    /// Connections opened.
    pub connections: u32,
    /// Reconnects (connections − 1).
    pub reconnects: u32,
    /// Reconnects because nothing was read for `--idle-secs`.
    pub idle_reconnects: u32,
    /// Why connections ended or failed, by reason.
    pub errors: BTreeMap<String, u64>,
    /// Submit start → terminal event received.
    pub e2e: Option<Duration>,
}

/// How a submission ended.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Submit {
    /// 2xx with this job id.
    Accepted(String),
    /// A 4xx answer (never retried).
    Rejected(String),
    /// Not accepted within `--submit-secs`.
    GaveUp,
}

/// One scan of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Scan {
    /// Sequence number.
    pub n: u64,
    /// `X-User-ID` (unique per scan, so a reward is never already owned).
    pub user: String,
    /// Seconds since the run started, at the first submit attempt.
    pub t: f64,
    /// Submit attempts.
    pub attempts: u32,
    /// Failed attempts by reason.
    pub submit_errors: BTreeMap<String, u64>,
    /// Outcome.
    pub submit: Submit,
    /// The client, for accepted scans.
    pub follow: Option<Follow>,
}

/// What the producers and the clients share.
pub(super) struct Ctx {
    pub(super) http: reqwest::Client,
    pub(super) sse: reqwest::Client,
    pub(super) api_url: String,
    pub(super) gateways: Vec<String>,
    pub(super) run_id: String,
    pub(super) idle: Duration,
    pub(super) submit_for: Duration,
    pub(super) t0: Instant,
    /// End of everything (drain included): clients give up.
    pub(super) deadline: Instant,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) accepted: AtomicU64,
    pub(super) terminal: AtomicU64,
}

impl Ctx {
    /// Seconds since the run started.
    pub(super) fn t(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// Whether the run is over (interrupted or past the deadline).
    pub(super) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

/// A short, countable reason for a request failure.
pub(super) fn reqwest_reason(e: &reqwest::Error) -> &'static str {
    if e.is_connect() {
        "connect error"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else {
        "request error"
    }
}
