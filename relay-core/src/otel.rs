//! W3C trace context ([`TraceContext`], the `traceparent` an event carries)
//! to and from `tracing` spans exported by OpenTelemetry (feature `otel`).
//!
//! Why here: the router (this crate), the gateway and the pipeline each
//! open spans that continue a job's trace, and all of them start from the
//! same `TraceContext`. The conversion is done once, from the already
//! validated ids (no header re-parsing), with the `opentelemetry` API types
//! alone: this feature adds no exporter, so a library user who turns it on
//! gets parent links on spans and nothing sent anywhere.
//!
//! Spans that exist only for export (the router's, the gateway's) are
//! created only when [`follow`] says so: an exporter is installed
//! ([`set_exporting`], done by `cli::init_tracing` when an OTLP endpoint is
//! configured) and the event's trace is sampled. Otherwise those hot paths
//! allocate nothing.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::event::TraceContext;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Records that an OpenTelemetry layer exporting spans is installed
/// (`false` again after its shutdown). Gates [`follow`].
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// Whether an OpenTelemetry layer exporting spans is installed.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Whether a span continuing `trace` is worth creating: spans are exported
/// and the trace is sampled (flag bit 0). The one check on the router's and
/// the gateway's hot paths.
pub fn follow(trace: Option<&TraceContext>) -> bool {
    exporting() && trace.is_some_and(|t| t.flags & 1 == 1)
}

/// The OpenTelemetry span context of `trace`, as a remote parent.
pub fn span_context(trace: &TraceContext) -> SpanContext {
    // The ids were validated as lowercase hex of the right length.
    SpanContext::new(
        TraceId::from_hex(&trace.trace_id).unwrap_or(TraceId::INVALID),
        SpanId::from_hex(&trace.span_id).unwrap_or(SpanId::INVALID),
        TraceFlags::new(trace.flags),
        true,
        TraceState::NONE,
    )
}

/// Makes `trace` the parent of `span` (which must not have been entered
/// yet). Without an OpenTelemetry layer this does nothing.
pub fn set_parent(span: &tracing::Span, trace: &TraceContext) {
    let cx = opentelemetry::Context::new().with_remote_span_context(span_context(trace));
    // Fails only without the layer, or for a span already started: either
    // way the span keeps the parent it has.
    let _ = span.set_parent(cx);
}

/// Links `span` to `trace` (another event's producer, when one span covers
/// several events).
pub fn add_link(span: &tracing::Span, trace: &TraceContext) {
    span.add_link(span_context(trace));
}

/// The trace context of `span`, to hand on (in an event, an envelope):
/// `None` when no OpenTelemetry layer records it.
pub fn context_of(span: &tracing::Span) -> Option<TraceContext> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    TraceContext::new(
        &sc.trace_id().to_string(),
        &sc.span_id().to_string(),
        sc.trace_flags().to_u8(),
    )
    .ok()
}

/// A span's context (see [`context_of`]) as a `traceparent` header value
/// when there is one, else `fallback` unchanged: what a step hands on, so
/// that without an exporter the caller's own `traceparent` still travels.
pub fn traceparent_of(span: &tracing::Span, fallback: Option<String>) -> Option<String> {
    context_of(span).map(|t| t.traceparent()).or(fallback)
}

/// Continues the trace of `traceparent` (a header value: a job's envelope,
/// a request) in `span`, which must not have been entered yet: the
/// context becomes the span's parent. Returns what to hand on downstream:
/// the span's own context, so the next hop is the span's child. When spans
/// are not exported this does nothing and returns `traceparent` as it was.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<String>) -> Option<String> {
    if !exporting() {
        return traceparent;
    }
    if let Some(parent) = traceparent
        .as_deref()
        .and_then(|t| TraceContext::parse_traceparent(t).ok())
    {
        set_parent(span, &parent);
    }
    traceparent_of(span, traceparent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_context_round_trips_the_ids() {
        let t = TraceContext::parse_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .unwrap();
        let sc = span_context(&t);
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_id().to_string(), t.trace_id);
        assert_eq!(sc.span_id().to_string(), t.span_id);
    }

    #[test]
    fn follow_needs_an_exporter_and_a_sampled_trace() {
        let sampled = TraceContext::new(&"a".repeat(32), &"b".repeat(16), 1).unwrap();
        let unsampled = TraceContext::new(&"a".repeat(32), &"b".repeat(16), 0).unwrap();
        // No exporter installed in this test binary.
        assert!(!follow(Some(&sampled)));
        set_exporting(true);
        let on = (
            follow(Some(&sampled)),
            follow(Some(&unsampled)),
            follow(None),
        );
        set_exporting(false);
        assert_eq!(on, (true, false, false));
    }

    #[test]
    fn without_a_layer_a_span_has_no_context() {
        let span = tracing::info_span!("x");
        assert_eq!(context_of(&span), None);
        let fallback = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned());
        assert_eq!(traceparent_of(&span, fallback.clone()), fallback);
    }
}
