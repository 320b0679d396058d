//! [`AmqpProducer`]: submits jobs (the API side of the transport).

use async_trait::async_trait;
use lapin::{Channel, Connection};

use super::connection::{confirm_channel, connect, AmqpConfig};
use super::error::AmqpError;
use super::publish::publish_envelope;
use super::topology::Topology;
use crate::pipeline::Envelope;
use crate::transport::{Transport, TransportError};

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
