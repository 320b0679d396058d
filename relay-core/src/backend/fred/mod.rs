//! [`FredBackend`]: the relay's backend roles on the fred Redis client
//! (feature `fred`), with the same semantics as
//! [`RedisBackend`](super::redis::RedisBackend): the same Lua scripts, key
//! layout, batching, error mapping and topologies.
//!
//! | module | concept |
//! |---|---|
//! | `topology` | a [`RedisTopology`] (standalone URL, Sentinel, Cluster seeds) as fred client configurations |
//! | `conn` | connection roles: the shared client, dedicated blocking readers, resending after a drop, per-slot pipelines on a cluster, `WAIT` |
//! | `cmd` | one command: name, arguments, the hash slot it is routed by |
//! | `scripts` | the shared Lua scripts (`backend/scripts/*.lua`) with their SHA-1s |
//! | `error` | fred and server errors to [`BackendError`]: transient or not |
//! | `reply` | reply parsing (never panics on reply data) |
//! | `stream_log`, `job_log`, `pubsub`, `coordination`, `kv` | one backend role each |
//!
//! ## Connections
//! - One fred client for every non-blocking command (one multiplexed
//!   connection per node; on a cluster, to every master, routing by slot).
//!   It reconnects by itself, without limit; a command waits for the
//!   reconnection up to [`RedisConfig::response_timeout`]. On one server
//!   (standalone or Sentinel) fred never sends a command a second time
//!   once it was written: the backend resends idempotent commands itself,
//!   once, after a drop (as `RedisBackend` does), and never the others. On
//!   a cluster fred may write a command again after a dropped node
//!   connection (as redis-rs's cluster connection does).
//! - On a cluster fred follows no `MOVED`/`ASK` of a plain command or
//!   pipeline: fred 10 sends an `ASK`ed command back to the slot's old
//!   owner until it gives up, and then ends the client's connection task
//!   for good (the calls under way fail `Canceled`, later ones time out).
//!   A redirected command (which the node did not run) fails at once
//!   instead, fred refreshing its slot map on a `MOVED`, and the backend
//!   sends it again alone in a `MULTI`/`EXEC`, whose `ASK` (`ASKING` on
//!   the importing node) and `MOVED` fred follows correctly; a redirected
//!   pipeline goes again one command at a time, as in `RedisBackend`. A
//!   blocking read does not block in a transaction: while its slot moves
//!   it polls (see `conn`).
//! - Blocking reads never run on the shared client: fred's blocked state is
//!   per client, and a `BLOCK` would hold every command behind it. Each
//!   blocking call checks a dedicated client out of a small idle pool (or
//!   opens one) and returns it afterwards, bounded by `block +
//!   block_margin`; a client that failed or timed out is closed, never
//!   reused.
//! - [`PubSub::subscriber`](super::PubSub::subscriber) opens dedicated
//!   clients (one on a single server, one per master on a cluster), without
//!   reconnection: fred would resubscribe silently and hide the messages
//!   lost meanwhile. See `pubsub` for the liveness probe.
//! - With Sentinel, fred asks the sentinels for the master on every
//!   (re)connection and checks its `ROLE`; a `READONLY` or `MASTERDOWN`
//!   reply (a demoted master) makes it reconnect, so the next call lands on
//!   the new master. The failed call itself fails with a transient error.
//!
//! ## Scripts
//! Batches of script calls go out as one pipeline of `EVALSHA`s; calls
//! answered `NOSCRIPT` (restart, `SCRIPT FLUSH`, a promoted replica or an
//! importing node without the script) are sent again as `EVAL` with the
//! script's source, as `RedisBackend` does.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use fred::clients::Client;
use fred::types::ConnectHandle;

use super::redis::{RedisConfig, RedisTopology};
use super::{
    AckRequest, ApplyJob, ApplyOptions, ApplyResult, Backend, BackendResult, JobLog, StreamLog,
};
use crate::error::BackendError;

mod cmd;
mod conn;
mod coordination;
mod error;
mod job_log;
mod kv;
mod pubsub;
mod reply;
mod scripts;
mod stream_log;
mod topology;

