//! A private Redis Cluster: three masters and three replicas, each a
//! `redis-server --cluster-enabled yes` on free loopback ports, for testing
//! that relay follows MOVED and ASK redirections, failovers and slot
//! migrations.
//!
//! As with [`crate::sentinel`], only the real thing will do: redirections,
//! epochs and promotions are the servers' behaviour, not a protocol a mock
//! could imitate faithfully. Each node has its own temporary directory (its
//! `nodes.conf` and log), a short `cluster-node-timeout` (2000 ms, so a
//! killed master's replica is promoted within about five seconds) and no
//! persistence. A node also listens on its port + 10000 (the cluster bus),
//! so ports are picked with both free, below the kernel's ephemeral range
//! when it leaves room: there no outgoing connection can take a killed
//! node's ports before it is restarted.
//!
//! [`RedisCluster::start`] creates the cluster with `redis-cli --cluster
//! create` and returns once every node says `cluster_state:ok`, serves all
//! 16384 slots, agrees with the others on masters and replicas, and every master has
//! a replica in sync. Every operation that changes the topology
//! ([`RedisCluster::kill_master`], [`RedisCluster::failover`],
//! [`RedisCluster::move_slot`] …) waits likewise until every live node agrees
//! on the result, with a one-minute hang guard whose error says what was
//! still missing. Every process is killed and every directory removed on
//! drop (kept, and named on stderr, when the thread is panicking).
//!
//! `RELAY_TEST_REDIS_CLUSTER=host:port,host:port,…` points
//! [`RedisCluster::start`] at an existing cluster instead (no process is
//! started; [`RedisCluster::seeds`] returns those addresses). Migrations and
//! [`RedisCluster::failover`] work there too; what needs the processes
//! ([`RedisCluster::kill_master`], [`RedisCluster::restart_node`]) or would
//! wipe a shared cluster ([`RedisCluster::flushall`]) returns
//! [`HarnessError::ExternalCluster`]. Tests that need those use
//! [`RedisCluster::start_private`].
//!
//! ```no_run
//! use relay_testkit::cluster::{key_slot, RedisCluster};
//! # async fn demo() {
//! let cluster = RedisCluster::start();
//! let slot = key_slot("{job:1}:hist");
//! let owner = cluster.master_of_slot(slot).await.expect("owner");
//! let target = cluster.other_master(slot).await.expect("another master");
//! cluster.move_slot(slot, target).await.expect("moved");
//! # let _ = owner;
//! # }
//! ```

mod ops;
mod start;
mod topology;

pub use ops::Promotion;

use std::error::Error;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use redis::Value;

use crate::bench::info_cpu_time;
use crate::redis::{command_at, reply_text, role_at, HarnessError, RedisServer};
use topology::range_of;

/// Environment variable pointing the tests at an existing cluster:
/// `host:port,host:port,…` (any of its nodes; more than one in case one is
/// down).
pub const REDIS_CLUSTER_ENV: &str = "RELAY_TEST_REDIS_CLUSTER";

/// Number of hash slots.
pub const SLOTS: u16 = 16384;

/// Hang guard of the waits (a promotion normally takes 3–5 s).
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// The hash slot of `key`, as the servers compute it: CRC16 (XMODEM) of the
/// hash tag (between the first `{` and the first `}` after it, when that is
/// not empty), else of the whole key, modulo 16384.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tag = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let body = &bytes[open + 1..];
        let len = body.iter().position(|&b| b == b'}')?;
        (len > 0).then(|| &body[..len])
    });
    crc16::State::<crc16::XMODEM>::calculate(tag.unwrap_or(bytes)) % SLOTS
}

/// A node's role now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRole {
    /// Answers `ROLE` as master.
    Master,
    /// Answers `ROLE` as replica.
    Replica,
    /// Killed, or not answering.
    Down,
}

