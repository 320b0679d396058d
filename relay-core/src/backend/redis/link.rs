//! The node the backend currently talks to, and moving to a new one when
//! Sentinel promotes another.
//!
//! A [`Link`] is one node's client and shared connection, numbered by a
//! generation. Every role (commands, blocking readers, subscribers) takes
//! its connections from the current link. When a call fails in a way that
//! can mean "this is no longer the master" — the connection broke, or the
//! node answered `READONLY` / `MASTERDOWN` — the caller reports it with
//! [`RedisBackend::observe`]; on a Sentinel topology that asks the sentinels
//! again and, if they name another master, swaps in a new link (and drops
//! the idle blocking connections of the old one). The failed call itself
//! still fails with a transient [`BackendError`], so callers retry as they
//! always did; the retry lands on the new master. Resend rules are
//! unchanged: only [`Resend::AfterDrop`](super::conn::Resend) commands are
//! sent a second time by the backend.
//!
//! A link whose node failed and that the sentinels could not confirm as
//! master again is *suspect*: calls on it fail at once (transiently) and
//! ask again, instead of letting the auto-reconnecting connection write to
//! whatever answers at the old address — a killed master restarted empty
//! is a master until the sentinels demote it, and writes there would be
//! lost.
//!
//! Subscribers follow by reconnecting: a killed master closes their
//! connection, the owner (the gateway's hub) calls
//! [`PubSub::subscriber`](crate::backend::PubSub::subscriber) again, which
//! opens on the current link, and resubscribes and catches up from history.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

use super::error::{is_connection_error, map_err, server_code};
use super::topology::{ClusterTopology, RedisTopology};
use super::{RedisBackend, RedisConfig};
use crate::error::BackendError;

/// Shortest pause between two rediscoveries: a burst of failing calls
/// during a failover asks the sentinels once, not once per call.
const REDISCOVER_EVERY: Duration = Duration::from_millis(250);

/// The node in use (or the cluster) and its shared connection.
pub(super) struct Link {
    /// Where further connections (blocking readers, subscribers) go.
    pub(super) target: Target,
    /// The shared connection every non-blocking command uses.
    pub(super) conn: Shared,
    /// Increases with each swap; a caller compares the generation it used
    /// with the current one to know whether someone already moved on.
    pub(super) generation: u64,
    /// `host:port` of the node (for logs).
    pub(super) addr: String,
    /// The node failed and the sentinels have not confirmed it since.
    suspect: AtomicBool,
}

/// Where a link's extra connections go.
pub(super) enum Target {
    /// One server (standalone, or the master Sentinel named).
    Node(Client),
    /// A cluster: `blocking` (no response timeout) opens the dedicated
    /// connections of blocking readers; subscribers connect to the masters
    /// `topology` leads to.
    Cluster {
        topology: Box<ClusterTopology>,
        blocking: Box<ClusterClient>,
    },
}

/// A connection to one server (`N`) or redis-rs's cluster connection (one
/// multiplexed connection per node, commands routed by slot, `MOVED`/`ASK`
/// redirections and failovers followed).
#[derive(Clone)]
pub(super) enum Conn<N> {
    Node(N),
    Cluster(ClusterConnection),
}

/// The shared connection every non-blocking command uses: on one server
/// an auto-reconnecting multiplexed connection.
pub(super) type Shared = Conn<ConnectionManager>;

