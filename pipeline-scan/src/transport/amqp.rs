//! The RabbitMQ transport (lapin).
//!
//! ## Topology (default exchange, all durable)
//! - `{prefix}.{stage}`: one work queue per stage (`scan.vision`, …).
//! - `{prefix}.{stage}.retry.{ms}ms`: delay queues, one per backoff step of
//!   the retry policy: `x-message-ttl = ms`, dead-lettering back to
//!   `{prefix}.{stage}` when the TTL expires. A per-queue TTL (not a
//!   per-message one) keeps every message of a queue expiring in order.
//! - `{prefix}.dlq`: steps that failed for good (headers `x-reason`,
//!   `x-stage`), inspected and replayed with [`Dlq`].
//!
//! ## Delivery
//! Every publish is persistent, `mandatory` and waits for the publisher
//! confirm. A worker acks its message only after the next hop (the next
//! stage's queue, a delay queue or the DLQ) confirmed; if that fails it nacks
//! with requeue, and if the connection is gone the broker redelivers. The
//! [`Engine`] makes redelivery idempotent.
//!
//! ## Supervision
//! [`AmqpWorker::run`] connects, declares the topology, consumes every stage
//! queue with its own channel and prefetch, and watches the connection. When
//! the connection or a channel dies it reconnects with exponential backoff
//! and starts over; unacked messages are redelivered by the broker.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Transport, TransportError};
use crate::metrics::Metrics;
use crate::pipeline::{Disposition, Engine, Envelope, JobStore, RetryPolicy};

/// Errors of the AMQP transport.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// A lapin (protocol or connection) error.
    #[error("amqp: {0}")]
    Lapin(#[from] lapin::Error),
    /// The broker nacked or returned a published message.
    #[error("broker rejected a publish to {0}")]
    Rejected(String),
    /// The connection or a consumer ended.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The job store (backend) failed.
    #[error("job store: {0}")]
    Store(String),
    /// A message could not be encoded.
    #[error("encode: {0}")]
    Encode(#[from] serde_json::Error),
}

impl From<AmqpError> for TransportError {
    fn from(e: AmqpError) -> Self {
        match e {
            AmqpError::Rejected(_) => TransportError::Rejected,
            AmqpError::Encode(e) => TransportError::Encode(e.to_string()),
            other => TransportError::Connection(other.to_string()),
        }
    }
}

/// Broker connection and consumer settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpConfig {
    /// `amqp://user:pass@host:port/vhost`.
    pub url: String,
    /// Queue name prefix (`scan` → `scan.vision`, …).
    pub prefix: String,
    /// Default prefetch (and concurrency) per stage consumer.
    pub prefetch: u16,
    /// Per-stage prefetch overrides by stage name.
    pub stage_prefetch: Vec<(String, u16)>,
    /// Connection name shown by `rabbitmqctl list_connections`.
    pub connection_name: String,
    /// Longest wait between reconnect attempts.
    pub reconnect_max: Duration,
}

impl AmqpConfig {
    /// Defaults for a broker URL: prefix `scan`, prefetch 8.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "scan".into(),
            prefetch: 8,
            stage_prefetch: Vec::new(),
            connection_name: "pipeline-scan".into(),
            reconnect_max: Duration::from_secs(5),
        }
    }

    fn prefetch_for(&self, stage: &str) -> u16 {
        self.stage_prefetch
            .iter()
            .find(|(n, _)| n == stage)
            .map(|(_, p)| *p)
            .unwrap_or(self.prefetch)
            .max(1)
    }
}

/// Queue names and declarations for a pipeline's stages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    stages: Vec<String>,
    retry_delays: Vec<Duration>,
}

impl Topology {
    /// The topology for stages `stages` under `prefix`, with one delay queue
    /// per distinct backoff of `retry`.
    pub fn new(prefix: &str, stages: &[&str], retry: &RetryPolicy) -> Self {
        let mut retry_delays: Vec<Duration> = Vec::new();
        for attempt in 1..retry.max_attempts.max(2) {
            let d = retry.delay_after(attempt).max(Duration::from_millis(1));
            if !retry_delays.contains(&d) {
                retry_delays.push(d);
            }
        }
        Self {
            prefix: prefix.to_owned(),
            stages: stages.iter().map(|s| (*s).to_owned()).collect(),
            retry_delays,
        }
    }

    /// The topology an engine's pipeline needs.
    pub fn for_engine(prefix: &str, engine: &Engine) -> Self {
        Self::new(prefix, &engine.stage_names(), &engine.config().retry)
    }

    /// Stage names.
    pub fn stages(&self) -> &[String] {
        &self.stages
    }

