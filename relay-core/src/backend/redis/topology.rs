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
//! Redis Cluster (a set of seed nodes, slot routing) is not supported yet;
//! [`RedisTopology`] is `#[non_exhaustive]` so it can gain that variant.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo, Value};

use super::error::map_err;
use super::reply::{array_of, str_of};
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
    /// A sentinel address is not `host:port`.
    #[error("sentinel address {addr:?} is not host:port")]
    SentinelAddr {
        /// The offending address.
        addr: String,
    },
    /// The master name is empty.
    #[error("the Sentinel master name is empty")]
    EmptyMasterName,
    /// The URL giving the master's credentials and database does not parse.
    #[error("master connection URL is invalid")]
    NodeUrl(#[source] redis::RedisError),
    /// The URL giving the master's credentials is a Unix socket: a
    /// Sentinel-named master is always reached over TCP.
    #[error("with Sentinel the master connection URL must be redis:// or rediss://")]
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
        let sentinels = sentinels
            .iter()
            .map(|s| parse_host_port(s.as_ref().trim()))
            .collect::<Result<Vec<_>, _>>()?;
        if sentinels.is_empty() {
            return Err(TopologyError::NoSentinels);
        }
        if master_name.trim().is_empty() {
            return Err(TopologyError::EmptyMasterName);
        }
        let info = node_url
            .into_connection_info()
            .map_err(TopologyError::NodeUrl)?;
        if matches!(info.addr(), ConnectionAddr::Unix(_)) {
            return Err(TopologyError::NodeUrlScheme);
        }
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

    /// A client for the node at `host:port`, with the node URL's scheme,
    /// credentials and database.
    fn node_client(&self, host: &str, port: u16) -> Result<Client, BackendError> {
        let info = self
            .node_url
            .as_str()
            .into_connection_info()
            .map_err(map_err)?;
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
        Client::open(info.set_addr(addr)).map_err(map_err)
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

fn parse_host_port(addr: &str) -> Result<(String, u16), TopologyError> {
    let bad = || TopologyError::SentinelAddr {
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
                    Err(TopologyError::SentinelAddr { .. })
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
    fn node_client_keeps_credentials_and_db() {
        let t = SentinelTopology::new(&["a:1"], "m", "redis://user:pw@ignored:1/3").expect("valid");
        let c = t.node_client("10.0.0.5", 6380).expect("client");
        let info = c.get_connection_info();
        assert_eq!(info.addr(), &ConnectionAddr::Tcp("10.0.0.5".into(), 6380));
        assert_eq!(info.redis_settings().password(), Some("pw"));
        assert_eq!(info.redis_settings().username(), Some("user"));
        assert_eq!(info.redis_settings().db(), 3);
    }
}
