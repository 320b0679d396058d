//! Command-line plumbing shared by relay's binaries (feature `cli`):
//! connection flags, logging (and span export) setup, shutdown signals and
//! Prometheus text.

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};

#[cfg(feature = "fred")]
use crate::backend::fred::FredBackend;
use crate::backend::memory::MemoryBackend;
use crate::backend::redis::{
    ClusterTopology, RedisBackend, RedisConfig, RedisTopology, ReplicaAck, SentinelTopology,
    TopologyError,
};
use crate::backend::{Backend, KvStore};
use crate::error::BackendError;
use crate::event::Domain;
use crate::keys::{KeySpace, Profile};
pub use crate::telemetry::Telemetry;
use crate::telemetry::TelemetryConfig;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global tracing subscriber (`RUST_LOG` filters, default
/// `info`) for the binary `service` (the default `service.name` of its
/// spans). Keep the returned guard until `main` ends: see
/// [`init_tracing_with_default`].
pub fn init_tracing(format: LogFormat, service: &str) -> Telemetry {
    init_tracing_with_default(format, "info", service)
}

/// Installs the global tracing subscriber with `default` as the filter when
/// `RUST_LOG` is unset. Logs go to stderr; text logs are coloured only when
/// stderr is a terminal and `NO_COLOR` is unset, so a log file or a
/// collector never receives ANSI escape codes.
///
/// When `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set,
/// spans are also exported over OTLP (see [`crate::telemetry`]); the
/// returned [`Telemetry`] sends the last ones when dropped. Without an
/// endpoint no OpenTelemetry layer is installed at all. `RUST_LOG` filters
/// the logs only: exported spans are relay's own at `info` and above.
pub fn init_tracing_with_default(format: LogFormat, default: &str, service: &str) -> Telemetry {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour_wanted(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ));
    let fmt = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
    };
    let (provider, config_error) = match TelemetryConfig::from_env(service) {
        Ok(None) => (None, None),
        Ok(Some(config)) => match config.provider() {
            Ok(p) => (Some((p, config)), None),
            Err(e) => (None, Some(e)),
        },
        Err(e) => (None, Some(e)),
    };
    let otel = provider.as_ref().map(|(p, _)| {
        let records = tracing_subscriber::filter::filter_fn(crate::telemetry::layer_records);
        crate::telemetry::layer(p).with_filter(records)
    });
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if let Some(e) = config_error {
        tracing::error!(error = %e, "span export is off");
    }
    match provider {
        Some((p, config)) if installed => {
            tracing::info!(
                endpoint = %config.endpoint,
                protocol = ?config.protocol,
                service = %config.service_name,
                "exporting spans over OTLP"
            );
            Telemetry::exporting(p)
        }
        _ => Telemetry::default(),
    }
}

/// Colour only on a terminal, and never when `NO_COLOR` is set to a
/// non-empty value (<https://no-color.org>).
fn colour_wanted(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The async runtime of a server binary (`--worker-threads`).
#[derive(Clone, Copy, Debug, Default, Args)]
pub struct RuntimeArgs {
    /// Threads running the server's tasks (default: one per available
    /// core). Each handoff between two threads costs a wake-up; on a small
    /// node or one shared with Redis, 1 can cost markedly less CPU per
    /// event at moderate rates, while more threads raise the ceiling at
    /// saturation (BENCHMARKS.md, "Runtime threads").
    #[arg(long, env = "RELAY_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
}

impl RuntimeArgs {
    /// A multi-threaded tokio runtime with `--worker-threads` workers (the
    /// same scheduler whatever the count, so only the thread count
    /// changes).
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.enable_all();
        if let Some(n) = self.worker_threads {
            b.worker_threads(usize::from(n));
        }
        b.build()
    }
}

/// The flags of `cmd` (and of its subcommands, as `sub --flag`) that no
/// environment variable can set, or whose variable does not start with
/// `prefix`. A binary's test asserts this is empty, which keeps the
/// "every flag also reads `RELAY_<FLAG>`" promise true as flags are added.
pub fn flags_without_env(cmd: &clap::Command, prefix: &str) -> Vec<String> {
    let mut missing = Vec::new();
    collect_flags_without_env(cmd, prefix, "", &mut missing);
    missing
}

