//! [`Topology`]: the queues of a pipeline's stages, their delay queues and
//! the dead-letter queue.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Channel;

use super::connection::{connect, AmqpConfig, Recovery};
use super::error::AmqpError;
use crate::pipeline::{Engine, RetryPolicy};

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
    pub(super) fn retry_queue_for(&self, idx: usize, delay: Duration) -> String {
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
        let conn = connect(config, "teardown", Recovery::Caller).await?;
        let ch = conn.create_channel().await?;
        for q in self.all_queues() {
            ch.queue_delete(q.into(), lapin::options::QueueDeleteOptions::default())
                .await?;
        }
        let _ = conn.close(200, "teardown done".into()).await;
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
            ch.queue_declare(queue.as_str().into(), durable, FieldTable::default())
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
                ch.queue_declare(self.retry_queue(i, *d).into(), durable, args)
                    .await?;
            }
        }
        ch.queue_declare(self.dlq().into(), durable, FieldTable::default())
            .await?;
        Ok(())
    }
}
