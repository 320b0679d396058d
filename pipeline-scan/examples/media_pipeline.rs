//! An embedder's own typed pipeline: **Download → Transcode → Upload**, run
//! on the in-process transport and the in-memory backend, printing each
//! progress event as it is published. No scan domain, no broker, no Redis:
//!
//! ```text
//! cargo run -p pipeline-scan --no-default-features --example media_pipeline
//! ```
//!
//! prints
//!
//! ```text
//!   0  queued     started      0%  {"source_url":"https://media.example.com/talk.mov"}
//!  10  download   started      0%  null
//!  11  download   completed   33%  {"bytes":34}
//!  20  transcode  started     33%  null
//!  21  transcode  completed   66%  {"format":"webm","bytes":17}
//!  30  upload     started     66%  null
//!  31  upload     completed  100%  {"url":"https://cdn.example.com/media-….webm"}
//!  41  done       completed  100%  {"url":"https://cdn.example.com/media-….webm","bytes":17}
//! uploaded 17 bytes to https://cdn.example.com/media-….webm
//! ```
//!
//! What it shows:
//! - each stage is a [`Stage`] with serde input/output types, here made of
//!   an async function with [`stage_fn`] (a stage with state of its own
//!   implements [`Stage`] itself, as the crate docs show);
//!   `Pipeline::new(download()).then(transcode()).then(upload())` only
//!   compiles because each output type is the next stage's input type;
//! - the [`Engine`] emits the relay events (`started`/`completed` per stage,
//!   progress in %, one terminal `done`) through a [`Publisher`]; what a
//!   stage's `with_event_data` makes of its output is its `completed` data;
//! - the events land in the job's shard stream, which is what relay-router
//!   consumes in production (and relay-sse streams to browsers); here a
//!   consumer group on that stream prints them as they arrive.
//!
//! `tests/examples.rs` runs [`run`] and checks the events, so this file
//! cannot rot.

mod common;

use std::sync::Arc;
use std::time::Duration;

use pipeline_scan::pipeline::{
    stage_fn, Engine, EngineConfig, Envelope, Pipeline, PlainHooks, Stage, StageError,
};
use pipeline_scan::transport::inprocess::{InProcess, InProcessConfig};
use pipeline_scan::transport::Transport;
use relay_core::backend::memory::MemoryBackend;
use relay_core::backend::{ReadFrom, StreamLog};
use relay_core::codec::parse_native;
use relay_core::{Domain, Event, JobId, KeySpace, Profile, Publisher};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use common::{format_event, AnyError};

/// What a client asks for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MediaJob {
    /// The original file.
    pub source_url: String,
    /// The wanted container format.
    pub format: String,
}

/// Download's output: the original bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Downloaded {
    /// The request.
    pub job: MediaJob,
    /// The file (a stand-in: its URL's bytes).
    pub data: Vec<u8>,
}

/// Transcode's output: the converted file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Transcoded {
    /// The container format.
    pub format: String,
    /// The converted bytes.
    pub data: Vec<u8>,
}

/// Upload's output (and the job's result).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Uploaded {
    /// Where the file is now.
    pub url: String,
    /// Its size.
    pub bytes: usize,
}