fn collect_flags_without_env(cmd: &clap::Command, prefix: &str, path: &str, out: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let ok = arg
            .get_env()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.starts_with(prefix));
        if !ok {
            out.push(format!("{path}--{long}"));
        }
    }
    for sub in cmd.get_subcommands() {
        let path = format!("{path}{} ", sub.get_name());
        collect_flags_without_env(sub, prefix, &path, out);
    }
}

/// The Redis client library a Redis backend is opened with. Both speak to
/// the same topologies with the same scripts and semantics (the backend
/// conformance suite runs both); `redis-rs` stays the default, `fred` is
/// the alternative being measured and hardened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, ValueEnum)]
pub enum RedisClient {
    /// The redis-rs crate (`RedisBackend`): the default.
    #[default]
    RedisRs,
    /// The fred crate (`FredBackend`): needs a build with `--features fred`.
    Fred,
}

/// A Redis client this build does not contain: the binary was compiled
/// without its cargo feature, so it refuses at start rather than silently
/// falling back to the default client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this binary was built without the {client} feature: cargo build --features {client}")]
pub struct ClientNotBuilt {
    /// The client asked for.
    pub client: RedisClient,
}

impl RedisClient {
    /// The name the flag and `RELAY_REDIS_CLIENT` take (`redis-rs`, `fred`).
    pub fn as_str(self) -> &'static str {
        match self {
            RedisClient::RedisRs => "redis-rs",
            RedisClient::Fred => "fred",
        }
    }

    /// `self`, when this build contains that client.
    pub fn available(self) -> Result<Self, ClientNotBuilt> {
        match self {
            RedisClient::RedisRs => Ok(self),
            RedisClient::Fred if cfg!(feature = "fred") => Ok(self),
            RedisClient::Fred => Err(ClientNotBuilt { client: self }),
        }
    }

    /// [`Self::available`] as a non-transient [`BackendError`] (a
    /// configuration that no retry can fix).
    fn checked(self) -> Result<Self, BackendError> {
        self.available()
            .map_err(|e| BackendError::Server(Box::new(e)))
    }

    /// Opens a backend by URL with this client: `redis://…`, `rediss://…`,
    /// `unix://…`, or `memory://` (the in-process store, whatever the
    /// client).
    pub async fn connect(self, url: &str) -> Result<Arc<dyn Backend>, BackendError> {
        Ok(self.connect_with_kv(url).await?.0)
    }

    /// [`Self::connect`] with the backend's [`KvStore`] role too: one
    /// connection, two handles.
    pub async fn connect_with_kv(
        self,
        url: &str,
    ) -> Result<(Arc<dyn Backend>, Arc<dyn KvStore>), BackendError> {
        if url.starts_with("memory:") {
            let memory = Arc::new(MemoryBackend::new());
            return Ok((memory.clone(), memory));
        }
        let topology = RedisTopology::Standalone(url.to_owned());
        Ok(self.open(topology, RedisConfig::default()).await?.handles())
    }

    /// Opens `topology` (a standalone server, a Sentinel-named master or a
    /// cluster) with `config` and this client.
    pub async fn connect_topology(
        self,
        topology: RedisTopology,
        config: RedisConfig,
    ) -> Result<Arc<dyn Backend>, BackendError> {
        Ok(self.open(topology, config).await?.handles().0)
    }

    /// [`Self::connect_topology`] with the backend's [`KvStore`] role too:
    /// one connection, two handles (what an application keeping records
    /// beside the relay, like the stage pipeline, needs).
    pub async fn connect_topology_with_kv(
        self,
        topology: RedisTopology,
        config: RedisConfig,
    ) -> Result<(Arc<dyn Backend>, Arc<dyn KvStore>), BackendError> {
        Ok(self.open(topology, config).await?.handles())
    }

    async fn open(
        self,
        topology: RedisTopology,
        config: RedisConfig,
    ) -> Result<Opened, BackendError> {
        match self {
            RedisClient::RedisRs => Ok(Opened::RedisRs(Arc::new(
                RedisBackend::connect_topology(topology, config).await?,
            ))),
            #[cfg(feature = "fred")]
            RedisClient::Fred => Ok(Opened::Fred(Arc::new(
                FredBackend::connect_topology(topology, config).await?,
            ))),
            #[cfg(not(feature = "fred"))]
            RedisClient::Fred => Err(BackendError::Server(Box::new(ClientNotBuilt {
                client: self,
            }))),
        }
    }
}