use cmd::Cmd;
use conn::{Dedicated, Resend};
use error::{map_err, protocol};
use reply::str_of;
use scripts::Scripts;

pub use error::{ConnectError, FredConfigError};

struct Inner {
    /// Every non-blocking command.
    shared: Client,
    /// The shared client's connection task, aborted when the backend goes.
    shared_task: ConnectHandle,
    topology: RedisTopology,
    config: RedisConfig,
    /// Idle dedicated clients of blocking readers.
    blocking_idle: Mutex<Vec<Dedicated>>,
    scripts: Scripts,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared_task.abort();
    }
}

/// The fred backend. Cheap to clone (all clones share connections).
#[derive(Clone)]
pub struct FredBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FredBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FredBackend")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl FredBackend {
    /// Connects to `url` (`redis://[user:pass@]host:port[/db]`) with the
    /// default [`RedisConfig`].
    pub async fn connect(url: &str) -> Result<Self, BackendError> {
        Self::connect_with(url, RedisConfig::default()).await
    }

    /// Connects to `url` with explicit settings.
    pub async fn connect_with(url: &str, config: RedisConfig) -> Result<Self, BackendError> {
        Self::connect_topology(RedisTopology::Standalone(url.to_owned()), config).await
    }

    /// Connects to `topology` (the one description both Redis backends
    /// take): a standalone server, the master the sentinels name (followed
    /// across failovers), or a Redis Cluster.
    ///
    /// [`RedisConfig::reconnect_retries`] does not apply: fred reconnects
    /// the shared client without limit, and a command waits for it up to
    /// the response timeout.
    pub async fn connect_topology(
        topology: RedisTopology,
        config: RedisConfig,
    ) -> Result<Self, BackendError> {
        let shared = topology::shared_client(&topology, &config)?;
        let shared_task = conn::start(&shared, config.connection_timeout)
            .await
            .map_err(|e| error::naming_target(e, &topology))?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                shared_task,
                topology,
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

    /// The topology connected to.
    pub fn topology(&self) -> &RedisTopology {
        &self.inner.topology
    }

    /// The fred client every non-blocking command goes through (for
    /// commands of the application's own; never block it).
    pub fn client(&self) -> &Client {
        &self.inner.shared
    }

    /// `host:port` of the master serving `key`'s slot on a cluster (from
    /// fred's cached slot map); on one server, the server connected to.
    pub fn node_of(&self, key: &str) -> Result<String, BackendError> {
        use fred::interfaces::{ClientLike as _, ClusterInterface as _};
        let shared = &self.inner.shared;
        if !self.inner.topology.is_cluster() {
            return shared
                .active_connections()
                .first()
                .map(ToString::to_string)
                .ok_or_else(|| BackendError::Unavailable("not connected".into()));
        }
        let s = crate::keys::slot(key);
        shared
            .cached_cluster_state()
            .and_then(|routing| routing.get_server(s).map(ToString::to_string))
            .ok_or_else(|| BackendError::Unavailable(format!("no node serves slot {s}").into()))
    }

    /// Whether multi-key calls must stay within one hash slot: on a
    /// cluster, or in cluster mode ([`RedisConfig::cluster`]).
    fn per_slot(&self) -> bool {
        self.inner.config.cluster || self.inner.topology.is_cluster()
    }
}

#[async_trait]
impl Backend for FredBackend {
    fn name(&self) -> &'static str {
        "fred"
    }

    async fn ping(&self) -> BackendResult<()> {
        let v = self
            .query(&Cmd::new("PING"), Resend::AfterDrop)
            .await
            .map_err(map_err)?;
        let v = reply::to_redis_value(v);
        match str_of(&v) {
            Some(s) if s.eq_ignore_ascii_case("PONG") => Ok(()),
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
            // As RedisBackend: on a cluster the stream is in another slot
            // than the jobs, so the ack follows the applies; with
            // `min_replicas_ack` the applies reach replicas first, so a
            // failover of a job's master cannot lose an apply whose entry
            // was already acked.
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
