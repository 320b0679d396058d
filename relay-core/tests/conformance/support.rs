//! What every module of the suite shares: the per-test [`Fixture`] (a
//! backend, a key prefix and, for Redis, its server), small builders of
//! requests, and [`conformance_tests!`], which runs a module's cases against
//! every backend.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
#[cfg(feature = "fred")]
use relay_core::backend::fred::FredBackend;
use relay_core::backend::memory::MemoryBackend;
use relay_core::backend::redis::{
    ClusterTopology, RedisBackend, RedisConfig, RedisTopology, SentinelTopology,
};
use relay_core::backend::{
    AppendRequest, ApplyEvent, ApplyJob, ApplyOptions, ApplyResult, Backend, ClaimResult,
    GroupStats, KvStore, ReadFrom, StreamEntry, StreamId, StreamLog, Subscriber,
};
use relay_core::codec::Fields;
use relay_core::keys::JobKeys;
use relay_core::{BackendResult, Encoding, Epoch, Payload};
use relay_testkit::cluster::{NodeRole, RedisCluster};
use relay_testkit::redis::TestRedis;
use relay_testkit::sentinel::SentinelSet;

/// The consumer group of the stream cases.
pub const GROUP: &str = "g";

/// One test's backend, key prefix and (for Redis) server.
pub struct Fixture {
    backend: Arc<dyn Backend>,
    kv: Arc<dyn KvStore>,
    prefix: String,
    kind: Kind,
    /// The Redis client the backend uses (`None`: the memory backend).
    client: Option<RedisClient>,
}

/// Which backend a fixture runs on.
pub enum Kind {
    Memory(Arc<MemoryBackend>),
    Redis(TestRedis),
    /// A master found through three sentinels (one set per test).
    Sentinel(SentinelSet),
    /// A Redis Cluster (3 masters, 3 replicas; or the one
    /// `RELAY_TEST_REDIS_CLUSTER` names).
    Cluster(RedisCluster),
}

/// The Redis client library a Redis fixture's backend is built on: the
/// fixtures (servers, topologies, key prefixes) are the same for both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisClient {
    /// [`RedisBackend`] (redis-rs).
    RedisRs,
    /// `FredBackend` (fred).
    #[cfg(feature = "fred")]
    Fred,
}

/// A Redis backend's relay roles and its key-value store in one handle.
pub trait RedisRoles: Backend + KvStore {}
impl<T: Backend + KvStore> RedisRoles for T {}

impl RedisClient {
    /// This client's backend on `topology`, or why it could not connect.
    pub async fn try_backend(
        self,
        topology: RedisTopology,
        config: RedisConfig,
    ) -> BackendResult<Arc<dyn RedisRoles>> {
        Ok(match self {
            RedisClient::RedisRs => {
                Arc::new(RedisBackend::connect_topology(topology, config).await?)
            }
            #[cfg(feature = "fred")]
            RedisClient::Fred => Arc::new(FredBackend::connect_topology(topology, config).await?),
        })
    }

    /// This client's backend on `topology`.
    pub async fn backend(
        self,
        topology: RedisTopology,
        config: RedisConfig,
    ) -> Arc<dyn RedisRoles> {
        self.try_backend(topology, config)
            .await
            .unwrap_or_else(|e| panic!("connect ({self:?}): {e}"))
    }

    /// The backend of this client on `topology`, in both its roles.
    async fn connect(
        self,
        topology: RedisTopology,
        config: RedisConfig,
    ) -> (Arc<dyn Backend>, Arc<dyn KvStore>) {
        let b = self.backend(topology, config).await;
        (b.clone(), b)
    }
}

impl Fixture {
    pub async fn memory() -> Fixture {
        let b = Arc::new(MemoryBackend::new());
        Fixture {
            backend: b.clone(),
            kv: b.clone(),
            prefix: relay_testkit::redis::unique_prefix(),
            kind: Kind::Memory(b),
            client: None,
        }
    }

    pub async fn redis() -> Fixture {
        Self::standalone(
            RedisClient::RedisRs,
            TestRedis::get(),
            RedisConfig::default(),
        )
        .await
    }

    /// Cluster mode (`RedisConfig::cluster`: one apply call per job, the
    /// ack after the apply) against a single server: the same semantics.
    pub async fn redis_cluster_mode() -> Fixture {
        let config = RedisConfig {
            cluster: true,
            ..Default::default()
        };
        Self::standalone(RedisClient::RedisRs, TestRedis::get(), config).await
    }

    pub async fn redis_sentinel() -> Fixture {
        Self::sentinel(RedisClient::RedisRs).await
    }

