//! Smoke tests of the real binary with `--spawn` (a private redis-server, or
//! a private Redis Cluster, `relay-router`, `relay-sse`, and for scans `pipeline-scan api` + worker
//! on RabbitMQ at 127.0.0.1:5672 — `scripts/test.sh` starts it; without it the
//! scan test fails, saying so).
//! Needs the workspace binaries built (`cargo test --workspace` builds them).

use std::process::Command;
use std::time::Duration;

fn relay_load(args: &[&str]) -> serde_json::Value {
    relay_load_env(args, &[])
}

fn relay_load_env(args: &[&str], envs: &[(&str, &str)]) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("out.json");
    let html = dir.path().join("out.html");
    let out = Command::new(env!("CARGO_BIN_EXE_relay-load"))
        .envs(envs.iter().copied())
        .args(["--spawn", "--quiet", "--json"])
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .args(args)
        .output()
        .expect("run relay-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "relay-load failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::metadata(&html).expect("html written").len() > 1000);
    println!("{stdout}");
    serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json")
}

#[test]
fn relay_spawn_low_rate_is_lossless() {
    let r = relay_load(&[
        "relay",
        "--rate",
        "500",
        "--duration-secs",
        "3",
        "--clients",
        "10",
        "--warmup-secs",
        "0.5",
    ]);
    let paths = r["figures"]["paths"].as_array().expect("paths");
    assert_eq!(paths.len(), 2, "relay and echo ceiling");
    for p in paths {
        let name = p["path"].as_str().unwrap_or("?");
        assert!(
            p["published"].as_u64().unwrap_or(0) > 1000,
            "{name}: published {p}"
        );
        assert_eq!(p["delivered"], p["expected"], "{name}: {p}");
        assert_eq!(p["lost"], 0, "{name}: {p}");
        assert_eq!(p["duplicates"], 0, "{name}: {p}");
        assert_eq!(p["unterminated_clients"], 0, "{name}: {p}");
    }
}

