//! Per-node figures of a `relay` run on a Redis Cluster.
//!
//! On a cluster the Redis work of one event lands on three kinds of node:
//! the master of the job's shard stream (the producer's `XADD`, the
//! router's `XREADGROUP` and `XACK`), the master of the job's hash (the
//! apply script and the `PUBLISH` inside it), and every node: a classic
//! `PUBLISH` is broadcast over the cluster bus to all nodes, replicas
//! included, whatever the channel's slot. Replicas also apply their
//! master's writes. One total Redis figure hides where that work went, and
//! whether one master carries more than its share is the question a
//! cluster is deployed to answer; so a run reports every node: its CPU
//! (`INFO cpu` user + sys deltas over the measured window), a master's
//! share of the masters' total (the target: none above 45 %), the shard
//! streams and jobs each master serves, its commands (`INFO
//! commandstats`), and a `PUBLISH` probe that isolates what the bus costs
//! the nodes that neither own the channel nor take the command.

use std::collections::HashMap;
use std::time::Duration;

use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};
use relay_core::{JobId, KeySpace};
use relay_testkit::redis::{parse_commandstats, CommandStat};
use serde::{Deserialize, Serialize};

use crate::stats::round3;

/// A node's role in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves slots.
    Master,
    /// Replicates a master.
    Replica,
}

/// One live node as `CLUSTER NODES` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// `host:port` (client port).
    pub addr: String,
    /// The node id.
    pub id: String,
    /// Master or replica.
    pub role: Role,
    /// A replica's master's id.
    pub master_id: Option<String>,
    /// The slot ranges (inclusive) a master serves.
    pub slots: Vec<(u16, u16)>,
}

impl Node {
    /// Whether this node serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

/// Parses a `CLUSTER NODES` reply into its live nodes (failed, handshaking
/// and address-less nodes are left out: they serve nothing and cannot be
/// asked for their CPU).
pub fn parse_cluster_nodes(text: &str) -> Vec<Node> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            continue;
        }
        let flags: Vec<&str> = fields[2].split(',').collect();
        if flags
            .iter()
            .any(|f| matches!(*f, "fail" | "noaddr" | "handshake"))
        {
            continue;
        }
        // `host:port@bus[,hostname]`.
        let addr = fields[1].split(['@', ',']).next().unwrap_or_default();
        if addr.starts_with(':') || addr.is_empty() {
            continue;
        }
        let role = if flags.contains(&"master") {
            Role::Master
        } else if flags.contains(&"slave") {
            Role::Replica
        } else {
            continue;
        };
        let master_id = (fields[3] != "-").then(|| fields[3].to_owned());
        // Slots: `N` or `A-B`; `[slot->-id]` entries are migrations.
        let slots = fields[8..]
            .iter()
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|n| (n, n)),
            })
            .collect();
        out.push(Node {
            addr: addr.to_owned(),
            id: fields[0].to_owned(),
            role,
            master_id,
            slots,
        });
    }
    out.sort_by(|a, b| (a.role != Role::Master, &a.addr).cmp(&(b.role != Role::Master, &b.addr)));
    out
}

/// `used_cpu_user` + `used_cpu_sys` of an `INFO cpu` reply.
pub fn info_cpu_time(info: &str) -> Duration {
    let secs: f64 = info
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .filter(|(k, _)| matches!(*k, "used_cpu_user" | "used_cpu_sys"))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum();
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO)
}

fn reply_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `node_url`'s scheme and credentials at `addr` (`host:port`).
fn node_info(node_url: &str, addr: &str) -> anyhow::Result<ConnectionInfo> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("{addr:?} is not host:port"))?;
    let port: u16 = port.parse()?;
    let info = node_url.into_connection_info()?;
    let mut a = info.addr().clone();
    match &mut a {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => {
            *h = host.to_owned();
            *p = port;
        }
        _ => anyhow::bail!("{node_url:?}: a cluster node is reached over TCP"),
    }
    Ok(info.set_addr(a))
}