    pub async fn redis_cluster() -> Fixture {
        Self::cluster(RedisClient::RedisRs).await
    }

    /// `FredBackend` on a standalone server.
    #[cfg(feature = "fred")]
    pub async fn fred() -> Fixture {
        Self::standalone(RedisClient::Fred, TestRedis::get(), RedisConfig::default()).await
    }

    /// `FredBackend` in cluster mode on a standalone server (one apply
    /// call per job, the ack after), as `redis_cluster_mode`.
    #[cfg(feature = "fred")]
    pub async fn fred_cluster_mode() -> Fixture {
        let config = RedisConfig {
            cluster: true,
            ..Default::default()
        };
        Self::standalone(RedisClient::Fred, TestRedis::get(), config).await
    }

    /// `FredBackend` on a Sentinel-managed master.
    #[cfg(feature = "fred")]
    pub async fn fred_sentinel() -> Fixture {
        Self::sentinel(RedisClient::Fred).await
    }

    /// `FredBackend` on a Redis Cluster.
    #[cfg(feature = "fred")]
    pub async fn fred_cluster() -> Fixture {
        Self::cluster(RedisClient::Fred).await
    }

    /// A fixture like this one on a private server, whatever `REDIS_URL`
    /// says: for tests that inject faults.
    pub async fn private(&self) -> Fixture {
        let client = self.client.unwrap_or(RedisClient::RedisRs);
        Self::standalone(client, TestRedis::private(), RedisConfig::default()).await
    }

    /// `client`'s backend on a standalone server.
    async fn standalone(client: RedisClient, redis: TestRedis, config: RedisConfig) -> Fixture {
        let topology = RedisTopology::Standalone(redis.url().to_owned());
        let (backend, kv) = client.connect(topology, config).await;
        Fixture {
            backend,
            kv,
            prefix: redis.prefix().to_owned(),
            kind: Kind::Redis(redis),
            client: Some(client),
        }
    }

    /// A Sentinel-managed master (with a replica), found through the
    /// sentinels: the same semantics as a standalone server.
    async fn sentinel(client: RedisClient) -> Fixture {
        let set = SentinelSet::start();
        let (backend, kv) = client
            .connect(sentinel_topology(&set), RedisConfig::default())
            .await;
        Fixture {
            backend,
            kv,
            prefix: relay_testkit::redis::unique_prefix(),
            kind: Kind::Sentinel(set),
            client: Some(client),
        }
    }

    /// A Redis Cluster of 3 masters with a replica each. The key prefix is
    /// a hash tag (`{t:…}:`), so a test's plain keys share one slot (what
    /// the contract's multi-key operations require of their keys there);
    /// each job's keys are in the slot of its own `{name}` (see
    /// [`job_keys`]), so applies spread over the nodes.
    async fn cluster(client: RedisClient) -> Fixture {
        let cluster = RedisCluster::start();
        let (backend, kv) = client
            .connect(cluster_topology(&cluster.seeds()), RedisConfig::default())
            .await;
        let prefix = format!(
            "{{{}}}:",
            relay_testkit::redis::unique_prefix().trim_end_matches(':')
        );
        Fixture {
            backend,
            kv,
            prefix,
            kind: Kind::Cluster(cluster),
            client: Some(client),
        }
    }

    /// The backend under test.
    pub fn b(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The backend under test, to move into a task.
    pub fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// The same backend as a key-value store.
    pub fn kv(&self) -> &dyn KvStore {
        &*self.kv
    }

    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn job(&self, name: &str) -> JobKeys {
        match self.kind {
            // The prefix's own hash tag would pin every job to its slot.
            Kind::Cluster(_) => job_keys(&self.prefix.replace(['{', '}'], ""), name),
            _ => job_keys(&self.prefix, name),
        }
    }

    /// Drops every subscriber connection (fault injection). `None` when the
    /// backend cannot (a shared `REDIS_URL` server).
    pub async fn kill_subscribers(&self) -> Option<()> {
        match &self.kind {
            Kind::Memory(m) => {
                m.kill_subscribers();
                Some(())
            }
            Kind::Redis(r) => r.client_kill(&["TYPE", "pubsub"]).await.ok().map(|_| ()),
            Kind::Sentinel(set) => {
                let master = set.master().await.ok()?;
                master
                    .client_kill(&["TYPE", "pubsub"])
                    .await
                    .ok()
                    .map(|_| ())
            }
            Kind::Cluster(c) => {
                for node in c.nodes().await {
                    if node.role == NodeRole::Master {
                        c.command(node.port, &["CLIENT", "KILL", "TYPE", "pubsub"])
                            .await
                            .ok()?;
                    }
                }
                Some(())
            }
        }
    }

    /// Creates `stream`'s [`GROUP`], then appends `n` [`plain`] entries;
    /// their ids.
    pub async fn grouped_stream(&self, stream: &str, n: u32) -> Vec<StreamId> {
        self.b().ensure_group(stream, GROUP).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(self.b().append(plain(stream, i)).await.unwrap().id);
        }
        ids
    }

