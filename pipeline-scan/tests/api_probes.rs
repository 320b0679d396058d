//! The `pipeline-scan api` binary's probes: `/healthz` answers while the
//! process serves; `/readyz` is 200 only while Redis and RabbitMQ are both
//! reachable, and flips to 503 (naming the dependency) when either is not,
//! then back once it returns — what a Kubernetes readiness probe needs to
//! take an API pod out of its Service while it could not accept a scan.

use std::net::SocketAddr;
use std::time::Duration;

use relay_testkit::procs::{free_addr, readyz_status, wait_readyz, Proc};
use relay_testkit::rabbitmq::{delete_queues_with_prefix, unique_prefix};
use relay_testkit::redis::RedisServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const BROKER: &str = "127.0.0.1:5672";
const LIMIT: Duration = Duration::from_secs(30);

/// A TCP forwarder to the broker that the test can cut: while open it
/// relays every connection; closing it drops every relayed connection and
/// stops listening, so the broker is unreachable through it.
struct BrokerGate {
    tasks: Option<JoinSet<()>>,
}

impl BrokerGate {
    async fn open_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind gate");
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut broker) = TcpStream::connect(BROKER).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                    }
                });
            }
        });
        Self { tasks: Some(tasks) }
    }

    /// Drops the listener and every relayed connection.
    async fn close(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.shutdown().await;
        }
    }
}

async fn body(addr: SocketAddr, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("request");
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_redis_and_rabbitmq() {
    let redis = RedisServer::start();
    let gate_addr = free_addr();
    let mut gate = BrokerGate::open_on(gate_addr).await;
    let api = free_addr();
    let amqp = format!("amqp://guest:guest@{gate_addr}/%2f");
    let prefix = unique_prefix("probes");
    let api_proc = Proc::spawn(
        "pipeline-scan",
        &[
            "--redis-url",
            &redis.url(),
            "--amqp-url",
            &amqp,
            "--queue-prefix",
            &prefix,
            "api",
            "--listen",
            &api.to_string(),
        ],
        &[],
    );

    wait_readyz(api, 200, LIMIT).await;
    assert_eq!(body(api, "/healthz").await.0, 200);
    let (status, metrics) = body(api, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("pipeline_scan_http_"), "{metrics}");

    // The broker goes away: not ready, and the body says which.
    gate.close().await;
    wait_readyz(api, 503, LIMIT).await;
    let (_, why) = body(api, "/readyz").await;
    assert!(why.contains("rabbitmq"), "{why}");
    assert!(!why.contains("redis"), "{why}");
    assert_eq!(body(api, "/healthz").await.0, 200, "alive while not ready");

    // It comes back on the same address: ready again.
    let mut gate = BrokerGate::open_on(gate_addr).await;
    wait_readyz(api, 200, LIMIT).await;

    // Redis goes away: not ready, naming Redis; back when it restarts.
    redis.stop();
    wait_readyz(api, 503, LIMIT).await;
    let (_, why) = body(api, "/readyz").await;
    assert!(why.contains("redis"), "{why}");
    redis.restart();
    wait_readyz(api, 200, LIMIT).await;
    assert_eq!(readyz_status(api).await, Some(200));

    gate.close().await;
    drop(api_proc);
    delete_queues_with_prefix(&prefix);
}
