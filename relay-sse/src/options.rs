//! [`GatewayOptions`]: how the gateway behaves, as a library user sets it,
//! and how the binary's command line ([`Config`]) maps onto it (with the
//! floors that keep a typo from disabling a bound).

use std::time::Duration;

use relay_core::auth::PublisherKeys;
use relay_core::Profile;

use crate::config::{self, Config};

/// Gateway behaviour (the library side of [`Config`]).
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// Wire profile (selects key names; framing follows the route).
    pub profile: Profile,
    /// Domain of the native routes and `/api/v1/stream`.
    pub domain: String,
    /// Shard count (key space).
    pub shards: u32,
    /// Comment heartbeat interval (also the idle history re-check interval).
    pub heartbeat: Duration,
    /// Most concurrent SSE connections.
    pub max_connections: usize,
    /// Wait for an unknown job this long before 404.
    pub pending_job: Duration,
    /// Per-client live inbox, in messages: a client whose inbox overflows
    /// while a write to it is blocked is disconnected as slow.
    pub client_buffer: usize,
    /// Longest single stream.
    pub max_stream: Duration,
    /// HMAC secret for stream tokens (`None`: open).
    pub auth_secret: Option<Vec<u8>>,
    /// CORS origins (`*` for any; empty: no CORS headers).
    pub allow_origins: Vec<String>,
    /// Serve the demo page at `/`.
    pub demo_page: bool,
    /// `retry:` hint in ms.
    pub retry_ms: u64,
    /// Subscriber liveness probe interval.
    pub probe_interval: Duration,
    /// History records per read.
    pub history_page: usize,
    /// Longest time a request head may take to arrive, in whole (front only;
    /// also hyper's header read timeout on the plain HTTP path).
    pub head_timeout: Duration,
    /// Largest request head accepted by the front (larger: 431).
    pub max_head_bytes: usize,
    /// Most connections the front holds that are not SSE streams (reading a
    /// request head, or served by the plain HTTP path); beyond it new
    /// connections are closed at once.
    pub max_unrouted: usize,
    /// Longest wait for a client to take one chunk (catch-up or live);
    /// beyond it the client is slow and disconnected (it resumes).
    pub write_timeout: Duration,
    /// Framing stops at this many bytes and the chunk is written (under
    /// `write_timeout`) before more history is read: a client that does not
    /// read pins about two chunks, never the job's whole history.
    pub catchup_chunk_bytes: usize,
    /// Largest declared request body of the `GET` routes (they read
    /// none); larger: 413.
    pub max_body_bytes: usize,
    /// The keys that may publish through `POST /v1/jobs/{job_id}/events`
    /// (`Authorization: Bearer <key>`); none (the default): the route
    /// answers `403 PUBLISH_DISABLED`.
    pub publisher_keys: PublisherKeys,
    /// Largest publish request body, and largest stream entry a publish
    /// may append (all field names and values, as the `Publisher`'s
    /// `max_event_bytes` counts it); larger: 413.
    pub max_publish_bytes: usize,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            profile: Profile::Native,
            domain: "scan".into(),
            shards: 4,
            heartbeat: Duration::from_secs(15),
            max_connections: 10_000,
            pending_job: Duration::from_secs(10),
            client_buffer: 256,
            max_stream: Duration::from_secs(600),
            auth_secret: None,
            allow_origins: Vec::new(),
            demo_page: false,
            retry_ms: 2000,
            probe_interval: Duration::from_secs(5),
            history_page: 256,
            head_timeout: Duration::from_secs(10),
            max_head_bytes: 16 * 1024,
            max_unrouted: 1024,
            write_timeout: Duration::from_secs(30),
            catchup_chunk_bytes: 64 * 1024,
            max_body_bytes: 64 * 1024,
            publisher_keys: PublisherKeys::default(),
            max_publish_bytes: 1024 * 1024,
        }
    }
}

impl From<&Config> for GatewayOptions {
    fn from(c: &Config) -> Self {
        Self {
            profile: c.conn.profile,
            domain: c.conn.key_space().domain().as_str().to_owned(),
            shards: c.conn.shards,
            heartbeat: config::secs(c.heartbeat_secs),
            max_connections: c.max_connections,
            pending_job: config::secs(c.pending_job_secs),
            client_buffer: c.client_buffer.max(1),
            max_stream: config::secs(c.max_stream_secs),
            auth_secret: c.auth_secret.clone().map(String::into_bytes),
            allow_origins: c.allow_origin.clone(),
            demo_page: c.demo_page,
            retry_ms: c.retry_ms,
            probe_interval: config::secs(c.probe_secs),
            history_page: c.history_page.max(1),
            head_timeout: config::secs(c.head_timeout_secs),
            max_head_bytes: c.max_head_bytes.max(1024),
            max_unrouted: c.max_unrouted.max(1),
            write_timeout: config::secs(c.write_timeout_secs),
            catchup_chunk_bytes: c.catchup_chunk_bytes.max(1024),
            max_body_bytes: c.max_body_bytes,
            publisher_keys: PublisherKeys::new(&c.publisher_keys),
            max_publish_bytes: c.max_publish_bytes.max(1024),
        }
    }
}
