//! The producer side: validated, batched appends to shard streams, with
//! duplicates of a (job, seq) dropped exactly once — at apply (default) or,
//! opt-in, already at append.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{AppendOutcome, AppendRequest, Backend, Dedupe};
use crate::codec::{native_fields, Encoding};
use crate::eco2::Eco2Entry;
use crate::error::PublishError;
use crate::event::Event;
use crate::keys::{KeySpace, Profile};

/// Where a repeated (job, seq) — a producer retry, a replayed step — is
/// dropped. Either way the job's history, state and live feed carry it
/// exactly once (G3); the choice is about the shard stream and the cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DedupeAt {
    /// The router drops it when applying: the job hash records every seq it
    /// has applied, for as long as the job lives. The append is a plain
    /// pipelined `XADD`; a retry may leave a second stream entry, which is
    /// acked and counted (`duplicates`) without touching the job.
    /// [`AppendOutcome::duplicate`] is always `false`.
    ///
    /// The default: a per-event marker costs Redis a script call, two more
    /// commands and a key per event for [`PublisherConfig::dedupe_ttl`]
    /// (about two thirds of the append's Redis CPU, and memory that grows
    /// with the event rate, not with the number of live jobs).
    #[default]
    Apply,
    /// The append itself is idempotent: a marker key per (job, seq) holds
    /// the first entry's id for [`PublisherConfig::dedupe_ttl`]; a repeat
    /// appends nothing and returns that id with `duplicate = true`. For
    /// producers that want to know, and for other readers of the shard
    /// streams that must not see repeats. The eco2 profile always works
    /// this way (the Python producers' `published:` markers are part of its
    /// wire contract).
    Append,
}

/// Publisher settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherConfig {
    /// Body encoding for the native profile.
    pub encoding: Encoding,
    /// Largest accepted encoded entry (all field values), in bytes.
    pub max_event_bytes: usize,
    /// Where repeats of a (job, seq) are dropped (native profile).
    pub dedupe: DedupeAt,
    /// How long an append marker lives ([`DedupeAt::Append`], eco2).
    pub dedupe_ttl: Duration,
    /// Approximate bound on each shard stream (`MAXLEN ~`).
    pub stream_maxlen: Option<u64>,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            encoding: Encoding::MsgPack,
            max_event_bytes: 1024 * 1024,
            dedupe: DedupeAt::Apply,
            dedupe_ttl: Duration::from_secs(7200),
            stream_maxlen: Some(100_000),
        }
    }
}

/// Appends events to their job's shard stream.
///
/// Publishing is idempotent per (job, seq): a retry after a timeout, or a
/// second producer replaying the same step, reaches clients once. Where the
/// repeat is dropped is [`PublisherConfig::dedupe`]: by the router at apply
/// (default), or already here, returning the original entry id with
/// `duplicate = true` ([`DedupeAt::Append`]).
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

    /// Whether repeats are dropped at append (see [`DedupeAt`]).
    pub fn dedupes_at_append(&self) -> bool {
        self.config.dedupe == DedupeAt::Append || self.keys.profile() == Profile::Eco2
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
        event.validate()?;
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
        let size = crate::codec::fields_size(&fields);
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
            dedupe: self.dedupes_at_append().then(|| Dedupe {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::backend::StreamLog;
    use crate::keys::KeySpace;
    use crate::{Domain, Status};

    fn publisher(profile: Profile, dedupe: DedupeAt) -> (Arc<MemoryBackend>, Publisher) {
        let backend = Arc::new(MemoryBackend::new());
        let keys = KeySpace::new(profile, Domain::new("scan").expect("domain"), 4);
        let config = PublisherConfig {
            dedupe,
            ..PublisherConfig::default()
        };
        (backend.clone(), Publisher::new(backend, keys, config))
    }

    async fn stream_len(backend: &MemoryBackend, p: &Publisher, job: &str) -> u64 {
        let job = crate::JobId::new(job).expect("job");
        let stream = p.keys().shard_stream(p.keys().shard_of(&job));
        backend.stream_len(&stream).await.expect("len")
    }

    #[tokio::test]
    async fn progress_over_100_is_refused() {
        let (backend, p) = publisher(Profile::Native, DedupeAt::Apply);
        let mut e = crate::Event::new("scan", "j-over", 1, "vision", Status::Progress).unwrap();
        e.progress = Some(101);
        assert!(matches!(
            p.publish(&e).await,
            Err(PublishError::Invalid(
                crate::error::ValidationError::Progress { value: 101 }
            ))
        ));
        assert_eq!(stream_len(&backend, &p, "j-over").await, 0);
    }

    #[tokio::test]
    async fn append_dedupe_reports_the_original_entry() {
        let (backend, p) = publisher(Profile::Native, DedupeAt::Append);
        let e = Event::new("scan", "job-1", 10, "vision", Status::Started).expect("event");
        let first = p.publish(&e).await.expect("publish");
        let again = p.publish(&e).await.expect("publish");
        assert!(!first.duplicate && again.duplicate);
        assert_eq!(again.id, first.id);
        assert_eq!(stream_len(&backend, &p, "job-1").await, 1);
    }

    #[tokio::test]
    async fn apply_dedupe_appends_plainly_and_leaves_repeats_to_the_router() {
        let (backend, p) = publisher(Profile::Native, DedupeAt::Apply);
        assert!(!p.dedupes_at_append());
        let e = Event::new("scan", "job-1", 10, "vision", Status::Started).expect("event");
        let first = p.publish(&e).await.expect("publish");
        let again = p.publish(&e).await.expect("publish");
        assert!(!first.duplicate && !again.duplicate);
        assert_ne!(again.id, first.id);
        assert_eq!(stream_len(&backend, &p, "job-1").await, 2);
    }

    #[tokio::test]
    async fn eco2_always_writes_the_python_markers() {
        let (_backend, p) = publisher(Profile::Eco2, DedupeAt::Apply);
        assert!(p.dedupes_at_append());
        let e = Event::new("scan", "job-1", 10, "vision", Status::Started).expect("event");
        let req = p.request(&e).expect("request");
        let marker = req.dedupe.expect("eco2 marker");
        assert_eq!(marker.key, "published:job-1:vision:10");
        assert_eq!(marker.ttl, Duration::from_secs(7200));
    }
}
