//! # pipeline-scan
//!
//! A typed stage pipeline that runs in-process or over RabbitMQ, emitting
//! relay progress events — and, behind the default feature `scan`, the scan
//! domain built on it (Vision → Rule → Answer → Reward) with its HTTP API,
//! workers and demo.
//!
//! ## The pipeline (always)
//!
//! | module | what |
//! |---|---|
//! | [`pipeline`] | `Stage` (or `stage_fn` for a plain async function), `Pipeline::new(a).then(b)`, the step `Engine`, `JobControl`, seq scheme, idempotency records |
//! | [`transport`] | `Transport` trait; [`transport::inprocess`] and [`transport::amqp`] (queues, retries, DLQ, supervisor) |
//! | [`sim`] | simulated work: `LatencyDist`, `simulate_latency`, the `SimulatedLatency` stage decorator (`model_ms`) |
//! | [`metrics`] | worker Prometheus metrics |
//!
//! An embedder that only wants its own typed pipeline depends on
//! `pipeline-scan = { version = "…", default-features = false }`: none of the
//! scan domain, the OpenAI client (reqwest), axum, clap or the SSE gateway is
//! built. `examples/media_pipeline.rs` (Download → Transcode → Upload) and
//! `examples/progress_worker.rs` show it end to end.
//!
//! ```no_run
//! use async_trait::async_trait;
//! use pipeline_scan::pipeline::{Pipeline, Stage, StageContext, StageError};
//!
//! struct Download;
//! #[async_trait]
//! impl Stage for Download {
//!     type Input = String; // a URL
//!     type Output = Vec<u8>;
//!     const NAME: &'static str = "download";
//!     async fn run(&self, _: &StageContext, url: String) -> Result<Vec<u8>, StageError> {
//!         Ok(url.into_bytes())
//!     }
//! }
//!
//! struct Checksum;
//! #[async_trait]
//! impl Stage for Checksum {
//!     type Input = Vec<u8>;
//!     type Output = u64;
//!     const NAME: &'static str = "checksum";
//!     async fn run(&self, _: &StageContext, bytes: Vec<u8>) -> Result<u64, StageError> {
//!         Ok(bytes.iter().map(|b| u64::from(*b)).sum())
//!     }
//! }
//!
//! let pipeline: Pipeline<String, u64> = Pipeline::new(Download).then(Checksum);
//! assert_eq!(pipeline.stage_names(), ["download", "checksum"]);
//! ```
#![cfg_attr(
    feature = "scan",
    doc = r#"
## The scan domain (feature `scan`, default)

| module | what |
|---|---|
| [`scan`] | the scan stages, models (OpenAI-compatible and simulated), rule sets, results |
| [`api`] | `POST /api/v1/scan`, `GET /api/v1/scan/{job}/result` |
| [`image_url`] | the image URL policy (SSRF): literal inside hosts refused, canonical URL forwarded |
| [`wiring`] | the parts both entry points compose: scan engine on a backend, in-process start, ops routes, [`wiring::AppError`] |
| [`app`] | the `pipeline-scan` binary: flags and `run` |
| [`demo`] | `pipeline-scan demo`: everything in one process on the memory backend, with a browser page |
"#
)]
#![warn(missing_docs)]

pub mod metrics;
pub mod pipeline;
pub mod sim;
pub mod transport;

#[cfg(feature = "scan")]
pub mod api;
#[cfg(feature = "scan")]
pub mod app;
#[cfg(feature = "scan")]
pub mod demo;
#[cfg(feature = "scan")]
pub mod image_url;
#[cfg(feature = "scan")]
pub mod scan;
#[cfg(feature = "scan")]
mod submit_span;
#[cfg(feature = "scan")]
pub mod wiring;
