//! [`AmqpWorker`]: consumes every stage queue of an engine, runs the steps
//! and publishes their next hop before acking; reconnects when the
//! connection is lost.
//!
//! ## What lapin recovers, and what the worker still does itself
//! The worker's connection uses lapin 4's automatic recovery
//! ([`Recovery::Lapin`]): a lost connection is re-established in place and
//! each consumer's stream simply resumes. That keeps the transport's
//! guarantees:
//! - *confirms*: a publish in flight when the connection drops fails with
//!   lapin's error (its confirm is never taken as received), so the step's
//!   next hop is not acked and the broker redelivers the step;
//! - *consumers*: lapin re-opens each channel with its confirm mode and
//!   prefetch and re-creates its consumer on the same queue; deliveries not
//!   yet acked can no longer be acked (since lapin 4.12.3 an ack from before
//!   the recovery is never applied to the new channel's deliveries) and the
//!   broker, which requeued them when the old connection closed, delivers
//!   them again. A step still running from before the recovery may finish
//!   and publish its hop as well: the [`Engine`] absorbs the duplicate;
//! - *topology*: every consumer channel declares all queues, and lapin
//!   re-declares a channel's queues before re-creating its consumer.
//!
//! lapin does not cover the rest, so the worker keeps its own code for it:
//! - a consumer the broker cancelled (its queue deleted), a channel the
//!   broker closed (lapin 4 recovers channels only within a connection
//!   recovery) or an error lapin will not recover from end the session; the
//!   supervisor in [`AmqpWorker::run`] starts a new one on a fresh
//!   connection after a backoff, declaring the topology again;
//! - a session ends by closing its connection only once lapin is not
//!   recovering it: a connection dropped mid-recovery would be recovered
//!   with nobody owning it, its consumers holding messages unacked;
//! - lapin's first connect retries without logging; the worker logs while
//!   it waits, and counts each recovered connection as a reconnect.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::connection::{confirm_channel, connect, AmqpConfig, Recovery};
use super::error::AmqpError;
use super::publish::{publish_confirmed, publish_envelope, reason_header};
use super::topology::Topology;
use crate::metrics::Metrics;
use crate::pipeline::{Disposition, Engine, Envelope};

/// Runs the stage consumers of an engine against the broker, reconnecting
/// when the connection is lost.
pub struct AmqpWorker {
    engine: Arc<Engine>,
    config: AmqpConfig,
    topology: Topology,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for AmqpWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpWorker")
            .field("topology", &self.topology)
            .finish_non_exhaustive()
    }
}

impl AmqpWorker {
    /// A worker for all stages of `engine`.
    pub fn new(engine: Arc<Engine>, config: AmqpConfig) -> Self {
        let topology = Topology::for_engine(&config.prefix, &engine);
        Self {
            engine,
            config,
            topology,
            metrics: None,
        }
    }