/// One node, asked on a fresh connection each time: a few queries per run,
/// and a node restarted meanwhile costs no reconnect logic.
#[derive(Clone, Debug)]
pub struct NodeClient {
    /// `host:port`.
    pub addr: String,
    info: ConnectionInfo,
}

impl NodeClient {
    /// A client for the node at `addr` with `node_url`'s scheme and
    /// credentials.
    pub fn new(node_url: &str, addr: &str) -> anyhow::Result<Self> {
        Ok(Self {
            addr: addr.to_owned(),
            info: node_info(node_url, addr)?,
        })
    }

    async fn command(&self, args: &[&str]) -> anyhow::Result<Value> {
        let (name, rest) = args
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("empty command"))?;
        let client = redis::Client::open(self.info.clone())?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut cmd = redis::cmd(name);
        cmd.arg(rest);
        Ok(cmd.query_async(&mut conn).await?)
    }

    async fn text(&self, args: &[&str]) -> anyhow::Result<String> {
        let v = self.command(args).await?;
        reply_text(&v).ok_or_else(|| anyhow::anyhow!("{} answered {v:?}", args.join(" ")))
    }

    /// CPU time (user + system) the node has used so far.
    pub async fn cpu(&self) -> anyhow::Result<Duration> {
        Ok(info_cpu_time(&self.text(&["INFO", "cpu"]).await?))
    }

    /// `CONFIG RESETSTAT` (zeroes `INFO commandstats`).
    pub async fn reset_stats(&self) -> anyhow::Result<()> {
        self.command(&["CONFIG", "RESETSTAT"]).await?;
        Ok(())
    }

    /// `INFO commandstats`, by lower-case command name.
    pub async fn commandstats(&self) -> anyhow::Result<HashMap<String, CommandStat>> {
        Ok(parse_commandstats(
            &self.text(&["INFO", "commandstats"]).await?,
        ))
    }
}

/// The cluster's live nodes, read once at the start of a run.
#[derive(Clone, Debug)]
pub struct ClusterView {
    /// Masters first, then replicas, each by address.
    pub nodes: Vec<Node>,
    clients: Vec<NodeClient>,
}

impl ClusterView {
    /// Asks the seeds in turn for `CLUSTER NODES`.
    pub async fn discover(seeds: &[String], node_url: &str) -> anyhow::Result<Self> {
        let mut failures = Vec::new();
        for seed in seeds {
            let text = match NodeClient::new(node_url, seed) {
                Ok(c) => c.text(&["CLUSTER", "NODES"]).await,
                Err(e) => Err(e),
            };
            match text {
                Ok(text) => {
                    let nodes = parse_cluster_nodes(&text);
                    anyhow::ensure!(
                        nodes.iter().any(|n| n.role == Role::Master),
                        "{seed}: CLUSTER NODES names no live master"
                    );
                    let clients = nodes
                        .iter()
                        .map(|n| NodeClient::new(node_url, &n.addr))
                        .collect::<anyhow::Result<_>>()?;
                    return Ok(Self { nodes, clients });
                }
                Err(e) => failures.push(format!("{seed}: {e:#}")),
            }
        }
        anyhow::bail!("no seed answered CLUSTER NODES ({})", failures.join("; "))
    }

    /// Every node with its client.
    pub fn nodes(&self) -> impl Iterator<Item = (&Node, &NodeClient)> {
        self.nodes.iter().zip(&self.clients)
    }

