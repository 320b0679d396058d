//! [`AmqpWorker`]: consumes every stage queue of an engine, runs the steps
//! and publishes their next hop before acking; reconnects when the
//! connection is lost.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::connection::{confirm_channel, connect, AmqpConfig};
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
    /// closes. Connection failures never end the loop; they reconnect.
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

    async fn session(&self, shutdown: &CancellationToken) -> Result<(), AmqpError> {
        let conn = connect(&self.config, "worker").await?;
        if let Some(m) = &self.metrics {
            m.reconnected();
        }
        let setup = confirm_channel(&conn).await?;
        self.topology.declare(&setup).await?;
        let _ = setup.close(200, "declared").await;

        let session_stop = shutdown.child_token();
        let mut consumers = JoinSet::new();
        for (idx, name) in self.topology.stages().iter().enumerate() {
            let ch = confirm_channel(&conn).await?;
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
                    &self.topology.stage_queue(idx),
                    &tag,
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
            consumers.spawn(consume(
                ctx,
                consumer,
                tag,
                prefetch as usize,
                session_stop.clone(),
            ));
        }
        tracing::info!(stages = ?self.topology.stages(), "amqp worker consuming");

        let mut watch = tokio::time::interval(Duration::from_millis(250));
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = watch.tick() => {
                    if !conn.status().connected() {
                        break Err(AmqpError::ConnectionLost("connection closed"));
                    }
                }
                done = consumers.join_next() => match done {
                    Some(Ok(Ok(()))) | None => {
                        if shutdown.is_cancelled() { break Ok(()); }
                        break Err(AmqpError::ConnectionLost("consumer ended"));
                    }
                    Some(Ok(Err(e))) => break Err(e),
                    Some(Err(join)) => break Err(AmqpError::Consumer(join)),
                }
            }
        };
        // Let the consumers stop taking messages and finish what they run.
        session_stop.cancel();
        while consumers.join_next().await.is_some() {}
        let _ = conn.close(200, "worker session end").await;
        result
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
            Some(Err(e)) => break Err(e.into()),
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
            .basic_cancel(&tag, BasicCancelOptions::default())
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
        Ok(()) => {
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                tracing::warn!(error = %e, "ack failed; the broker will redeliver");
            }
        }
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
