//! Which shards this router should own (from the group's live members) and
//! which it holds now.
//!
//! Every router beats into the group's membership list every third of the
//! lease; all of them sort the live names the same way and assign shard `s`
//! to the `s mod n`-th of the `n` routers, so shards spread evenly and move
//! when a router joins or dies. Two routers that briefly disagree (their
//! views of the list differ for a beat) both want a shard; its lease gives
//! it to one of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::Router;

/// How a shard's reader stopped owning it.
pub(super) enum Ended {
    /// Shutdown.
    Stopped,
    /// Assigned to another router: hand it over (release the lease).
    Reassigned,
    /// The lease was taken by someone else before this router renewed it.
    LeaseLost,
}

/// Assigned and held shards, shared by the shard readers, the janitor and
/// the membership task.
pub(super) struct Ownership {
    assigned: watch::Sender<Vec<bool>>,
    holding: Vec<AtomicBool>,
}

impl Ownership {
    pub(super) fn new(shards: u32) -> Self {
        let n = shards as usize;
        Self {
            assigned: watch::channel(vec![false; n]).0,
            holding: (0..n).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Whether the membership assigns `shard` to this router.
    pub(super) fn assigned(&self, shard: u32) -> bool {
        self.assigned
            .borrow()
            .get(shard as usize)
            .copied()
            .unwrap_or(false)
    }

    /// Notified when the assignment changes.
    pub(super) fn subscribe(&self) -> watch::Receiver<Vec<bool>> {
        self.assigned.subscribe()
    }

    /// Whether this router holds `shard`'s lease and routes it now.
    pub(super) fn holding(&self, shard: u32) -> bool {
        self.holding
            .get(shard as usize)
            .is_some_and(|h| h.load(Ordering::Acquire))
    }

    pub(super) fn set_holding(&self, shard: u32, on: bool) {
        if let Some(h) = self.holding.get(shard as usize) {
            h.store(on, Ordering::Release);
        }
    }

    fn assign(&self, assigned: Vec<bool>) {
        self.assigned.send_if_modified(|current| {
            if *current == assigned {
                false
            } else {
                *current = assigned;
                true
            }
        });
    }
}

/// Shard `s` of `shards` goes to `members[s % n]`; true for the ones that
/// go to `me`. `members` is sorted and contains `me`.
pub(super) fn assignment(shards: u32, members: &[String], me: &str) -> Vec<bool> {
    let n = members.len().max(1);
    (0..shards as usize)
        .map(|s| members.get(s % n).is_some_and(|m| m == me))
        .collect()
}

impl Router {
    /// Beats into the group's membership list and recomputes the shard
    /// assignment, every third of the lease, until shutdown.
    pub(super) async fn membership_loop(self, mut stop: watch::Receiver<bool>) {
        let key = self.config.keys.router_members(&self.config.group);
        let me = self.config.consumer.clone();
        let every = self.config.lease / 3;
        let mut last: Option<usize> = None;
        loop {
            match self.data.heartbeat(&key, &me, self.config.lease).await {
                Ok(mut members) => {
                    if !members.contains(&me) {
                        members.push(me.clone());
                        members.sort();
                    }
                    if last != Some(members.len()) {
                        info!(routers = members.len(), "router group membership changed");
                        last = Some(members.len());
                    }
                    let mine = assignment(self.config.keys.shards(), &members, &me);
                    self.ownership.assign(mine);
                }
                // Keep the last assignment: the leases still arbitrate, and
                // the shard readers see the same backend errors.
                Err(e) => warn!(error = %e, "router membership heartbeat failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every.max(Duration::from_millis(10))) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_spread_evenly_and_every_shard_has_one_router() {
        let members: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let per: Vec<Vec<bool>> = members.iter().map(|m| assignment(8, &members, m)).collect();
        for s in 0..8 {
            assert_eq!(per.iter().filter(|a| a[s]).count(), 1, "shard {s}");
        }
        let counts: Vec<usize> = per
            .iter()
            .map(|a| a.iter().filter(|x| **x).count())
            .collect();
        assert_eq!(counts, vec![3, 3, 2]);
        assert_eq!(assignment(4, &["x".to_string()], "x"), vec![true; 4]);
    }
}