impl std::fmt::Display for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parser of a `--redis-client` flag: the client's name, refused at
/// parse time (with [`ClientNotBuilt`]) when this build lacks it, so the
/// binary stops before binding or connecting; `--help` still lists every
/// client. For tools with flags of their own (relay-load).
pub fn redis_client_parser() -> impl clap::builder::TypedValueParser<Value = RedisClient> {
    use clap::builder::TypedValueParser as _;
    clap::builder::EnumValueParser::<RedisClient>::new().try_map(RedisClient::available)
}

/// A Redis backend just opened, by client: the concrete type for what only
/// that client offers (the cluster placement log), then the trait handles.
enum Opened {
    RedisRs(Arc<RedisBackend>),
    #[cfg(feature = "fred")]
    Fred(Arc<FredBackend>),
}

impl Opened {
    fn is_cluster(&self) -> bool {
        match self {
            Opened::RedisRs(b) => b.topology().is_cluster(),
            #[cfg(feature = "fred")]
            Opened::Fred(b) => b.topology().is_cluster(),
        }
    }

    async fn node_of(&self, key: &str) -> Result<String, BackendError> {
        match self {
            Opened::RedisRs(b) => b.node_of(key).await,
            #[cfg(feature = "fred")]
            Opened::Fred(b) => b.node_of(key),
        }
    }

    fn handles(self) -> (Arc<dyn Backend>, Arc<dyn KvStore>) {
        match self {
            Opened::RedisRs(b) => (b.clone(), b),
            #[cfg(feature = "fred")]
            Opened::Fred(b) => (b.clone(), b),
        }
    }
}

/// Where the relay's data lives and which wire format it speaks.
#[derive(Clone, Debug, Args)]
pub struct ConnectionArgs {
    /// Redis holding shard streams, state and history (`memory://` for an
    /// in-process store, useful only inside one process). With
    /// --redis-sentinel or --redis-cluster its host and port are ignored
    /// (the sentinels name the master; the seeds lead to the nodes); its
    /// scheme, user, password (and, with Sentinel, database) are used on
    /// every node.
    #[arg(
        long,
        env = "RELAY_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Redis Sentinel addresses, `host:port[,host:port...]`: connect to the
    /// master they name (--redis-master-name) and follow it across
    /// failovers. Unset: --redis-url is one standalone server.
    #[arg(
        long,
        env = "RELAY_REDIS_SENTINEL",
        value_delimiter = ',',
        requires = "redis_master_name"
    )]
    pub redis_sentinel: Vec<String>,
    /// Redis Cluster seed nodes, `host:port[,host:port...]`: relay learns
    /// the other nodes from them, routes each key to its slot's master and
    /// follows slot moves and failovers. --redis-url then gives only the
    /// scheme, user and password. Native profile only (the eco2 key names
    /// have no hash tags).
    #[arg(
        long,
        env = "RELAY_REDIS_CLUSTER",
        value_delimiter = ',',
        conflicts_with = "redis_sentinel"
    )]
    pub redis_cluster: Vec<String>,
    /// Name of the master the sentinels monitor (required with
    /// --redis-sentinel).
    #[arg(long, env = "RELAY_REDIS_MASTER_NAME", requires = "redis_sentinel")]
    pub redis_master_name: Option<String>,
    /// Replicas that must acknowledge each append (`WAIT`) before it counts
    /// as published; 0 = the master's acknowledgement alone (an append not
    /// yet replicated is lost if the master dies). Redis backends only.
    #[arg(long, env = "RELAY_MIN_REPLICAS_ACK", default_value_t = 0)]
    pub min_replicas_ack: u32,
    /// Redis client library the backend is built on (either one serves
    /// every topology with the same behaviour).
    #[arg(
        long,
        env = "RELAY_REDIS_CLIENT",
        value_name = "CLIENT",
        default_value = "redis-rs",
        value_parser = redis_client_parser()
    )]
    pub redis_client: RedisClient,
    /// Redis for Pub/Sub, when it is a different server (defaults to --redis-url).
    #[arg(long, env = "RELAY_PUBSUB_URL")]
    pub pubsub_url: Option<String>,
    /// Wire format: `native` or `eco2` (the Python Eco² system's).
    #[arg(long, env = "RELAY_PROFILE", default_value = "native")]
    pub profile: Profile,
    /// Event domain(s) (`scan`, `chat`, ...). Repeat or comma-separate.
    #[arg(
        long = "domain",
        env = "RELAY_DOMAIN",
        default_value = "scan",
        value_delimiter = ','
    )]
    pub domains: Vec<Domain>,
    /// Number of shard streams per domain (must match the producers).
    #[arg(long, env = "RELAY_SHARDS", default_value_t = 4)]
    pub shards: u32,
    /// Log, on connecting to a cluster, which node serves each shard
    /// stream (set by the router, whose work follows that placement).
    #[arg(skip)]
    pub log_placement: bool,
}

