//! Loopback ports for the processes the kit starts, reserved across every
//! process on the machine that uses the kit.
//!
//! The plain way (bind port 0, read the port, release it, hand it to the
//! child) races twice when tests run in parallel processes (nextest runs
//! each test in its own): the kernel hands the same ephemeral port to the
//! *outgoing* connections of every other test, and another test's pick can
//! land on a port whose redis-server was just killed and is about to be
//! restarted on it. Both happened in CI ("Address already in use").
//!
//! So a port here is drawn *below* the kernel's ephemeral range (no
//! outgoing connection ever gets one), is checked bindable, and is
//! reserved with an exclusive lock on `$TMPDIR/relay-testkit-ports/<port>`
//! that this process holds until it exits: no other process of the kit
//! picks it meanwhile, and the kernel drops the lock when the process dies,
//! however it dies. Without the lock directory or a quiet range (not
//! Linux, say) it falls back to the plain way.

use std::collections::hash_map::RandomState;
use std::fs::{File, OpenOptions, TryLockError};
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The lowest port drawn: clear of the well-known and most registered ports.
const LOWEST: u16 = 11_000;
/// Candidates tried before giving up.
const ATTEMPTS: usize = 2_000;

/// Locks this process holds, one per reserved port (dropping one would
/// release its port to the other processes).
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// A free loopback port, reserved for this process until it exits: bind
/// it (or hand it to a child) at any time.
///
/// # Panics
/// When no port can be found (the message says why).
pub fn free_port() -> u16 {
    reserve(1, 0).unwrap_or_else(|e| panic!("{e}"))
}

/// `127.0.0.1:<free port>` (see [`free_port`]).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()))
}

/// A port `P` with `P + offset` free and reserved too (a cluster node and
/// its bus), both held like [`free_port`]'s.
pub(crate) fn free_port_pair(offset: u16) -> Result<u16, String> {
    reserve(2, offset)
}

/// Reserves `P` (and `P + offset` when `count` is 2).
fn reserve(count: usize, offset: u16) -> Result<u16, String> {
    let Some((lo, hi)) = quiet_range(offset) else {
        return ephemeral(count, offset);
    };
    let Some(dir) = lock_dir() else {
        return ephemeral(count, offset);
    };
    let mut seed = next_seed();
    for _ in 0..ATTEMPTS {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let span = u64::from(hi - lo);
        let port = lo + u16::try_from((seed >> 33) % span).unwrap_or(0);
        let ports: Vec<u16> = [port, port + offset].into_iter().take(count).collect();
        let mut locks = Vec::with_capacity(count);
        for &p in &ports {
            match lock(dir, p) {
                Lock::Held(file) if bindable(p) => locks.push(file),
                // No lock here (no locks on this file system, a directory
                // of another user, out of descriptors): reserve nothing.
                Lock::Unsupported(why) => {
                    warn_unreserved(&why);
                    return ephemeral(count, offset);
                }
                // Taken by another process of the kit, or by anything else:
                // dropping the locks taken so far releases them.
                _ => break,
            }
        }
        if locks.len() == count {
            HELD.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .extend(locks);
            return Ok(port);
        }
    }
    Err(format!(
        "no free loopback port in [{lo}, {hi}){} after {ATTEMPTS} tries",
        if count == 2 {
            format!(" with port + {offset} free too")
        } else {
            String::new()
        }
    ))
}

/// Ports `[lo, hi)` such that `P + offset` stays below the kernel's
/// ephemeral range, if that leaves at least a thousand.
fn quiet_range(offset: u16) -> Option<(u16, u16)> {
    let hi = ephemeral_start()?.checked_sub(offset)?;
    (hi >= LOWEST + 1000).then_some((LOWEST, hi))
}

/// The first port of the kernel's ephemeral range, read once per process.
fn ephemeral_start() -> Option<u16> {
    static START: OnceLock<Option<u16>> = OnceLock::new();
    *START.get_or_init(|| {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
        range.split_whitespace().next()?.parse().ok()
    })
}

/// The plain way: ports from the ephemeral range, checked but not reserved.
fn ephemeral(count: usize, offset: u16) -> Result<u16, String> {
    for _ in 0..ATTEMPTS {
        let Some(port) = bind_any() else { continue };
        if count == 1 {
            return Ok(port);
        }
        if port.checked_add(offset).is_some_and(bindable) {
            return Ok(port);
        }
    }
    Err(if count == 2 {
        format!("no free loopback port with port + {offset} free too")
    } else {
        "no free loopback port".to_owned()
    })
}

/// The directory of the lock files, created once per process.
fn lock_dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("relay-testkit-ports");
        std::fs::create_dir_all(&dir).ok()?;
        Some(dir)
    })
    .as_deref()
}

/// What locking a port's file gave.
enum Lock {
    /// Ours until the file is dropped.
    Held(File),
    /// Another process (or another pick of this one) holds it.
    Taken,
    /// The file cannot be opened or locked here (why).
    Unsupported(String),
}

/// Locks `port`'s file unless someone else holds it.
fn lock(dir: &Path, port: u16) -> Lock {
    let path = dir.join(port.to_string());
    let file = match OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) => return Lock::Unsupported(format!("{}: {e}", path.display())),
    };
    match file.try_lock() {
        Ok(()) => Lock::Held(file),
        Err(TryLockError::WouldBlock) => Lock::Taken,
        Err(TryLockError::Error(e)) => Lock::Unsupported(format!("lock {}: {e}", path.display())),
    }
}

/// Says once per process that ports are no longer reserved, and why: the
/// tests still run, with the race this module exists to remove.
fn warn_unreserved(why: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        eprintln!("relay-testkit: test ports are not reserved across processes ({why}); parallel tests may collide on a port");
    });
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn bind_any() -> Option<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
    listener.local_addr().ok().map(|a| a.port())
}

/// A different seed per call and per process.
fn next_seed() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one((std::process::id(), CALLS.fetch_add(1, Ordering::Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this system reserves ports (else the kit picks them the old
    /// way, and what these tests check does not hold).
    fn reserving() -> bool {
        quiet_range(0).is_some() && lock_dir().is_some()
    }

    #[test]
    fn free_ports_can_be_bound_and_are_not_handed_out_twice() {
        if !reserving() {
            return;
        }
        let picks: Vec<u16> = (0..50).map(|_| free_port()).collect();
        for &port in &picks {
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("a reserved port binds");
        }
        let mut unique = picks.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), picks.len(), "a port was handed out twice");
    }

    #[test]
    fn reserved_ports_stay_below_the_ephemeral_range() {
        let (true, Some((_, hi))) = (reserving(), quiet_range(0)) else {
            return; // nothing reserved on this system
        };
        for _ in 0..20 {
            let port = free_port();
            assert!(
                (LOWEST..hi).contains(&port),
                "{port} outside [{LOWEST}, {hi})"
            );
        }
    }

    #[test]
    fn a_port_locked_by_another_process_is_skipped() {
        let (true, Some(dir)) = (reserving(), lock_dir()) else {
            return;
        };
        let port = free_port();
        // A second open file description stands for another process: flock
        // locks conflict between descriptions, even within one process.
        assert!(
            matches!(lock(dir, port), Lock::Taken),
            "{port} reserved twice"
        );
    }

    #[test]
    fn pairs_leave_room_for_the_offset() {
        let port = free_port_pair(10_000).expect("a pair");
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("port binds");
        TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)).expect("port + offset binds");
    }
}