    /// The work queue of stage `idx`.
    pub fn stage_queue(&self, idx: usize) -> String {
        let stage = self
            .stages
            .get(idx)
            .map(String::as_str)
            .unwrap_or("unknown");
        format!("{}.{}", self.prefix, stage)
    }

    /// The delay queue of stage `idx` whose TTL is `delay`.
    pub fn retry_queue(&self, idx: usize, delay: Duration) -> String {
        format!("{}.retry.{}ms", self.stage_queue(idx), delay.as_millis())
    }

    /// The delay queue used for a requested delay: the shortest declared
    /// delay that is at least `delay` (the longest if none is).
    fn retry_queue_for(&self, idx: usize, delay: Duration) -> String {
        let chosen = self
            .retry_delays
            .iter()
            .copied()
            .filter(|d| *d >= delay)
            .min()
            .or_else(|| self.retry_delays.iter().copied().max())
            .unwrap_or(Duration::from_millis(1));
        self.retry_queue(idx, chosen)
    }

    /// The dead-letter queue.
    pub fn dlq(&self) -> String {
        format!("{}.dlq", self.prefix)
    }

    /// All queue names (for cleanup in tests and tooling).
    pub fn all_queues(&self) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..self.stages.len() {
            out.push(self.stage_queue(i));
            for d in &self.retry_delays {
                out.push(self.retry_queue(i, *d));
            }
        }
        out.push(self.dlq());
        out
    }

    /// Deletes every queue of the topology (test and tooling teardown; the
    /// messages in them are lost).
    pub async fn delete_all(&self, config: &AmqpConfig) -> Result<(), AmqpError> {
        let conn = connect(config, "teardown").await?;
        let ch = conn.create_channel().await?;
        for q in self.all_queues() {
            ch.queue_delete(&q, lapin::options::QueueDeleteOptions::default())
                .await?;
        }
        let _ = conn.close(200, "teardown done").await;
        Ok(())
    }

    /// Declares every queue (idempotent).
    pub async fn declare(&self, ch: &Channel) -> Result<(), AmqpError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        for i in 0..self.stages.len() {
            let queue = self.stage_queue(i);
            ch.queue_declare(&queue, durable, FieldTable::default())
                .await?;
            for d in &self.retry_delays {
                let mut args = FieldTable::default();
                args.insert(
                    "x-message-ttl".into(),
                    AMQPValue::LongLongInt(d.as_millis().min(i64::MAX as u128) as i64),
                );
                args.insert(
                    "x-dead-letter-exchange".into(),
                    AMQPValue::LongString(LongString::from("")),
                );
                args.insert(
                    "x-dead-letter-routing-key".into(),
                    AMQPValue::LongString(LongString::from(queue.as_str())),
                );
                ch.queue_declare(&self.retry_queue(i, *d), durable, args)
                    .await?;
            }
        }
        ch.queue_declare(&self.dlq(), durable, FieldTable::default())
            .await?;
        Ok(())
    }
}

async fn connect(config: &AmqpConfig, role: &str) -> Result<Connection, AmqpError> {
    let props = ConnectionProperties::default()
        .with_connection_name(format!("{}-{role}", config.connection_name).into());
    Ok(Connection::connect(&config.url, props).await?)
}

async fn confirm_channel(conn: &Connection) -> Result<Channel, AmqpError> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Publishes persistently to `queue` and waits for the broker's confirm.
async fn publish_confirmed(
    ch: &Channel,
    queue: &str,
    body: &[u8],
    headers: FieldTable,
) -> Result<(), AmqpError> {
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_headers(headers);
    let confirm = ch
        .basic_publish(
            "",
            queue,
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            props,
        )
        .await?
        .await?;
    match confirm {
        lapin::publisher_confirm::Confirmation::Ack(None) => Ok(()),
        _ => Err(AmqpError::Rejected(queue.to_owned())),
    }
}

fn envelope_headers(env: &Envelope, topo: &Topology) -> FieldTable {
    let mut h = FieldTable::default();
    h.insert(
        "x-job-id".into(),
        AMQPValue::LongString(LongString::from(env.job_id.as_str())),
    );
    h.insert(
        "x-stage".into(),
        AMQPValue::LongString(LongString::from(
            topo.stages
                .get(env.stage)
                .map(String::as_str)
                .unwrap_or("unknown"),
        )),
    );
    h.insert(
        "x-attempt".into(),
        AMQPValue::LongLongInt(i64::from(env.attempt)),
    );
    h
}

