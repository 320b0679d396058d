//! [`RedisBackend`]: the production backend, on redis-rs.
//!
//! | module | concept |
//! |---|---|
//! | `conn` | connection roles: the shared multiplexed connection, dedicated blocking readers, resending after a drop |
//! | `scripts` | the Lua scripts (`scripts/*.lua`, each naming its KEYS and ARGV) |
//! | `error` | server errors to [`BackendError`]: transient or not |
//! | `reply` | reply parsing (never panics on reply data) |
//! | `stream_log`, `job_log`, `pubsub`, `kv` | one backend role each |
//!
//! ## Connections
//! - One auto-reconnecting multiplexed connection ([`ConnectionManager`]) for
//!   every non-blocking command. Commands from all tasks are pipelined over it.
//! - Blocking reads ([`ReadFrom::New`] with a `block`) never run on the shared
//!   connection: a `BLOCK` would stall every command queued behind it. Each
//!   blocking call checks a dedicated connection out of a small idle pool (or
//!   opens one) and returns it afterwards. Such a connection has no redis-rs
//!   response timeout; the call is bounded instead by `block + block_margin`,
//!   so the client-side timeout is never shorter than the server-side `BLOCK`
//!   (the old Python system's socket timeout was, and lost reads). A
//!   connection that failed or timed out is dropped, never reused.
//! - [`Backend::subscriber`] opens a dedicated pub/sub connection per call.
//!
//! ## Scripts
//! The multi-step operations (apply, read history, get state, deduplicated
//! append, claim) are Lua scripts sent with `EVALSHA`; batches go out as one
//! pipeline. When the server answers `NOSCRIPT` (restart, `SCRIPT FLUSH`) the
//! script is loaded and only the failed calls are sent again.
//!
//! Seqs are compared exactly inside Lua (as decimal strings: by length, then
//! lexicographically), so the full `u64` range is safe. Offsets are Lua
//! numbers and stay exact up to 2^53.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::Client;

use super::{AckRequest, ApplyJob, ApplyOptions, ApplyResult, Backend, BackendResult};
use crate::error::BackendError;

mod conn;
mod coordination;
mod error;
mod job_log;
mod kv;
mod pubsub;
mod reply;
mod scripts;
mod stream_log;

use conn::Resend;
use error::{map_err, protocol};
use reply::str_of;
use scripts::Scripts;

pub use pubsub::SUBSCRIBER_CAPACITY;

/// Connection settings of a [`RedisBackend`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// Response timeout of the shared (non-blocking) connection. Never used
    /// for blocking reads.
    pub response_timeout: Duration,
    /// Timeout of each connection attempt.
    pub connection_timeout: Duration,
    /// Extra time a blocking read may take beyond its `BLOCK` before the
    /// client gives up on the connection.
    pub block_margin: Duration,
    /// Idle dedicated connections kept for blocking reads.
    pub blocking_pool_idle: usize,
    /// Reconnect attempts of the shared connection before a command fails.
    pub reconnect_retries: usize,
    /// Redis Cluster: apply each job in its own script call (a job's keys
    /// share its `{job_id}` slot; different jobs' keys do not). On a single
    /// server one call applies the whole batch, which is much cheaper.
    pub cluster: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            response_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(5),
            block_margin: Duration::from_secs(5),
            blocking_pool_idle: 16,
            reconnect_retries: 4,
            cluster: false,
        }
    }
}

struct Inner {
    client: Client,
    conn: ConnectionManager,
    config: RedisConfig,
    blocking_idle: Mutex<Vec<MultiplexedConnection>>,
    scripts: Scripts,
}

/// The redis-rs backend. Cheap to clone (all clones share connections).
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}
impl RedisBackend {
    /// Connects to `url` (`redis://[user:pass@]host:port[/db]`) with the
    /// default [`RedisConfig`].
    pub async fn connect(url: &str) -> Result<Self, BackendError> {
        Self::connect_with(url, RedisConfig::default()).await
    }

    /// Connects with explicit settings.
    pub async fn connect_with(url: &str, config: RedisConfig) -> Result<Self, BackendError> {
        let client = Client::open(url).map_err(|e| BackendError::Connection(Box::new(e)))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(config.connection_timeout))
            .set_number_of_retries(config.reconnect_retries)
            .set_max_delay(Duration::from_secs(2));
        let conn = client
            .get_connection_manager_with_config(manager_config)
            .await
            .map_err(map_err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                conn,
                config,
                blocking_idle: Mutex::new(Vec::new()),
                scripts: Scripts::new(),
            }),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The underlying redis-rs client (for extra connections).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> BackendResult<()> {
        let v = self
            .query(&redis::cmd("PING"), Resend::AfterDrop)
            .await
            .map_err(map_err)?;
        match str_of(&v) {
            Some("PONG") => Ok(()),
            _ => Err(protocol(format!("PING answered {v:?}"))),
        }
    }

    async fn apply_and_ack(
        &self,
        jobs: Vec<ApplyJob>,
        opts: &ApplyOptions,
        ack: AckRequest<'_>,
    ) -> BackendResult<Vec<ApplyResult>> {
        if self.inner.config.cluster || jobs.is_empty() || ack.ids.is_empty() {
            // On a cluster the stream lives in another slot than the jobs
            // (and with no jobs there is no script call to ack in): ack after.
            return super::apply_then_ack(self, jobs, opts, ack).await;
        }
        self.apply_scripted(&jobs, opts, Some(ack)).await
    }
}
