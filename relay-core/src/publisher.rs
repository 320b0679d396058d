//! The producer side: validated, idempotent, batched appends to shard streams.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{AppendOutcome, AppendRequest, Backend, Dedupe};
use crate::codec::{native_fields, Encoding};
use crate::eco2::Eco2Entry;
use crate::error::PublishError;
use crate::event::Event;
use crate::keys::{KeySpace, Profile};

/// Publisher settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherConfig {
    /// Body encoding for the native profile.
    pub encoding: Encoding,
    /// Largest accepted encoded entry (all field values), in bytes.
    pub max_event_bytes: usize,
    /// How long the (job, seq) idempotency marker lives.
    pub dedupe_ttl: Duration,
    /// Approximate bound on each shard stream (`MAXLEN ~`).
    pub stream_maxlen: Option<u64>,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            encoding: Encoding::MsgPack,
            max_event_bytes: 1024 * 1024,
            dedupe_ttl: Duration::from_secs(7200),
            stream_maxlen: Some(100_000),
        }
    }
}

/// Appends events to their job's shard stream.
///
/// Publishing is idempotent per (job, seq): a retry after a timeout, or a
/// second producer replaying the same step, appends nothing and returns the
/// original entry id with `duplicate = true`.
#[derive(Clone)]
pub struct Publisher {
    backend: Arc<dyn Backend>,
    keys: KeySpace,
    config: PublisherConfig,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("backend", &self.backend.name())
            .field("keys", &self.keys)
            .field("config", &self.config)
            .finish()
    }
}

impl Publisher {
    /// A publisher for one key space.
    pub fn new(backend: Arc<dyn Backend>, keys: KeySpace, config: PublisherConfig) -> Self {
        Self {
            backend,
            keys,
            config,
        }
    }

    /// The key space events go to.
    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Validates and encodes an event into its append request.
    pub fn request(&self, event: &Event) -> Result<AppendRequest, PublishError> {
        if event.domain != *self.keys.domain() {
            return Err(PublishError::WrongDomain {
                event: event.domain.to_string(),
                publisher: self.keys.domain().to_string(),
            });
        }
        let fields = match self.keys.profile() {
            Profile::Native => native_fields(event, self.config.encoding)?,
            Profile::Eco2 => Eco2Entry::from_event(event).to_fields(),
        };
        let size: usize = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > self.config.max_event_bytes {
            return Err(PublishError::TooLarge {
                size,
                limit: self.config.max_event_bytes,
            });
        }
        let shard = self.keys.shard_of(&event.job_id);
        Ok(AppendRequest {
            stream: self.keys.shard_stream(shard),
            fields,
            maxlen: self.config.stream_maxlen,
            dedupe: Some(Dedupe {
                key: self
                    .keys
                    .publish_marker(&event.job_id, event.stage.as_str(), event.seq),
                ttl: self.config.dedupe_ttl,
            }),
        })
    }

    /// Publishes one event.
    pub async fn publish(&self, event: &Event) -> Result<AppendOutcome, PublishError> {
        let req = self.request(event)?;
        Ok(self.backend.append(req).await?)
    }

    /// Publishes many events in one pipelined round trip. Validation happens
    /// first for all of them: one invalid event fails the call and appends
    /// nothing.
    pub async fn publish_batch(
        &self,
        events: &[Event],
    ) -> Result<Vec<AppendOutcome>, PublishError> {
        let reqs = events
            .iter()
            .map(|e| self.request(e))
            .collect::<Result<Vec<_>, _>>()?;
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.backend.append_batch(reqs).await?)
    }
}