/// One node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// `host:port`.
    pub addr: String,
    /// The port (nodes are identified by it in this API).
    pub port: u16,
    /// The process id; `None` while killed, and for an external cluster.
    pub pid: Option<u32>,
    /// The node id (`CLUSTER MYID`), kept across restarts.
    pub id: String,
    /// Its role now.
    pub role: NodeRole,
}

struct Node {
    host: String,
    port: u16,
    id: String,
    /// `None` in an external cluster.
    server: Option<RedisServer>,
}

impl Node {
    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Three masters with a replica each (or the external cluster of
/// [`REDIS_CLUSTER_ENV`]); killed on drop.
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// The seeds of an external cluster.
    external: Option<Vec<String>>,
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster")
            .field(
                "nodes",
                &self.nodes.iter().map(Node::addr).collect::<Vec<_>>(),
            )
            .field("external", &self.external)
            .finish()
    }
}

impl RedisCluster {
    /// Whether the cluster's processes are this fixture's (not external).
    pub fn is_private(&self) -> bool {
        self.external.is_none()
    }

    /// `host:port` of every node (of an external cluster: the seeds given).
    pub fn seeds(&self) -> Vec<String> {
        match &self.external {
            Some(seeds) => seeds.clone(),
            None => self.nodes.iter().map(Node::addr).collect(),
        }
    }

    /// [`RedisCluster::seeds`] as `redis://host:port` URLs.
    pub fn urls(&self) -> Vec<String> {
        self.seeds()
            .into_iter()
            .map(|s| format!("redis://{s}"))
            .collect()
    }

    /// The nodes' directories (with `nodes.conf` and `redis.log`; removed on
    /// drop); empty for an external cluster.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.servers().map(|s| s.dir().to_owned()).collect()
    }

    /// Every node with its pid, id and role now.
    pub async fn nodes(&self) -> Vec<NodeInfo> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let pid = node.server.as_ref().and_then(RedisServer::pid);
            let killed = node.server.is_some() && pid.is_none();
            let role = if killed {
                NodeRole::Down
            } else {
                match role_at(&node.addr()).await {
                    Some((role, _)) if role == "master" => NodeRole::Master,
                    Some(_) => NodeRole::Replica,
                    None => NodeRole::Down,
                }
            };
            out.push(NodeInfo {
                addr: node.addr(),
                port: node.port,
                pid,
                id: node.id.clone(),
                role,
            });
        }
        out
    }

    /// The port of the master serving `slot`, from `CLUSTER SLOTS` of the
    /// first live node that answers.
    pub async fn master_of_slot(&self, slot: u16) -> Result<u16, HarnessError> {
        if slot >= SLOTS {
            return Err(HarnessError::Cluster(format!(
                "slot {slot} out of range (0-{})",
                SLOTS - 1
            )));
        }
        let view = self.slots_view().await?;
        range_of(&view, slot)
            .map(|r| r.master.port)
            .map_err(HarnessError::Cluster)
    }

    /// Runs one command on the node at `port` (a fresh connection, so no
    /// redirection is followed: a test sees the node's own answer).
    pub async fn command(&self, port: u16, args: &[&str]) -> Result<Value, HarnessError> {
        command_at(&self.node(port)?.addr(), args).await
    }

    /// CPU time (user + system) the node at `port` has used so far (`INFO
    /// cpu`), for benchmarks.
    pub async fn info_cpu(&self, port: u16) -> Result<Duration, HarnessError> {
        let v = self.command(port, &["INFO", "cpu"]).await?;
        let text = reply_text(&v).ok_or_else(|| HarnessError::UnexpectedReply {
            command: "INFO",
            reply: format!("{v:?}"),
        })?;
        Ok(info_cpu_time(&text))
    }

    /// `FLUSHALL` on every master (refused on an external cluster, which
    /// other tests may share).
    pub async fn flushall(&self) -> Result<(), HarnessError> {
        self.require_private()?;
        for port in self.master_ports().await? {
            self.command(port, &["FLUSHALL"]).await?;
        }
        Ok(())
    }

    /// The distinct masters of `CLUSTER SLOTS`, by port.
    async fn master_ports(&self) -> Result<Vec<u16>, HarnessError> {
        let mut ports: Vec<u16> = self
            .slots_view()
            .await?
            .iter()
            .map(|r| r.master.port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        Ok(ports)
    }

    fn node(&self, port: u16) -> Result<&Node, HarnessError> {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .ok_or_else(|| HarnessError::Cluster(format!("no node on port {port} in this cluster")))
    }

    fn require_private(&self) -> Result<(), HarnessError> {
        match &self.external {
            Some(seeds) => Err(HarnessError::ExternalCluster {
                env: REDIS_CLUSTER_ENV,
                seeds: seeds.join(","),
            }),
            None => Ok(()),
        }
    }

    /// The process of the node at `port` (refused on an external cluster).
    fn server(&self, port: u16) -> Result<&RedisServer, HarnessError> {
        self.require_private()?;
        self.node(port)?
            .server
            .as_ref()
            .ok_or_else(|| HarnessError::Cluster(format!("node {port} has no process")))
    }

    fn servers(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter_map(|n| n.server.as_ref())
    }

    /// The nodes that are not killed (every node of an external cluster).
    fn live_nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes
            .iter()
            .filter(|n| n.server.as_ref().is_none_or(RedisServer::is_running))
    }

    /// Keeps every node's directory past the drop; returns them.
    fn keep_logs(&mut self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for server in self.nodes.iter_mut().filter_map(|n| n.server.as_mut()) {
            server.keep_dir();
            dirs.push(server.dir().to_owned());
        }
        dirs
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for server in self.servers() {
            server.stop();
        }
        if std::thread::panicking() && self.is_private() {
            let dirs = self.keep_logs();
            eprintln!("Redis Cluster dropped while panicking; node logs kept in {dirs:?}");
        }
    }
}

