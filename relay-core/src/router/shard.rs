//! One shard's reader, from taking the shard to handing it over: wait until
//! the membership assigns the shard to this router and its lease is free
//! (`acquire`), route everything earlier owners left pending
//! (`take_over`), then read new entries in a pipeline while a
//! routing task applies the previous batch, renewing the lease as it goes
//! (`pipelined_new`), until shutdown, an error, the lease lost,
//! or the shard reassigned. Which shards this router should own is
//! [`ownership`](super::ownership); routing one batch is
//! [`batch`](super::batch).

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::ownership::Ended;
use super::Router;
use crate::backend::{ReadFrom, StreamEntry};
use crate::error::BackendError;

impl Router {
    async fn ensure_group(&self, stream: &str, stop: &watch::Receiver<bool>) -> bool {
        let mut backoff = Backoff::new();
        loop {
            if *stop.borrow() {
                return false;
            }
            match self.data.ensure_group(stream, &self.config.group).await {
                Ok(()) => {
                    self.metrics.set_connected(true);
                    return true;
                }
                Err(e) => {
                    self.on_error("ensure_group", &e);
                    backoff.wait().await;
                }
            }
        }
    }

    /// One shard: wait until this router should and may own it (its lease),
    /// route what earlier owners left pending, then read new entries in a
    /// pipeline (the next read is in flight while the previous batch is
    /// applied) until shutdown, an error, the lease lost, or the shard
    /// assigned to another router (then it is handed over).
    pub(super) async fn shard_loop(self, shard: u32, mut stop: watch::Receiver<bool>) {
        let stream = self.config.keys.shard_stream(shard);
        if !self.ensure_group(&stream, &stop).await {
            return;
        }
        let lease = self.config.keys.shard_lease(&self.config.group, shard);
        let mut backoff = Backoff::new();
        while !*stop.borrow() {
            match self.acquire(shard, &lease, &mut stop).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    self.on_error("lease", &e);
                    backoff.wait().await;
                    continue;
                }
            }
            self.ownership.set_holding(shard, true);
            self.metrics.shards_owned.inc();
            info!(shard, consumer = %self.config.consumer, "shard taken");
            let ended = match self.take_over(shard, &stream, &stop).await {
                Ok(true) => {
                    // Reads work again: the next failure starts from the
                    // shortest delay.
                    backoff.reset();
                    self.pipelined_new(shard, &stream, &lease, &stop).await
                }
                Ok(false) => Ok(Ended::Stopped),
                Err(e) => Err(e),
            };
            self.ownership.set_holding(shard, false);
            self.metrics.shards_owned.dec();
            match ended {
                Ok(Ended::Stopped) => break,
                Ok(Ended::Reassigned) => {
                    info!(shard, "shard handed over to another router");
                    if let Err(e) = self.data.release_lease(&lease, &self.config.consumer).await {
                        self.on_error("lease", &e);
                    }
                }
                Ok(Ended::LeaseLost) => {
                    warn!(
                        shard,
                        "shard lease lost (renewal came too late); taking it again if free"
                    );
                }
                Err(BackendError::NoGroup { .. }) => {
                    // The stream or group was deleted (e.g. FLUSHALL or a
                    // restart without persistence): recreate and re-read.
                    if !self.ensure_group(&stream, &stop).await {
                        break;
                    }
                }
                Err(e) => {
                    self.on_error("read_group", &e);
                    backoff.wait().await;
                }
            }
        }
        // Hand the shard over at once instead of after the lease expires.
        let _ = self.data.release_lease(&lease, &self.config.consumer).await;
        debug!(shard, "shard reader stopped");
    }

    /// Waits until this router is assigned `shard` and holds its lease.
    /// `Ok(false)`: stopped by shutdown.
    async fn acquire(
        &self,
        shard: u32,
        lease: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, BackendError> {
        let mut assigned = self.ownership.subscribe();
        loop {
            if *stop.borrow() {
                return Ok(false);
            }
            if self.ownership.assigned(shard)
                && self
                    .data
                    .try_lease(lease, &self.config.consumer, self.config.lease)
                    .await?
            {
                return Ok(true);
            }
            // The previous owner may still hold the lease (it hands over
            // or it expires): look again soon, or when the assignment
            // changes.
            tokio::select! {
                _ = tokio::time::sleep(self.config.lease / 8) => {}
                _ = assigned.changed() => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Routes every entry pending in `stream`'s group, whoever it was
    /// delivered to, oldest first: what the previous owners read and did
    /// not finish goes before anything newer of the same jobs.
    /// `Ok(false)`: stopped by shutdown.
    async fn take_over(
        &self,
        shard: u32,
        stream: &str,
        stop: &watch::Receiver<bool>,
    ) -> Result<bool, BackendError> {
        let done = self
            .claim_and_route(shard, stream, Duration::ZERO, stop)
            .await?;
        self.metrics.set_connected(true);
        Ok(done && !*stop.borrow())
    }

    /// Reads new entries while a separate task routes the previous batch,
    /// renewing the shard's lease every third of its lifetime. Ends on
    /// shutdown, on a read or renewal error, when the lease turns out lost,
    /// or when the shard is assigned to another router — in each case
    /// after the routing task has finished what it was given.
    async fn pipelined_new(
        &self,
        shard: u32,
        stream: &str,
        lease: &str,
        stop: &watch::Receiver<bool>,
    ) -> Result<Ended, BackendError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<StreamEntry>>(1);
        let worker = {
            let router = self.clone();
            let stream = stream.to_owned();
            let stop = stop.clone();
            tokio::spawn(async move {
                while let Some(entries) = rx.recv().await {
                    if !router.process(shard, &stream, entries, &stop).await {
                        break;
                    }
                }
            })
        };
        let renew_every = self.config.lease / 3;
        let mut renewed = Instant::now();
        let mut stopping = stop.clone();
        let result = loop {
            if *stop.borrow() {
                break Ok(Ended::Stopped);
            }
            if !self.ownership.assigned(shard) {
                break Ok(Ended::Reassigned);
            }
            if renewed.elapsed() >= renew_every {
                match self
                    .data
                    .try_lease(lease, &self.config.consumer, self.config.lease)
                    .await
                {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => break Ok(Ended::LeaseLost),
                    Err(e) => break Err(e),
                }
            }
            let read = self
                .data
                .read_group(
                    stream,
                    &self.config.group,
                    &self.config.consumer,
                    ReadFrom::New,
                    self.config.batch,
                    Some(self.config.block.min(renew_every)),
                )
                .await;
            match read {
                Ok(entries) => {
                    self.metrics.set_connected(true);
                    let short = !entries.is_empty() && entries.len() < self.config.batch;
                    if !entries.is_empty() && tx.send(entries).await.is_err() {
                        break Ok(Ended::Stopped); // the routing task stopped (shutdown)
                    }
                    // A short read means the stream is drained: let the
                    // next batch fill for `linger` instead of reading it
                    // one entry at a time (the routing task works on the
                    // batch just sent meanwhile).
                    if short && !self.config.linger.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(self.config.linger) => {}
                            _ = stopping.changed() => {}
                        }
                    }
                }
                Err(e) => break Err(e),
            }
        };
        drop(tx);
        let _ = worker.await;
        result
    }
}
