//! [`RedisBackend`]: the production backend, on redis-rs.
//!
//! | module | concept |
//! |---|---|
//! | `topology` | where the server is: a standalone URL, a master named by Redis Sentinel, or a Redis Cluster's seeds; the cluster's slot map |
//! | `link` | the node (or cluster) in use, and moving to a new master after a Sentinel failover |
//! | `conn` | connection roles: the shared connection, dedicated blocking readers, resending after a drop, per-slot pipelines on a cluster |
//! | `scripts` | the Lua scripts (`backend/scripts/*.lua`, shared with the fred backend, each naming its KEYS and ARGV) |
//! | `error` | server errors to [`BackendError`]: transient or not |
//! | `reply` | reply parsing (never panics on reply data) |
//! | `stream_log`, `job_log`, `pubsub`, `kv` | one backend role each |
//!
//! ## Connections
//! - One auto-reconnecting multiplexed connection ([`redis::aio::ConnectionManager`]) for
//!   every non-blocking command. Commands from all tasks are pipelined over it.
//!   On a cluster, redis-rs's cluster connection instead (one multiplexed
//!   connection per node, routing by slot, following `MOVED`/`ASK` and
//!   failovers); a pipeline is split into one pipeline per key slot.
//! - Blocking reads ([`ReadFrom::New`] with a `block`) never run on the shared
//!   connection: a `BLOCK` would stall every command queued behind it. Each
//!   blocking call checks a dedicated connection out of a small idle pool (or
//!   opens one) and returns it afterwards. Such a connection has no redis-rs
//!   response timeout; the call is bounded instead by `block + block_margin`,
//!   so the client-side timeout is never shorter than the server-side `BLOCK`
//!   (the old Python system's socket timeout was, and lost reads). A
//!   connection that failed or timed out is dropped, never reused.
//! - [`Backend::subscriber`] opens a dedicated pub/sub connection per call.
//! - All of them connect to the current node ([`RedisTopology`]): with
//!   Sentinel, a broken connection or a `READONLY` reply makes the backend
//!   ask the sentinels for the master again and move every role to it.
//!
//! ## Scripts
//! The multi-step operations (apply, read history, get state, deduplicated
//! append, claim) are Lua scripts sent with `EVALSHA`; batches go out as one
//! pipeline. When the server answers `NOSCRIPT` (restart, `SCRIPT FLUSH`,
//! a promoted replica: Redis does not replicate its script cache) only the
//! failed calls are sent again, as `EVAL` with the script's source, which
//! also caches it on the node that runs them.
//!
//! Seqs are compared exactly inside Lua (as decimal strings: by length, then
//! lexicographically), so the full `u64` range is safe. Offsets are Lua
//! numbers and stay exact up to 2^53.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::Client;

use super::{
    AckRequest, ApplyJob, ApplyOptions, ApplyResult, Backend, BackendResult, JobLog, StreamLog,
};
use crate::error::BackendError;

mod conn;
mod coordination;
mod error;
mod job_log;
mod kv;
mod link;
mod pubsub;
use super::reply;
mod scripts;
mod stream_log;
mod topology;

use conn::Resend;
use error::{map_err, protocol};
use link::Link;
use reply::str_of;
use scripts::Scripts;

pub use pubsub::SUBSCRIBER_CAPACITY;
pub use topology::{ClusterTopology, RedisTopology, SentinelTopology, TopologyError};

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
    /// Cluster mode on any topology: apply each job in its own script
    /// call (a job's keys share its `{job_id}` slot; different jobs' keys
    /// do not) and ack after. Always on with [`RedisTopology::Cluster`]; on
    /// a single server it only exercises the cluster code path (one call
    /// for the whole batch is much cheaper there).
    pub cluster: bool,
    /// Replicas that must acknowledge an append before it is reported
    /// done (`WAIT n timeout` after each append batch). `None`: appends
    /// are acknowledged by the master alone, and an acknowledged append
    /// not yet replicated when the master dies is lost at failover.
    pub min_replicas_ack: Option<ReplicaAck>,
}

