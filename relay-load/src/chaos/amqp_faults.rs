//! Broker faults: `rabbitmqctl close_connection` of this run's connections
//! only, found by matching the broker's `peer_port` with the sockets the
//! spawned api and workers own.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;

use super::faults::FaultPhase;
use super::fleet::{Cluster, Kind};

/// The port of an `amqp://` URL (5672 by default).
pub fn amqp_port(url: &str) -> u16 {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(5672)
}

/// Local ports of the TCP connections to `remote_port` owned by `pids`
/// (from `/proc/<pid>/fd` and `/proc/net/tcp{,6}`).
fn owned_connection_ports(pids: &[u32], remote_port: u16) -> HashSet<u16> {
    let mut inodes = HashSet::new();
    for pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in dir.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    inodes.insert(inode);
                }
            }
        }
    }
    let mut ports = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let port = |a: &str| {
                a.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            let inode = f[9].parse::<u64>().ok();
            if port(f[2]) == Some(remote_port) && inode.is_some_and(|i| inodes.contains(&i)) {
                if let Some(p) = port(f[1]) {
                    ports.insert(p);
                }
            }
        }
    }
    ports
}

async fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("rabbitmqctl")
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("rabbitmqctl {args:?}: timed out"))?
    .map_err(|e| format!("rabbitmqctl {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rabbitmqctl {args:?}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Closes the broker connections of this run's api and workers; returns how
/// many were closed.
async fn close_amqp(cluster: &Cluster, port: u16) -> Result<u64, String> {
    let listing = rabbitmqctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "peer_port",
    ])
    .await?;
    let ours = owned_connection_ports(&cluster.pids(&[Kind::Api, Kind::Worker]), port);
    let mut closes = Vec::new();
    for line in listing.lines() {
        let mut f = line.split_whitespace();
        let (Some(pid), Some(peer)) = (f.next(), f.next()) else {
            continue;
        };
        if peer.parse::<u16>().is_ok_and(|p| ours.contains(&p)) {
            let pid = pid.to_owned();
            closes.push(async move { rabbitmqctl(&["close_connection", &pid, "chaos"]).await });
        }
    }
    let mut closed = 0;
    let mut last_err = None;
    for r in futures::future::join_all(closes).await {
        match r {
            Ok(_) => closed += 1,
            Err(e) => last_err = Some(e),
        }
    }
    match (closed, last_err) {
        (0, Some(e)) => Err(e),
        _ => Ok(closed),
    }
}

/// Closes this run's broker connections every `amqp_close_every_secs`
/// (± 50 %) during the fault phase.
pub(super) async fn amqp_loop(cluster: Arc<Cluster>, phase: FaultPhase, mut rng: StdRng) {
    let FaultPhase {
        args, counts, log, ..
    } = &phase;
    if args.amqp_close_every_secs <= 0.0 {
        return;
    }
    let port = amqp_port(&args.amqp_url);
    loop {
        if !phase
            .wait_jittered(&mut rng, args.amqp_close_every_secs)
            .await
        {
            break;
        }
        counts.amqp_rounds.fetch_add(1, Ordering::Relaxed);
        match close_amqp(&cluster, port).await {
            Ok(n) => {
                counts.amqp_closed.fetch_add(n, Ordering::Relaxed);
                log.note(format!("rabbitmqctl close_connection: {n} connections"));
            }
            Err(e) => {
                counts.amqp_errors.fetch_add(1, Ordering::Relaxed);
                log.note(format!("closing RabbitMQ connections failed: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_ports_from_urls() {
        assert_eq!(amqp_port("amqp://guest:guest@127.0.0.1:5672/%2f"), 5672);
        assert_eq!(amqp_port("amqp://u:p@host:5673/vh"), 5673);
        assert_eq!(amqp_port("amqp://host/vh"), 5672);
    }
}