    /// The master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> Option<&Node> {
        let slot = relay_core::keys::slot(key);
        self.nodes
            .iter()
            .find(|n| n.role == Role::Master && n.serves(slot))
    }

    /// The node's name in reports: `redis master host:port`, `redis replica
    /// host:port (of :port)`.
    pub fn label(&self, node: &Node) -> String {
        match node.role {
            Role::Master => format!("redis master {}", node.addr),
            Role::Replica => {
                let of = node
                    .master_id
                    .as_ref()
                    .and_then(|id| self.nodes.iter().find(|n| &n.id == id))
                    .map(|m| m.addr.rsplit(':').next().unwrap_or_default().to_owned())
                    .unwrap_or_else(|| "?".into());
                format!("redis replica {} (of :{of})", node.addr)
            }
        }
    }

    /// `CONFIG RESETSTAT` on every node (best effort: a node that does not
    /// answer only loses its command table).
    pub async fn reset_stats(&self) {
        for c in &self.clients {
            if let Err(e) = c.reset_stats().await {
                tracing::warn!(node = %c.addr, error = %e, "CONFIG RESETSTAT failed");
            }
        }
    }
}

/// One node's figures over the measured window.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeFigures {
    /// `host:port`.
    pub addr: String,
    /// `master` or `replica`.
    pub role: String,
    /// A replica's master (`host:port`).
    pub replica_of: Option<String>,
    /// Shard streams (by shard number) this master serves.
    pub shard_streams: Vec<u32>,
    /// Jobs whose shard stream this master serves (each job published
    /// the same number of events: its share of the stream work).
    pub jobs_via_shards: u64,
    /// Jobs whose hash (apply script, live channel) this master serves.
    pub jobs_owned: u64,
    /// CPU seconds (`INFO cpu` user + sys delta).
    pub cpu_s: f64,
    /// CPU µs per delivered event.
    pub us_per_delivered: f64,
    /// CPU µs per published event.
    pub us_per_published: f64,
    /// A master's share of the masters' total CPU, %.
    pub share_of_masters_pct: Option<f64>,
    /// Share of every node's total CPU (masters and replicas), %.
    pub share_of_all_pct: f64,
    /// The commands that cost the most: (command, calls, µs per published
    /// event) from `INFO commandstats` (commands run by scripts included).
    pub commands: Vec<(String, u64, f64)>,
}

/// The cluster part of a run's figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterFigures {
    /// Masters first.
    pub nodes: Vec<NodeFigures>,
    /// CPU µs per delivered event of every node together.
    pub us_per_delivered_all: f64,
    /// … of the masters.
    pub us_per_delivered_masters: f64,
    /// … of the replicas.
    pub us_per_delivered_replicas: f64,
    /// The busiest master's share of the masters' CPU, %.
    pub max_master_share_pct: f64,
    /// The `PUBLISH` probe run after the load, when it ran.
    pub bus_probe: Option<BusProbe>,
}

/// What one run measured, for [`ClusterFigures::build`].
pub struct RunCounts<'a> {
    /// Events published.
    pub published: u64,
    /// Events delivered (all clients).
    pub delivered: u64,
    /// The key space the producers used.
    pub keys: &'a KeySpace,
    /// The run's job names.
    pub jobs: &'a [String],
}

