//! Private `redis-server` processes with fault injection, for the
//! integration tests, benches and load runs of every crate in the workspace.
//!
//! Tests that need Redis must be able to break it (kill it, restart it with
//! its data, drop its clients, make it refuse writes) and to count what it
//! did (`INFO commandstats`); a shared server cannot do that, so each test
//! gets its own process, or (`REDIS_URL`) a shared one with a private key
//! prefix when fault injection is not needed.
//!
//! - [`RedisServer`] starts a private `redis-server` (from `PATH`, or the
//!   binary named by `REDIS_SERVER_BIN`) on a free loopback port with its own
//!   temporary directory, and kills it on drop. It can be killed (`kill -9`),
//!   restarted on the same port and directory (so AOF data survives), have its
//!   clients killed, and report `INFO commandstats`.
//! - [`TestRedis`] is what most tests want: a private server, or, when the
//!   `REDIS_URL` environment variable is set, that shared server with a unique
//!   key prefix (fault injection then returns [`HarnessError`]).
//!
//! A missing `redis-server` binary is a loud panic, never a silent skip.
//!
//! The kit does not know relay's types: a test connects its backend to
//! [`TestRedis::url`] itself.
//!
//! ```no_run
//! use relay_testkit::redis::TestRedis;
//! # async fn demo() {
//! let redis = TestRedis::get();
//! let client = redis::Client::open(redis.url()).expect("url");
//! let key = redis.key("jobs");
//! # let _ = (client, key);
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{AsyncConnectionConfig, Value};
use tempfile::TempDir;

use crate::procs::free_port;
use crate::wait::WaitTimeout;

/// Environment variable naming the `redis-server` binary to use.
pub const REDIS_SERVER_BIN_ENV: &str = "REDIS_SERVER_BIN";
/// Environment variable pointing tests at an existing server instead.
pub const REDIS_URL_ENV: &str = "REDIS_URL";

/// How long a starting server may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A harness operation that cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Talking to the server failed (connect, or the command's error reply).
    #[error("redis command failed")]
    Redis(#[from] redis::RedisError),
    /// [`RedisServer::command`] was called without a command name.
    #[error("empty command")]
    EmptyCommand,
    /// The server answered a command with a reply of an unexpected shape.
    #[error("{command} answered {reply}")]
    UnexpectedReply {
        /// The command, e.g. `CLIENT KILL`.
        command: &'static str,
        /// The reply, debug-formatted.
        reply: String,
    },
    /// A `redis-server` or `redis-cli` the harness runs could not be started,
    /// did not come up or failed (the message has its log's tail).
    #[error("{0}")]
    Process(String),
    /// A wait for a state of the servers hit its hang guard (the error says
    /// what was still missing).
    #[error(transparent)]
    Timeout(#[from] WaitTimeout),
    /// A cluster is not in the state an operation needs (no such node, no
    /// replica to promote, a slot not migrating, a malformed topology).
    #[error("{0}")]
    Cluster(String),
    /// Process control (kill, restart) or `FLUSHALL` asked of the external
    /// cluster named by `RELAY_TEST_REDIS_CLUSTER`.
    #[error(
        "this needs a private Redis Cluster, but {env} points the tests at an external one \
         ({seeds}); unset {env} to run it"
    )]
    ExternalCluster {
        /// The variable naming the external cluster.
        env: &'static str,
        /// The external cluster's seed addresses, as given.
        seeds: String,
    },
    /// Fault injection on the shared server named by `REDIS_URL`.
    #[error(
        "this needs a private redis-server, but {REDIS_URL_ENV} points the tests at a \
         shared one ({url}); unset {REDIS_URL_ENV} to run it"
    )]
    NotPrivate {
        /// The shared server's URL.
        url: String,
    },
}

/// A key prefix unique to this process and call, e.g. `t:4242:1712345678901:7:`.
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or(0);
    format!("t:{}:{nanos}:{n}:", std::process::id())
}

