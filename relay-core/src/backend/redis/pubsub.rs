//! [`PubSub`] on Redis: pipelined `PUBLISH`, and one dedicated RESP2
//! subscriber connection per [`PubSub::subscriber`] call.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use redis::aio::PubSubSink;
use redis::Cmd;
use tokio::sync::mpsc;

use super::conn::Resend;
use super::error::map_err;
use super::RedisBackend;
use crate::backend::{BackendResult, PubSub, PubSubMessage, Subscriber, SubscriberHandle};
use crate::error::BackendError;

/// Capacity of a subscriber's message channel.
pub const SUBSCRIBER_CAPACITY: usize = 65_536;

/// How long the subscriber task waits for room in a full message channel
/// before it gives up and closes the subscription (the owner then reconnects
/// and treats messages as missed, instead of memory growing without bound).
const SUBSCRIBER_FULL_GRACE: Duration = Duration::from_secs(5);

struct RedisSubscriberHandle {
    sink: PubSubSink,
}

#[async_trait]
impl SubscriberHandle for RedisSubscriberHandle {
    async fn subscribe(&self, channels: &[String]) -> BackendResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        self.sink.clone().subscribe(channels).await.map_err(map_err)
    }

    async fn unsubscribe(&self, channels: &[String]) -> BackendResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        self.sink
            .clone()
            .unsubscribe(channels)
            .await
            .map_err(map_err)
    }
}

#[async_trait]
impl PubSub for RedisBackend {
    async fn publish_batch(&self, messages: Vec<(String, Bytes)>) -> BackendResult<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let cmds: Vec<Cmd> = messages
            .iter()
            .map(|(ch, payload)| {
                let mut c = redis::cmd("PUBLISH");
                c.arg(ch.as_str()).arg(&payload[..]);
                c
            })
            .collect();
        for r in self.pipeline(&cmds, Resend::Never).await? {
            r.map_err(map_err)?;
        }
        Ok(())
    }

    async fn subscriber(&self) -> BackendResult<Subscriber> {
        // On the current node; after a failover the owner's reconnect
        // lands here and so follows the new master.
        let link = self.usable_link().await.map_err(map_err)?;
        let pubsub = match tokio::time::timeout(
            self.inner.config.connection_timeout,
            link.client.get_async_pubsub(),
        )
        .await
        {
            Err(_) => return Err(BackendError::Connection("pub/sub connect timed out".into())),
            Ok(Err(e)) => {
                self.observe(&e, link.generation).await;
                return Err(map_err(e));
            }
            Ok(Ok(p)) => p,
        };
        let (sink, mut stream) = pubsub.split();
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = tx.closed() => break,
                    m = stream.next() => match m {
                        Some(m) => m,
                        None => break,
                    },
                };
                let out = PubSubMessage {
                    channel: msg.get_channel_name().to_owned(),
                    payload: Bytes::copy_from_slice(msg.get_payload_bytes()),
                };
                match tx.try_send(out) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                    Err(mpsc::error::TrySendError::Full(out)) => {
                        match tokio::time::timeout(SUBSCRIBER_FULL_GRACE, tx.send(out)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => break,
                            Err(_) => {
                                tracing::warn!(
                                    "subscriber channel full for {SUBSCRIBER_FULL_GRACE:?}; \
                                     closing the subscription"
                                );
                                break;
                            }
                        }
                    }
                }
            }
            // Dropping `stream` closes the connection; dropping `tx` ends the
            // receiver, which tells the owner to reconnect.
        });
        Ok(Subscriber {
            handle: Box::new(RedisSubscriberHandle { sink }),
            messages: rx,
        })
    }
}
