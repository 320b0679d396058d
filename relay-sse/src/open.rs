//! Opening a stream: from a request that passed validation to either a
//! started stream (its first chunk framed) or a final answer that shapes
//! what an EventSource does next: `404` for a job that never appears,
//! `204` when the client already has the end, a retry-only `200` at the
//! connection limit or on backend trouble.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use relay_core::{JobId, KeySpace};

use crate::frame::Framing;
use crate::gateway::Gateway;
use crate::position::client_position;
use crate::rejection::GatewayRejection;
use crate::session::{Session, SessionConfig};
use crate::sse;
use crate::takeover::{sse_headers, Streaming};

/// A 200 event stream that only tells the client to retry, then ends and
/// closes the connection (at the connection limit, or pre-stream backend
/// trouble: never a 5xx to an EventSource, which would stop reconnecting).
fn retry_later(retry_ms: u64) -> Response {
    let mut buf = BytesMut::new();
    sse::put_retry(&mut buf, retry_ms);
    let mut resp = Response::new(Body::from(buf.freeze()));
    sse_headers(&mut resp);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Answers an SSE request for `job` whose token (if any) was checked
/// (see the module docs).
pub(crate) async fn sse_response(
    gw: Gateway,
    job: JobId,
    keyspace: KeySpace,
    framing: Framing,
    last_event_id: Option<String>,
) -> Result<Response, GatewayRejection> {
    let inner = gw.inner.clone();
    let m = inner.metrics.clone();
    // Connection limit, before anything is streamed.
    let Some(guard) = gw.admit() else {
        m.reject("connection_limit");
        // An EventSource gives up for good on any non-200 answer (a 503
        // too): an event stream that only says when to retry, and ends,
        // makes it reconnect (and resume) later.
        return Ok(retry_later(inner.opts.retry_ms));
    };
    let keys = keyspace.job(&job);
    let opts = &inner.opts;

    // Subscribe first, then catch up: nothing published from here on is missed.
    let member = inner.hub.join(keys.live.clone(), opts.client_buffer).await;
    let from = match client_position(
        &inner.backend,
        &keys,
        framing == Framing::Eco2,
        last_event_id.as_deref(),
        opts.history_page,
    )
    .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "backend unavailable before streaming");
            m.reject("backend");
            return Ok(retry_later(opts.retry_ms));
        }
    };
    let mut session = Session::new(
        inner.backend.clone(),
        keys,
        framing,
        from,
        member,
        m.clone(),
        SessionConfig {
            history_page: opts.history_page,
            heartbeat: opts.heartbeat,
            max_stream: opts.max_stream,
            write_timeout: opts.write_timeout,
            chunk_bytes: opts.catchup_chunk_bytes,
        },
        opts.client_buffer.max(1024),
    );
    let mut buf = BytesMut::new();
    sse::put_retry(&mut buf, opts.retry_ms);
    let start = session.resume.start();
    let mut result = session.run(start, &mut buf).await;

    // A job with no history yet: wait (without sending anything) so the
    // answer can still be a 404 an EventSource will not retry.
    let deadline = tokio::time::Instant::now() + opts.pending_job;
    let poll_every =
        (opts.pending_job / 8).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let signal = session.member.signal.clone();
    while result.is_ok() && !session.resume.is_known() {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = signal.notified() => result = session.check_resync(&mut buf).await,
            msg = session.member.rx.recv() => match msg {
                Some(raw) => result = session.on_message(raw, &mut buf).await,
                None => break,
            },
            _ = tokio::time::sleep(poll_every) => {
                let actions = session.resume.poll();
                result = session.run(actions, &mut buf).await;
            }
        }
    }
    if let Err(e) = result {
        tracing::warn!(error = %e, "backend unavailable before streaming");
        m.reject("backend");
        return Ok(retry_later(opts.retry_ms));
    }
    if !session.resume.is_known() {
        return Err(GatewayRejection::JobNotFound.counted(&m));
    }
    if session.terminal && session.nothing_framed() {
        // The client already has the job's terminal event: nothing to send.
        // 204 tells an EventSource to stop reconnecting (an ended 200
        // stream would make it reconnect every `retry` ms).
        m.reject("finished");
        let mut resp = StatusCode::NO_CONTENT.into_response();
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok(resp);
    }
    if from.is_some() {
        m.resume(session.resume.snapshots() > 0);
    }

    m.opened.inc();
    let streaming = Streaming::new(
        session,
        buf.freeze(),
        guard,
        inner.shutdown.subscribe(),
        job,
    );
    Ok(streaming.into_response())
}
