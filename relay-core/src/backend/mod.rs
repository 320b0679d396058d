//! The storage backend, by role: the stream log producers append to and
//! routers read ([`StreamLog`]), the per-job log the router writes and
//! gateways read ([`JobLog`]), live delivery ([`PubSub`]), and the leases and
//! membership routers coordinate with ([`Coordination`]). [`Backend`] is
//! those four on one server, plus what needs more than one role at once.
//!
//! [`KvStore`] (plain keys with TTLs) is a fifth role the relay itself never
//! uses: it is not part of [`Backend`], so a relay backend need not offer it,
//! and an application that keeps its own records beside the relay (the
//! scan pipeline) asks for it explicitly. Both built-in backends implement
//! it.
//!
//! Implementations:
//! - [`MemoryBackend`](memory::MemoryBackend): in-process, full semantics
//!   (consumer groups, pending lists, delivery counts, TTLs, bounded history,
//!   pub/sub). The embedded default, not a mock.
//! - [`RedisBackend`](redis::RedisBackend) (feature `redis`, default): redis-rs.
//! - [`FredBackend`](fred::FredBackend) (feature `fred`): the same
//!   semantics on the fred client, over the same topologies and scripts.
//!
//! Every implementation passes the same conformance suite
//! (`tests/conformance/` in this crate), one module per trait.

use async_trait::async_trait;

use crate::error::BackendError;

mod coordination;
#[cfg(feature = "fred")]
pub mod fred;
mod job_log;
mod kv;
pub mod memory;
mod pubsub;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
mod reply;
#[cfg(feature = "redis")]
mod scripts;
mod stream_log;

pub use coordination::*;
pub use job_log::*;
pub use kv::*;
pub use pubsub::*;
pub use stream_log::*;

/// Result alias for backend calls.
pub type BackendResult<T> = Result<T, BackendError>;

/// Everything relay needs from one storage server: the four roles, plus the
/// operations that span two of them. ([`KvStore`] is not one of them.)
#[async_trait]
pub trait Backend: StreamLog + JobLog + PubSub + Coordination + 'static {
    /// Short name for logs and test names (`memory`, `redis`, `fred`).
    fn name(&self) -> &'static str;

    /// Checks the connection.
    async fn ping(&self) -> BackendResult<()>;

    /// [`JobLog::apply`], then acknowledges `ack`'s entries: in the same
    /// atomic step where the backend can (one script on a single Redis
    /// server: one round trip and one command less per batch), otherwise
    /// with a second call once the apply succeeded. A failed apply acks
    /// nothing; an `Err` may follow a successful apply (the ack failed), and
    /// re-applying is a no-op (G3).
    async fn apply_and_ack(
        &self,
        jobs: &[ApplyJob],
        opts: &ApplyOptions,
        ack: AckRequest<'_>,
    ) -> BackendResult<Vec<ApplyResult>> {
        apply_then_ack(self, jobs, opts, ack).await
    }
}

/// [`Backend::apply_and_ack`] in two steps: the apply, then (if it
/// succeeded and there is anything to ack) the ack.
pub(crate) async fn apply_then_ack<B: JobLog + StreamLog + ?Sized>(
    backend: &B,
    jobs: &[ApplyJob],
    opts: &ApplyOptions,
    ack: AckRequest<'_>,
) -> BackendResult<Vec<ApplyResult>> {
    let applied = backend.apply(jobs, opts).await?;
    if !ack.ids.is_empty() {
        backend.ack(ack.stream, ack.group, ack.ids).await?;
    }
    Ok(applied)
}
