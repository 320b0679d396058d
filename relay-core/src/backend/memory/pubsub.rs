//! [`PubSub`] in memory: per-subscriber bounded queues.

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::backend::*;
use crate::error::BackendError;

struct MemorySubscriber {
    id: u64,
    shared: Weak<Shared>,
}

impl MemorySubscriber {
    fn with_inner<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> BackendResult<R> {
        let shared = self.shared.upgrade().ok_or(BackendError::Closed)?;
        let mut inner = shared
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !inner.subs.contains_key(&self.id) {
            return Err(BackendError::Connection("subscriber disconnected".into()));
        }
        Ok(f(&mut inner))
    }
}

#[async_trait]
impl SubscriberHandle for MemorySubscriber {
    async fn subscribe(&self, channels: &[String]) -> BackendResult<()> {
        let id = self.id;
        self.with_inner(|inner| {
            for ch in channels {
                inner.channels.entry(ch.clone()).or_default().insert(id);
                inner.sub_channels.entry(id).or_default().insert(ch.clone());
            }
        })
    }

    async fn unsubscribe(&self, channels: &[String]) -> BackendResult<()> {
        let id = self.id;
        self.with_inner(|inner| {
            for ch in channels {
                if let Some(set) = inner.channels.get_mut(ch) {
                    set.remove(&id);
                    if set.is_empty() {
                        inner.channels.remove(ch);
                    }
                }
                if let Some(set) = inner.sub_channels.get_mut(&id) {
                    set.remove(ch);
                }
            }
        })
    }
}

impl Drop for MemorySubscriber {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            let mut inner = shared
                .inner
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            inner.drop_subscriber(self.id);
        }
    }
}

#[async_trait]
impl PubSub for MemoryBackend {
    async fn publish_batch(&self, messages: Vec<(String, Bytes)>) -> BackendResult<()> {
        let mut inner = self.lock();
        for (ch, payload) in messages {
            inner.publish(&ch, payload);
        }
        Ok(())
    }

    async fn subscriber(&self) -> BackendResult<Subscriber> {
        let id = self.shared.next_sub.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        self.lock().subs.insert(id, tx);
        Ok(Subscriber {
            handle: Box::new(MemorySubscriber {
                id,
                shared: Arc::downgrade(&self.shared),
            }),
            messages: rx,
        })
    }
}