impl ConnectionArgs {
    /// The key space of each domain.
    pub fn key_spaces(&self) -> Vec<KeySpace> {
        self.domains
            .iter()
            .map(|d| KeySpace::new(self.profile, d.clone(), self.shards))
            .collect()
    }

    /// The first domain's key space (for single-domain tools).
    pub fn key_space(&self) -> KeySpace {
        let domain = self
            .domains
            .first()
            .cloned()
            .unwrap_or_else(|| Domain::new("scan").expect("literal is valid"));
        KeySpace::new(self.profile, domain, self.shards)
    }

    /// The data server's topology: Sentinel when --redis-sentinel is set,
    /// Cluster when --redis-cluster is, else `None` (--redis-url is one
    /// server, or `memory://`). A profile that cannot run on a cluster is
    /// refused here, at start.
    pub fn topology(&self) -> Result<Option<RedisTopology>, TopologyError> {
        if !self.redis_cluster.is_empty() {
            if let Some(keys) = self.key_spaces().into_iter().find(|k| !k.cluster_safe()) {
                return Err(TopologyError::ProfileNotClusterSafe {
                    profile: keys.profile(),
                });
            }
            let cluster = ClusterTopology::new(&self.redis_cluster, &self.redis_url)?;
            return Ok(Some(RedisTopology::Cluster(cluster)));
        }
        if self.redis_sentinel.is_empty() {
            return Ok(None);
        }
        let name = self.redis_master_name.as_deref().unwrap_or_default();
        let sentinel = SentinelTopology::new(&self.redis_sentinel, name, &self.redis_url)?;
        Ok(Some(RedisTopology::Sentinel(sentinel)))
    }

    /// Where the data server is, for logs: the URL, the sentinels and
    /// master name, or the cluster's seeds; with a client other than the
    /// default, its name follows.
    pub fn describe(&self) -> String {
        let target = if !self.redis_cluster.is_empty() {
            format!("Redis Cluster via {}", self.redis_cluster.join(","))
        } else if self.redis_sentinel.is_empty() {
            self.redis_url.clone()
        } else {
            format!(
                "Sentinel master {:?} via {}",
                self.redis_master_name.as_deref().unwrap_or_default(),
                self.redis_sentinel.join(",")
            )
        };
        match self.redis_client {
            RedisClient::RedisRs => target,
            client => format!("{target} ({client})"),
        }
    }

    /// Connects to the data server.
    pub async fn connect(&self) -> Result<Arc<dyn Backend>, BackendError> {
        Ok(self.connect_with_kv().await?.0)
    }

    /// Connects to the data server, with its [`KvStore`] role too (see
    /// [`connect_with_kv`]).
    pub async fn connect_with_kv(
        &self,
    ) -> Result<(Arc<dyn Backend>, Arc<dyn KvStore>), BackendError> {
        self.connect_to(self.checked_topology()?).await
    }

