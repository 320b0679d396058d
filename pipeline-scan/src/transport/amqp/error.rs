//! [`AmqpError`]: what can go wrong talking to the broker, with its cause
//! kept as the error source.

use relay_core::BackendError;

use crate::transport::{lapin_is_transient, TransportError};

/// Errors of the AMQP transport.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// A lapin (protocol or connection) error.
    #[error("amqp: {0}")]
    Lapin(#[from] lapin::Error),
    /// The broker nacked or returned a message published to this queue.
    #[error("broker rejected a publish to {0}")]
    Rejected(String),
    /// The connection or a consumer ended (what ended).
    #[error("connection lost: {0}")]
    ConnectionLost(&'static str),
    /// A consumer task of the worker panicked or was cancelled.
    #[error("connection lost: consumer task: {0}")]
    Consumer(#[source] tokio::task::JoinError),
    /// The job store (backend) failed.
    #[error("job store: {0}")]
    Store(#[source] BackendError),
    /// A message could not be encoded.
    #[error("encode: {0}")]
    Encode(#[from] serde_json::Error),
}

impl AmqpError {
    /// Whether the operation may succeed if tried again on a fresh
    /// connection: lapin I/O, connection/channel state and broker protocol
    /// errors ([`lapin::Error::can_be_recovered`]), a lost connection or
    /// consumer, a transient backend error. A rejected publish, an encoding
    /// error or a panicked consumer are not.
    pub fn is_transient(&self) -> bool {
        match self {
            AmqpError::Lapin(e) => lapin_is_transient(e),
            AmqpError::ConnectionLost(_) => true,
            AmqpError::Consumer(e) => e.is_cancelled(),
            AmqpError::Store(e) => e.is_transient(),
            AmqpError::Rejected(_) | AmqpError::Encode(_) => false,
        }
    }
}

impl From<AmqpError> for TransportError {
    fn from(e: AmqpError) -> Self {
        match e {
            AmqpError::Lapin(e) => TransportError::Broker(e),
            AmqpError::Rejected(_) => TransportError::Rejected,
            AmqpError::Encode(e) => TransportError::Encode(e),
            AmqpError::Store(e) => TransportError::Store(e),
            other @ (AmqpError::ConnectionLost(_) | AmqpError::Consumer(_)) => {
                TransportError::Connection(Box::new(other))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> lapin::Error {
        lapin::Error::from(std::io::Error::from(kind))
    }

    #[test]
    fn lapin_errors_stay_sources_and_classify_as_transient() {
        use std::error::Error as _;
        let e = AmqpError::from(io(std::io::ErrorKind::ConnectionReset));
        assert!(e.is_transient());
        let t = TransportError::from(e);
        assert!(matches!(t, TransportError::Broker(_)), "{t:?}");
        assert!(t.is_transient());
        assert!(t
            .source()
            .and_then(|s| s.downcast_ref::<lapin::Error>())
            .is_some());
        assert_eq!(
            t.to_string(),
            format!(
                "broker connection: amqp: {}",
                io(std::io::ErrorKind::ConnectionReset)
            )
        );

        let rejected = TransportError::from(AmqpError::Rejected("q".into()));
        assert!(matches!(rejected, TransportError::Rejected));
        assert!(!rejected.is_transient());

        let lost = TransportError::from(AmqpError::ConnectionLost("consumer ended"));
        assert!(lost.is_transient());
        assert!(lost
            .source()
            .and_then(|s| s.downcast_ref::<AmqpError>())
            .is_some_and(|a| matches!(a, AmqpError::ConnectionLost("consumer ended"))));
        assert_eq!(
            lost.to_string(),
            "broker connection: connection lost: consumer ended"
        );
    }
}
