//! A [`RedisTopology`] as fred client configurations, one per connection
//! role: the one description both Redis backends take.
//!
//! - Standalone: the URL's host, port, credentials and database.
//! - Sentinel: fred's own Sentinel support, given the sentinels and the
//!   master name; the node URL gives the master's credentials and
//!   database (the sentinels are asked without credentials, as
//!   `RedisBackend` does). fred asks the sentinels on every connection and
//!   checks the node's `ROLE`.
//! - Cluster: fred's cluster client over the seeds, with the node URL's
//!   credentials; one centralized client per master for subscribers.

use std::time::Duration;

use fred::clients::Client;
use fred::types::config::{
    ClusterDiscoveryPolicy, Config, ReconnectError, ReconnectPolicy, Server, ServerConfig,
};
use fred::types::Builder;

use super::error::FredConfigError;
use crate::backend::redis::{RedisConfig, RedisTopology};

/// Capacity of a subscriber client's message broadcast (fred's hand-off
/// to the backend's forwarding task). A forwarder that falls this far
/// behind has lost messages, and ends the subscriber.
pub(super) const SUBSCRIBER_BROADCAST: usize = 4096;

/// What a client is for: its timeouts and reconnection differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// Every non-blocking command: reconnects without limit, each command
    /// bounded by the response timeout.
    Shared,
    /// One blocking reader, or one subscriber connection: no reconnection
    /// (a failed one is closed and replaced), no client-side timeout (the
    /// caller bounds each call).
    Dedicated,
}

/// The client configuration (server and credentials) of `topology`.
pub(super) fn config_of(topology: &RedisTopology) -> Result<Config, FredConfigError> {
    match topology {
        RedisTopology::Standalone(url) => node_url_config(url),
        RedisTopology::Sentinel(s) => {
            let mut config = node_url_config(s.node_url())?;
            config.server = ServerConfig::Sentinel {
                hosts: servers(s.sentinels()),
                service_name: s.master_name().to_owned(),
                username: None,
                password: None,
            };
            Ok(config)
        }
        RedisTopology::Cluster(c) => {
            let mut config = node_url_config(c.node_url())?;
            config.server = ServerConfig::Clustered {
                hosts: servers(c.seeds()),
                policy: ClusterDiscoveryPolicy::default(),
            };
            // A cluster has database 0 only.
            config.database = None;
            Ok(config)
        }
    }
}

/// `topology`'s credentials at one node (a cluster master, for its
/// subscriber connection).
pub(super) fn node_config(
    topology: &RedisTopology,
    host: &str,
    port: u16,
) -> Result<Config, FredConfigError> {
    let mut config = config_of(topology)?;
    config.server = ServerConfig::Centralized {
        server: Server::new(host.to_owned(), port),
    };
    Ok(config)
}

/// The scheme, credentials and database of `url`, for a centralized
/// client (fred has no TLS here: `rediss://` is refused rather than
/// silently sent in clear).
fn node_url_config(url: &str) -> Result<Config, FredConfigError> {
    if url
        .get(..9)
        .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"))
    {
        return Err(FredConfigError::Tls);
    }
    Config::from_url_centralized(url).map_err(FredConfigError::Url)
}

fn servers(addrs: &[(String, u16)]) -> Vec<Server> {
    addrs
        .iter()
        .map(|(h, p)| Server::new(h.to_owned(), *p))
        .collect()
}

