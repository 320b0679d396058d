//! Measurement helpers shared by the benchmarks, the load tool and the
//! tests: the CPU time of this process and of a redis-server,
//! `redis-benchmark` ceilings measured in the same run as the figure they
//! bound, and samples read from a Prometheus text exposition.
//!
//! A throughput figure means little without the ceiling of the same machine
//! in the same run, and a CPU cost means little without knowing whose CPU;
//! the benches and `relay-load` report both the same way through these.

use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use ::redis::Value;

use crate::redis::{reply_text, RedisServer};

/// CPU time (user + system) this process has used so far.
pub fn process_cpu() -> Duration {
    pid_cpu(std::process::id())
}

/// CPU time (user + system) process `pid` has used so far, from
/// `/proc/<pid>/stat` (zero when it cannot be read).
pub fn pid_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    stat_cpu(&stat)
}

/// utime + stime of a `/proc/<pid>/stat` line.
fn stat_cpu(stat: &str) -> Duration {
    // After the parenthesised command name, fields start at 3 (state):
    // utime (14) and stime (15) are at indexes 11 and 12, in clock ticks
    // (100 per second on Linux).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// CPU time (user + system) a redis-server has used so far (`INFO cpu`).
pub async fn redis_cpu(server: &RedisServer) -> Duration {
    match server.command(&["INFO", "cpu"]).await {
        Ok(v) => info_cpu_time(&reply_text(&v).unwrap_or_default()),
        Err(_) => Duration::ZERO,
    }
}

/// `used_cpu_user` + `used_cpu_sys` of an `INFO cpu` reply.
pub(crate) fn info_cpu_time(info: &str) -> Duration {
    let mut secs = 0.0;
    for line in info.lines() {
        if let Some((k, v)) = line.trim().split_once(':') {
            if k == "used_cpu_user" || k == "used_cpu_sys" {
                secs += v.parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO)
}

/// The per-event Redis work of the apply step as one script: create the
/// history, assign the next offset, remember the seq, append to the bounded
/// history, write the state, publish. `redis-benchmark` runs it pipelined to
/// give the ceiling the router is compared against.
///
/// `KEYS[1]` is the job's hash-tagged base name (redis-benchmark randomizes
/// each `__rand_int__` separately, so the other keys are derived from it).
pub const CEILING_SCRIPT: &str = r#"
local meta, hist, state, live = KEYS[1] .. ':meta', KEYS[1] .. ':hist', KEYS[1] .. ':state', KEYS[1] .. ':live'
local top = redis.call('HINCRBY', meta, 'top', 1)
redis.call('HSETNX', meta, 'epoch', '1')
redis.call('HSET', meta, 's' .. ARGV[1], top)
redis.call('XADD', hist, 'MAXLEN', '1000', top .. '-0', 'p', ARGV[2])
redis.call('SET', state, ARGV[2], 'PX', 3600000)
redis.call('PEXPIRE', meta, 3600000)
redis.call('PEXPIRE', hist, 3600000)
redis.call('PUBLISH', live, ARGV[2])
return top
"#;

/// Runs `redis-benchmark` pipelined EVALSHA of [`CEILING_SCRIPT`] against
/// `port`; returns calls per second.
pub async fn evalsha_ceiling(server: &RedisServer, requests: u64, pipeline: u32) -> Option<f64> {
    let sha = match server
        .command(&["SCRIPT", "LOAD", CEILING_SCRIPT])
        .await
        .ok()?
    {
        Value::BulkString(b) => String::from_utf8(b).ok()?,
        Value::SimpleString(s) => s,
        _ => return None,
    };
    let payload = "x".repeat(160);
    redis_benchmark_rps(
        server.port(),
        requests,
        pipeline,
        &[
            "EVALSHA",
            &sha,
            "1",
            "{__rand_int__}",
            "__rand_int__",
            &payload,
        ],
    )
}

/// Requests per second `redis-benchmark` reaches with `command` against
/// 127.0.0.1:`port` (`-n requests -c 4 -P pipeline -r 100000 --csv`;
/// `__rand_int__` in the command is replaced by random numbers). Blocks
/// while it runs. `None` when it cannot run or prints no figure.
pub fn redis_benchmark_rps(
    port: u16,
    requests: u64,
    pipeline: u32,
    command: &[&str],
) -> Option<f64> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-n",
            &requests.to_string(),
            "-c",
            "4",
            "-P",
            &pipeline.to_string(),
        ])
        .args(["-r", "100000", "--csv"])
        .args(command)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // CSV: "test","rps",... — the last line holds our command.
    text.lines()
        .filter_map(|l| l.split(',').nth(1))
        .filter_map(|v| v.trim_matches('"').parse::<f64>().ok())
        .next_back()
}

/// The value of the sample `series` in a Prometheus text exposition:
/// `series` is the metric name with its labels exactly as rendered, e.g.
/// `relay_sse_accept_errors_total` or
/// `relay_sse_rejected_total{reason="connection_limit"}`. `None` when there
/// is no such line or its value does not parse as `T`.
pub fn prometheus_sample<T: FromStr>(text: &str, series: &str) -> Option<T> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE relay_sse_rejected_total counter\n\
        relay_sse_rejected_total{reason=\"connection_limit\"} 3\n\
        relay_sse_rejected_total{reason=\"connection_limit_x\"} 9\n\
        relay_http_open 2.5\n";

    #[test]
    fn reads_samples_by_exact_series() {
        assert_eq!(
            prometheus_sample::<u64>(
                TEXT,
                r#"relay_sse_rejected_total{reason="connection_limit"}"#
            ),
            Some(3)
        );
        assert_eq!(prometheus_sample::<f64>(TEXT, "relay_http_open"), Some(2.5));
        assert_eq!(prometheus_sample::<u64>(TEXT, "relay_http"), None);
        assert_eq!(prometheus_sample::<u64>(TEXT, "relay_http_open"), None);
    }

    #[test]
    fn cpu_time_is_utime_plus_stime() {
        // A command name with spaces and parentheses must not shift fields.
        let stat = "4242 (relay (x) y) S 1 4242 4242 0 -1 4194304 100 0 0 0 \
                    250 70 0 0 20 0 3 0 1000 0 0";
        assert_eq!(stat_cpu(stat), Duration::from_millis(3200));
        assert_eq!(stat_cpu("garbage"), Duration::ZERO);
        assert_eq!(pid_cpu(u32::MAX), Duration::ZERO);
    }
}