/// Fetches the source file.
pub fn download() -> impl Stage<Input = MediaJob, Output = Downloaded> {
    stage_fn("download", |_ctx, job: MediaJob| async move {
        if !job.source_url.starts_with("https://") {
            // Permanent: retrying cannot help, the job fails at once.
            return Err(StageError::fatal("only https sources are accepted"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // the network
        let data = job.source_url.as_bytes().to_vec();
        Ok(Downloaded { job, data })
    })
    .with_event_data(|out| json!({ "bytes": out.data.len() }))
}

/// Converts the file.
pub fn transcode() -> impl Stage<Input = Downloaded, Output = Transcoded> {
    stage_fn("transcode", |_ctx, input: Downloaded| async move {
        tokio::time::sleep(Duration::from_millis(40)).await; // the codec
        let data: Vec<u8> = input.data.iter().step_by(2).copied().collect();
        Ok(Transcoded {
            format: input.job.format,
            data,
        })
    })
    .with_event_data(|out| json!({ "format": out.format, "bytes": out.data.len() }))
}

/// Stores the result where clients can fetch it.
pub fn upload() -> impl Stage<Input = Transcoded, Output = Uploaded> {
    stage_fn("upload", |ctx, input: Transcoded| async move {
        tokio::time::sleep(Duration::from_millis(20)).await; // the object store
        Ok(Uploaded {
            url: format!("https://cdn.example.com/{}.{}", ctx.job_id, input.format),
            bytes: input.data.len(),
        })
    })
    .with_event_data(|out| json!({ "url": out.url }))
}

/// Runs one job from `source_url` through the pipeline and calls `on_event`
/// with each of its events as it is published (a consumer group on the
/// job's shard stream, as relay-router reads it). Returns the upload.
pub async fn run(source_url: &str, mut on_event: impl FnMut(&Event)) -> Result<Uploaded, AnyError> {
    // One in-process server: the events and the engine's records.
    let backend = Arc::new(MemoryBackend::new());
    let domain = Domain::new("media")?;
    let keys = KeySpace::new(Profile::Native, domain.clone(), 1);
    let publisher = Publisher::new(
        backend.clone(),
        keys.clone(),
        pipeline_scan::pipeline::publisher_config(),
    );

    // The typed chain: each `then` checks that the types line up.
    let pipeline: Pipeline<MediaJob, Uploaded> =
        Pipeline::new(download()).then(transcode()).then(upload());
    let engine = Arc::new(Engine::new(
        pipeline,
        publisher,
        backend.clone(),
        Arc::new(PlainHooks), // `done` carries the last stage's output
        EngineConfig::new(domain),
    ));
    let transport = InProcess::start(engine.clone(), InProcessConfig::default());

    // Read the job's shard stream from its start (nothing is missed even if
    // events land before the first read).
    let job = JobId::new(format!("media-{}", uuid::Uuid::new_v4()))?;
    let stream = keys.shard_stream(keys.shard_of(&job));
    backend.ensure_group(&stream, "progress").await?;

    // Submit: the `queued` event, then the first step.
    let input = MediaJob {
        source_url: source_url.to_owned(),
        format: "webm".into(),
    };
    engine
        .control()
        .queued(&job, json!({ "source_url": input.source_url }))
        .await?;
    transport
        .submit(Envelope::first(
            job.clone(),
            "alice",
            serde_json::to_value(&input)?,
        ))
        .await?;

    // Print until the terminal event (bounded: a stuck job is an error).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let done = loop {
        if tokio::time::Instant::now() > deadline {
            return Err("no terminal event within 10 s".into());
        }
        let entries = backend
            .read_group(
                &stream,
                "progress",
                "printer",
                ReadFrom::New,
                64,
                Some(Duration::from_millis(50)),
            )
            .await?;
        let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
        let mut terminal = None;
        for entry in entries {
            let event = parse_native(&entry.fields)?.event;
            if event.job_id != job {
                continue;
            }
            on_event(&event);
            if event.is_terminal() {
                terminal = Some(event);
            }
        }
        backend.ack(&stream, "progress", &ids).await?;
        if let Some(event) = terminal {
            break event;
        }
    };
    transport.shutdown().await;
    if done.status.to_string() != "completed" {
        return Err(format!("job failed: {}", done.data).into());
    }
    Ok(serde_json::from_value(done.data)?)
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let uploaded = run("https://media.example.com/talk.mov", |e| {
        println!("{}", format_event(e))
    })
    .await?;
    println!("uploaded {} bytes to {}", uploaded.bytes, uploaded.url);
    Ok(())
}
