//! Where the Redis server is: one standalone URL, or a master that Redis
//! Sentinel names.
//!
//! The system relay replaces ran its Streams Redis as a Sentinel-managed
//! master with replicas. With Sentinel the master's address is not
//! configuration but a fact that changes at failover, so the backend asks
//! the sentinels for it (`SENTINEL get-master-addr-by-name`, trying each in
//! turn), checks with `ROLE` that the node really is a master, and asks
//! again whenever the connection fails or the node answers `READONLY`
//! (a demoted master). See `link` for the swap itself.
//!
//! With Redis Cluster the backend is given seed nodes; redis-rs's cluster
//! client learns the slot map from them, routes each command by its key's
//! slot and follows `MOVED`/`ASK` redirections and failovers (see `link`
//! and `conn` for what relay adds: per-slot batches, dedicated blocking
//! readers, transient handling of `UNBLOCKED`/`TRYAGAIN`/`CLUSTERDOWN`).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value,
};

use super::error::map_err;
use super::reply::{array_of, str_of, u64_of};
use crate::backend::BackendResult;
use crate::error::BackendError;

/// The shape of the Redis deployment a [`RedisBackend`](super::RedisBackend)
/// talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisTopology {
    /// One server at a fixed URL (`redis://[user:pass@]host:port[/db]`,
    /// `rediss://…`, `unix://…`).
    Standalone(String),
    /// A master found through Redis Sentinel, followed across failovers.
    Sentinel(SentinelTopology),
    /// A Redis Cluster, reached through seed nodes.
    Cluster(ClusterTopology),
}

impl RedisTopology {
    /// Whether this is a Redis Cluster (keys of one script or transaction
    /// must then share a hash slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTopology::Cluster(_))
    }
}

/// A Redis Cluster: some of its nodes (the client discovers the rest), and
/// how to log in to them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterTopology {
    seeds: Vec<(String, u16)>,
    node_url: String,
}

/// A Sentinel-managed master: where the sentinels are, the master's name
/// in their configuration, and how to log in to whichever node is master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentinelTopology {
    sentinels: Vec<(String, u16)>,
    master_name: String,
    node_url: String,
}

/// A Sentinel configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// No sentinel address was given.
    #[error("no sentinel address given: expected host:port[,host:port...]")]
    NoSentinels,
    /// No cluster seed node was given.
    #[error("no cluster node address given: expected host:port[,host:port...]")]
    NoSeeds,
    /// A sentinel or cluster node address is not `host:port`.
    #[error("address {addr:?} is not host:port")]
    Addr {
        /// The offending address.
        addr: String,
    },
    /// The master name is empty.
    #[error("the Sentinel master name is empty")]
    EmptyMasterName,
    /// The profile's key names cannot run on a Redis Cluster (see
    /// [`crate::keys::KeySpace::cluster_safe`]).
    #[error(
        "the {profile} profile cannot run on Redis Cluster: its key names (the Python \
         producers' `{{domain}}:events:N` streams and the `published:...` markers their \
         script writes with each entry, `{{domain}}:state:<job>`) carry no hash tags, so \
         its scripts would span slots; run it on a standalone or Sentinel-managed Redis, \
         or use the native profile on the cluster"
    )]
    ProfileNotClusterSafe {
        /// The profile.
        profile: crate::keys::Profile,
    },
    /// The URL giving the master's credentials and database does not parse.
    #[error("master connection URL is invalid")]
    NodeUrl(#[source] redis::RedisError),
    /// The URL giving the nodes' credentials is a Unix socket: a
    /// Sentinel-named master or a cluster node is always reached over TCP.
    #[error("with Sentinel or Cluster the connection URL must be redis:// or rediss://")]
    NodeUrlScheme,
}

impl SentinelTopology {
    /// A Sentinel topology. `sentinels` are `host:port` addresses (at least
    /// one); `master_name` is the name the sentinels monitor; `node_url`
    /// gives the scheme (`redis`/`rediss`), credentials and database used on
    /// the master, its host and port being replaced by the sentinels'
    /// answer (`redis://:secret@ignored/2`, or just `redis://ignored`).
    pub fn new<S: AsRef<str>>(
        sentinels: &[S],
        master_name: &str,
        node_url: &str,
    ) -> Result<Self, TopologyError> {
        let sentinels = parse_addrs(sentinels)?;
        if sentinels.is_empty() {
            return Err(TopologyError::NoSentinels);
        }
        if master_name.trim().is_empty() {
            return Err(TopologyError::EmptyMasterName);
        }
        check_node_url(node_url)?;
        Ok(Self {
            sentinels,
            master_name: master_name.trim().to_owned(),
            node_url: node_url.to_owned(),
        })
    }

