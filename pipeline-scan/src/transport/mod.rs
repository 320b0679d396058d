//! Transports move [`Envelope`]s between stages. Both run the same
//! [`Engine`](crate::pipeline::Engine) step logic:
//!
//! - [`inprocess::InProcess`]: tokio tasks and bounded channels, one worker
//!   pool per stage. The embedded default (demo, tests). Not durable: steps
//!   queued in memory are lost with the process.
//! - [`amqp`]: RabbitMQ via lapin: durable queues per stage, publisher
//!   confirms, manual acks after the next hop is confirmed, delay queues for
//!   retries, a dead-letter queue, and a reconnecting worker supervisor.

pub mod amqp;
pub mod inprocess;

use async_trait::async_trait;

use crate::pipeline::Envelope;

/// Why a submission could not be enqueued.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The broker is unreachable or the connection failed.
    #[error("broker connection: {0}")]
    Connection(String),
    /// The broker refused the message (negative publisher confirm).
    #[error("broker rejected the message")]
    Rejected,
    /// The transport is shutting down.
    #[error("transport closed")]
    Closed,
    /// The envelope could not be encoded.
    #[error("encode: {0}")]
    Encode(String),
}

/// Where new jobs are submitted (the API side of a transport).
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Short name for logs (`in-process`, `amqp`).
    fn name(&self) -> &'static str;

    /// Enqueues the first step of a job. `Ok` means the transport has taken
    /// responsibility for it (for AMQP: the broker confirmed it).
    async fn submit(&self, envelope: Envelope) -> Result<(), TransportError>;
}
