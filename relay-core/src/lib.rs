//! # relay-core
//!
//! The core of relay: the job-progress [`Event`] model, codecs for the native
//! and eco2 wire profiles, the Redis [`keys`] scheme, the [`Backend`] trait
//! with its in-memory and Redis implementations, the idempotent
//! [`Publisher`], the batched crash-safe [`Router`] engine and the
//! gateway-side [`resume`] algorithm.
//!
//! ```
//! use std::sync::Arc;
//! use relay_core::{DedupeAt, Event, Status, Publisher, PublisherConfig, KeySpace, Profile, Domain};
//! use relay_core::backend::memory::MemoryBackend;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let backend = Arc::new(MemoryBackend::new());
//! let keys = KeySpace::new(Profile::Native, Domain::new("scan").unwrap(), 4);
//! // Repeats are dropped by the router by default; here already at append.
//! let config = PublisherConfig { dedupe: DedupeAt::Append, ..Default::default() };
//! let publisher = Publisher::new(backend.clone(), keys, config);
//! let event = Event::new("scan", "job-1", 10, "vision", Status::Started).unwrap();
//! let first = publisher.publish(&event).await.unwrap();
//! let again = publisher.publish(&event).await.unwrap();
//! assert!(!first.duplicate && again.duplicate); // idempotent per (job, seq)
//! assert_eq!(again.id, first.id);
//! # });
//! ```
#![warn(missing_docs)]

pub mod auth;
pub mod backend;
#[cfg(feature = "cli")]
pub mod cli;
pub mod codec;
pub mod eco2;
pub mod error;
pub mod event;
pub mod fields;
#[cfg(feature = "http-serve")]
pub mod http_serve;
pub mod keys;
#[cfg(feature = "otel")]
pub mod otel;
pub mod publisher;
pub mod resume;
pub mod router;
#[cfg(feature = "cli")]
pub mod telemetry;

pub use backend::{Backend, BackendResult};
pub use codec::{Decoded, Encoding, LiveEnvelope, Payload, Record};
pub use error::{BackendError, CodecError, PublishError, ValidationError};
pub use event::{Domain, Epoch, Event, JobId, Offset, Position, Stage, Status, TraceContext};
pub use keys::{KeySpace, Profile};
pub use publisher::{DedupeAt, Publisher, PublisherConfig};
pub use router::{Router, RouterConfig};