    /// Reads up to `count` entries for `consumer` of [`GROUP`], without
    /// blocking.
    pub async fn read(
        &self,
        stream: &str,
        consumer: &str,
        from: ReadFrom,
        count: usize,
    ) -> Vec<StreamEntry> {
        read_group(self.b(), stream, consumer, from, count, None)
            .await
            .unwrap()
    }

    /// Claims up to `count` entries of [`GROUP`] idle for `min_idle`.
    pub async fn claim(
        &self,
        stream: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> ClaimResult {
        self.b()
            .claim_idle(stream, GROUP, consumer, min_idle, count)
            .await
            .unwrap()
    }

    /// [`GROUP`]'s statistics.
    pub async fn stats(&self, stream: &str) -> GroupStats {
        self.b().group_stats(stream, GROUP).await.unwrap()
    }

    /// Applies one job's events and returns its result.
    pub async fn apply1(
        &self,
        keys: &JobKeys,
        epoch: u64,
        seqs: &[u64],
        opts: &ApplyOptions,
    ) -> ApplyResult {
        let mut r = self
            .b()
            .apply(&[apply_job(keys, epoch, seqs)], opts)
            .await
            .expect("apply");
        assert_eq!(r.len(), 1);
        r.remove(0)
    }
}

/// `set`'s master, found through its sentinels.
pub fn sentinel_topology(set: &SentinelSet) -> RedisTopology {
    let topology =
        SentinelTopology::new(&set.sentinel_addrs(), set.master_name(), "redis://sentinel")
            .expect("valid topology");
    RedisTopology::Sentinel(topology)
}

/// The cluster reached through `seeds`.
pub fn cluster_topology(seeds: &[String]) -> RedisTopology {
    RedisTopology::Cluster(ClusterTopology::new(seeds, "redis://cluster").expect("valid seeds"))
}

/// A job's keys under `prefix` (one hash slot per job).
pub fn job_keys(prefix: &str, name: &str) -> JobKeys {
    let base = format!("{prefix}{{{name}}}");
    JobKeys {
        meta: format!("{base}:meta"),
        state: Some(format!("{base}:state")),
        live: format!("{base}:live"),
    }
}

/// [`StreamLog::read_group`] in [`GROUP`].
pub async fn read_group(
    backend: &dyn StreamLog,
    stream: &str,
    consumer: &str,
    from: ReadFrom,
    count: usize,
    block: Option<Duration>,
) -> BackendResult<Vec<StreamEntry>> {
    backend
        .read_group(stream, GROUP, consumer, from, count, block)
        .await
}

/// A blocking read of one entry or more for `consumer`, in a task.
pub fn spawn_read(
    backend: Arc<dyn Backend>,
    stream: &str,
    consumer: &str,
    count: usize,
    block: Duration,
) -> tokio::task::JoinHandle<BackendResult<Vec<StreamEntry>>> {
    let (stream, consumer) = (stream.to_owned(), consumer.to_owned());
    tokio::spawn(async move {
        read_group(
            &*backend,
            &stream,
            &consumer,
            ReadFrom::New,
            count,
            Some(block),
        )
        .await
    })
}

pub fn payload(s: &str) -> Payload {
    Payload::native(Encoding::Json, s.as_bytes())
}

pub fn ev(seq: u64) -> ApplyEvent {
    ApplyEvent {
        seq,
        payload: payload(&format!("{{\"seq\":{seq}}}")),
    }
}

pub fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Bytes::copy_from_slice(v.as_bytes())))
        .collect()
}

pub fn plain(stream: &str, n: u32) -> AppendRequest {
    AppendRequest {
        stream: stream.to_owned(),
        fields: fields(&[("n", &n.to_string()), ("body", "x")]),
        maxlen: None,
        dedupe: None,
    }
}

pub fn apply_job(keys: &JobKeys, epoch: u64, seqs: &[u64]) -> ApplyJob {
    ApplyJob {
        keys: keys.clone(),
        epoch: Epoch(epoch),
        events: seqs.iter().map(|&s| ev(s)).collect(),
        extra_channel: None,
    }
}

