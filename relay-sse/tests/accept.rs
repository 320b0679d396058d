//! Out of file descriptors: `accept()` fails until connections close. The
//! front backs off, counts every failure in
//! `relay_sse_accept_errors_total` and logs at most one warning per
//! interval (it used to log one per failure, every 50 ms).
//!
//! Runs the real binary under `ulimit -n` (its own process: the limit must
//! not starve the test harness).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use relay_testkit::bench::prometheus_sample;
use relay_testkit::procs::{free_addr, with_fd_limit, KillOnDrop};

const LIMIT: Duration = Duration::from_secs(30);

fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}

#[test]
fn accept_failures_back_off_counted_and_logged_once() {
    let addr = free_addr();
    let log = std::env::temp_dir().join(format!("relay-sse-accept-{}.log", std::process::id()));
    let err = std::fs::File::create(&log).expect("log file");
    let _child = KillOnDrop(
        with_fd_limit(48, env!("CARGO_BIN_EXE_relay-sse"))
            .args(["--backend", "memory", "--listen", &addr.to_string()])
            .env("RUST_LOG", "warn")
            .env("RELAY_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn relay-sse"),
    );
    let start = Instant::now();
    while get(addr, "/healthz").is_none() {
        assert!(start.elapsed() < LIMIT, "relay-sse did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    // More idle connections than descriptors: accept() fails (EMFILE)
    // while the rest wait in the backlog.
    let clients: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    assert!(clients.len() > 60, "only {} connections", clients.len());
    std::thread::sleep(Duration::from_secs(2));
    drop(clients);
    let start = Instant::now();
    let metrics = loop {
        if let Some(m) = get(addr, "/metrics") {
            break m;
        }
        assert!(start.elapsed() < LIMIT, "the gateway never recovered");
        std::thread::sleep(Duration::from_millis(50));
    };
    let errors: u64 = prometheus_sample(&metrics, "relay_sse_accept_errors_total").unwrap_or(0);
    assert!(errors > 0, "no accept error counted:\n{metrics}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let warnings = text.matches("accept failed").count();
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} accept warnings for {errors} failures:\n{text}"
    );
}