/// `--topology cluster` (here from its environment variable): a private
/// 3 + 3 Redis Cluster, the router and gateway on it with
/// `--redis-cluster`, the producers on it too; every event arrives, and
/// the report has every node's CPU, where the shard streams and jobs live,
/// and the bus probe.
#[test]
fn relay_spawn_cluster_low_rate_is_lossless_and_reports_every_node() {
    let r = relay_load_env(
        &[
            "relay",
            "--shards",
            "6",
            "--rate",
            "300",
            "--duration-secs",
            "2",
            "--clients",
            "6",
            "--warmup-secs",
            "0.5",
            "--no-ceiling",
        ],
        &[("RELAY_LOAD_TOPOLOGY", "cluster")],
    );
    let f = &r["figures"];
    assert_eq!(f["topology"], "cluster", "{f}");
    let paths = f["paths"].as_array().expect("paths");
    assert_eq!(paths.len(), 1, "--no-ceiling: the relay path only");
    let p = &paths[0];
    assert!(p["published"].as_u64().unwrap_or(0) > 300, "{p}");
    assert_eq!(p["delivered"], p["expected"], "{p}");
    assert_eq!(p["lost"], 0, "{p}");
    assert_eq!(p["duplicates"], 0, "{p}");
    assert_eq!(p["unterminated_clients"], 0, "{p}");

    let c = &f["cluster"];
    let nodes = c["nodes"].as_array().expect("cluster nodes");
    let role = |r: &str| nodes.iter().filter(|n| n["role"] == r).count();
    assert_eq!((role("master"), role("replica")), (3, 3), "{c}");
    let sum = |k: &str| -> u64 { nodes.iter().map(|n| n[k].as_u64().unwrap_or(0)).sum() };
    assert_eq!(sum("jobs_owned"), 6, "each job's hash on one master: {c}");
    assert_eq!(
        sum("jobs_via_shards"),
        6,
        "each job's stream on one master: {c}"
    );
    let shards: usize = nodes
        .iter()
        .map(|n| n["shard_streams"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(shards, 6, "each shard stream on one master: {c}");
    // The masters did the run's Redis work, measured per node.
    for n in nodes.iter().filter(|n| n["role"] == "master") {
        assert!(n["cpu_s"].as_f64().unwrap_or(0.0) > 0.0, "{n}");
    }
    let shares: f64 = nodes
        .iter()
        .filter_map(|n| n["share_of_masters_pct"].as_f64())
        .sum();
    assert!(
        (shares - 100.0).abs() < 0.1,
        "shares add up to {shares}: {c}"
    );
    // Each node's CPU is also one of the run's per-process figures.
    let cpu = p["cpu_s"].as_array().expect("cpu_s");
    assert_eq!(
        cpu.iter()
            .filter(|e| e[0].as_str().unwrap_or("").starts_with("redis "))
            .count(),
        6,
        "{cpu:?}"
    );
    // The bus probe measured every node; the cluster ceilings ran.
    let probe = c["bus_probe"]["nodes"].as_array().expect("bus probe");
    assert_eq!(probe.len(), 6, "{c}");
    assert_eq!(probe.iter().filter(|n| n["role"] == "publisher").count(), 1);
    let ceilings = f["redis_ceilings"].as_array().expect("ceilings");
    assert!(
        ceilings
            .iter()
            .any(|e| e[0].as_str().unwrap_or("").starts_with("combined")),
        "{ceilings:?}"
    );
}

#[test]
fn scan_spawn_handful_of_vus_completes() {
    assert!(
        std::net::TcpStream::connect_timeout(
            &"127.0.0.1:5672".parse().expect("addr"),
            Duration::from_millis(500),
        )
        .is_ok(),
        "no RabbitMQ on 127.0.0.1:5672: start it (`rabbitmq-server -detached`; scripts/test.sh does)"
    );
    let r = relay_load(&[
        "scan",
        "--stages",
        "2s:5,6s:5,1s:0",
        "--think-ms",
        "100-300",
        "--sim-latency-ms",
        "100±20",
        "--sim-stage-latency-ms",
        "rule=5,answer=150±30,reward=5",
        "--iteration-timeout-secs",
        "20",
    ]);
    let f = &r["figures"];
    assert!(f["iterations"].as_u64().unwrap_or(0) >= 10, "{f}");
    assert_eq!(f["completion_pct"].as_f64(), Some(100.0), "{f}");
    assert_eq!(f["duplicates"], 0, "{f}");
    assert_eq!(f["missing"], 0, "{f}");
    // model_ms arrives in the stage events: model time ≈ 260 ms per job.
    let model = f["model"]["p50_ms"].as_f64().unwrap_or(0.0);
    assert!((150.0..400.0).contains(&model), "model p50 {model}");
    assert!(f["overhead"]["count"].as_u64().unwrap_or(0) >= 10, "{f}");
    assert_no_queues_left(&environment(&r, "queue prefix"));
}

#[test]
fn chaos_short_run_injects_every_fault_checks_and_cleans_up() {
    assert!(
        std::net::TcpStream::connect_timeout(
            &"127.0.0.1:5672".parse().expect("addr"),
            Duration::from_millis(500),
        )
        .is_ok(),
        "no RabbitMQ on 127.0.0.1:5672: start it (`rabbitmq-server -detached`; scripts/test.sh does)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("chaos.json");
    let out = Command::new(env!("CARGO_BIN_EXE_relay-load"))
        .args(["--quiet", "--json"])
        .arg(&json)
        .args([
            "chaos",
            "--secs",
            "12",
            "--rate",
            "3",
            "--drain-secs",
            "60",
            "--kill-every-secs",
            "1.5",
            "--redis-fault-every-secs",
            "1",
            "--redis-restarts",
            "1",
            "--amqp-close-every-secs",
            "4",
            "--seed",
            "7",
        ])
        .output()
        .expect("run relay-load chaos");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit 1 is how violations of the system under test are reported; any
    // other failure is the tool's.
    assert!(
        out.status.success() || stderr.contains("violations (see the findings above)"),
        "relay-load chaos failed\nstdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    let f = &r["figures"];
    let n = |k: &str| f[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {f}"));
    assert!(n("accepted") >= 20, "{f}");
    assert_eq!(
        n("submitted"),
        n("accepted") + n("rejected") + n("gave_up"),
        "{f}"
    );
    assert_eq!(n("accepted"), n("terminal") + n("not_terminal"), "{f}");
    assert!(n("events_delivered") >= 10 * n("terminal") / 2, "{f}");
    assert!(n("kills_total") >= 4, "{f}");
    assert_eq!(n("redis_restarts"), 1, "{f}");
    assert!(n("amqp_rounds") >= 1, "{f}");
    assert!(
        n("client_kill_normal")
            + n("client_kill_pubsub")
            + n("refusals_oom")
            + n("refusals_noreplicas")
            + n("pauses")
            >= 4,
        "{f}"
    );
    // Everything it started is gone: the gateways and the queues.
    let env: Vec<(String, String)> =
        serde_json::from_value(r["environment"].clone()).expect("environment");
    let get = |k: &str| {
        env.iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{k} missing: {env:?}"))
    };
    for gw in get("gateways").split(", ") {
        let addr = gw.trim_start_matches("http://").parse().expect("gateway");
        assert!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
            "gateway {gw} still listening"
        );
    }
    assert_no_queues_left(&get("queue prefix"));
}

/// The broker is shared: a run must delete every queue it declared.
fn assert_no_queues_left(prefix: &str) {
    let queues = Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name"])
        .output()
        .expect("rabbitmqctl");
    let left: Vec<String> = String::from_utf8_lossy(&queues.stdout)
        .lines()
        .filter(|q| q.starts_with(&format!("{prefix}.")))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "queues left behind: {left:?}");
}

/// The value of `name` in a report's environment rows.
fn environment(r: &serde_json::Value, name: &str) -> String {
    let env: Vec<(String, String)> =
        serde_json::from_value(r["environment"].clone()).expect("environment");
    env.into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{name} missing from the report environment"))
}