impl ClusterFigures {
    /// Per-node figures from the CPU seconds measured for each node
    /// (`cpu_s`, by [`ClusterView::label`]) and the command tables read
    /// after the run (by address).
    pub fn build(
        view: &ClusterView,
        cpu_s: &[(String, f64)],
        commandstats: &HashMap<String, HashMap<String, CommandStat>>,
        run: &RunCounts<'_>,
    ) -> Self {
        let cpu_of = |n: &Node| {
            let label = view.label(n);
            cpu_s
                .iter()
                .find(|(l, _)| *l == label)
                .map_or(0.0, |(_, s)| *s)
        };
        let sum = |role: Role| -> f64 {
            view.nodes
                .iter()
                .filter(|n| n.role == role)
                .map(cpu_of)
                .sum()
        };
        let masters = sum(Role::Master);
        let replicas = sum(Role::Replica);
        let all = masters + replicas;
        let delivered = run.delivered.max(1) as f64;
        let published = run.published.max(1) as f64;
        let per = |s: f64, n: f64| round3(s * 1e6 / n);
        let pct = |a: f64, b: f64| round3(if b > 0.0 { 100.0 * a / b } else { 0.0 });

        let mut nodes = Vec::with_capacity(view.nodes.len());
        for n in &view.nodes {
            let cpu = cpu_of(n);
            let is_master = n.role == Role::Master;
            let shard_streams: Vec<u32> = if is_master {
                (0..run.keys.shards())
                    .filter(|s| n.serves(relay_core::keys::slot(&run.keys.shard_stream(*s))))
                    .collect()
            } else {
                Vec::new()
            };
            let (mut via_shards, mut owned) = (0, 0);
            if is_master {
                for job in run.jobs {
                    let Ok(id) = JobId::new(job.as_str()) else {
                        continue;
                    };
                    if shard_streams.contains(&run.keys.shard_of(&id)) {
                        via_shards += 1;
                    }
                    if n.serves(relay_core::keys::slot(&run.keys.job(&id).meta)) {
                        owned += 1;
                    }
                }
            }
            let mut commands: Vec<(String, u64, f64)> = commandstats
                .get(&n.addr)
                .map(|t| {
                    t.iter()
                        .filter(|(_, s)| s.calls > 0)
                        .map(|(k, s)| (k.clone(), s.calls, round3(s.usec as f64 / published)))
                        .collect()
                })
                .unwrap_or_default();
            commands.sort_by(|a, b| b.2.total_cmp(&a.2));
            commands.truncate(8);
            nodes.push(NodeFigures {
                addr: n.addr.clone(),
                role: if is_master { "master" } else { "replica" }.into(),
                replica_of: n
                    .master_id
                    .as_ref()
                    .and_then(|id| view.nodes.iter().find(|m| &m.id == id))
                    .map(|m| m.addr.clone()),
                shard_streams,
                jobs_via_shards: via_shards,
                jobs_owned: owned,
                cpu_s: round3(cpu),
                us_per_delivered: per(cpu, delivered),
                us_per_published: per(cpu, published),
                share_of_masters_pct: is_master.then(|| pct(cpu, masters)),
                share_of_all_pct: pct(cpu, all),
                commands,
            });
        }
        let max_master_share_pct = nodes
            .iter()
            .filter_map(|n| n.share_of_masters_pct)
            .fold(0.0, f64::max);
        Self {
            nodes,
            us_per_delivered_all: per(all, delivered),
            us_per_delivered_masters: per(masters, delivered),
            us_per_delivered_replicas: per(replicas, delivered),
            max_master_share_pct,
            bus_probe: None,
        }
    }

