//! Starting the cluster: its six processes on ports with room for the
//! cluster bus, `redis-cli --cluster create`, and the wait until it is
//! healthy; or connecting to the external cluster of
//! [`REDIS_CLUSTER_ENV`].

use std::fs::File;
use std::future::Future;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::topology::parse_nodes;
use super::{error_chain, Node, RedisCluster, REDIS_CLUSTER_ENV, WAIT_LIMIT};
use crate::ports::free_port_pair;
use crate::procs::KillOnDrop;
use crate::redis::{
    command_at, redis_cli_bin, reply_text, HarnessError, RedisServer, RedisServerOptions,
};
use crate::wait::wait_for;

/// The cluster bus listens on the node's port + this.
const BUS_PORT_OFFSET: u16 = 10000;
/// Three masters, three replicas.
const NODES: usize = 6;

impl RedisCluster {
    /// The external cluster of [`REDIS_CLUSTER_ENV`] if set, else a new
    /// private one.
    ///
    /// # Panics
    /// When the cluster cannot be started or reached (the error says why).
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("Redis Cluster: {}", error_chain(&e)))
    }

    /// [`RedisCluster::start`], returning the failure.
    pub fn try_start() -> Result<Self, HarnessError> {
        match std::env::var(REDIS_CLUSTER_ENV) {
            Ok(spec) if !spec.trim().is_empty() => Self::connect_external(&spec),
            _ => Self::try_start_private(),
        }
    }

    /// Always a new private cluster (for tests that kill nodes).
    ///
    /// # Panics
    /// When it does not start (the error says why).
    pub fn start_private() -> Self {
        Self::try_start_private()
            .unwrap_or_else(|e| panic!("Redis Cluster did not start: {}", error_chain(&e)))
    }

    /// [`RedisCluster::start_private`], returning the failure. The nodes'
    /// directories are kept, and named on stderr, when the cluster was
    /// started but did not become healthy.
    pub fn try_start_private() -> Result<Self, HarnessError> {
        let cli = redis_cli_bin().map_err(HarnessError::Process)?;
        let opts = RedisServerOptions::default().args([
            "--cluster-enabled",
            "yes",
            // Relative to --dir: each node's own temporary directory.
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            // A replica's first sync would wait 5 s for other replicas to
            // share the transfer; each master has one.
            "--repl-diskless-sync-delay",
            "0",
            // CLUSTER SLOTS lists a replica only once its replication offset
            // is not 0, and on an idle master only the replication PING
            // (every 10 s by default) moves it.
            "--repl-ping-replica-period",
            "1",
        ]);
        let mut cluster = RedisCluster {
            nodes: Vec::with_capacity(NODES),
            external: None,
        };
        for _ in 0..NODES {
            let server = RedisServer::try_start_on(&opts, || free_port_pair(BUS_PORT_OFFSET))?;
            cluster.nodes.push(Node {
                host: "127.0.0.1".into(),
                port: server.port(),
                id: String::new(),
                server: Some(server),
            });
        }
        let ids = cluster.create(&cli).and_then(|()| {
            block_on(async {
                let what =
                    "the new cluster healthy (every node ok, every master with a replica in sync)";
                wait_for(WAIT_LIMIT, what, || cluster.check(true)).await?;
                let mut ids = Vec::with_capacity(NODES);
                for node in &cluster.nodes {
                    let v = command_at(&node.addr(), &["CLUSTER", "MYID"]).await?;
                    ids.push(reply_text(&v).unwrap_or_default());
                }
                Ok::<_, HarnessError>(ids)
            })?
        });
        match ids {
            Ok(ids) => {
                for (node, id) in cluster.nodes.iter_mut().zip(ids) {
                    node.id = id;
                }
                Ok(cluster)
            }
            Err(e) => {
                let dirs = cluster.keep_logs();
                eprintln!("Redis Cluster did not become healthy; node directories kept: {dirs:?}");
                Err(e)
            }
        }
    }

    /// `redis-cli --cluster create … --cluster-replicas 1`, bounded by the
    /// hang guard (it waits for the nodes to meet).
    fn create(&self, cli: &Path) -> Result<(), HarnessError> {
        let first = self.nodes.first().and_then(|n| n.server.as_ref());
        let log_path = first.map_or_else(std::env::temp_dir, |s| s.dir().to_owned());
        let log_path = log_path.join("cluster-create.log");
        let process_err = |what: &str, e: std::io::Error| {
            HarnessError::Process(format!("{what} ({}): {e}", log_path.display()))
        };
        let log = File::create(&log_path).map_err(|e| process_err("cannot create", e))?;
        let stderr = log.try_clone().map_err(|e| process_err("cannot open", e))?;
        let mut child = KillOnDrop(
            Command::new(cli)
                .args(["--cluster", "create"])
                .args(self.nodes.iter().map(Node::addr))
                .args(["--cluster-replicas", "1", "--cluster-yes"])
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(stderr)
                .spawn()
                .map_err(|e| process_err("cannot run redis-cli --cluster create", e))?,
        );
        let deadline = Instant::now() + WAIT_LIMIT;
        let status = loop {
            match child.0.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => break None,
            }
        };
        if status.is_some_and(|s| s.success()) {
            return Ok(());
        }
        let out = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = out.lines().collect();
        Err(HarnessError::Process(format!(
            "redis-cli --cluster create {}:\n{}",
            status.map_or_else(
                || format!("did not finish within {WAIT_LIMIT:?}"),
                |s| { format!("exited with {s}") }
            ),
            lines[lines.len().saturating_sub(20)..].join("\n")
        )))
    }

    /// The cluster named by `spec` (`host:port,…`), once healthy.
    fn connect_external(spec: &str) -> Result<Self, HarnessError> {
        let seeds = parse_seeds(spec)?;
        let lines = block_on(async {
            let mut last = None;
            for seed in &seeds {
                match command_at(seed, &["CLUSTER", "NODES"]).await {
                    Ok(v) => return Ok(parse_nodes(&reply_text(&v).unwrap_or_default())),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or(HarnessError::EmptyCommand))
        })??;
        let nodes: Vec<Node> = lines
            .into_iter()
            .filter(|n| !n.flags.iter().any(|f| f == "fail"))
            .map(|n| Node {
                host: n.host,
                port: n.port,
                id: n.id,
                server: None,
            })
            .collect();
        if nodes.is_empty() {
            return Err(HarnessError::Cluster(format!(
                "{REDIS_CLUSTER_ENV}={spec}: CLUSTER NODES names no reachable node"
            )));
        }
        let cluster = RedisCluster {
            nodes,
            external: Some(seeds),
        };
        block_on(wait_for(WAIT_LIMIT, "the external cluster healthy", || {
            cluster.check(false)
        }))??;
        Ok(cluster)
    }
}