/// A client of `config` for `role` (not connected yet).
pub(super) fn client(
    config: Config,
    settings: &RedisConfig,
    role: Role,
    subscriber: bool,
) -> Result<Client, FredConfigError> {
    let clustered = config.server.is_clustered();
    let sentinel = config.server.is_sentinel();
    let mut builder = Builder::from_config(config);
    builder.with_connection_config(|c| {
        c.connection_timeout = settings.connection_timeout;
        c.internal_command_timeout = settings.connection_timeout;
        // On one server a written command is never written again by fred:
        // the backend decides what may be resent (see `conn::Resend`). On a
        // cluster fred writes a command again after its node's connection
        // dropped.
        c.max_command_attempts = if clustered { 3 } else { 1 };
        // fred 10 follows a redirection of a plain command or pipeline
        // itself, and an `ASK` wrongly: it sends `ASKING` to the importing
        // node, then the command to the slot's old owner again (which
        // answers `ASK` again), until the command's write attempts are used
        // up, and then ends its connection task for good: the calls under
        // way fail `Canceled`, later ones time out (nothing reads its
        // command queue any more). It also reads the `ASKING` reply straight
        // off a connection that may have other replies in flight. With no
        // redirections allowed it does neither: it fails the command
        // ("Too many redirections", after refreshing its slot map on a
        // `MOVED`), and the backend sends it again in a `MULTI`/`EXEC`,
        // whose redirections fred follows correctly (see `conn`).
        c.max_redirections = 0;
        c.tcp.nodelay = Some(true);
        // A demoted master (Sentinel failover; a cluster replica promoted
        // past fred's slot map) makes fred reconnect, which asks the
        // sentinels (or the cluster) again.
        c.reconnect_errors = if sentinel || clustered {
            vec![ReconnectError::ReadOnly, ReconnectError::MasterDown]
        } else {
            Vec::new()
        };
    });
    builder.with_performance_config(|p| {
        p.default_command_timeout = match role {
            Role::Shared => settings.response_timeout,
            Role::Dedicated => Duration::ZERO,
        };
        if subscriber {
            p.broadcast_channel_capacity = SUBSCRIBER_BROADCAST;
        }
    });
    if role == Role::Shared {
        // Unlimited attempts, 50 ms doubling up to 2 s (redis-rs's
        // connection manager's ceiling in RedisBackend).
        builder.set_policy(ReconnectPolicy::new_exponential(0, 50, 2000, 2));
    }
    builder.build().map_err(FredConfigError::Client)
}

/// The shared client of `topology`.
pub(super) fn shared_client(
    topology: &RedisTopology,
    settings: &RedisConfig,
) -> Result<Client, FredConfigError> {
    client(config_of(topology)?, settings, Role::Shared, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::redis::{ClusterTopology, SentinelTopology};

    #[test]
    fn one_topology_describes_the_fred_clients() {
        let c = config_of(&RedisTopology::Standalone("redis://u:pw@h:7/3".into())).unwrap();
        assert_eq!(c.server, ServerConfig::new_centralized("h", 7));
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("u"), Some("pw"))
        );
        assert_eq!(c.database, Some(3));

        let s = SentinelTopology::new(&["a:26379", "b:26380"], "m", "redis://:pw@x/2").unwrap();
        let c = config_of(&RedisTopology::Sentinel(s)).unwrap();
        match &c.server {
            ServerConfig::Sentinel {
                hosts,
                service_name,
                username,
                password,
            } => {
                assert_eq!(hosts, &[Server::new("a", 26379), Server::new("b", 26380)]);
                assert_eq!(service_name, "m");
                assert_eq!((username, password), (&None, &None));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!((c.password.as_deref(), c.database), (Some("pw"), Some(2)));

        let t = ClusterTopology::new(&["a:7000"], "redis://:pw@x").unwrap();
        let topology = RedisTopology::Cluster(t);
        let c = config_of(&topology).unwrap();
        assert!(c.server.is_clustered());
        assert_eq!(c.password.as_deref(), Some("pw"));
        let n = node_config(&topology, "10.0.0.5", 7002).unwrap();
        assert_eq!(n.server, ServerConfig::new_centralized("10.0.0.5", 7002));
        assert_eq!(n.password.as_deref(), Some("pw"));

        assert!(matches!(
            config_of(&RedisTopology::Standalone("rediss://h:1".into())),
            Err(FredConfigError::Tls)
        ));
        assert!(matches!(
            config_of(&RedisTopology::Standalone("nonsense".into())),
            Err(FredConfigError::Url(_))
        ));
    }
}
