//! The Redis harness against a real `redis-server`: what the fault-injection
//! tests of the other crates rely on (data surviving a restart with AOF,
//! refused writes, killed clients, command statistics).

use relay_testkit::redis::{RedisServer, RedisServerOptions, TestRedis, WriteRefusal};

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

#[tokio::test]
async fn aof_data_survives_a_kill_and_restart_on_the_same_port() {
    let server = RedisServer::start_with(RedisServerOptions::with_aof());
    let port = server.port();
    let mut c = conn(&server.url()).await;
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await
        .expect("SET");
    let pid = server.pid().expect("running");
    server.stop();
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    server.restart();
    assert!(server.is_running());
    assert_ne!(server.pid(), Some(pid));
    assert_eq!(server.port(), port);
    let mut c = conn(&server.url()).await;
    let v: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut c)
        .await
        .expect("GET");
    assert_eq!(v.as_deref(), Some("v"));
}

#[tokio::test]
async fn refused_writes_fail_until_allowed_again() {
    for refusal in [WriteRefusal::Oom, WriteRefusal::NoReplicas] {
        let server = RedisServer::start();
        let mut c = conn(&server.url()).await;
        server.refuse_writes(refusal).await.expect("refuse writes");
        let refused: redis::RedisResult<()> = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query_async(&mut c)
            .await;
        assert!(refused.is_err(), "{refusal:?}: SET was accepted");
        server.allow_writes().await.expect("allow writes");
        let _: () = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query_async(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{refusal:?}: SET after allow_writes: {e}"));
    }
}

#[tokio::test]
async fn commandstats_count_calls_and_clients_can_be_killed() {
    let redis = TestRedis::private();
    let server = redis.server().expect("private");
    server.reset_stats().await.expect("reset");
    let mut c = conn(redis.url()).await;
    for i in 0..3 {
        let _: () = redis::cmd("SET")
            .arg(redis.key(&i.to_string()))
            .arg(i)
            .query_async(&mut c)
            .await
            .expect("SET");
    }
    let stats = redis.info_commandstats().await.expect("commandstats");
    assert_eq!(stats.get("set").map(|s| s.calls), Some(3));

    let killed = redis
        .client_kill(&["TYPE", "normal", "SKIPME", "yes"])
        .await
        .expect("CLIENT KILL");
    assert!(killed >= 1, "the test's connection was not killed");
    redis.flushall().await.expect("FLUSHALL");
}