/// Options of a private server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisServerOptions {
    /// Enable the append-only file (with `appendfsync always`, so a
    /// `kill -9` loses nothing acknowledged).
    pub appendonly: bool,
    /// Further `redis-server` arguments, e.g. `["--maxmemory", "64mb"]`.
    pub extra_args: Vec<String>,
}

impl RedisServerOptions {
    /// Options with AOF enabled.
    pub fn with_aof() -> Self {
        Self {
            appendonly: true,
            extra_args: Vec::new(),
        }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// Call statistics of one command, from `INFO commandstats`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CommandStat {
    /// Number of calls.
    pub calls: u64,
    /// Total server CPU time, in microseconds.
    pub usec: u64,
    /// Calls that failed (Redis 7+; 0 otherwise).
    pub failed_calls: u64,
}

/// A private `redis-server` process on a loopback port, killed on drop.
pub struct RedisServer {
    bin: PathBuf,
    port: u16,
    dir: TempDir,
    opts: RedisServerOptions,
    child: Mutex<Option<Child>>,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .field("opts", &self.opts)
            .finish()
    }
}

/// Locates `redis-server`: `$REDIS_SERVER_BIN`, else the first on `PATH`.
///
/// # Panics
/// When none is found, with instructions: tests that need Redis must fail
/// loudly, never be skipped.
pub fn redis_server_bin() -> PathBuf {
    try_redis_server_bin().unwrap_or_else(|e| panic!("{e}"))
}

/// [`redis_server_bin`], with the instructions as the error.
pub(crate) fn try_redis_server_bin() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os(REDIS_SERVER_BIN_ENV) {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            return Err(format!(
                "{REDIS_SERVER_BIN_ENV}={} is not a file",
                bin.display()
            ));
        }
        return Ok(bin);
    }
    on_path("redis-server").ok_or_else(|| {
        format!(
            "redis-server not found: these tests need a real Redis (>= 7.0). Install it \
             (`apt-get install redis-server`), set {REDIS_SERVER_BIN_ENV}=/path/to/redis-server, \
             or set {REDIS_URL_ENV}=redis://host:port to use a running server"
        )
    })
}

/// Locates `redis-cli`: next to the `redis-server` in use (the two come from
/// one build), else the first on `PATH`.
pub(crate) fn redis_cli_bin() -> Result<PathBuf, String> {
    let sibling = try_redis_server_bin()
        .ok()
        .and_then(|server| server.parent().map(|dir| dir.join("redis-cli")))
        .filter(|cli| cli.is_file());
    sibling.or_else(|| on_path("redis-cli")).ok_or_else(|| {
        "redis-cli not found (next to redis-server nor on PATH): install it with redis-server"
            .into()
    })
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Sends `PING` over a raw socket; true on `+PONG`.
pub(crate) fn answers_ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) => buf[..n].starts_with(b"+PONG"),
        Err(_) => false,
    }
}

impl RedisServer {
    /// Starts a server with default options (no persistence).
    ///
    /// # Panics
    /// When `redis-server` is missing or does not come up.
    pub fn start() -> Self {
        Self::start_with(RedisServerOptions::default())
    }

