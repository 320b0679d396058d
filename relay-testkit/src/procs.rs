//! Running the workspace's real binaries from tests, benchmarks and the load
//! tool: locate them next to the current executable, spawn them with their
//! flags, wait until they answer, and kill them (SIGKILL) on drop.
//!
//! End-to-end tests in every crate, the benches and `relay-load --spawn`
//! all start processes on free loopback ports and must never leave one
//! behind, even when a test panics; that is why every process here is
//! owned by a value that kills it on drop.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use crate::ports::{free_addr, free_port};
use crate::wait::wait_until;

/// Path of a workspace binary (`relay-router`, `relay-sse`, `relayctl`,
/// `pipeline-scan`, `relay-load`), looked up in `$RELAY_BIN_DIR`, then in the
/// target directory of the running test or bench (`target/<profile>/`).
///
/// # Panics
/// When the binary does not exist: build it first (`cargo build --workspace`;
/// `cargo test --workspace` builds every member's binaries before running).
pub fn bin_path(name: &str) -> PathBuf {
    let mut candidates = Vec::new();
    if let Ok(dir) = std::env::var("RELAY_BIN_DIR") {
        candidates.push(PathBuf::from(dir).join(name));
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/deps/<test-binary> → target/<profile>/<name>
        for dir in exe.ancestors().skip(1).take(3) {
            candidates.push(dir.join(name));
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "binary {name:?} not found (looked in {candidates:?}); run `cargo build --workspace` first"
            )
        })
}

/// `sh -c 'ulimit -n <fds> && exec <program> "$@"'`: `program` runs in its
/// own process under a descriptor limit that does not starve the test
/// harness. Add its arguments with [`Command::args`].
pub fn with_fd_limit(fds: u32, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {fds} && exec \"$0\" \"$@\""))
        .arg(program);
    cmd
}

/// Any child process (one built with [`Command`] rather than
/// [`Proc::spawn`]), killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child process of one of the workspace binaries, killed on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    stderr_log: Option<PathBuf>,
    child: Option<Child>,
}

impl Proc {
    /// Spawns `name` with `args` (stdout discarded, stderr inherited, logs at
    /// `RUST_LOG=warn` unless `envs` sets it).
    pub fn spawn(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::spawn_inner(name, args, envs, None)
    }

    /// [`Proc::spawn`], with stderr appended to `log` instead of inherited
    /// (the same file across restarts): long runs with many processes, such
    /// as `relay-load chaos`, keep each process's log apart.
    pub fn spawn_logged(name: &str, args: &[&str], envs: &[(&str, &str)], log: &Path) -> Self {
        Self::spawn_inner(name, args, envs, Some(log.to_path_buf()))
    }

    fn spawn_inner(
        name: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        stderr_log: Option<PathBuf>,
    ) -> Self {
        let mut p = Self {
            name: name.to_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            stderr_log,
            child: None,
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let mut cmd = Command::new(bin_path(&self.name));
        cmd.args(&self.args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.stderr());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        self.child = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", self.name)),
        );
    }

    fn stderr(&self) -> Stdio {
        let Some(path) = &self.stderr_log else {
            return Stdio::inherit();
        };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::inherit())
    }

    /// The process's exit status if it ended on its own since it was last
    /// started (not through [`Proc::kill9`] or [`Proc::terminate`]): reaped
    /// and reported once; [`Proc::pid`] is then `None` until a restart.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().ok()
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`, …) without waiting.
    pub fn signal(&self, name: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([format!("-{name}"), pid.to_string()])
                .status();
        }
    }

    /// Kills (SIGKILL) and starts again with the same arguments.
    pub fn restart(&mut self) {
        self.kill9();
        self.start();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until something accepts TCP connections at `addr`.
///
/// # Panics
/// After `limit` without success.
pub fn wait_for_port(addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listening on {addr} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// [`wait_for_port`] from async code (it runs on a blocking thread).
pub async fn wait_port(addr: SocketAddr, limit: Duration) {
    tokio::task::spawn_blocking(move || wait_for_port(addr, limit))
        .await
        .expect("wait_for_port");
}

/// The status code `addr` answers `GET /readyz` with, over a plain
/// HTTP/1.1 connection; `None` when nothing answers.
pub async fn readyz_status(addr: SocketAddr) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until `addr` answers `GET /readyz` with `want`.
///
/// # Panics
/// When it has not within `limit`.
pub async fn wait_readyz(addr: SocketAddr, want: u16, limit: Duration) {
    let what = format!("/readyz on {addr} answering {want}");
    wait_until(limit, &what, || async {
        readyz_status(addr).await == Some(want)
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn fd_limit_applies_to_the_program() {
        let out = with_fd_limit(37, "sh")
            .args(["-c", "ulimit -n"])
            .output()
            .expect("run sh");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "37");
    }

    #[test]
    fn kill_on_drop_reaps_the_child() {
        let child = Command::new("sleep")
            .arg("3600")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        drop(KillOnDrop(child));
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still exists"
        );
    }

    #[tokio::test]
    async fn readyz_status_reads_the_status_line() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 256];
            let _ = std::io::Read::read(&mut s, &mut buf);
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .expect("write");
        });
        assert_eq!(readyz_status(addr).await, Some(503));
        server.join().expect("server thread");
    }
}
