//! # relay-sse
//!
//! relay's SSE gateway: streams a job's progress events to browsers and apps,
//! gap-free across reconnects (docs/GUARANTEES.md: G1, G2, G4, G6).
//!
//! Each connection subscribes to the job's live channel (one multiplexed
//! subscriber connection per process, refcounted per job), then catches up
//! from history after the client's `Last-Event-ID` and merges the live feed
//! with [`relay_core::resume::Resume`]. After a subscriber reconnect every
//! client re-runs its catch-up, so nothing published during the outage is
//! lost. A client that cannot keep up is disconnected (it resumes) instead of
//! slowing anyone else.
//!
//! ## Embedding
//!
//! [`Gateway::router`] is a plain axum `Router` with the gateway's state
//! already applied. Serve it alone (as the all-in-one demo does on the
//! memory backend), or mount it in your own application under a prefix,
//! next to your own routes and behind your own middleware:
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::routing::get;
//! use relay_core::backend::memory::MemoryBackend;
//! use relay_sse::{Gateway, GatewayOptions};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = Arc::new(MemoryBackend::new());
//! let gateway = Gateway::new(backend, GatewayOptions::default())?;
//! // `nest_service` mounts it into a router of any state type; the
//! // gateway's routes answer below the prefix (`/progress/v1/jobs/{id}/events`).
//! let app = axum::Router::new()
//!     .route("/hello", get(|| async { "your own route" }))
//!     .nest_service("/progress", gateway.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! `examples/embed_gateway.rs` is a whole application doing this: the
//! memory backend or Redis from the environment, relay's router applying
//! what its own route publishes, its own API-key check as a layer on the
//! mounted gateway, and a shutdown that ends the open streams
//! ([`Gateway::shutdown`]) so the listener can drain (`tests/examples.rs`
//! runs it). Mounted, the gateway is served by the application's HTTP
//! server rather than the gateway's own HTTP/1.1 front (docs/ARCHITECTURE.md,
//! "Embedding the gateway"); the demo page, when enabled, expects the root.
//!
//! Endpoints: `GET /v1/jobs/{job_id}/events` (SSE), `GET /v1/jobs/{job_id}/state`,
//! the eco2 routes `GET /api/v1/stream?job_id=` and
//! `GET /api/v1/{scan|chat}/{job_id}/events`, `/healthz`, `/readyz`, `/metrics`,
//! with `demo_page` a demo page at `/`, and `POST /v1/jobs/{job_id}/events`,
//! which publishes one event for a producer holding a publisher key
//! ([`GatewayOptions::publisher_keys`]; docs/PRODUCERS.md).
//!
//! ## Layout
//!
//! Modules are layered, each importing only modules below it (a test,
//! `tests/module_graph.rs`, fails on any import cycle):
//!
//! - the wire: [`sse`] (frame encoder), `frame` (the two framings and the
//!   shared live message), [`client`] (a reader, for tests and tools);
//! - the live side: `hub` (one subscriber connection, fan-out), `session`
//!   (one connection's catch-up + live merge) writing to an `output`;
//! - the HTTP side: `gateway` (shared state, options in
//!   [`GatewayOptions`]), `routes` (the one route table and the Router built
//!   from it), `handlers`, their typed extractors (`extract`: the job and
//!   the last event id; `auth`: the token) and their one error type
//!   (`rejection`), `publish` (the publish route: publisher key, body,
//!   append), `open` (from a request to a stream or a final answer),
//!   `takeover` (handing a started stream to whoever writes it), `front`
//!   (the HTTP/1.1 front);
//! - the binary: [`Config`], `server` ([`run`]).
#![warn(missing_docs)]

mod auth;
pub mod client;
mod config;
mod extract;
mod frame;
mod front;
mod gateway;
mod handlers;
mod hub;
pub mod metrics;
mod open;
mod options;
mod output;
mod position;
mod publish;
mod rejection;
mod retry;
mod routes;
mod server;
mod session;
pub mod sse;
mod takeover;

pub use config::{BackendKind, Config, LogFormat};
pub use frame::Framing;
pub use gateway::{Gateway, GatewayError};
pub use metrics::{CloseReason, Metrics, PublishOutcome};
pub use options::GatewayOptions;
pub use relay_core::cli::init_tracing;
pub use server::run;

/// Internals exposed for the fuzz targets in `fuzz/` (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::front::{parse_head, Head};
}
