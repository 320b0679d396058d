//! What a target's server processes cost: CPU time (utime + stime from
//! `/proc/<pid>/stat`, through [`crate::stats::pid_cpu`]) and memory
//! (`VmRSS`, and `Pss` from `smaps_rollup`), summed over every process
//! that serves the target.
//!
//! RSS is what the issue asks for; it counts a shared page once in every
//! process that maps it, so nginx's workers each count the Nchan shared
//! memory they touched. PSS splits shared pages between the processes that
//! map them, so its sum counts each page once: both are reported.

use std::time::Duration;

/// Memory of a set of processes, KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mem {
    /// Sum of `VmRSS`.
    pub rss_kib: u64,
    /// Sum of `Pss` (0 when `smaps_rollup` is unreadable).
    pub pss_kib: u64,
}

/// A `Key:   1234 kB` field of a `/proc` file, KiB.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l[key.len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// RSS and PSS of one process (zeros when it is gone).
pub fn pid_mem(pid: u32) -> Mem {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| kib_field(&s, "VmRSS:"))
        .unwrap_or(0);
    let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| kib_field(&s, "Pss:"))
        .unwrap_or(0);
    Mem {
        rss_kib: rss,
        pss_kib: pss,
    }
}

/// Summed memory of `pids`.
pub fn mem_of(pids: &[u32]) -> Mem {
    pids.iter()
        .map(|p| pid_mem(*p))
        .fold(Mem::default(), |a, m| Mem {
            rss_kib: a.rss_kib + m.rss_kib,
            pss_kib: a.pss_kib + m.pss_kib,
        })
}

/// CPU time used so far by each of `procs` (name, pid).
pub fn cpu_of(procs: &[(String, u32)]) -> Vec<(String, Duration)> {
    procs
        .iter()
        .map(|(n, p)| (n.clone(), crate::stats::pid_cpu(*p)))
        .collect()
}

/// Per-process CPU seconds between two [`cpu_of`] readings of the same
/// processes (by position; a process that appears only in `after` counts
/// from zero).
pub fn cpu_delta(
    before: &[(String, Duration)],
    after: &[(String, Duration)],
) -> Vec<(String, f64)> {
    after
        .iter()
        .enumerate()
        .map(|(i, (n, a))| {
            let b = before
                .get(i)
                .filter(|(bn, _)| bn == n)
                .map(|(_, d)| *d)
                .unwrap_or_default();
            (n.clone(), a.saturating_sub(b).as_secs_f64())
        })
        .collect()
}

/// The children of `parent` (by `PPid` in `/proc/<pid>/stat`): nginx's
/// workers, which the master forks and may replace.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // Fields after the parenthesised name: state, ppid, …
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect();
    out.sort_unstable();
    out
}

/// Established TCP connections whose local end is `127.0.0.1:port`
/// (`/proc/net/tcp`): the server side of the subscribers' connections,
/// accepted by the kernel whether or not the server has answered yet.
pub fn established(port: u16) -> usize {
    let Ok(text) = std::fs::read_to_string("/proc/net/tcp") else {
        return 0;
    };
    let local = format!("0100007F:{port:04X}");
    text.lines()
        .skip(1)
        .filter(|l| {
            let mut f = l.split_whitespace();
            // sl, local_address, rem_address, st
            f.nth(1) == Some(local.as_str()) && f.nth(1) == Some("01")
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields_and_own_memory() {
        let text = "Name:\tx\nVmRSS:\t    2048 kB\nRssAnon:\t1 kB\n";
        assert_eq!(kib_field(text, "VmRSS:"), Some(2048));
        assert_eq!(kib_field(text, "Pss:"), None);
        let me = pid_mem(std::process::id());
        assert!(me.rss_kib > 0);
    }

    #[test]
    fn counts_established_loopback_connections() {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let port = l.local_addr().expect("addr").port();
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (_s, _) = l.accept().expect("accept");
        assert_eq!(established(port), 1);
    }

    #[test]
    fn cpu_delta_matches_by_position_and_name() {
        let s = Duration::from_secs;
        let before = vec![("a".to_owned(), s(1)), ("b".to_owned(), s(2))];
        let after = vec![
            ("a".to_owned(), s(3)),
            ("c".to_owned(), s(5)),
            ("d".to_owned(), s(1)),
        ];
        assert_eq!(
            cpu_delta(&before, &after),
            vec![("a".into(), 2.0), ("c".into(), 5.0), ("d".into(), 1.0)]
        );
    }
}