    /// Records reconnects, dead letters and in-flight steps into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Runs until `shutdown` is cancelled. On shutdown, consumers are
    /// cancelled, running steps finish (and are acked), then the connection
    /// closes. Connection failures never end the loop: lapin recovers the
    /// connection in place, and what it does not recover starts a new
    /// session on a fresh connection after a backoff.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let started = tokio::time::Instant::now();
            match self.session(&shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "amqp worker session ended; reconnecting");
                }
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.config.reconnect_max);
        }
    }

    /// One connection, from connect to close: consumes until shutdown or
    /// until something lapin does not recover ends the session.
    async fn session(&self, shutdown: &CancellationToken) -> Result<(), AmqpError> {
        let Some(conn) = self.connect(shutdown).await? else {
            return Ok(());
        };
        if let Some(m) = &self.metrics {
            m.reconnected();
        }
        let events = tokio::spawn(watch_events(conn.events_listener(), self.metrics.clone()));
        let result = self.serve(&conn, shutdown).await;
        events.abort();
        close_settled(&conn, shutdown).await;
        result
    }

    /// Connects with lapin's recovery, which retries the first connect too
    /// (without a word): logs while the broker is not reachable. `None`:
    /// shut down meanwhile.
    async fn connect(&self, shutdown: &CancellationToken) -> Result<Option<Connection>, AmqpError> {
        let connecting = connect(&self.config, "worker", Recovery::Lapin);
        tokio::pin!(connecting);
        let mut waited = Duration::ZERO;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                conn = &mut connecting => return conn.map(Some),
                _ = tokio::time::sleep(CONNECT_NOTICE) => {
                    waited += CONNECT_NOTICE;
                    tracing::warn!(
                        waited_secs = waited.as_secs(),
                        "broker not reachable yet; lapin keeps retrying"
                    );
                }
            }
        }
    }

    /// Starts the stage consumers and watches them and the connection until
    /// shutdown or until the session must end; then lets the consumers
    /// finish the steps they run.
    async fn serve(
        &self,
        conn: &Connection,
        shutdown: &CancellationToken,
    ) -> Result<(), AmqpError> {
        let session_stop = shutdown.child_token();
        let mut consumers = JoinSet::new();
        let result = match self
            .start_consumers(conn, &session_stop, &mut consumers)
            .await
        {
            Ok(()) => {
                tracing::info!(stages = ?self.topology.stages(), "amqp worker consuming");
                watch(conn, shutdown, &mut consumers).await
            }
            Err(e) => Err(e),
        };
        // Let the consumers stop taking messages and finish what they run.
        session_stop.cancel();
        while consumers.join_next().await.is_some() {}
        result
    }

    /// One channel and consumer per stage, each with its prefetch.
    async fn start_consumers(
        &self,
        conn: &Connection,
        stop: &CancellationToken,
        consumers: &mut JoinSet<Result<(), AmqpError>>,
    ) -> Result<(), AmqpError> {
        for (idx, name) in self.topology.stages().iter().enumerate() {
            let ch = confirm_channel(conn).await?;
            // Every consumer channel declares the whole topology: lapin
            // re-declares a channel's queues before it re-creates the
            // channel's consumer, so after a recovery every queue exists
            // before this channel consumes or publishes again, whatever the
            // order lapin recovers the channels in.
            self.topology.declare(&ch).await?;
            let prefetch = self.config.prefetch_for(name);
            ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
            let tag = format!(
                "{}-{}-{}",
                self.config.connection_name,
                name,
                uuid::Uuid::new_v4()
            );
            let consumer = ch
                .basic_consume(
                    self.topology.stage_queue(idx).into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let ctx = ConsumerCtx {
                engine: self.engine.clone(),
                topology: self.topology.clone(),
                channel: ch,
                metrics: self.metrics.clone(),
            };
            consumers.spawn(consume(ctx, consumer, tag, prefetch as usize, stop.clone()));
        }
        Ok(())
    }
}

/// How often the worker logs while its first connect is still retrying.
const CONNECT_NOTICE: Duration = Duration::from_secs(30);

/// Watches the consumers and the connection until shutdown (`Ok`) or until
/// the session must end (`Err`): a consumer ended or failed, or lapin will
/// not recover the connection.
async fn watch(
    conn: &Connection,
    shutdown: &CancellationToken,
    consumers: &mut JoinSet<Result<(), AmqpError>>,
) -> Result<(), AmqpError> {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {
                // `Reconnecting` or `Connecting`: lapin is recovering it.
                if conn.status().errored() || conn.status().closed() {
                    return Err(AmqpError::ConnectionLost("connection closed"));
                }
            }
            done = consumers.join_next() => return match done {
                Some(Ok(Ok(()))) | None => {
                    if shutdown.is_cancelled() {
                        Ok(())
                    } else {
                        Err(AmqpError::ConnectionLost("consumer ended"))
                    }
                }
                Some(Ok(Err(e))) => Err(e),
                Some(Err(join)) => Err(AmqpError::Consumer(join)),
            },
        }
    }
}

/// Logs lapin's connection events and counts each connection it recovered
/// as a reconnect (the session's first connection is counted by
/// [`AmqpWorker::session`]: this listener starts after it).
async fn watch_events(
    events: impl futures::Stream<Item = lapin::Event>,
    metrics: Option<Arc<Metrics>>,
) {
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        match event {
            lapin::Event::Connected => {
                tracing::info!("amqp connection recovered by lapin");
                if let Some(m) = &metrics {
                    m.reconnected();
                }
            }
            lapin::Event::Error(e) => tracing::warn!(error = %e, "amqp connection error"),
            _ => {}
        }
    }
}

