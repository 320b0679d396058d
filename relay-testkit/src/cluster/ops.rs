//! What tests do to a cluster: kill a master, fail over, migrate a slot.
//!
//! Each returns once every live node agrees on the outcome (see
//! `topology`), so a test can assert on the new topology right away; the
//! migration is also available in steps, so that a test can look at the
//! cluster while a slot is half moved (keys already moved answer `ASK`
//! from the source).

use redis::Value;

use super::topology::{parse_nodes, range_of};
use super::{RedisCluster, WAIT_LIMIT};
use crate::redis::{command_at, query_at, reply_text, role_at, HarnessError};
use crate::wait::wait_for;

/// Keys per `MIGRATE` in [`RedisCluster::move_slot`].
const MIGRATE_BATCH: usize = 100;
/// `MIGRATE`'s own timeout, in milliseconds.
const MIGRATE_TIMEOUT_MS: u32 = 5000;

/// How often [`RedisCluster::failover`] sends `CLUSTER FAILOVER` within
/// the hang guard. A manual failover gives up after 5 s, and the masters
/// refuse to vote in a second election for the same shard within twice the
/// node timeout (4 s): a failover right after another one of the same
/// shard fails once, and the next attempt, 10 s on, succeeds.
const FAILOVER_ATTEMPTS: u32 = 6;

/// A master replaced by its replica ([`RedisCluster::kill_master`],
/// [`RedisCluster::failover`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Promotion {
    /// The port of the master that served the slot.
    pub old_master: u16,
    /// The port of its replica, now serving the slot.
    pub new_master: u16,
}

type Role = Option<(String, Option<String>)>;

fn is_master(role: &Role) -> bool {
    matches!(role, Some((r, _)) if r == "master")
}

/// A replica whose replication link is up (in sync, or streaming).
fn is_synced_replica(role: &Role) -> bool {
    matches!(role, Some((r, Some(link))) if r == "slave" && link == "connected")
}

impl RedisCluster {
    /// Kills (`kill -9`) the master serving `slot` and waits until its
    /// replica is promoted: every surviving node says `cluster_state:ok`
    /// and names the new master for the slot, which answers `ROLE` as
    /// master. Refused on an external cluster.
    pub async fn kill_master(&self, slot: u16) -> Result<Promotion, HarnessError> {
        self.require_private()?;
        let old = self.master_of_slot(slot).await?;
        self.server(old)?.stop();
        let what = format!("a replica promoted for slot {slot} after killing master {old}");
        let new = wait_for(WAIT_LIMIT, &what, || async move {
            let view = self.check(false).await?;
            let master = &range_of(&view, slot)?.master;
            if master.port == old {
                return Err(format!("slot {slot} still served by {old}"));
            }
            let role = role_at(&master.addr()).await;
            if is_master(&role) {
                Ok(master.port)
            } else {
                Err(format!("{} answers ROLE {role:?}", master.addr()))
            }
        })
        .await?;
        Ok(Promotion {
            old_master: old,
            new_master: new,
        })
    }

    /// Starts the node at `port` again (killed by
    /// [`RedisCluster::kill_master`]; a running one is killed first) with
    /// its `nodes.conf`, and waits until it is a replica in sync and listed
    /// as one by `CLUSTER SLOTS` (a restarted old master finds its slots
    /// taken over and follows the new master). Refused on an external
    /// cluster.
    ///
    /// The start itself blocks the calling thread until the process
    /// answers `PING` (normally milliseconds).
    pub async fn restart_node(&self, port: u16) -> Result<(), HarnessError> {
        self.server(port)?.try_restart()?;
        let addr = self.node(port)?.addr();
        let what = format!("node {addr} back as a replica in sync");
        wait_for(WAIT_LIMIT, &what, || async {
            let role = role_at(&addr).await;
            if !is_synced_replica(&role) {
                return Err(format!("{addr} answers ROLE {role:?}"));
            }
            let view = self.check(false).await?;
            if view
                .iter()
                .flat_map(|r| &r.replicas)
                .any(|e| e.port == port)
            {
                Ok(())
            } else {
                Err(format!("CLUSTER SLOTS lists no replica on port {port}"))
            }
        })
        .await?;
        Ok(())
    }