/// `host:port,host:port` → the addresses, checked.
fn parse_seeds(spec: &str) -> Result<Vec<String>, HarnessError> {
    let seeds: Vec<String> = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let bad = seeds.iter().find(|s| {
        !s.rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
    });
    match bad {
        Some(bad) => Err(HarnessError::Cluster(format!(
            "{REDIS_CLUSTER_ENV}={spec}: {bad:?} is not host:port"
        ))),
        None if seeds.is_empty() => Err(HarnessError::Cluster(format!(
            "{REDIS_CLUSTER_ENV}={spec:?} names no node"
        ))),
        None => Ok(seeds),
    }
}

/// Runs `f` to completion on a runtime of its own thread: the synchronous
/// constructors wait with the async checks, and may be called from inside
/// a test's runtime, where blocking on it would panic.
fn block_on<F>(f: F) -> Result<F::Output, HarnessError>
where
    F: Future + Send,
    F::Output: Send,
{
    let joined = std::thread::scope(|s| {
        s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok::<_, std::io::Error>(rt.block_on(f))
        })
        .join()
    });
    match joined {
        Ok(result) => result.map_err(|e| {
            HarnessError::Process(format!(
                "cannot build a runtime to wait for the cluster: {e}"
            ))
        }),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_must_be_host_and_port() {
        assert_eq!(
            parse_seeds(" 10.0.0.1:7000, localhost:7001 ,").expect("valid"),
            ["10.0.0.1:7000", "localhost:7001"]
        );
        assert!(parse_seeds("localhost").is_err());
        assert!(parse_seeds(":7000").is_err());
        assert!(parse_seeds("h:99999").is_err());
        assert!(parse_seeds(" , ").is_err());
    }
}
