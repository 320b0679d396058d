//! `SentinelSet` against real processes: a failover promotes the replica
//! with the replicated data, and dropping the set stops every process and
//! removes every directory. An integration test (its own process) so its
//! five servers on free ports do not race the unit tests' port probes.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use redis::Value;
use relay_testkit::sentinel::SentinelSet;

fn answers(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_replica_and_cleans_up() {
    let set = SentinelSet::start();
    let first = set.master().await.expect("master").port();
    assert_eq!(first, set.nodes()[0].port());
    set.nodes()[0]
        .command(&["SET", "k", "v"])
        .await
        .expect("write to the master");
    set.nodes()[0]
        .command(&["WAIT", "1", "10000"])
        .await
        .expect("replicated");
    let promoted = set.fail_over().await.port();
    assert_eq!(promoted, set.nodes()[1].port());
    assert!(!set.nodes()[0].is_running());
    let v = set.nodes()[1].command(&["GET", "k"]).await.expect("read");
    assert_eq!(v, Value::BulkString(b"v".to_vec()));
    let ports: Vec<u16> = set
        .sentinel_addrs()
        .iter()
        .filter_map(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
        .chain(set.nodes().iter().map(|n| n.port()))
        .collect();
    assert_eq!(ports.len(), 5);
    let mut dirs = set.sentinel_dirs();
    dirs.extend(set.nodes().iter().map(|n| n.dir().to_owned()));
    drop(set);
    for port in ports {
        assert!(!answers(port), "a process still listens on {port}");
    }
    for dir in dirs {
        assert!(!dir.exists(), "{dir:?} not removed");
    }
}