    /// [`Self::topology`], after checking that this build has the Redis
    /// client asked for; a configuration error is a non-transient
    /// [`BackendError::Server`], so retrying loops give up at once.
    fn checked_topology(&self) -> Result<Option<RedisTopology>, BackendError> {
        self.redis_client.checked()?;
        self.topology()
            .map_err(|e| BackendError::Server(Box::new(e)))
    }

    async fn connect_to(
        &self,
        topology: Option<RedisTopology>,
    ) -> Result<(Arc<dyn Backend>, Arc<dyn KvStore>), BackendError> {
        let topology = match topology {
            Some(topology) => topology,
            None if self.redis_url.starts_with("memory:") || self.min_replicas_ack == 0 => {
                return self.redis_client.connect_with_kv(&self.redis_url).await
            }
            None => RedisTopology::Standalone(self.redis_url.clone()),
        };
        let ack = (self.min_replicas_ack > 0).then_some(ReplicaAck {
            replicas: self.min_replicas_ack,
            timeout: REPLICA_ACK_TIMEOUT,
        });
        let config = RedisConfig {
            min_replicas_ack: ack,
            ..RedisConfig::default()
        };
        let redis = self.redis_client.open(topology, config).await?;
        if self.log_placement && redis.is_cluster() {
            self.log_shard_nodes(&redis).await;
        }
        Ok(redis.handles())
    }

    /// Logs which cluster node serves each shard stream (and so takes its
    /// appends, reads and dead letters), for operators placing routers:
    /// one line per domain.
    async fn log_shard_nodes(&self, redis: &Opened) {
        for keys in self.key_spaces() {
            let mut placement = Vec::new();
            for stream in keys.shard_streams() {
                match redis.node_of(&stream).await {
                    Ok(node) => placement.push(format!(
                        "{stream}@{node} (slot {})",
                        crate::keys::slot(&stream)
                    )),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the cluster's slot map");
                        return;
                    }
                }
            }
            tracing::info!(
                domain = %keys.domain(),
                placement = placement.join(", "),
                "shard streams on the cluster"
            );
        }
    }

    /// [`Self::connect`], retrying with backoff until it succeeds or
    /// `give_up` elapses.
    pub async fn connect_with_retry(
        &self,
        give_up: Duration,
    ) -> Result<Arc<dyn Backend>, BackendError> {
        Ok(self.connect_with_kv_retry(give_up).await?.0)
    }

    /// [`Self::connect_with_kv`], retrying with backoff until it succeeds
    /// or `give_up` elapses.
    pub async fn connect_with_kv_retry(
        &self,
        give_up: Duration,
    ) -> Result<(Arc<dyn Backend>, Arc<dyn KvStore>), BackendError> {
        // A topology that cannot work fails at once, not after `give_up`.
        let topology = self.checked_topology()?;
        retry(&self.describe(), give_up, || {
            self.connect_to(topology.clone())
        })
        .await
    }

    /// Connects to the pub/sub server if it differs from the data server.
    pub async fn connect_pubsub(&self) -> Result<Option<Arc<dyn Backend>>, BackendError> {
        match self.separate_pubsub_url() {
            Some(url) => Ok(Some(self.redis_client.connect(url).await?)),
            None => Ok(None),
        }
    }

    /// [`Self::connect_pubsub`], retrying with backoff until it succeeds or
    /// `give_up` elapses.
    pub async fn connect_pubsub_with_retry(
        &self,
        give_up: Duration,
    ) -> Result<Option<Arc<dyn Backend>>, BackendError> {
        match self.separate_pubsub_url() {
            Some(url) => {
                let client = self.redis_client.checked()?;
                let (backend, _) = retry(url, give_up, || client.connect_with_kv(url)).await?;
                Ok(Some(backend))
            }
            None => Ok(None),
        }
    }

    /// --pubsub-url when it names another server than the data server (a
    /// Sentinel-managed or cluster data server is never the same URL).
    fn separate_pubsub_url(&self) -> Option<&str> {
        match &self.pubsub_url {
            Some(url)
                if url != &self.redis_url
                    || !self.redis_sentinel.is_empty()
                    || !self.redis_cluster.is_empty() =>
            {
                Some(url)
            }
            _ => None,
        }
    }
}

