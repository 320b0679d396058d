//! A private Redis Sentinel deployment: one master, one replica and three
//! sentinels, for testing that relay follows a failover.
//!
//! The system relay replaces ran its Streams Redis under Sentinel, so the
//! tests need the real thing: real sentinels agreeing (quorum 2 of 3) that
//! the master is down, electing a leader and promoting the replica. The
//! timings are short (`down-after-milliseconds` 1000, `failover-timeout`
//! 5000) so a failover takes a few seconds.
//!
//! [`SentinelSet::start`] returns as soon as the sentinels name the master,
//! which is all a test that only connects needs.
//! [`SentinelSet::fail_over`] first waits until every sentinel knows the
//! replica and the other sentinels (only then can they agree and elect),
//! kills the master with `kill -9` and waits until the sentinels name the
//! promoted replica and it answers `ROLE` as master. Every process is killed
//! and every directory removed on drop.

use std::fmt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::Value;
use tempfile::TempDir;

use crate::procs::free_port;
use crate::redis::{
    answers_ping, command_at, redis_server_bin, reply_text, role_at, HarnessError, RedisServer,
    RedisServerOptions,
};

/// The master name the sentinels monitor.
pub const MASTER_NAME: &str = "relaymaster";

/// Hang guard of the waits (a failover normally takes 2–4 s).
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// One `redis-server --sentinel` process, killed on drop.
struct SentinelProcess {
    port: u16,
    dir: TempDir,
    child: Mutex<Option<Child>>,
}