/// Wait for replicas after an append (see [`RedisConfig::min_replicas_ack`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaAck {
    /// How many replicas must have the append.
    pub replicas: u32,
    /// How long to wait for them; fewer by then fails the append with a
    /// transient [`BackendError::Unavailable`] (it may still survive:
    /// callers retry, and relay's appends are idempotent by seq).
    pub timeout: Duration,
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
            min_replicas_ack: None,
        }
    }
}

struct Inner {
    /// The node in use; replaced when Sentinel names a new master.
    link: RwLock<Arc<Link>>,
    topology: RedisTopology,
    /// Serialises rediscoveries; holds when the last one started.
    rediscovery: tokio::sync::Mutex<Option<Instant>>,
    config: RedisConfig,
    /// Idle blocking connections, each with its link's generation.
    blocking_idle: Mutex<Vec<(u64, conn::Dedicated)>>,
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
        Self::connect_topology(RedisTopology::Standalone(url.to_owned()), config).await
    }

    /// Connects to `topology`: a standalone server, or the master the
    /// sentinels name (followed across failovers).
    pub async fn connect_topology(
        topology: RedisTopology,
        config: RedisConfig,
    ) -> Result<Self, BackendError> {
        let link = Link::first(&topology, &config).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                link: RwLock::new(Arc::new(link)),
                topology,
                rediscovery: tokio::sync::Mutex::new(None),
                config,
                blocking_idle: Mutex::new(Vec::new()),
                scripts: Scripts::new(),
            }),
        })
    }

    /// Whether multi-key calls must stay within one hash slot: on a
    /// cluster, or in cluster mode ([`RedisConfig::cluster`]).
    pub(super) fn per_slot(&self) -> bool {
        self.inner.config.cluster || self.inner.topology.is_cluster()
    }

    /// `host:port` of the master serving `key`'s slot on a cluster (from
    /// `CLUSTER SLOTS`); on one server, that server.
    pub async fn node_of(&self, key: &str) -> Result<String, BackendError> {
        let link = self.link();
        if !link.is_cluster() {
            return Ok(link.addr.clone());
        }
        let (masters, ranges) = self.slot_map().await?;
        let s = crate::keys::slot(key);
        ranges
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&s))
            .and_then(|(_, _, m)| masters.get(*m))
            .map(|(h, p)| format!("{h}:{p}"))
            .ok_or_else(|| BackendError::Unavailable(format!("no node serves slot {s}").into()))
    }

    /// The cluster's masters (`host`, `port`) and slot ranges with the
    /// index of their master, from `CLUSTER SLOTS`.
    #[allow(clippy::type_complexity)]
    pub(super) async fn slot_map(
        &self,
    ) -> Result<(Vec<(String, u16)>, Vec<(u16, u16, usize)>), BackendError> {
        let v = self
            .query(redis::cmd("CLUSTER").arg("SLOTS"), Resend::AfterDrop)
            .await
            .map_err(map_err)?;
        topology::slot_masters(&v)
    }

    /// The settings in use.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The topology connected to.
    pub fn topology(&self) -> &RedisTopology {
        &self.inner.topology
    }

    /// The redis-rs client of the node in use (for extra connections); on
    /// a Sentinel topology, of the master at the time of the call; `None`
    /// on a cluster (there is no one node).
    pub fn client(&self) -> Option<Client> {
        match &self.link().target {
            link::Target::Node(client) => Some(client.clone()),
            link::Target::Cluster { .. } => None,
        }
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
        jobs: &[ApplyJob],
        opts: &ApplyOptions,
        ack: AckRequest<'_>,
    ) -> BackendResult<Vec<ApplyResult>> {
        if self.per_slot() || jobs.is_empty() || ack.ids.is_empty() {
            // On a cluster the stream lives in another slot than the jobs
            // (and with no jobs there is no script call to ack in): ack
            // after. The ack then lands on another master than the applies;
            // with `min_replicas_ack` the applies are on replicas first, so
            // a failover of a job's master cannot lose an apply whose entry
            // was already acked (without it, that is the async-replication
            // loss window, see docs/SCALING.md).
            let applied = self.apply(jobs, opts).await?;
            if !ack.ids.is_empty() {
                if self.inner.topology.is_cluster() {
                    self.wait_replicas().await?;
                }
                self.ack(ack.stream, ack.group, ack.ids).await?;
            }
            return Ok(applied);
        }
        self.apply_scripted(jobs, opts, Some(ack)).await
    }
}