/// How long an append waits for `--min-replicas-ack` replicas.
const REPLICA_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens a backend by URL: `redis://…`, `rediss://…`, `unix://…` or
/// `memory://`; a Redis URL with the default client (see
/// [`RedisClient::connect`] to choose).
pub async fn connect(url: &str) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(connect_with_kv(url).await?.0)
}

/// Opens a backend by URL (as [`connect`]) with its [`KvStore`] role too:
/// one connection, two handles. For applications that keep records beside
/// the relay ([`KvStore`] is not part of [`Backend`]); both built-in
/// backends offer it.
pub async fn connect_with_kv(
    url: &str,
) -> Result<(Arc<dyn Backend>, Arc<dyn KvStore>), BackendError> {
    RedisClient::default().connect_with_kv(url).await
}

/// Connects, retrying with backoff until it succeeds or `give_up` elapses.
pub async fn connect_with_retry(
    url: &str,
    give_up: Duration,
) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(connect_with_kv_retry(url, give_up).await?.0)
}

/// [`connect_with_kv`], retrying with backoff until it succeeds or
/// `give_up` elapses.
pub async fn connect_with_kv_retry(
    url: &str,
    give_up: Duration,
) -> Result<(Arc<dyn Backend>, Arc<dyn KvStore>), BackendError> {
    retry(url, give_up, || connect_with_kv(url)).await
}

