//! The hand-off of a started stream to whoever writes the response.
//!
//! The handler frames the first chunk, then puts the rest of the stream
//! ([`Streaming`]) into the response as an extension ([`SseTakeover`]).
//! The gateway's own front takes it out and writes to the socket directly;
//! served by plain axum/hyper instead, the response body takes it on its
//! first poll and runs it in a task feeding a bounded channel.
//!
//! Why a hand-off rather than two handlers: both serving paths route the
//! request through the same axum `Router`, so validation, tokens, limits
//! and error answers are identical; only the writing differs (the front's
//! direct socket writes keep an idle stream at a few KiB, a hyper
//! connection costs several times that).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use futures::StreamExt;
use relay_core::JobId;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::gateway::ConnGuard;
use crate::metrics::CloseReason;
use crate::output::{ChannelOut, Output};
use crate::session::Session;

/// Chunks queued for hyper on the axum path (the front writes directly).
const BODY_CHUNKS: usize = 4;

/// A started SSE stream waiting for whoever writes the response.
pub(crate) struct Streaming {
    session: Session,
    /// `retry:` and the first catch-up chunk, framed before the response
    /// was returned (at most about `catchup_chunk_bytes`).
    first: bytes::Bytes,
    _guard: ConnGuard,
    shutdown: watch::Receiver<bool>,
    job: JobId,
}

impl Streaming {
    /// A stream ready to be written: `first` holds the `retry:` hint and the
    /// first catch-up chunk; `guard` keeps the connection counted and
    /// `shutdown` ends the stream when the gateway shuts down.
    pub(crate) fn new(
        session: Session,
        first: bytes::Bytes,
        guard: ConnGuard,
        shutdown: watch::Receiver<bool>,
        job: JobId,
    ) -> Self {
        Self {
            session,
            first,
            _guard: guard,
            shutdown,
            job,
        }
    }

    /// Writes the stream into `out` until it ends; records why.
    pub(crate) async fn run<O: Output>(mut self, out: &mut O) -> CloseReason {
        let m = self.session.metrics.clone();
        let first = std::mem::take(&mut self.first);
        let reason = tokio::select! {
            r = self.session.stream(out, first) => r,
            _ = self.shutdown.wait_for(|s| *s) => CloseReason::Shutdown,
        };
        if reason == CloseReason::SlowClient {
            m.slow_disconnects.inc();
        }
        m.close(reason);
        tracing::debug!(job = %self.job, reason = reason.as_str(), "stream closed");
        reason
    }
}

/// Response extension carrying the stream to whoever serves the response.
#[derive(Clone)]
pub(crate) struct SseTakeover(Arc<std::sync::Mutex<Option<Box<Streaming>>>>);

impl Streaming {
    /// The `200` event-stream response carrying this stream: in an
    /// [`SseTakeover`] extension for the front, and as a body that runs it
    /// when served by axum/hyper instead.
    pub(crate) fn into_response(self) -> Response {
        let slot = SseTakeover(Arc::new(std::sync::Mutex::new(Some(Box::new(self)))));
        // Served by axum/hyper: on the first poll of the body, run the session
        // in its own task feeding a bounded channel. The gateway's own front
        // (`Gateway::serve`) instead takes the session out of the response
        // extension and writes to the socket directly.
        let body_slot = slot.clone();
        // A few chunks in flight: each may be up to `catchup_chunk_bytes`.
        let capacity = BODY_CHUNKS;
        let body = futures::stream::once(async move {
            match body_slot.take() {
                Some(streaming) => {
                    let (tx, rx) = mpsc::channel(capacity);
                    tokio::spawn(async move { streaming.run(&mut ChannelOut(tx)).await });
                    ReceiverStream::new(rx).left_stream()
                }
                None => futures::stream::empty().right_stream(),
            }
        })
        .flatten()
        .map(Ok::<_, Infallible>);
        let mut resp = Response::new(Body::from_stream(body));
        sse_headers(&mut resp);
        resp.extensions_mut().insert(slot);
        resp
    }
}

impl SseTakeover {
    /// Takes the stream out (`None`: someone already did).
    pub(crate) fn take(&self) -> Option<Box<Streaming>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Marks a response as an event stream.
pub(crate) fn sse_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
}
