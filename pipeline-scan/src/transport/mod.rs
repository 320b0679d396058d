//! Transports move [`Envelope`]s between stages. Both run the same
//! [`Engine`](crate::pipeline::Engine) step logic:
//!
//! - [`inprocess::InProcess`]: tokio tasks and bounded channels, one worker
//!   pool per stage. The embedded default (demo, tests). Not durable: steps
//!   queued in memory are lost with the process.
//! - [`amqp`]: RabbitMQ via lapin: durable queues per stage, publisher
//!   confirms, manual acks after the next hop is confirmed, delay queues for
//!   retries, a dead-letter queue, lapin's connection recovery for the
//!   worker and a supervisor for what it does not recover.

pub mod amqp;
pub mod inprocess;

use async_trait::async_trait;

use crate::pipeline::Envelope;

/// Why a submission (or a transport operation such as a dead-letter replay)
/// failed. The cause is kept as the error's source; ask
/// [`is_transient`](Self::is_transient) whether trying again may help rather
/// than reading the message.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The AMQP broker is unreachable, or its connection or channel failed.
    #[error("broker connection: amqp: {0}")]
    Broker(#[source] lapin::Error),
    /// The connection was lost for another reason (the AMQP connection or a
    /// consumer ended; a custom transport's own failure), the cause as source.
    #[error("broker connection: {0}")]
    Connection(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The broker refused the message (negative publisher confirm).
    #[error("broker rejected the message")]
    Rejected,
    /// The transport is shutting down.
    #[error("transport closed")]
    Closed,
    /// The envelope could not be encoded.
    #[error("encode: {0}")]
    Encode(#[source] serde_json::Error),
    /// The envelope names a stage the pipeline does not have.
    #[error("no stage {0}")]
    UnknownStage(usize),
    /// The job store failed (a replay clears the job's terminal marker).
    #[error("job store: {0}")]
    Store(#[source] relay_core::BackendError),
}

impl TransportError {
    /// Whether the same operation may succeed later: a broker connection
    /// or channel failure that lapin deems recoverable, a lost connection, a
    /// transient job-store error. A rejected or unencodable message, an
    /// unknown stage and a closed transport are not.
    pub fn is_transient(&self) -> bool {
        match self {
            TransportError::Broker(e) => lapin_is_transient(e),
            TransportError::Connection(_) => true,
            TransportError::Store(e) => e.is_transient(),
            TransportError::Rejected
            | TransportError::Closed
            | TransportError::Encode(_)
            | TransportError::UnknownStage(_) => false,
        }
    }
}

/// Whether a lapin error may go away on a fresh connection or channel
/// (lapin's own [`lapin::Error::can_be_recovered`]: I/O, connection and
/// channel state, missed heartbeats, broker protocol errors).
pub(crate) fn lapin_is_transient(e: &lapin::Error) -> bool {
    e.can_be_recovered()
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