    /// Summary rows (the report's table).
    pub fn summary_rows(&self) -> Vec<(String, String)> {
        let mut rows = vec![(
            "[cluster] Redis CPU µs/event all nodes / masters / replicas".to_owned(),
            format!(
                "{:.2} / {:.2} / {:.2}",
                self.us_per_delivered_all,
                self.us_per_delivered_masters,
                self.us_per_delivered_replicas
            ),
        )];
        rows.push((
            "[cluster] busiest master's share of the masters' CPU".into(),
            format!(
                "{:.1} % (target ≤ 45 %){}",
                self.max_master_share_pct,
                if self.max_master_share_pct > 45.0 {
                    " — above"
                } else {
                    ""
                }
            ),
        ));
        for n in &self.nodes {
            let (key, value) = match n.share_of_masters_pct {
                Some(share) => (
                    format!("[cluster] master {}", n.addr),
                    format!(
                        "{:.2} µs/event, {share:.1} % of masters' CPU; shards {:?}, \
                         jobs via shards {}, jobs owned {}; top: {}",
                        n.us_per_delivered,
                        n.shard_streams,
                        n.jobs_via_shards,
                        n.jobs_owned,
                        n.commands
                            .iter()
                            .take(4)
                            .map(|(c, _, us)| format!("{c} {us:.2}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
                None => (
                    format!(
                        "[cluster] replica {} (of {})",
                        n.addr,
                        n.replica_of.as_deref().unwrap_or("?")
                    ),
                    format!(
                        "{:.2} µs/event, {:.1} % of all nodes' CPU",
                        n.us_per_delivered, n.share_of_all_pct
                    ),
                ),
            };
            rows.push((key, value));
        }
        if let Some(p) = &self.bus_probe {
            rows.push((
                "[cluster] PUBLISH probe".into(),
                format!(
                    "{} × {} B on {} ({:.0}/s), no subscriber",
                    p.publishes, p.payload_bytes, p.publishing_master, p.rate
                ),
            ));
            for n in &p.nodes {
                rows.push((
                    format!(
                        "[cluster] PUBLISH probe CPU µs/publish {} {}",
                        n.role, n.addr
                    ),
                    format!("{:.3}", n.us_per_publish),
                ));
            }
        }
        rows
    }
}

/// One node's CPU in the `PUBLISH` probe.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProbeNode {
    /// `host:port`.
    pub addr: String,
    /// `publisher` (the master that took the commands), `master` or
    /// `replica`.
    pub role: String,
    /// CPU µs per `PUBLISH` over the probe.
    pub us_per_publish: f64,
}

/// `redis-benchmark` `PUBLISH`es on one master, to a channel nobody
/// subscribes to, with every node's CPU measured: on the others it is what
/// the cluster bus's broadcast of a classic `PUBLISH` costs a node that
/// neither owns the channel nor took the command.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BusProbe {
    /// The master that took the commands.
    pub publishing_master: String,
    /// `PUBLISH` calls.
    pub publishes: u64,
    /// Message size.
    pub payload_bytes: usize,
    /// Calls per second `redis-benchmark` reached.
    pub rate: f64,
    /// Every node.
    pub nodes: Vec<ProbeNode>,
}

/// Runs the [`BusProbe`] on the first master (on loopback: the spawned
/// cluster). `None` when `redis-benchmark` cannot run.
pub async fn bus_probe(
    view: &ClusterView,
    publishes: u64,
    payload_bytes: usize,
) -> anyhow::Result<Option<BusProbe>> {
    let Some((master, _)) = view.nodes().find(|(n, _)| n.role == Role::Master) else {
        return Ok(None);
    };
    let port: u16 = master
        .addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{} is not host:port", master.addr))?;
    let mut before = Vec::new();
    for (_, c) in view.nodes() {
        before.push(c.cpu().await?);
    }
    let payload = "x".repeat(payload_bytes);
    let rate = tokio::task::spawn_blocking(move || {
        relay_testkit::bench::redis_benchmark_rps(
            port,
            publishes,
            64,
            &["PUBLISH", "relay-load:bus-probe", &payload],
        )
    })
    .await?;
    let Some(rate) = rate else { return Ok(None) };
    let mut nodes = Vec::new();
    for ((n, c), b) in view.nodes().zip(before) {
        let cpu = c.cpu().await?.saturating_sub(b);
        nodes.push(ProbeNode {
            addr: n.addr.clone(),
            role: if n.addr == master.addr {
                "publisher"
            } else if n.role == Role::Master {
                "master"
            } else {
                "replica"
            }
            .into(),
            us_per_publish: round3(cpu.as_secs_f64() * 1e6 / publishes.max(1) as f64),
        });
    }
    Ok(Some(BusProbe {
        publishing_master: master.addr.clone(),
        publishes,
        payload_bytes,
        rate: round3(rate),
        nodes,
    }))
}

/// `redis-benchmark --cluster` (one client connection per master and
/// `-c`, keys routed by the `{tag}` in `command`, replaced by a hash tag of
/// each master's slots) against the cluster of the master at `port` on
/// loopback; calls per second. `None` when it cannot run or prints no
/// figure.
fn redis_benchmark_cluster_rps(
    port: u16,
    requests: u64,
    clients: usize,
    command: &[&str],
) -> Option<f64> {
    let out = std::process::Command::new("redis-benchmark")
        .args(["--cluster", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-n", &requests.to_string(), "-c", &clients.to_string()])
        .args(["-P", "64", "-r", "100000", "--csv"])
        .args(command)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(',').nth(1))
        .filter_map(|v| v.trim_matches('"').parse::<f64>().ok())
        .next_back()
}

/// The standalone ceilings' commands (`XADD` of a producer-like entry, the
/// per-event apply script), run on the whole cluster by `redis-benchmark
/// --cluster`: (name, calls per second) rows, and the combined events/s.
/// The script is loaded on every master first (`EVALSHA` does not follow
/// a key to a node that lacks it).
pub async fn ceilings(view: &ClusterView) -> anyhow::Result<Vec<(String, f64)>> {
    let masters: Vec<&NodeClient> = view
        .nodes()
        .filter(|(n, _)| n.role == Role::Master)
        .map(|(_, c)| c)
        .collect();
    let Some(first) = masters.first() else {
        return Ok(Vec::new());
    };
    let port: u16 = first
        .addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{} is not host:port", first.addr))?;
    let mut sha = String::new();
    for m in &masters {
        sha = m
            .text(&["SCRIPT", "LOAD", relay_testkit::bench::CEILING_SCRIPT])
            .await?;
    }
    // Two connections per master: the standalone ceiling's four, spread.
    let clients = masters.len() * 2;
    let (xadd, eval) = tokio::task::spawn_blocking(move || {
        let body = "x".repeat(160);
        let xadd = redis_benchmark_cluster_rps(
            port,
            200_000,
            clients,
            &[
                "XADD",
                "ceiling:{tag}:__rand_int__",
                "*",
                "job",
                "j",
                "seq",
                "1",
                "enc",
                "msgpack",
                "body",
                &body,
            ],
        );
        let eval = redis_benchmark_cluster_rps(
            port,
            100_000,
            clients,
            &[
                "EVALSHA",
                &sha,
                "1",
                "{tag}:__rand_int__",
                "__rand_int__",
                &body,
            ],
        );
        (xadd, eval)
    })
    .await?;
    let mut out = Vec::new();
    if let Some(x) = xadd {
        out.push(("redis-benchmark --cluster XADD -P 64 (ops/s)".into(), x));
    }
    if let Some(e) = eval {
        out.push((
            "redis-benchmark --cluster EVALSHA apply script -P 64 (ops/s)".into(),
            e,
        ));
    }
    if let (Some(x), Some(e)) = (xadd, eval) {
        out.push((
            "combined XADD + apply (events/s)".into(),
            1.0 / (1.0 / x + 1.0 / e),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922 [10923->-292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f]
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@40003,node3.example master - 0 1426238318243 3 connected 10923-16383
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@40005 slave 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 1426238316232 5 connected
824fe116063bc5fcf9f4ffd895bc17aee7731ac3 127.0.0.1:30006@40006 slave 292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 0 1426238317741 6 connected
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004 slave,fail e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 disconnected
";

    #[test]
    fn cluster_nodes_parse_into_live_masters_and_replicas() {
        let nodes = parse_cluster_nodes(NODES);
        let addrs: Vec<_> = nodes.iter().map(|n| (n.addr.as_str(), n.role)).collect();
        assert_eq!(
            addrs,
            [
                ("127.0.0.1:30001", Role::Master),
                ("127.0.0.1:30002", Role::Master),
                ("127.0.0.1:30003", Role::Master),
                ("127.0.0.1:30005", Role::Replica),
                ("127.0.0.1:30006", Role::Replica),
            ],
            "the failed replica is left out, masters come first"
        );
        assert_eq!(nodes[0].slots, [(0, 5460)]);
        assert_eq!(nodes[1].slots, [(5461, 10922)], "migrations are not slots");
        assert!(nodes[2].serves(16383) && !nodes[2].serves(10922));
        assert_eq!(
            nodes[3].master_id.as_deref(),
            Some("67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1")
        );
        assert_eq!(nodes[0].master_id, None);
    }

    #[test]
    fn info_cpu_adds_user_and_system_time() {
        let info = "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\n\
                    used_cpu_sys_children:9.0\r\nused_cpu_user_main_thread:2.0\r\n";
        assert_eq!(info_cpu_time(info), Duration::from_millis(3750));
        assert_eq!(info_cpu_time("# CPU\r\n"), Duration::ZERO);
    }

    fn view() -> ClusterView {
        let nodes = parse_cluster_nodes(NODES);
        let clients = nodes
            .iter()
            .map(|n| NodeClient::new("redis://127.0.0.1", &n.addr).expect("client"))
            .collect();
        ClusterView { nodes, clients }
    }

    #[test]
    fn figures_split_cpu_by_node_and_place_shards_and_jobs() {
        let v = view();
        assert_eq!(v.label(&v.nodes[0]), "redis master 127.0.0.1:30001");
        assert_eq!(
            v.label(&v.nodes[3]),
            "redis replica 127.0.0.1:30005 (of :30002)"
        );
        let cpu: Vec<(String, f64)> = v
            .nodes
            .iter()
            .zip([3.0, 4.0, 3.0, 0.5, 0.5])
            .map(|(n, s)| (v.label(n), s))
            .collect();
        let keys = KeySpace::new(
            relay_core::Profile::Native,
            relay_core::Domain::new("scan").expect("domain"),
            6,
        );
        let jobs: Vec<String> = (0..60).map(|j| format!("job-{j}")).collect();
        let mut stats = HashMap::new();
        stats.insert(
            "127.0.0.1:30001".to_owned(),
            parse_commandstats("cmdstat_xadd:calls=10,usec=2000,usec_per_call=200\r\n"),
        );
        let f = ClusterFigures::build(
            &v,
            &cpu,
            &stats,
            &RunCounts {
                published: 1_000_000,
                delivered: 2_000_000,
                keys: &keys,
                jobs: &jobs,
            },
        );
        assert_eq!(f.nodes.len(), 5);
        assert_eq!(f.us_per_delivered_all, 5.5);
        assert_eq!(f.us_per_delivered_masters, 5.0);
        assert_eq!(f.us_per_delivered_replicas, 0.5);
        assert_eq!(f.max_master_share_pct, 40.0);
        assert_eq!(f.nodes[1].share_of_masters_pct, Some(40.0));
        assert_eq!(f.nodes[3].share_of_masters_pct, None);
        assert_eq!(f.nodes[3].replica_of.as_deref(), Some("127.0.0.1:30002"));
        assert_eq!(f.nodes[0].us_per_published, 3.0);
        assert_eq!(f.nodes[0].commands, [("xadd".to_owned(), 10, 0.002)]);
        // Every shard stream and every job has exactly one master.
        let shards: usize = f.nodes.iter().map(|n| n.shard_streams.len()).sum();
        assert_eq!(shards, 6);
        assert_eq!(f.nodes.iter().map(|n| n.jobs_owned).sum::<u64>(), 60);
        assert_eq!(f.nodes.iter().map(|n| n.jobs_via_shards).sum::<u64>(), 60);
        for n in &f.nodes {
            for s in &n.shard_streams {
                let slot = relay_core::keys::slot(&keys.shard_stream(*s));
                assert_eq!(
                    v.master_of(&keys.shard_stream(*s)).map(|m| &m.addr),
                    Some(&n.addr)
                );
                assert!(v.nodes.iter().any(|m| m.addr == n.addr && m.serves(slot)));
            }
        }
    }
}