    /// Starts a server with `opts`.
    ///
    /// # Panics
    /// When `redis-server` is missing or does not come up.
    pub fn start_with(opts: RedisServerOptions) -> Self {
        Self::try_start_on(&opts, || Ok(free_port())).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server with `opts` on a port from `pick_port`, asked again
    /// after a failed start: a free port can be taken between probing and
    /// binding.
    pub(crate) fn try_start_on(
        opts: &RedisServerOptions,
        mut pick_port: impl FnMut() -> Result<u16, String>,
    ) -> Result<Self, HarnessError> {
        let bin = try_redis_server_bin().map_err(HarnessError::Process)?;
        let mut last_err = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("relay-redis-")
                .tempdir()
                .map_err(|e| {
                    HarnessError::Process(format!("cannot create a temp dir for redis-server: {e}"))
                })?;
            let server = RedisServer {
                bin: bin.clone(),
                port: pick_port().map_err(HarnessError::Process)?,
                dir,
                opts: opts.clone(),
                child: Mutex::new(None),
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last_err = e,
            }
        }
        Err(HarnessError::Process(format!(
            "redis-server ({}) did not start: {last_err}",
            bin.display()
        )))
    }

    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--port".into(),
            self.port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            self.dir.path().display().to_string(),
            "--save".into(),
            String::new(),
            "--daemonize".into(),
            "no".into(),
            "--logfile".into(),
            self.log_path().display().to_string(),
            "--appendonly".into(),
            if self.opts.appendonly { "yes" } else { "no" }.into(),
        ];
        if self.opts.appendonly {
            args.extend(["--appendfsync".into(), "always".into()]);
        }
        args.extend(self.opts.extra_args.iter().cloned());
        args
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn spawn(&self) -> Result<(), String> {
        let mut child = Command::new(&self.bin)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if answers_ping(self.port) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "exited with {status} on port {}; log:\n{}",
                    self.port,
                    self.log_tail()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no PING answer on port {} within {START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        Ok(())
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the running server (it runs in the foreground,
    /// as this harness's child); `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        let guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(Child::id)
    }

    /// The data directory (kept across restarts).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server like `kill -9` (no save, no goodbye to clients
    /// beyond the kernel closing their sockets). Idempotent.
    pub fn stop(&self) {
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills (if running) and starts the server again on the same port and
    /// directory; with AOF enabled the data survives.
    ///
    /// # Panics
    /// When the server does not come back.
    pub fn restart(&self) {
        self.try_restart().unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`RedisServer::restart`], returning the failure.
    pub(crate) fn try_restart(&self) -> Result<(), HarnessError> {
        self.stop();
        // The old socket may linger briefly; redis-server binds with
        // SO_REUSEADDR, but retry a few times anyway.
        let mut last = String::new();
        for _ in 0..20 {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(HarnessError::Process(format!(
            "redis-server did not restart on port {}: {last}",
            self.port
        )))
    }

    /// Keeps the data directory (and the log in it) when the server is
    /// dropped, so a failed test's logs can be read.
    pub(crate) fn keep_dir(&mut self) {
        self.dir.disable_cleanup(true);
    }

    /// Runs one command on a fresh connection.
    pub async fn command(&self, args: &[&str]) -> Result<Value, HarnessError> {
        command_at(&format!("127.0.0.1:{}", self.port), args).await
    }

    /// `CLIENT KILL <filter...>`, e.g. `["TYPE", "pubsub"]`, `["TYPE",
    /// "normal"]` or `["ADDR", "127.0.0.1:5555"]`. The harness's own
    /// connection is skipped. Returns how many clients were killed.
    pub async fn client_kill(&self, filter: &[&str]) -> Result<u64, HarnessError> {
        let mut args = vec!["CLIENT", "KILL"];
        args.extend_from_slice(filter);
        match self.command(&args).await? {
            Value::Int(n) => Ok(u64::try_from(n).unwrap_or(0)),
            Value::Okay => Ok(1),
            other => Err(HarnessError::UnexpectedReply {
                command: "CLIENT KILL",
                reply: format!("{other:?}"),
            }),
        }
    }

    /// `INFO commandstats`, by lowercase command name (`evalsha`, `xadd`, …).
    pub async fn info_commandstats(&self) -> Result<HashMap<String, CommandStat>, HarnessError> {
        let v = self.command(&["INFO", "commandstats"]).await?;
        let text = reply_text(&v).ok_or_else(|| HarnessError::UnexpectedReply {
            command: "INFO",
            reply: format!("{v:?}"),
        })?;
        Ok(parse_commandstats(&text))
    }

    /// `CONFIG RESETSTAT` (zeroes the command statistics).
    pub async fn reset_stats(&self) -> Result<(), HarnessError> {
        self.command(&["CONFIG", "RESETSTAT"]).await.map(|_| ())
    }

    /// `FLUSHALL`.
    pub async fn flushall(&self) -> Result<(), HarnessError> {
        self.command(&["FLUSHALL"]).await.map(|_| ())
    }

    /// Makes the server refuse writes the way a production server can while
    /// staying up and answering reads (fault injection).
    pub async fn refuse_writes(&self, refusal: WriteRefusal) -> Result<(), HarnessError> {
        match refusal {
            WriteRefusal::Oom => {
                self.command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
                    .await?;
                self.command(&["CONFIG", "SET", "maxmemory", "1"]).await?;
            }
            WriteRefusal::NoReplicas => {
                self.command(&["CONFIG", "SET", "min-replicas-to-write", "1"])
                    .await?;
            }
        }
        Ok(())
    }

    /// Undoes every [`RedisServer::refuse_writes`].
    pub async fn allow_writes(&self) -> Result<(), HarnessError> {
        self.command(&["CONFIG", "SET", "maxmemory", "0"]).await?;
        self.command(&["CONFIG", "SET", "min-replicas-to-write", "0"])
            .await?;
        Ok(())
    }
}

/// How [`RedisServer::refuse_writes`] makes a server refuse writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteRefusal {
    /// `maxmemory` below the memory in use with `noeviction`: every
    /// memory-growing command answers `OOM`, reads and `PUBLISH` still work.
    Oom,
    /// `min-replicas-to-write 1` with no replica: every write answers
    /// `NOREPLICAS`, reads and `PUBLISH` still work.
    NoReplicas,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `cmd` on a fresh connection to `addr` (`host:port`). Fresh, so a
/// command never waits behind another test's, and a killed server costs no
/// reconnect logic; the timeouts keep a stopped (not killed) server from
/// hanging a test.
pub(crate) async fn query_at(addr: &str, cmd: &redis::Cmd) -> Result<Value, HarnessError> {
    let client = redis::Client::open(format!("redis://{addr}"))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    Ok(cmd.query_async(&mut conn).await?)
}

/// Runs one command (`["CLUSTER", "INFO"]`) on a fresh connection to `addr`.
pub(crate) async fn command_at(addr: &str, args: &[&str]) -> Result<Value, HarnessError> {
    let (name, rest) = args.split_first().ok_or(HarnessError::EmptyCommand)?;
    let mut cmd = redis::cmd(name);
    cmd.arg(rest);
    query_at(addr, &cmd).await
}

/// The server's `ROLE` (`master`, `slave`) and, for a replica, its link
/// state (`connected` once in sync); `None` when it does not answer.
pub(crate) async fn role_at(addr: &str) -> Option<(String, Option<String>)> {
    let Ok(Value::Array(items)) = command_at(addr, &["ROLE"]).await else {
        return None;
    };
    let role = items.first().and_then(reply_text)?;
    let link = if role == "slave" {
        items.get(3).and_then(reply_text)
    } else {
        None
    };
    Some((role, link))
}

/// The text of a string reply (`INFO`, `CLUSTER NODES`, a bulk string).
pub(crate) fn reply_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Parses `cmdstat_<name>:calls=N,usec=N,...` lines.
pub fn parse_commandstats(text: &str) -> HashMap<String, CommandStat> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, values)) = rest.split_once(':') else {
            continue;
        };
        let mut stat = CommandStat::default();
        for kv in values.split(',') {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let n = v.parse::<u64>().unwrap_or(0);
            match k {
                "calls" => stat.calls = n,
                "usec" => stat.usec = n,
                "failed_calls" => stat.failed_calls = n,
                _ => {}
            }
        }
        out.insert(name.to_ascii_lowercase(), stat);
    }
    out
}