/// Submits jobs to the first stage's queue (the API side). Reconnects lazily.
pub struct AmqpProducer {
    config: AmqpConfig,
    topology: Topology,
    state: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

impl std::fmt::Debug for AmqpProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpProducer")
            .field("topology", &self.topology)
            .finish_non_exhaustive()
    }
}

impl AmqpProducer {
    /// A producer; connects on first use (or call [`AmqpProducer::connect`]).
    pub fn new(config: AmqpConfig, topology: Topology) -> Self {
        Self {
            config,
            topology,
            state: tokio::sync::Mutex::new(None),
        }
    }

    /// Connects now and declares the topology.
    pub async fn connect(&self) -> Result<(), AmqpError> {
        self.channel().await.map(|_| ())
    }

    async fn channel(&self) -> Result<Channel, AmqpError> {
        let mut state = self.state.lock().await;
        if let Some((conn, ch)) = state.as_ref() {
            if conn.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        *state = None;
        let conn = connect(&self.config, "producer").await?;
        let ch = confirm_channel(&conn).await?;
        self.topology.declare(&ch).await?;
        *state = Some((conn, ch.clone()));
        Ok(ch)
    }

    async fn reset(&self) {
        let mut state = self.state.lock().await;
        if let Some((conn, _)) = state.take() {
            let _ = conn.close(200, "reset").await;
        }
    }

    /// Publishes an envelope to its stage's queue and waits for the confirm.
    pub async fn publish(&self, env: &Envelope) -> Result<(), AmqpError> {
        let body = serde_json::to_vec(env)?;
        let queue = self.topology.stage_queue(env.stage);
        let mut last = None;
        for _ in 0..2 {
            let ch = match self.channel().await {
                Ok(ch) => ch,
                Err(e) => {
                    last = Some(e);
                    self.reset().await;
                    continue;
                }
            };
            match publish_confirmed(&ch, &queue, &body, envelope_headers(env, &self.topology)).await
            {
                Ok(()) => return Ok(()),
                Err(e @ AmqpError::Rejected(_)) => return Err(e),
                Err(e) => {
                    last = Some(e);
                    self.reset().await;
                }
            }
        }
        Err(last.unwrap_or_else(|| AmqpError::ConnectionLost("publish failed".into())))
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.reset().await;
    }
}

#[async_trait]
impl Transport for AmqpProducer {
    fn name(&self) -> &'static str {
        "amqp"
    }

    async fn submit(&self, envelope: Envelope) -> Result<(), TransportError> {
        self.publish(&envelope).await.map_err(Into::into)
    }
}

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
        for (idx, name) in self.topology.stages.iter().enumerate() {
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
        tracing::info!(stages = ?self.topology.stages, "amqp worker consuming");

        let mut watch = tokio::time::interval(Duration::from_millis(250));
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = watch.tick() => {
                    if !conn.status().connected() {
                        break Err(AmqpError::ConnectionLost("connection closed".into()));
                    }
                }
                done = consumers.join_next() => match done {
                    Some(Ok(Ok(()))) | None => {
                        if shutdown.is_cancelled() { break Ok(()); }
                        break Err(AmqpError::ConnectionLost("consumer ended".into()));
                    }
                    Some(Ok(Err(e))) => break Err(e),
                    Some(Err(join)) => break Err(AmqpError::ConnectionLost(join.to_string())),
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
            None => break Err(AmqpError::ConnectionLost("consumer cancelled".into())),
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
                AMQPValue::LongString(LongString::from(format!("undecodable: {e}"))),
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
    let hop = match disposition {
        Disposition::Finished => Ok(()),
        Disposition::Forward(next) => match serde_json::to_vec(&next) {
            Ok(body) => {
                publish_confirmed(
                    ch,
                    &ctx.topology.stage_queue(next.stage),
                    &body,
                    envelope_headers(&next, &ctx.topology),
                )
                .await
            }
            Err(e) => Err(e.into()),
        },
        Disposition::Retry { envelope, delay } => match serde_json::to_vec(&envelope) {
            Ok(body) => {
                publish_confirmed(
                    ch,
                    &ctx.topology.retry_queue_for(envelope.stage, delay),
                    &body,
                    envelope_headers(&envelope, &ctx.topology),
                )
                .await
            }
            Err(e) => Err(e.into()),
        },
        Disposition::DeadLetter { envelope, reason } => match serde_json::to_vec(&envelope) {
            Ok(body) => {
                let mut h = envelope_headers(&envelope, &ctx.topology);
                h.insert(
                    "x-reason".into(),
                    AMQPValue::LongString(LongString::from(reason.as_str())),
                );
                let r = publish_confirmed(ch, &ctx.topology.dlq(), &body, h).await;
                if r.is_ok() {
                    if let Some(m) = &ctx.metrics {
                        m.dead_lettered();
                    }
                }
                r
            }
            Err(e) => Err(e.into()),
        },
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

/// One dead-lettered step, as listed by [`Dlq::list`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DlqEntry {
    /// The job (when the body decodes).
    pub job_id: Option<String>,
    /// The failed stage name (header `x-stage`).
    pub stage: Option<String>,
    /// The last attempt.
    pub attempt: Option<u32>,
    /// Why it was dead-lettered (header `x-reason`).
    pub reason: Option<String>,
    /// The message body (the envelope JSON), lossy UTF-8.
    pub body: String,
}

fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Dead-letter queue operations (`pipeline-scan dlq list|replay|purge`).
pub struct Dlq {
    conn: Connection,
    channel: Channel,
    topology: Topology,
}

impl std::fmt::Debug for Dlq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dlq")
            .field("queue", &self.topology.dlq())
            .finish_non_exhaustive()
    }
}

