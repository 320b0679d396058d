//! Live delivery: fire-and-forget Pub/Sub. Loss is allowed here (a
//! subscriber that reconnects must assume it missed messages and catch up
//! from the job log); ordering per channel is not relied upon either, since
//! every message carries its offset.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::BackendResult;

/// A message received on a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubSubMessage {
    /// The channel.
    pub channel: String,
    /// The payload.
    pub payload: Bytes,
}

/// Control side of a multiplexed subscriber connection.
#[async_trait]
pub trait SubscriberHandle: Send + Sync {
    /// Subscribes to channels (idempotent per channel).
    async fn subscribe(&self, channels: &[String]) -> BackendResult<()>;
    /// Unsubscribes from channels.
    async fn unsubscribe(&self, channels: &[String]) -> BackendResult<()>;
}

/// One subscriber connection: subscribe through `handle`, receive on
/// `messages`. When the connection is lost, `messages` ends; the owner then
/// opens a new subscriber and must assume messages were missed.
pub struct Subscriber {
    /// Subscribe/unsubscribe control.
    pub handle: Box<dyn SubscriberHandle>,
    /// Incoming messages.
    pub messages: mpsc::Receiver<PubSubMessage>,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber").finish_non_exhaustive()
    }
}

/// Publishing and subscribing.
///
/// Contract: a message published after a subscription was confirmed reaches
/// that subscriber unless its connection is lost, and a lost connection
/// ends [`Subscriber::messages`] so the owner knows to recover. Memory is
/// bounded: a subscriber that cannot keep up is disconnected, never queued
/// without limit.
#[async_trait]
pub trait PubSub: Send + Sync {
    /// Publishes messages, pipelined.
    async fn publish_batch(&self, messages: Vec<(String, Bytes)>) -> BackendResult<()>;

    /// Publishes one message.
    async fn publish(&self, channel: &str, payload: Bytes) -> BackendResult<()> {
        self.publish_batch(vec![(channel.to_owned(), payload)])
            .await
    }

    /// Opens a multiplexed subscriber connection.
    async fn subscriber(&self) -> BackendResult<Subscriber>;
}