    /// The sentinels, as `(host, port)`.
    pub fn sentinels(&self) -> &[(String, u16)] {
        &self.sentinels
    }

    /// The monitored master's name.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// The URL giving the scheme, credentials and database used on the
    /// master (its host and port are not used).
    pub fn node_url(&self) -> &str {
        &self.node_url
    }

    fn node_client(&self, host: &str, port: u16) -> Result<Client, BackendError> {
        node_client(&self.node_url, host, port)
    }

    /// Asks each sentinel in turn for the master and returns a client for
    /// the first answer whose node confirms (`ROLE`) that it is a master,
    /// with that node's `host:port`.
    pub(super) async fn resolve(
        &self,
        timeout: Duration,
    ) -> Result<(Client, String), BackendError> {
        let mut failures = Vec::new();
        for (host, port) in &self.sentinels {
            match self.resolve_via(host, *port, timeout).await {
                Ok(found) => return Ok(found),
                Err(e) => failures.push(format!("{host}:{port}: {e}")),
            }
        }
        Err(BackendError::Connection(
            format!(
                "no sentinel named a reachable master {:?} ({})",
                self.master_name,
                failures.join("; ")
            )
            .into(),
        ))
    }

    async fn resolve_via(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<(Client, String), BackendError> {
        let sentinel = Client::open(ConnectionAddr::Tcp(host.to_owned(), port)).map_err(map_err)?;
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("get-master-addr-by-name").arg(&self.master_name);
        let v = one_shot(&sentinel, &cmd, timeout).await?;
        let (master_host, master_port) = match array_of(&v) {
            Some([h, p]) => match (str_of(h), str_of(p).and_then(|p| p.parse::<u16>().ok())) {
                (Some(h), Some(p)) => (h.to_owned(), p),
                _ => return Err(unexpected("SENTINEL get-master-addr-by-name", &v)),
            },
            _ if v == Value::Nil => {
                return Err(BackendError::Connection(
                    format!("sentinel does not monitor {:?}", self.master_name).into(),
                ))
            }
            _ => return Err(unexpected("SENTINEL get-master-addr-by-name", &v)),
        };
        let client = self.node_client(&master_host, master_port)?;
        let role = one_shot(&client, &redis::cmd("ROLE"), timeout).await?;
        match array_of(&role).and_then(|r| r.first()).and_then(str_of) {
            Some("master") => Ok((client, format!("{master_host}:{master_port}"))),
            Some(other) => Err(BackendError::Unavailable(
                format!("{master_host}:{master_port} is a {other}, not the master yet").into(),
            )),
            None => Err(unexpected("ROLE", &role)),
        }
    }
}

impl ClusterTopology {
    /// A cluster topology. `seeds` are `host:port` addresses of some of
    /// its nodes (at least one; more survive a seed being down at start);
    /// `node_url` gives the scheme, credentials (and, for a cluster, no
    /// database: clusters have only database 0) used on every node, its
    /// host and port being ignored (`redis://:secret@ignored`).
    pub fn new<S: AsRef<str>>(seeds: &[S], node_url: &str) -> Result<Self, TopologyError> {
        let seeds = parse_addrs(seeds)?;
        if seeds.is_empty() {
            return Err(TopologyError::NoSeeds);
        }
        check_node_url(node_url)?;
        Ok(Self {
            seeds,
            node_url: node_url.to_owned(),
        })
    }

    /// The seed nodes, as `(host, port)`.
    pub fn seeds(&self) -> &[(String, u16)] {
        &self.seeds
    }

    /// The URL giving the scheme and credentials used on every node (its
    /// host and port are not used).
    pub fn node_url(&self) -> &str {
        &self.node_url
    }