impl Dlq {
    /// Connects and declares the topology.
    pub async fn connect(config: &AmqpConfig, topology: Topology) -> Result<Self, AmqpError> {
        let conn = connect(config, "dlq").await?;
        let channel = confirm_channel(&conn).await?;
        topology.declare(&channel).await?;
        Ok(Self {
            conn,
            channel,
            topology,
        })
    }

    /// Messages in the DLQ.
    pub async fn len(&self) -> Result<u32, AmqpError> {
        let q = self
            .channel
            .queue_declare(
                &self.topology.dlq(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(q.message_count())
    }

    /// Whether the DLQ is empty.
    pub async fn is_empty(&self) -> Result<bool, AmqpError> {
        Ok(self.len().await? == 0)
    }

    /// Up to `limit` entries, oldest first, without removing them (they are
    /// fetched unacked on a separate channel that is then closed, which
    /// returns them to the queue).
    pub async fn list(&self, limit: usize) -> Result<Vec<DlqEntry>, AmqpError> {
        let ch = self.conn.create_channel().await?;
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(msg) = ch
                .basic_get(&self.topology.dlq(), BasicGetOptions { no_ack: false })
                .await?
            else {
                break;
            };
            let d = msg.delivery;
            let env: Option<Envelope> = serde_json::from_slice(&d.data).ok();
            out.push(DlqEntry {
                job_id: env.as_ref().map(|e| e.job_id.to_string()),
                attempt: env.as_ref().map(|e| e.attempt),
                stage: header_str(&d.properties, "x-stage"),
                reason: header_str(&d.properties, "x-reason"),
                body: String::from_utf8_lossy(&d.data).into_owned(),
            });
        }
        let _ = ch.close(200, "list done").await;
        Ok(out)
    }

    /// Re-enqueues up to `limit` dead-lettered steps at their failed stage
    /// as the job's next run (attempt 1, seqs shifted by
    /// [`SeqScheme::in_run`](crate::pipeline::SeqScheme::in_run)), clearing
    /// each job's terminal marker in `store` first so the job can finish. Undecodable messages stay in the DLQ. Returns how
    /// many were replayed.
    pub async fn replay(&self, store: &JobStore, limit: usize) -> Result<usize, AmqpError> {
        let ch = self.conn.create_channel().await?;
        let mut replayed = 0;
        let mut seen = 0;
        while seen < limit {
            let Some(msg) = ch
                .basic_get(&self.topology.dlq(), BasicGetOptions { no_ack: false })
                .await?
            else {
                break;
            };
            seen += 1;
            let d = msg.delivery;
            // Undecodable: left unacked, returned to the queue when the channel closes.
            let Ok(env) = serde_json::from_slice::<Envelope>(&d.data) else {
                continue;
            };
            let env = env.into_replay();
            store
                .clear_terminal(&env.job_id)
                .await
                .map_err(|e| AmqpError::Store(e.to_string()))?;
            let body = serde_json::to_vec(&env)?;
            publish_confirmed(
                &self.channel,
                &self.topology.stage_queue(env.stage),
                &body,
                envelope_headers(&env, &self.topology),
            )
            .await?;
            d.acker.ack(BasicAckOptions::default()).await?;
            replayed += 1;
        }
        let _ = ch.close(200, "replay done").await;
        Ok(replayed)
    }

    /// Deletes every DLQ message; returns how many there were.
    pub async fn purge(&self) -> Result<u32, AmqpError> {
        Ok(self
            .channel
            .queue_purge(&self.topology.dlq(), QueuePurgeOptions::default())
            .await?)
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.conn.close(200, "dlq done").await;
    }
}
