//! Coordination between the routers of one group: who is alive, and which
//! router owns which shard.
//!
//! Why shards are owned: two routers applying entries of one shard at the
//! same time apply a job's events in whichever order their batches land,
//! and a dead router's pending entries, claimed later, land after newer
//! ones. Offsets follow the apply order, so a job's history (and what its
//! clients see) would leave producer order, even put an event after `done`.
//! One owner per shard, which first routes everything earlier owners left
//! pending, keeps each job's events in stream order.

use std::time::Duration;

use async_trait::async_trait;

use super::BackendResult;

/// Expiring leases and a membership list.
///
/// Contract (checked by the conformance suite):
/// - [`Coordination::try_lease`] is atomic: at most one owner holds a key
///   at a time; the holder can renew it; once its TTL passes without a
///   renewal anyone can take it.
/// - [`Coordination::heartbeat`] lists the members whose last heartbeat is
///   younger than its TTL, the caller included.
#[async_trait]
pub trait Coordination: Send + Sync {
    /// Takes `key` for `owner` if it is free or expired, or renews it if
    /// `owner` holds it, for `ttl`. True when `owner` holds it afterwards.
    async fn try_lease(&self, key: &str, owner: &str, ttl: Duration) -> BackendResult<bool>;

    /// Frees `key` if `owner` holds it (a no-op otherwise).
    async fn release_lease(&self, key: &str, owner: &str) -> BackendResult<()>;

    /// Records that `member` of `group` is alive for `ttl`, forgets members
    /// whose heartbeat expired, and returns the live members, sorted.
    async fn heartbeat(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> BackendResult<Vec<String>>;
}
