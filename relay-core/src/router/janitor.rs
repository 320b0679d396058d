//! The janitor: claims entries left pending by dead or stuck consumers,
//! dead-letters those delivered too often, and removes idle consumers.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::Router;
use crate::error::BackendError;

impl Router {
    /// Claims every entry of `stream` pending longer than `min_idle` (for
    /// any consumer), oldest first, dead-letters those delivered more than
    /// `max_deliveries` times and routes the rest. `Ok(false)`: stopped by
    /// shutdown.
    pub(super) async fn claim_and_route(
        &self,
        shard: u32,
        stream: &str,
        min_idle: Duration,
        stop: &watch::Receiver<bool>,
    ) -> Result<bool, BackendError> {
        loop {
            let claim = self
                .data
                .claim_idle(
                    stream,
                    &self.config.group,
                    &self.config.consumer,
                    min_idle,
                    self.config.batch,
                )
                .await?;
            let found = claim.claimed.len() + claim.deleted.len();
            if !claim.deleted.is_empty() {
                self.metrics.lost_trimmed.inc_by(claim.deleted.len() as u64);
                warn!(
                    count = claim.deleted.len(),
                    stream, "claimed entries were trimmed before routing"
                );
            }
            let mut routable = Vec::new();
            for d in claim.claimed {
                self.metrics.claimed.inc();
                if d.deliveries > self.config.max_deliveries {
                    let reason = format!(
                        "delivered {} times (max_deliveries {})",
                        d.deliveries, self.config.max_deliveries
                    );
                    if !self
                        .dead_letter(shard, stream, &d.entry, &reason, d.deliveries, stop)
                        .await
                    {
                        return Ok(false);
                    }
                } else {
                    routable.push(d.entry);
                }
            }
            if !routable.is_empty() && !self.process(shard, stream, routable, stop).await {
                return Ok(false);
            }
            if *stop.borrow() {
                return Ok(false);
            }
            if found < self.config.batch {
                return Ok(true);
            }
        }
    }

    pub(super) async fn janitor_loop(self, mut stop: watch::Receiver<bool>) {
        let streams: Vec<(u32, String)> = self
            .shards()
            .into_iter()
            .map(|s| (s, self.config.keys.shard_stream(s)))
            .collect();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.janitor_interval) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
            for (shard, stream) in &streams {
                // Only the shard's owner routes its entries.
                if !self.ownership.holding(*shard) {
                    continue;
                }
                if let Err(e) = self.janitor_pass(*shard, stream, &stop).await {
                    self.on_error("janitor", &e);
                }
            }
        }
    }

    /// One janitor pass over a shard: claim idle entries (dead-lettering
    /// those over `max_deliveries`), route them, and remove long-idle
    /// consumers with nothing pending.
    pub async fn janitor_pass(
        &self,
        shard: u32,
        stream: &str,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), BackendError> {
        if !self
            .claim_and_route(shard, stream, self.config.claim_idle, stop)
            .await?
        {
            return Ok(());
        }
        let stats = self.data.group_stats(stream, &self.config.group).await?;
        for c in stats.consumers {
            if c.name != self.config.consumer
                && c.pending == 0
                && c.idle_ms >= self.config.consumer_gc_idle.as_millis() as u64
            {
                self.data
                    .delete_consumer(stream, &self.config.group, &c.name)
                    .await?;
                info!(consumer = %c.name, stream, "removed idle consumer");
            }
        }
        Ok(())
    }
}