/// Closes `conn` once lapin is not recovering it. A connection dropped in
/// the middle of a recovery is not closed by lapin: the recovery goes on
/// and ends in a broker connection nobody owns, its re-created consumers
/// holding their prefetched messages unacked. On shutdown the process exit
/// ends whatever recovery is left.
async fn close_settled(conn: &Connection, shutdown: &CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let status = conn.status();
        if status.connected() {
            let _ = conn.close(200, "worker session end".into()).await;
            return;
        }
        if status.errored() || status.closed() {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
    }
}

#[derive(Clone)]
struct ConsumerCtx {
    engine: Arc<Engine>,
    topology: Topology,
    channel: Channel,
    metrics: Option<Arc<Metrics>>,
}

async fn consume(
    ctx: ConsumerCtx,
    mut consumer: lapin::Consumer,
    tag: String,
    concurrency: usize,
    stop: CancellationToken,
) -> Result<(), AmqpError> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut running = JoinSet::new();
    let result = loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break Ok(()),
            },
        };
        let next = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            next = consumer.next() => next,
        };
        match next {
            None => break Err(AmqpError::ConnectionLost("consumer cancelled")),
            // A connection recovery does not reach the stream: lapin
            // re-creates the consumer in place. An error does when the
            // channel or connection failed in a way lapin does not recover
            // (a channel closed by the broker; a non-recoverable error) —
            // then the session ends — or as lapin starts a recovery.
            Some(Err(e)) => {
                tracing::warn!(error = %e, "amqp consumer interrupted");
                tokio::select! {
                    _ = stop.cancelled() => break Ok(()),
                    recovered = ctx.channel.wait_for_recovery(e) => {
                        if let Err(e) = recovered {
                            break Err(e.into());
                        }
                    }
                }
            }
            Some(Ok(delivery)) => {
                let ctx = ctx.clone();
                running.spawn(async move {
                    let _permit = permit;
                    handle(&ctx, delivery).await;
                });
            }
        }
    };
    if result.is_ok() {
        let _ = ctx
            .channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }
    // Graceful: running steps finish and ack before the channel goes away.
    while running.join_next().await.is_some() {}
    result
}

async fn handle(ctx: &ConsumerCtx, delivery: Delivery) {
    let ch = &ctx.channel;
    let env: Envelope = match serde_json::from_slice(&delivery.data) {
        Ok(env) => env,
        Err(e) => {
            tracing::error!(error = %e, "undecodable message; dead-lettering");
            let mut h = FieldTable::default();
            h.insert(
                "x-reason".into(),
                reason_header(&format!("undecodable: {e}")),
            );
            finish(
                ctx,
                &delivery,
                publish_confirmed(ch, &ctx.topology.dlq(), &delivery.data, h).await,
            )
            .await;
            return;
        }
    };
    if let Some(m) = &ctx.metrics {
        m.in_flight(1);
    }
    let disposition = ctx.engine.process(env).await;
    if let Some(m) = &ctx.metrics {
        m.in_flight(-1);
    }
    let topo = &ctx.topology;
    let hop = match disposition {
        Disposition::Finished => Ok(()),
        Disposition::Forward(next) => {
            publish_envelope(ch, topo, &topo.stage_queue(next.stage), &next, None).await
        }
        Disposition::Retry { envelope, delay } => {
            let queue = topo.retry_queue_for(envelope.stage, delay);
            publish_envelope(ch, topo, &queue, &envelope, None).await
        }
        Disposition::DeadLetter { envelope, reason } => {
            let r = publish_envelope(ch, topo, &topo.dlq(), &envelope, Some(&reason)).await;
            if r.is_ok() {
                if let Some(m) = &ctx.metrics {
                    m.dead_lettered();
                }
            }
            r
        }
    };
    finish(ctx, &delivery, hop).await;
}

async fn finish(_ctx: &ConsumerCtx, delivery: &Delivery, hop: Result<(), AmqpError>) {
    match hop {
        Ok(()) => match delivery.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => {}
            // The delivery predates a connection recovery: the broker
            // requeued it when the old connection closed.
            Ok(false) => tracing::warn!("ack not sent: the connection was recovered since this delivery; the broker redelivers it"),
            Err(e) => tracing::warn!(error = %e, "ack failed; the broker will redeliver"),
        },
        Err(e) => {
            tracing::warn!(error = %e, "next hop not confirmed; requeueing");
            let _ = delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
        }
    }
}