    /// `CLUSTER FAILOVER` on the replica of the master serving `slot` (the
    /// master stays up and becomes its replica; writes pause until the
    /// replica has caught up), and waits until the roles are swapped,
    /// every node agrees, and the old master is listed as the new one's
    /// replica in sync (so a failover back can follow). Sent again while
    /// the roles have not changed (see `FAILOVER_ATTEMPTS`).
    pub async fn failover(&self, slot: u16) -> Result<Promotion, HarnessError> {
        let view = self.slots_view().await?;
        let range = range_of(&view, slot).map_err(HarnessError::Cluster)?;
        let old = range.master.clone();
        let new = range.replicas.first().cloned().ok_or_else(|| {
            HarnessError::Cluster(format!(
                "master {} of slot {slot} has no replica to fail over to",
                old.addr()
            ))
        })?;
        let (old_addr, new_addr) = (old.addr(), new.addr());
        // Without a replication link the handshake can only time out.
        let what = format!("replica {new_addr} in sync before the failover");
        wait_for(WAIT_LIMIT, &what, || async {
            let role = role_at(&new_addr).await;
            is_synced_replica(&role)
                .then_some(())
                .ok_or_else(|| format!("ROLE {role:?}"))
        })
        .await?;
        let what = format!("{new_addr} master of slot {slot} and {old_addr} its replica");
        let swapped = || async {
            let view = self.check(false).await?;
            let range = range_of(&view, slot)?;
            if range.master.port != new.port {
                return Err(format!("slot {slot} served by {}", range.master.port));
            }
            // Listed, so that a failover back can find it.
            if !range.replicas.iter().any(|r| r.port == old.port) {
                return Err(format!("CLUSTER SLOTS lists {old_addr} as no replica"));
            }
            let (new_role, old_role) = (role_at(&new_addr).await, role_at(&old_addr).await);
            if is_master(&new_role) && is_synced_replica(&old_role) {
                Ok(())
            } else {
                Err(format!(
                    "ROLE {new_role:?} on {new_addr}, {old_role:?} on {old_addr}"
                ))
            }
        };
        let mut last = None;
        for _ in 0..FAILOVER_ATTEMPTS {
            if matches!(role_at(&new_addr).await, Some((r, _)) if r == "slave") {
                command_at(&new_addr, &["CLUSTER", "FAILOVER"]).await?;
            }
            match wait_for(WAIT_LIMIT / FAILOVER_ATTEMPTS, &what, swapped).await {
                Ok(()) => {
                    return Ok(Promotion {
                        old_master: old.port,
                        new_master: new.port,
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(
            || HarnessError::Cluster(what.clone()),
            HarnessError::Timeout,
        ))
    }

    /// A master that does not serve `slot` (the lowest port), as a
    /// migration target.
    pub async fn other_master(&self, slot: u16) -> Result<u16, HarnessError> {
        let owner = self.master_of_slot(slot).await?;
        self.master_ports()
            .await?
            .into_iter()
            .find(|&port| port != owner)
            .ok_or_else(|| HarnessError::Cluster(format!("no master other than {owner}")))
    }

    /// First step of moving `slot` to the master at `to_port`: `CLUSTER
    /// SETSLOT IMPORTING` on the target, then `MIGRATING` on the source.
    /// From then on the source answers `ASK` for the slot's keys it no
    /// longer has. Returns the source's port.
    pub async fn begin_migration(&self, slot: u16, to_port: u16) -> Result<u16, HarnessError> {
        let from = self.master_of_slot(slot).await?;
        if from == to_port {
            return Err(HarnessError::Cluster(format!(
                "slot {slot} is already served by {to_port}"
            )));
        }
        let (from_id, to_id) = (&self.node(from)?.id, &self.node(to_port)?.id);
        let slot = slot.to_string();
        self.command(
            to_port,
            &["CLUSTER", "SETSLOT", &slot, "IMPORTING", from_id],
        )
        .await?;
        self.command(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", to_id])
            .await?;
        Ok(from)
    }

    /// Second step, one batch: moves up to `batch` of the slot's keys
    /// (`CLUSTER GETKEYSINSLOT`, `MIGRATE … KEYS`) from the source to the
    /// target named by [`RedisCluster::begin_migration`]. Returns how many
    /// were moved; 0 when none is left.
    pub async fn migrate_keys(&self, slot: u16, batch: usize) -> Result<usize, HarnessError> {
        let from = self.master_of_slot(slot).await?;
        let from_addr = self.node(from)?.addr();
        let nodes = self.command(from, &["CLUSTER", "NODES"]).await?;
        let nodes = parse_nodes(&reply_text(&nodes).unwrap_or_default());
        let target = nodes
            .iter()
            .filter(|n| n.flags.iter().any(|f| f == "myself"))
            .flat_map(|n| &n.migrating)
            .find(|(s, _)| *s == slot)
            .and_then(|(_, id)| nodes.iter().find(|n| &n.id == id))
            .ok_or_else(|| {
                HarnessError::Cluster(format!(
                    "slot {slot} is not migrating from {from_addr} (begin_migration first)"
                ))
            })?;
        let mut get = redis::cmd("CLUSTER");
        get.arg("GETKEYSINSLOT").arg(slot).arg(batch);
        let keys: Vec<Vec<u8>> = match query_at(&from_addr, &get).await? {
            Value::Array(keys) => keys
                .into_iter()
                .filter_map(|k| match k {
                    Value::BulkString(b) => Some(b),
                    _ => None,
                })
                .collect(),
            other => {
                return Err(HarnessError::UnexpectedReply {
                    command: "CLUSTER GETKEYSINSLOT",
                    reply: format!("{other:?}"),
                })
            }
        };
        if keys.is_empty() {
            return Ok(0);
        }
        let mut migrate = redis::cmd("MIGRATE");
        migrate
            .arg(&target.host)
            .arg(target.port)
            .arg("")
            .arg(0)
            .arg(MIGRATE_TIMEOUT_MS)
            .arg("KEYS");
        for key in &keys {
            migrate.arg(key.as_slice());
        }
        query_at(&from_addr, &migrate).await?;
        Ok(keys.len())
    }

    /// Last step: `CLUSTER SETSLOT NODE` on the target, the source and the
    /// other masters (the source refuses while it still holds keys of the
    /// slot), then waits until every node names the target. Keys of the
    /// slot then answer `MOVED` everywhere but on the target.
    pub async fn finish_migration(&self, slot: u16, to_port: u16) -> Result<(), HarnessError> {
        let from = self.master_of_slot(slot).await?;
        let to_id = &self.node(to_port)?.id;
        let slot_arg = slot.to_string();
        let setslot = ["CLUSTER", "SETSLOT", &slot_arg, "NODE", to_id];
        // The target first: it then serves the slot even before the others
        // learn, so no client is redirected in a loop.
        self.command(to_port, &setslot).await?;
        if from != to_port {
            self.command(from, &setslot).await?;
        }
        for port in self.master_ports().await? {
            if port != to_port && port != from {
                self.command(port, &setslot).await?;
            }
        }
        let what = format!("every node naming {to_port} the master of slot {slot}");
        wait_for(WAIT_LIMIT, &what, || async {
            let view = self.check(false).await?;
            match range_of(&view, slot)?.master.port {
                owner if owner == to_port => Ok(()),
                owner => Err(format!("slot {slot} still served by {owner}")),
            }
        })
        .await?;
        Ok(())
    }

    /// Moves `slot` with its keys to the master at `to_port`: the three
    /// steps above, keys in batches of 100.
    pub async fn move_slot(&self, slot: u16, to_port: u16) -> Result<(), HarnessError> {
        self.begin_migration(slot, to_port).await?;
        while self.migrate_keys(slot, MIGRATE_BATCH).await? > 0 {}
        self.finish_migration(slot, to_port).await
    }
}
