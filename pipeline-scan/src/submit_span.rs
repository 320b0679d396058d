//! The `scan.submit` span: the server span of `POST /api/v1/scan`, the root
//! of a job's trace (or the child of the caller's `traceparent`).
//!
//! Why a middleware: the submit handler then runs inside the span, so the
//! job's `queued` event and its first envelope carry the span's context
//! (`start_job` reads [`tracing::Span::current`]), and every later span of
//! the job (stages, router applies, gateway deliveries) descends from it.
//! Nothing is created when spans are not exported
//! ([`relay_core::otel::exporting`]).

use axum::extract::Request;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use relay_core::TraceContext;
use tracing::Instrument;

/// The `traceparent` a new job carries (in its events and envelopes): the
/// current `scan.submit` span's context when spans are exported, else the
/// request's own `traceparent` when it is valid.
pub(crate) fn job_traceparent(headers: &HeaderMap) -> Option<String> {
    let incoming = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| TraceContext::parse_traceparent(v).is_ok())
        .map(str::to_owned);
    relay_core::otel::traceparent_of(&tracing::Span::current(), incoming)
}

/// Runs the submit handler inside a `scan.submit` span whose parent is the
/// request's `traceparent` (a new trace without one).
pub(crate) async fn submit_span(req: Request, next: Next) -> Response {
    if !relay_core::otel::exporting() {
        return next.run(req).await;
    }
    let span = tracing::info_span!(
        "scan.submit",
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = "POST",
        http.route = "/api/v1/scan",
        http.response.status_code = tracing::field::Empty,
    );
    let parent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| TraceContext::parse_traceparent(v).ok());
    if let Some(parent) = &parent {
        relay_core::otel::set_parent(&span, parent);
    }
    let resp = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", resp.status().as_u16());
    if resp.status().is_server_error() {
        span.record("otel.status_code", "error");
    }
    resp
}