/// A Redis for one test: a private server, or the shared server named by
/// `REDIS_URL` (with a unique key prefix, and no fault injection).
#[derive(Debug)]
pub struct TestRedis {
    server: Option<RedisServer>,
    url: String,
    prefix: String,
}

impl TestRedis {
    /// The shared server if `REDIS_URL` is set, else a new private one.
    ///
    /// # Panics
    /// When a private server is needed and `redis-server` is missing.
    pub fn get() -> Self {
        match std::env::var(REDIS_URL_ENV) {
            Ok(url) if !url.trim().is_empty() => Self {
                server: None,
                url,
                prefix: unique_prefix(),
            },
            _ => Self::private(),
        }
    }

    /// Always a new private server (for tests that inject faults).
    pub fn private() -> Self {
        Self::private_with(RedisServerOptions::default())
    }

    /// A new private server with options.
    pub fn private_with(opts: RedisServerOptions) -> Self {
        let server = RedisServer::start_with(opts);
        Self {
            url: server.url(),
            server: Some(server),
            prefix: unique_prefix(),
        }
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key prefix reserved for this test.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `prefix + name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Whether this is a private server (fault injection available).
    pub fn is_private(&self) -> bool {
        self.server.is_some()
    }

    /// The private server, or an error explaining why there is none.
    pub fn server(&self) -> Result<&RedisServer, HarnessError> {
        self.server
            .as_ref()
            .ok_or_else(|| HarnessError::NotPrivate {
                url: self.url.clone(),
            })
    }

    /// Kills the server (see [`RedisServer::stop`]).
    pub fn stop(&self) -> Result<(), HarnessError> {
        self.server()?.stop();
        Ok(())
    }

    /// Restarts the server (see [`RedisServer::restart`]).
    pub fn restart(&self) -> Result<(), HarnessError> {
        self.server()?.restart();
        Ok(())
    }

    /// See [`RedisServer::client_kill`].
    pub async fn client_kill(&self, filter: &[&str]) -> Result<u64, HarnessError> {
        self.server()?.client_kill(filter).await
    }

    /// See [`RedisServer::info_commandstats`] (works on a shared server too,
    /// but then counts every client's commands).
    pub async fn info_commandstats(&self) -> Result<HashMap<String, CommandStat>, HarnessError> {
        match &self.server {
            Some(s) => s.info_commandstats().await,
            None => {
                let client = redis::Client::open(self.url.as_str())?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                let text: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query_async(&mut conn)
                    .await?;
                Ok(parse_commandstats(&text))
            }
        }
    }

    /// `FLUSHALL` on a private server (refused on a shared one).
    pub async fn flushall(&self) -> Result<(), HarnessError> {
        self.server()?.flushall().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_injection_on_a_shared_server_is_refused() {
        let shared = TestRedis {
            server: None,
            url: "redis://shared.invalid:6379".into(),
            prefix: unique_prefix(),
        };
        assert!(!shared.is_private());
        let err = shared.stop().expect_err("no private server to stop");
        assert!(matches!(&err, HarnessError::NotPrivate { url } if url == shared.url()));
        assert!(err.to_string().contains(REDIS_URL_ENV), "{err}");
    }

    #[test]
    fn prefixes_are_unique() {
        assert_ne!(unique_prefix(), unique_prefix());
    }

    #[test]
    fn parses_commandstats() {
        let s = parse_commandstats(
            "# Commandstats\r\ncmdstat_evalsha:calls=3,usec=90,usec_per_call=30.00,rejected_calls=0,failed_calls=1\r\ncmdstat_xadd:calls=7,usec=14\r\n",
        );
        assert_eq!(s["evalsha"].calls, 3);
        assert_eq!(s["evalsha"].usec, 90);
        assert_eq!(s["evalsha"].failed_calls, 1);
        assert_eq!(s["xadd"].calls, 7);
    }
}
