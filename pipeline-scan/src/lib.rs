//! # pipeline-scan
//!
//! A typed stage pipeline that runs in-process or over RabbitMQ, emitting
//! relay progress events, and the scan domain built on it
//! (Vision → Rule → Answer → Reward) with its HTTP API and workers.
//!
//! | module | what |
//! |---|---|
//! | [`pipeline`] | `Stage`, `Pipeline::new(a).then(b)`, the step `Engine`, seq scheme, idempotency records |
//! | [`transport`] | `Transport` trait; [`transport::inprocess`] and [`transport::amqp`] (queues, retries, DLQ, supervisor) |
//! | [`sim`] | simulated work: `LatencyDist`, `simulate_latency`, the `SimulatedLatency` stage decorator (`model_ms`) |
//! | [`scan`] | the scan stages, models (OpenAI-compatible and simulated), rule sets, results |
//! | [`api`] | `POST /api/v1/scan`, `GET /api/v1/scan/{job}/result` |
//! | [`image_url`] | the image URL policy (SSRF): literal inside hosts refused, canonical URL forwarded |
//! | [`app`] | the `pipeline-scan` binary: flags and `run` |
//! | [`demo`] | `pipeline-scan demo`: everything in one process on the memory backend, with a browser page |
//! | [`wiring`] | the parts both entry points compose: scan engine on a backend, in-process start, ops routes, [`wiring::AppError`] |
//! | [`metrics`] | worker Prometheus metrics |
#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod demo;
pub mod image_url;
pub mod metrics;
pub mod pipeline;
pub mod scan;
pub mod sim;
pub mod transport;
pub mod wiring;