impl<N: ConnectionLike + Send> ConnectionLike for Conn<N> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Link {
    /// Opens the shared connection of `client`.
    pub(super) async fn open(
        client: Client,
        config: &RedisConfig,
        generation: u64,
        addr: String,
    ) -> Result<Link, BackendError> {
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(config.connection_timeout))
            .set_number_of_retries(config.reconnect_retries)
            .set_max_delay(Duration::from_secs(2));
        let conn = client
            .get_connection_manager_with_config(manager_config)
            .await
            .map_err(map_err)?;
        Ok(Link {
            target: Target::Node(client),
            conn: Conn::Node(conn),
            generation,
            addr,
            suspect: AtomicBool::new(false),
        })
    }

    /// Opens the cluster connection of `topology`.
    async fn open_cluster(
        topology: &ClusterTopology,
        config: &RedisConfig,
    ) -> Result<Link, BackendError> {
        let client = topology.client(config.connection_timeout, Some(config.response_timeout))?;
        let conn = client.get_async_connection().await.map_err(map_err)?;
        let blocking = topology.client(config.connection_timeout, None)?;
        let addr = topology
            .seeds()
            .iter()
            .map(|(h, p)| format!("{h}:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Link {
            target: Target::Cluster {
                topology: Box::new(topology.clone()),
                blocking: Box::new(blocking),
            },
            conn: Conn::Cluster(conn),
            generation: 0,
            addr,
            suspect: AtomicBool::new(false),
        })
    }

    /// Whether this link is to a cluster.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    /// The first link of `topology`.
    pub(super) async fn first(
        topology: &RedisTopology,
        config: &RedisConfig,
    ) -> Result<Link, BackendError> {
        match topology {
            RedisTopology::Standalone(url) => {
                let client = Client::open(url.as_str())
                    .map_err(|e| BackendError::Connection(Box::new(e)))?;
                Link::open(client, config, 0, url.clone()).await
            }
            RedisTopology::Sentinel(sentinel) => {
                let (client, addr) = sentinel.resolve(config.connection_timeout).await?;
                Link::open(client, config, 0, addr).await
            }
            RedisTopology::Cluster(cluster) => Link::open_cluster(cluster, config).await,
        }
    }
}

/// Whether `e` can mean that the node is no longer the master.
pub(super) fn wants_rediscovery(e: &RedisError) -> bool {
    is_connection_error(e) || matches!(server_code(e).as_deref(), Some("READONLY" | "MASTERDOWN"))
}

impl RedisBackend {
    /// The current link.
    pub(super) fn link(&self) -> Arc<Link> {
        match self.inner.link.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The current link, if it is not suspect; otherwise asks the
    /// sentinels again first, and fails (as a connection error) while the
    /// master is still unconfirmed.
    pub(super) async fn usable_link(&self) -> Result<Arc<Link>, RedisError> {
        let link = self.link();
        if !link.suspect.load(Ordering::Acquire) {
            return Ok(link);
        }
        self.rediscover(link.generation).await;
        let link = self.link();
        if link.suspect.load(Ordering::Acquire) {
            return Err(RedisError::from((
                ErrorKind::Io,
                "the Redis master failed and the sentinels have not confirmed a master yet",
            )));
        }
        Ok(link)
    }

    /// Reports that a call on the link of `generation` failed with `e`; on
    /// a Sentinel topology, when `e` can mean a failover, asks the
    /// sentinels for the master and moves to it if it changed.
    pub(super) async fn observe(&self, e: &RedisError, generation: u64) {
        if wants_rediscovery(e) {
            self.rediscover(generation).await;
        }
    }

    async fn rediscover(&self, generation: u64) {
        let RedisTopology::Sentinel(sentinel) = &self.inner.topology else {
            return;
        };
        let mut last = self.inner.rediscovery.lock().await;
        if self.link().generation != generation {
            return; // another call already moved on
        }
        if last.is_some_and(|t| t.elapsed() < REDISCOVER_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let config = &self.inner.config;
        let current = self.link();
        let (client, addr) = match sentinel.resolve(config.connection_timeout).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "no master to move to yet");
                current.suspect.store(true, Ordering::Release);
                return;
            }
        };
        if addr == current.addr {
            // Confirmed: the same node is still the master (the failure
            // was something else, or it came back in time).
            current.suspect.store(false, Ordering::Release);
            return;
        }
        match Link::open(client, config, current.generation + 1, addr).await {
            Ok(link) => {
                tracing::warn!(from = %current.addr, to = %link.addr, "Redis master moved; reconnected");
                match self.inner.link.write() {
                    Ok(mut l) => *l = Arc::new(link),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(link),
                }
                if let Ok(mut pool) = self.inner.blocking_idle.lock() {
                    pool.clear();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect to the new master yet");
                current.suspect.store(true, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::error::server_error;
    use super::*;

    #[test]
    fn failover_errors_ask_the_sentinels_again_and_stay_transient() {
        let readonly = server_error(b"-READONLY You can't write against a read only replica.\r\n");
        assert!(wants_rediscovery(&readonly));
        assert!(map_err(readonly).is_transient());
        let masterdown = server_error(b"-MASTERDOWN Link with MASTER is down\r\n");
        assert!(wants_rediscovery(&masterdown));
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(wants_rediscovery(&refused));
        assert!(!wants_rediscovery(&server_error(
            b"-NOSCRIPT No matching script\r\n"
        )));
        assert!(!wants_rediscovery(&server_error(
            b"-ERR wrong number of arguments\r\n"
        )));
    }
}
