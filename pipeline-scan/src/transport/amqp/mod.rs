//! The RabbitMQ transport (lapin).
//!
//! | file | what |
//! |---|---|
//! | `connection` | [`AmqpConfig`], connecting, confirm channels |
//! | `topology` | [`Topology`]: queue names and declarations |
//! | `publish` | the one confirmed publish of an envelope (headers included) |
//! | `producer` | [`AmqpProducer`]: the API side ([`Transport`](super::Transport)) |
//! | `worker` | [`AmqpWorker`]: stage consumers and their supervisor |
//! | `dlq` | [`Dlq`]: list, replay, purge dead letters |
//! | `error` | [`AmqpError`] |
//!
//! ## Topology (default exchange, all durable)
//! - `{prefix}.{stage}`: one work queue per stage (`scan.vision`, …).
//! - `{prefix}.{stage}.retry.{ms}ms`: delay queues, one per backoff step of
//!   the retry policy: `x-message-ttl = ms`, dead-lettering back to
//!   `{prefix}.{stage}` when the TTL expires. A per-queue TTL (not a
//!   per-message one) keeps every message of a queue expiring in order.
//! - `{prefix}.dlq`: steps that failed for good (headers `x-reason`,
//!   `x-stage`), inspected and replayed with [`Dlq`].
//!
//! ## Delivery
//! Every publish is persistent, `mandatory` and waits for the publisher
//! confirm. A worker acks its message only after the next hop (the next
//! stage's queue, a delay queue or the DLQ) confirmed; if that fails it nacks
//! with requeue, and if the connection is gone the broker redelivers. The
//! [`Engine`](crate::pipeline::Engine) makes redelivery idempotent.
//!
//! ## Reconnection
//! [`AmqpWorker::run`] connects, consumes every stage queue with its own
//! channel and prefetch (each channel declares the topology), and watches
//! the connection. A lost connection is recovered in place by lapin's
//! automatic recovery: it reconnects with exponential backoff, re-opens the
//! channels in confirm mode with their prefetch, re-declares the queues and
//! re-creates the consumers; unacked messages are redelivered by the broker,
//! and publishes in flight fail, so their deliveries are redelivered too.
//! What lapin does not recover — a consumer the broker cancelled, a channel
//! it closed, an error lapin deems final — ends the session, and the
//! worker's supervisor starts over on a fresh connection after a backoff.
//! [`AmqpProducer`] reconnects itself (a failed publish is tried once more
//! on a fresh connection, then reported), so a submission fails fast while
//! the broker is down; the `worker` and `producer` modules say why.

mod connection;
mod dlq;
mod error;
mod producer;
mod publish;
mod topology;
mod worker;

pub use connection::AmqpConfig;
pub use dlq::{Dlq, DlqEntry};
pub use error::AmqpError;
pub use producer::AmqpProducer;
pub use topology::Topology;
pub use worker::AmqpWorker;