/// Runs `attempt` until it succeeds or `give_up`
/// elapses, with doubling pauses (at most 5 s) between attempts.
async fn retry<T, F, Fut>(what: &str, give_up: Duration, mut attempt: F) -> Result<T, BackendError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BackendError>>,
{
    let deadline = tokio::time::Instant::now() + give_up;
    let mut wait = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(b) => return Ok(b),
            Err(e) if tokio::time::Instant::now() + wait < deadline => {
                tracing::warn!(error = %e, url = what, "cannot connect yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::{colour_wanted, RuntimeArgs};

    #[test]
    fn worker_threads_sets_the_runtime_size() {
        let one = RuntimeArgs {
            worker_threads: Some(1),
        };
        let rt = one.runtime().expect("runtime");
        assert_eq!(rt.metrics().num_workers(), 1);
        let three = RuntimeArgs {
            worker_threads: Some(3),
        };
        assert_eq!(three.runtime().expect("runtime").metrics().num_workers(), 3);
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some(OsStr::new(""))));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(false, None));
    }

    #[derive(clap::Parser)]
    struct Conn {
        #[command(flatten)]
        conn: super::ConnectionArgs,
    }

    fn parse(args: &[&str]) -> Result<super::ConnectionArgs, clap::Error> {
        use clap::Parser;
        Conn::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|c| c.conn)
    }

    #[test]
    fn sentinel_flags_need_each_other_and_give_a_topology() {
        assert!(parse(&["--redis-sentinel", "a:1"]).is_err());
        assert!(parse(&["--redis-master-name", "m"]).is_err());
        let conn = parse(&[
            "--redis-sentinel",
            "a:26379,b:26379",
            "--redis-master-name",
            "mymaster",
            "--redis-url",
            "redis://:pw@ignored/1",
        ])
        .expect("valid flags");
        let Some(super::RedisTopology::Sentinel(t)) = conn.topology().expect("valid") else {
            panic!("expected a Sentinel topology");
        };
        assert_eq!(t.master_name(), "mymaster");
        assert_eq!(t.sentinels().len(), 2);
        let bad = parse(&["--redis-sentinel", "nohost", "--redis-master-name", "m"])
            .expect("parses; checked when connecting");
        assert!(matches!(
            bad.topology(),
            Err(super::TopologyError::Addr { .. })
        ));
        let plain = parse(&[]).expect("defaults");
        assert!(plain.topology().expect("valid").is_none());
    }

    #[test]
    fn redis_client_defaults_to_redis_rs_and_refuses_unknown_clients() {
        use super::RedisClient;
        assert_eq!(
            parse(&[]).expect("defaults").redis_client,
            RedisClient::RedisRs
        );
        let conn = parse(&["--redis-client", "redis-rs"]).expect("redis-rs");
        assert_eq!(conn.redis_client, RedisClient::RedisRs);
        assert!(!conn.describe().contains("redis-rs"), "{}", conn.describe());
        let err = parse(&["--redis-client", "hiredis"]).expect_err("unknown client");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(err.to_string().contains("redis-rs, fred"), "{err}");
        // Its variable (not set here: the environment is shared by tests).
        let cmd = <Conn as clap::CommandFactory>::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some("redis-client"))
            .expect("the flag");
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some("RELAY_REDIS_CLIENT")
        );
    }

    #[cfg(feature = "fred")]
    #[test]
    fn redis_client_fred_parses_in_a_fred_build() {
        let conn = parse(&["--redis-client", "fred"]).expect("fred is built");
        assert_eq!(conn.redis_client, super::RedisClient::Fred);
        assert_eq!(conn.redis_client.available(), Ok(super::RedisClient::Fred));
        assert!(conn.describe().ends_with(" (fred)"), "{}", conn.describe());
    }

    #[cfg(not(feature = "fred"))]
    #[test]
    fn redis_client_fred_is_refused_without_the_feature() {
        use super::{ClientNotBuilt, RedisClient};
        let err = parse(&["--redis-client", "fred"]).expect_err("fred is not built");
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        let source = std::error::Error::source(&err)
            .and_then(|e| e.downcast_ref::<ClientNotBuilt>())
            .expect("the typed error is the source");
        assert_eq!(source.client, RedisClient::Fred);
        assert!(
            err.to_string()
                .contains("built without the fred feature: cargo build --features fred"),
            "{err}"
        );
        assert_eq!(
            RedisClient::Fred.available(),
            Err(ClientNotBuilt {
                client: RedisClient::Fred
            })
        );
    }

    /// A library caller that sets the field directly (no parsing) is
    /// refused when connecting, before any retry loop starts.
    #[cfg(not(feature = "fred"))]
    #[tokio::test]
    async fn connecting_with_an_unbuilt_client_fails_at_once() {
        use super::{BackendError, ClientNotBuilt, RedisClient};
        let mut conn = parse(&["--redis-url", "redis://127.0.0.1:1"]).expect("defaults");
        conn.redis_client = RedisClient::Fred;
        let give_up = std::time::Duration::from_secs(3600);
        let err = match conn.connect_with_retry(give_up).await {
            Err(e) => e,
            Ok(_) => panic!("connected with a client this build lacks"),
        };
        assert!(!err.is_transient());
        let BackendError::Server(source) = &err else {
            panic!("expected a configuration error, got {err}");
        };
        assert!(source.downcast_ref::<ClientNotBuilt>().is_some(), "{err}");
        for err in [
            RedisClient::Fred.connect("redis://127.0.0.1:1").await.err(),
            RedisClient::Fred
                .connect_topology(
                    super::RedisTopology::Standalone("redis://127.0.0.1:1".into()),
                    super::RedisConfig::default(),
                )
                .await
                .err(),
        ] {
            let err = err.expect("refused");
            assert!(
                err.to_string().contains("cargo build --features fred"),
                "{err}"
            );
        }
    }

    #[test]
    fn cluster_flag_gives_a_cluster_topology_and_refuses_eco2() {
        let conn = parse(&[
            "--redis-cluster",
            "a:7000,b:7001",
            "--redis-url",
            "redis://:pw@ignored",
        ])
        .expect("valid flags");
        let Some(super::RedisTopology::Cluster(t)) = conn.topology().expect("valid") else {
            panic!("expected a cluster topology");
        };
        assert_eq!(t.seeds().len(), 2);
        assert!(conn.describe().contains("a:7000,b:7001"));
        assert!(parse(&[
            "--redis-cluster",
            "a:7000",
            "--redis-sentinel",
            "s:1",
            "--redis-master-name",
            "m"
        ])
        .is_err());
        let eco2 = parse(&["--redis-cluster", "a:7000", "--profile", "eco2"]).expect("parses");
        let err = eco2.topology().expect_err("eco2 is refused on a cluster");
        assert!(matches!(
            err,
            super::TopologyError::ProfileNotClusterSafe { .. }
        ));
        assert!(err.to_string().contains("standalone or Sentinel"), "{err}");
    }
}