    /// A cluster client over the seeds. `response_timeout` `None`: no
    /// client-side limit (for blocking reads, bounded by their caller).
    pub(super) fn client(
        &self,
        connection_timeout: Duration,
        response_timeout: Option<Duration>,
    ) -> Result<ClusterClient, BackendError> {
        let seeds = self
            .seeds
            .iter()
            .map(|(h, p)| node_info(&self.node_url, h, *p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut builder = ClusterClientBuilder::new(seeds).connection_timeout(connection_timeout);
        if let Some(t) = response_timeout {
            builder = builder.response_timeout(t);
        }
        builder.build().map_err(map_err)
    }

    /// A client for one node of the cluster (dedicated subscribers).
    pub(super) fn node_client(&self, host: &str, port: u16) -> Result<Client, BackendError> {
        node_client(&self.node_url, host, port)
    }
}

/// `node_url` must parse and name a TCP endpoint.
fn check_node_url(node_url: &str) -> Result<(), TopologyError> {
    let info = node_url
        .into_connection_info()
        .map_err(TopologyError::NodeUrl)?;
    if matches!(info.addr(), ConnectionAddr::Unix(_)) {
        return Err(TopologyError::NodeUrlScheme);
    }
    Ok(())
}

/// `node_url`'s scheme, credentials and database at `host:port`.
fn node_info(node_url: &str, host: &str, port: u16) -> Result<ConnectionInfo, BackendError> {
    let info = node_url.into_connection_info().map_err(map_err)?;
    let mut addr = info.addr().clone();
    match &mut addr {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => {
            *h = host.to_owned();
            *p = port;
        }
        _ => {
            return Err(BackendError::Connection(
                TopologyError::NodeUrlScheme.into(),
            ))
        }
    }
    Ok(info.set_addr(addr))
}

/// A client for the node at `host:port`, with `node_url`'s scheme,
/// credentials and database.
fn node_client(node_url: &str, host: &str, port: u16) -> Result<Client, BackendError> {
    Client::open(node_info(node_url, host, port)?).map_err(map_err)
}

/// The masters of a `CLUSTER SLOTS` reply, and its slot ranges with the
/// index of their master.
#[allow(clippy::type_complexity)]
pub(super) fn slot_masters(
    v: &Value,
) -> BackendResult<(Vec<(String, u16)>, Vec<(u16, u16, usize)>)> {
    let bad = || BackendError::Protocol(format!("CLUSTER SLOTS answered {v:?}").into());
    let mut masters: Vec<(String, u16)> = Vec::new();
    let mut ranges = Vec::new();
    for range in array_of(v).ok_or_else(bad)? {
        let r = array_of(range).ok_or_else(bad)?;
        let (first, last, master) = match r {
            [first, last, master, ..] => (first, last, master),
            _ => return Err(bad()),
        };
        let to_slot = |x: &Value| u64_of(x).and_then(|n| u16::try_from(n).ok());
        let (first, last) = (
            to_slot(first).ok_or_else(bad)?,
            to_slot(last).ok_or_else(bad)?,
        );
        let node = array_of(master).ok_or_else(bad)?;
        let (host, port) = match node {
            [host, port, ..] => (
                str_of(host).ok_or_else(bad)?.to_owned(),
                u64_of(port)
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(bad)?,
            ),
            _ => return Err(bad()),
        };
        let index = match masters.iter().position(|m| m.0 == host && m.1 == port) {
            Some(i) => i,
            None => {
                masters.push((host, port));
                masters.len() - 1
            }
        };
        ranges.push((first, last, index));
    }
    if masters.is_empty() {
        return Err(BackendError::Unavailable(
            "the cluster serves no slots".into(),
        ));
    }
    Ok((masters, ranges))
}

/// Runs one command on a fresh connection, bounded by `timeout`.
async fn one_shot(
    client: &Client,
    cmd: &redis::Cmd,
    timeout: Duration,
) -> Result<Value, BackendError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut conn: MultiplexedConnection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(map_err)?;
    match cmd.query_async::<Value>(&mut conn).await.map_err(map_err)? {
        Value::ServerError(e) => Err(map_err(e.into())),
        v => Ok(v),
    }
}

fn unexpected(what: &str, v: &Value) -> BackendError {
    BackendError::Protocol(format!("{what} answered {v:?}").into())
}

/// `host:port` addresses (surrounding blanks ignored).
fn parse_addrs<S: AsRef<str>>(addrs: &[S]) -> Result<Vec<(String, u16)>, TopologyError> {
    addrs
        .iter()
        .map(|s| parse_host_port(s.as_ref().trim()))
        .collect()
}

fn parse_host_port(addr: &str) -> Result<(String, u16), TopologyError> {
    let bad = || TopologyError::Addr {
        addr: addr.to_owned(),
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse::<u16>().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sentinel_addresses() {
        let t = SentinelTopology::new(&["a:26379", " b:1 ", "[::1]:5"], "mymaster", "redis://x")
            .expect("valid");
        assert_eq!(
            t.sentinels(),
            &[
                ("a".to_owned(), 26379),
                ("b".to_owned(), 1),
                ("::1".to_owned(), 5)
            ]
        );
        assert_eq!(t.master_name(), "mymaster");
    }

    #[test]
    fn rejects_bad_configuration() {
        let none: [&str; 0] = [];
        assert!(matches!(
            SentinelTopology::new(&none, "m", "redis://x"),
            Err(TopologyError::NoSentinels)
        ));
        for bad in ["a", "a:", ":1", "a:0", "a:99999"] {
            assert!(
                matches!(
                    SentinelTopology::new(&[bad], "m", "redis://x"),
                    Err(TopologyError::Addr { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            SentinelTopology::new(&["a:1"], " ", "redis://x"),
            Err(TopologyError::EmptyMasterName)
        ));
        assert!(matches!(
            SentinelTopology::new(&["a:1"], "m", "unix:///tmp/r.sock"),
            Err(TopologyError::NodeUrlScheme)
        ));
        assert!(matches!(
            SentinelTopology::new(&["a:1"], "m", "nonsense"),
            Err(TopologyError::NodeUrl(_))
        ));
    }

    #[test]
    fn parses_cluster_seeds() {
        let t = ClusterTopology::new(&["a:7000", " b:7001"], "redis://:pw@x").expect("valid");
        assert_eq!(t.seeds(), &[("a".to_owned(), 7000), ("b".to_owned(), 7001)]);
        let none: [&str; 0] = [];
        assert!(matches!(
            ClusterTopology::new(&none, "redis://x"),
            Err(TopologyError::NoSeeds)
        ));
        assert!(matches!(
            ClusterTopology::new(&["a"], "redis://x"),
            Err(TopologyError::Addr { .. })
        ));
        assert!(matches!(
            ClusterTopology::new(&["a:1"], "unix:///tmp/r.sock"),
            Err(TopologyError::NodeUrlScheme)
        ));
        let c = t.node_client("10.0.0.5", 7002).expect("client");
        assert_eq!(
            c.get_connection_info().redis_settings().password(),
            Some("pw")
        );
    }

    #[test]
    fn node_client_keeps_credentials_and_db() {
        let t = SentinelTopology::new(&["a:1"], "m", "redis://user:pw@ignored:1/3").expect("valid");
        let c = t.node_client("10.0.0.5", 6380).expect("client");
        let info = c.get_connection_info();
        assert_eq!(info.addr(), &ConnectionAddr::Tcp("10.0.0.5".into(), 6380));
        assert_eq!(info.redis_settings().password(), Some("pw"));
        assert_eq!(info.redis_settings().username(), Some("user"));
        assert_eq!(info.redis_settings().db(), 3);
    }

    #[test]
    fn cluster_slots_reply_gives_masters_and_ranges() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |a: i64, b: i64, m: Value, r: Value| {
            Value::Array(vec![Value::Int(a), Value::Int(b), m, r])
        };
        let v = Value::Array(vec![
            range(0, 5460, node("127.0.0.1", 7000), node("127.0.0.1", 7003)),
            range(
                5461,
                10922,
                node("127.0.0.1", 7001),
                node("127.0.0.1", 7004),
            ),
            range(
                10923,
                16383,
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7005),
            ),
        ]);
        let (masters, ranges) = slot_masters(&v).expect("parses");
        assert_eq!(
            masters,
            [
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001)
            ]
        );
        assert_eq!(ranges, [(0, 5460, 0), (5461, 10922, 1), (10923, 16383, 0)]);
        assert!(slot_masters(&Value::Array(vec![])).is_err());
        assert!(slot_masters(&Value::Int(3)).is_err());
    }
}