pub fn quiet() -> ApplyOptions {
    ApplyOptions {
        publish: false,
        ..ApplyOptions::default()
    }
}

pub fn offsets(r: &ApplyResult) -> Vec<(u64, bool)> {
    r.applied.iter().map(|a| (a.offset.0, a.new)).collect()
}

pub async fn recv(sub: &mut Subscriber) -> (String, Bytes) {
    let m = tokio::time::timeout(Duration::from_secs(5), sub.messages.recv())
        .await
        .expect("no pub/sub message within 5s")
        .expect("subscriber closed");
    (m.channel, m.payload)
}

pub async fn assert_silent(sub: &mut Subscriber, wait: Duration) {
    if let Ok(Some(m)) = tokio::time::timeout(wait, sub.messages.recv()).await {
        panic!("unexpected message on {}: {:?}", m.channel, m.payload);
    }
}

/// How many of `acked` an `XRANGE` reply (`[[id, fields], ...]`) lacks:
/// the acknowledged appends a failover lost.
pub fn missing_from_xrange(acked: &[StreamId], xrange: &::redis::Value) -> usize {
    let present: std::collections::HashSet<&[u8]> = match xrange {
        ::redis::Value::Array(entries) => entries
            .iter()
            .filter_map(|e| match e {
                ::redis::Value::Array(kv) => match kv.first() {
                    Some(::redis::Value::BulkString(id)) => Some(id.as_slice()),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        other => panic!("XRANGE answered {other:?}"),
    };
    acked
        .iter()
        .filter(|id| !present.contains(id.to_string().as_bytes()))
        .count()
}

pub fn ids(entries: &[StreamEntry]) -> Vec<StreamId> {
    entries.iter().map(|e| e.id).collect()
}

/// Generates one `#[tokio::test]` per case of the calling module and per
/// backend, in the submodules `memory`, `redis`, `redis_cluster_mode`,
/// `redis_sentinel` and `redis_cluster` (3 masters + 3 replicas), and with
/// the `fred` feature `fred`, `fred_cluster_mode`, `fred_sentinel` and
/// `fred_cluster` (the same servers and topologies, the fred client).
/// Each case is an `async fn(&Fixture)` of the calling module.
macro_rules! conformance_tests {
    ($($case:ident),* $(,)?) => {
        $crate::support::conformance_tests!(@on memory, $crate::support::Fixture::memory; $($case),*);
        $crate::support::conformance_tests!(@on redis, $crate::support::Fixture::redis; $($case),*);
        $crate::support::conformance_tests!(
            @on redis_cluster_mode, $crate::support::Fixture::redis_cluster_mode; $($case),*
        );
        $crate::support::conformance_tests!(
            @on redis_sentinel, $crate::support::Fixture::redis_sentinel; $($case),*
        );
        $crate::support::conformance_tests!(
            @on redis_cluster, $crate::support::Fixture::redis_cluster; $($case),*
        );
        #[cfg(feature = "fred")]
        $crate::support::conformance_tests!(@on fred, $crate::support::Fixture::fred; $($case),*);
        #[cfg(feature = "fred")]
        $crate::support::conformance_tests!(
            @on fred_cluster_mode, $crate::support::Fixture::fred_cluster_mode; $($case),*
        );
        #[cfg(feature = "fred")]
        $crate::support::conformance_tests!(
            @on fred_sentinel, $crate::support::Fixture::fred_sentinel; $($case),*
        );
        #[cfg(feature = "fred")]
        $crate::support::conformance_tests!(
            @on fred_cluster, $crate::support::Fixture::fred_cluster; $($case),*
        );
    };
    (@on $backend:ident, $make:path; $($case:ident),*) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fx = $make().await;
                    super::$case(&fx).await;
                }
            )*
        }
    };
}
pub(crate) use conformance_tests;

/// Generates one `#[tokio::test]` per case and per Redis client, in the
/// submodules `redis` and (feature `fred`) `fred`, for the tests that run
/// their own servers (fault injection). Each case is an
/// `async fn(RedisClient)` of the calling module.
macro_rules! per_client_tests {
    ($($case:ident),* $(,)?) => {
        $crate::support::per_client_tests!(@on redis, RedisRs; $($case),*);
        #[cfg(feature = "fred")]
        $crate::support::per_client_tests!(@on fred, Fred; $($case),*);
    };
    (@on $module:ident, $client:ident; $($case:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::support::RedisClient::$client).await;
                }
            )*
        }
    };
}
pub(crate) use per_client_tests;