/// `e: its source: its source's source …`, for messages that must say why.
pub(crate) fn error_chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slot_follows_the_hash_tag_rule() {
        // CRC16/XMODEM("123456789") = 0x31C3.
        assert_eq!(key_slot("123456789"), 0x31C3 % SLOTS);
        assert_eq!(key_slot("123456789"), 12739);
        assert_eq!(
            key_slot("{user1000}.following"),
            key_slot("{user1000}.followers")
        );
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        // An empty first tag: the whole key.
        assert_eq!(key_slot("foo{}{bar}"), crc_slot(b"foo{}{bar}"));
        assert_ne!(key_slot("foo{}{bar}"), key_slot("bar"));
        // The tag ends at the first `}` after the first `{`.
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
        assert_eq!(key_slot("foo{{bar}}zap"), crc_slot(b"{bar"));
        // No closing brace: the whole key.
        assert_eq!(key_slot("foo{bar"), crc_slot(b"foo{bar"));
        assert_eq!(key_slot(""), 0);
    }

    fn crc_slot(bytes: &[u8]) -> u16 {
        crc16::State::<crc16::XMODEM>::calculate(bytes) % SLOTS
    }

    #[tokio::test]
    async fn process_control_on_an_external_cluster_is_refused() {
        let cluster = RedisCluster {
            nodes: Vec::new(),
            external: Some(vec!["cluster.invalid:7000".into()]),
        };
        assert!(!cluster.is_private());
        assert_eq!(cluster.seeds(), ["cluster.invalid:7000"]);
        assert_eq!(cluster.urls(), ["redis://cluster.invalid:7000"]);
        for err in [
            cluster.kill_master(0).await.expect_err("no processes"),
            cluster.restart_node(7000).await.expect_err("no processes"),
            cluster.flushall().await.expect_err("shared"),
        ] {
            assert!(
                matches!(&err, HarnessError::ExternalCluster { seeds, .. } if seeds == "cluster.invalid:7000"),
                "{err:?}"
            );
            assert!(err.to_string().contains(REDIS_CLUSTER_ENV), "{err}");
        }
    }
}