impl SentinelProcess {
    fn start(master_port: u16) -> Result<SentinelProcess, String> {
        let dir = tempfile::Builder::new()
            .prefix("relay-sentinel-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {log}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
             sentinel failover-timeout {MASTER_NAME} 5000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            dir = dir.path().display(),
            log = dir.path().join("sentinel.log").display(),
        );
        std::fs::write(&conf, text).map_err(|e| format!("cannot write {conf:?}: {e}"))?;
        let bin = redis_server_bin();
        let mut child = Command::new(&bin)
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while !answers_ping(port) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("sentinel exited with {status} on port {port}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("sentinel on port {port} did not answer PING"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(SentinelProcess {
            port,
            dir,
            child: Mutex::new(Some(child)),
        })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("sentinel.log")
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One master, one replica and three sentinels monitoring them (quorum 2).
pub struct SentinelSet {
    nodes: Vec<RedisServer>,
    sentinels: Vec<SentinelProcess>,
}

impl fmt::Debug for SentinelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelSet")
            .field(
                "nodes",
                &self.nodes.iter().map(RedisServer::port).collect::<Vec<_>>(),
            )
            .field(
                "sentinels",
                &self.sentinels.iter().map(|s| s.port).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SentinelSet {
    /// Starts the master, its replica and three sentinels.
    ///
    /// # Panics
    /// When `redis-server` is missing or a process does not come up.
    pub fn start() -> Self {
        let master = RedisServer::start();
        let replica = RedisServer::start_with(
            RedisServerOptions::default()
                .args(["--replicaof", "127.0.0.1"])
                .args([master.port().to_string()]),
        );
        let sentinels = (0..3)
            .map(|_| {
                let mut last = String::new();
                for _ in 0..5 {
                    match SentinelProcess::start(master.port()) {
                        Ok(s) => return s,
                        Err(e) => last = e,
                    }
                }
                panic!("redis sentinel did not start: {last}");
            })
            .collect();
        SentinelSet {
            nodes: vec![master, replica],
            sentinels,
        }
    }

    /// The name the sentinels monitor the master by.
    pub fn master_name(&self) -> &'static str {
        MASTER_NAME
    }

    /// The sentinels' addresses, `127.0.0.1:<port>`.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// The sentinels' data directories (removed on drop).
    pub fn sentinel_dirs(&self) -> Vec<PathBuf> {
        self.sentinels
            .iter()
            .map(|s| s.dir.path().to_owned())
            .collect()
    }

    /// The data nodes (the first started as master, the second as replica).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The node the first reachable sentinel names as master.
    pub async fn master(&self) -> Result<&RedisServer, HarnessError> {
        let mut last = None;
        for s in &self.sentinels {
            match master_port_via(s.port).await {
                Ok(Some(port)) => {
                    if let Some(node) = self.nodes.iter().find(|n| n.port() == port) {
                        return Ok(node);
                    }
                }
                Ok(None) => {}
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(HarnessError::UnexpectedReply {
            command: "SENTINEL get-master-addr-by-name",
            reply: "no sentinel names a known node".into(),
        }))
    }

    /// Waits until a failover can happen: the replica is in sync and every
    /// sentinel knows the replica and both other sentinels.
    ///
    /// # Panics
    /// When that is not reached within a minute.
    pub async fn wait_ready_for_failover(&self) {
        crate::wait::wait_until(WAIT_LIMIT, "sentinels ready for a failover", || async {
            self.ready_for_failover().await
        })
        .await;
    }

    async fn ready_for_failover(&self) -> bool {
        let Ok(master) = self.master().await else {
            return false;
        };
        let Some(replica) = self.nodes.iter().find(|n| n.port() != master.port()) else {
            return false;
        };
        if !replica.is_running() {
            return false;
        }
        match replica.command(&["INFO", "replication"]).await {
            Ok(v) if info_text(&v).contains("master_link_status:up") => {}
            _ => return false,
        }
        for s in &self.sentinels {
            let Ok(v) = sentinel_command(s.port, &["SENTINEL", "MASTER", MASTER_NAME]).await else {
                return false;
            };
            let others = field(&v, "num-other-sentinels");
            let replicas = field(&v, "num-slaves");
            if others.as_deref() != Some("2") || replicas.as_deref() != Some("1") {
                return false;
            }
        }
        true
    }

    /// Kills the master with `kill -9` and waits until every sentinel names
    /// the promoted replica, none is still failing over, and the replica
    /// answers `ROLE` as master. Returns the new master (the old one may
    /// then be restarted: the sentinels make it a replica). Waits for [`Self::wait_ready_for_failover`] first.
    ///
    /// # Panics
    /// When no promotion happens within a minute (the sentinels' logs are
    /// in the panic message).
    pub async fn fail_over(&self) -> &RedisServer {
        self.wait_ready_for_failover().await;
        let old = self.master().await.expect("a master before the failover");
        let old_port = old.port();
        old.stop();
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            if let Ok(node) = self.master().await {
                if node.port() != old_port && is_master(node).await && self.settled(node).await {
                    return node;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no promotion within {WAIT_LIMIT:?}; sentinel log:\n{}",
                std::fs::read_to_string(self.sentinels[0].log_path()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether every sentinel names `master` and none is still failing
    /// over (an old master restarted before that could be made master
    /// again, with whatever data it has).
    async fn settled(&self, master: &RedisServer) -> bool {
        for s in &self.sentinels {
            if !matches!(master_port_via(s.port).await, Ok(Some(p)) if p == master.port()) {
                return false;
            }
            let Ok(v) = sentinel_command(s.port, &["SENTINEL", "MASTER", MASTER_NAME]).await else {
                return false;
            };
            if field(&v, "flags").as_deref() != Some("master") {
                return false;
            }
        }
        true
    }

    /// A failover with the master still running (`SENTINEL FAILOVER`): the
    /// replica is promoted and the old master demoted to its replica, its
    /// clients staying connected (writes on it then answer `READONLY`).
    /// Waits until both have their new roles; returns the new master.
    ///
    /// # Panics
    /// When the roles do not change within a minute.
    pub async fn switch_over(&self) -> &RedisServer {
        self.wait_ready_for_failover().await;
        let old = self
            .master()
            .await
            .expect("a master before the switch-over");
        sentinel_command(
            self.sentinels[0].port,
            &["SENTINEL", "FAILOVER", MASTER_NAME],
        )
        .await
        .expect("SENTINEL FAILOVER");
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            if let Ok(node) = self.master().await {
                if node.port() != old.port()
                    && role(node).await.as_deref() == Some("master")
                    && role(old).await.as_deref() == Some("slave")
                    && self.settled(node).await
                {
                    return node;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no switch-over within {WAIT_LIMIT:?}; sentinel log:\n{}",
                std::fs::read_to_string(self.sentinels[0].log_path()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The node's `ROLE` (`master`, `slave`), `None` when it does not answer.
async fn role(node: &RedisServer) -> Option<String> {
    role_at(&format!("127.0.0.1:{}", node.port()))
        .await
        .map(|(role, _)| role)
}

async fn is_master(node: &RedisServer) -> bool {
    role(node).await.as_deref() == Some("master")
}

async fn sentinel_command(port: u16, args: &[&str]) -> Result<Value, HarnessError> {
    command_at(&format!("127.0.0.1:{port}"), args).await
}

/// The master's port as one sentinel names it (`None`: not known yet).
async fn master_port_via(sentinel: u16) -> Result<Option<u16>, HarnessError> {
    let v = sentinel_command(
        sentinel,
        &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
    )
    .await?;
    Ok(match &v {
        Value::Array(items) => match items.get(1) {
            Some(Value::BulkString(p)) => std::str::from_utf8(p).ok().and_then(|p| p.parse().ok()),
            _ => None,
        },
        _ => None,
    })
}

/// A field of a flat `name value name value …` reply (`SENTINEL MASTER`).
fn field(v: &Value, name: &str) -> Option<String> {
    let items = match v {
        Value::Array(items) => items.as_slice(),
        _ => return None,
    };
    items
        .chunks(2)
        .find(|kv| kv.first().and_then(reply_text).as_deref() == Some(name))
        .and_then(|kv| kv.get(1).and_then(reply_text))
}

fn info_text(v: &Value) -> String {
    reply_text(v).unwrap_or_default()
}
