//! [`AmqpProducer`]: submits jobs (the API side of the transport).
//!
//! ## Why the producer reconnects itself
//! The producer's connection does not use lapin's automatic recovery (the
//! worker's does): it keeps its own lazy reconnect — a publish that fails
//! transiently is tried once more on a fresh connection, then reported. A
//! submission must fail fast when the broker is unreachable (the API answers
//! 503, `/readyz` says `rabbitmq`), and lapin 4's recovery cannot give that:
//! - with recovery enabled, lapin retries even the first connect through its
//!   whole backoff, so a submission or a readiness probe would wait it out;
//! - with a bounded backoff, a recovery that runs out of attempts leaves the
//!   connection `Connecting`, its I/O thread gone, and wakes no waiter, so the
//!   producer could not tell it from a recovery still under way; and dropping
//!   a connection lapin is still recovering leaves an ownerless broker
//!   connection once the recovery succeeds.
//!
//! A publish whose confirm was lost (the connection dropped before the
//! broker answered) fails with the lapin error, so it is retried or reported,
//! never taken as confirmed.

use async_trait::async_trait;
use lapin::{Channel, Connection};

use super::connection::{confirm_channel, connect, AmqpConfig, Recovery};
use super::error::AmqpError;
use super::publish::publish_envelope;
use super::topology::Topology;
use crate::pipeline::Envelope;
use crate::transport::{Transport, TransportError};

/// Submits jobs to the first stage's queue (the API side). Reconnects lazily.
#[derive(Debug)]
pub struct AmqpProducer {
    config: AmqpConfig,
    topology: Topology,
    state: tokio::sync::Mutex<Option<(Connection, Channel)>>,
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
        let conn = connect(&self.config, "producer", Recovery::Caller).await?;
        let ch = confirm_channel(&conn).await?;
        self.topology.declare(&ch).await?;
        *state = Some((conn, ch.clone()));
        Ok(ch)
    }

    async fn reset(&self) {
        let mut state = self.state.lock().await;
        if let Some((conn, _)) = state.take() {
            let _ = conn.close(200, "reset".into()).await;
        }
    }

    /// Publishes an envelope to its stage's queue and waits for the confirm.
    /// A transient failure ([`AmqpError::is_transient`]) is tried once more
    /// on a fresh connection.
    pub async fn publish(&self, env: &Envelope) -> Result<(), AmqpError> {
        let queue = self.topology.stage_queue(env.stage);
        let mut last = AmqpError::ConnectionLost("publish failed");
        for _ in 0..2 {
            let result = match self.channel().await {
                Ok(ch) => publish_envelope(&ch, &self.topology, &queue, env, None).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => {
                    last = e;
                    self.reset().await;
                }
            }
        }
        Err(last)
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
