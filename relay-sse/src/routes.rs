//! The gateway's route table: every path pattern and what it serves.
//!
//! It is the one list of routes: the axum `Router` is built from it
//! (`Gateway::router`), and the HTTP/1.1 front derives from it which
//! requests are SSE streams it writes itself ([`is_sse_path`]). Written
//! twice, the two lists drifted apart silently: a new SSE route missing
//! from the front still worked, through hyper, at several times the
//! memory per idle stream.

/// What a route serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RouteKind {
    /// `GET /v1/jobs/{job_id}/events`: the native SSE stream.
    NativeEvents,
    /// `GET /v1/jobs/{job_id}/state`: the job's state as JSON.
    NativeState,
    /// `GET /api/v1/stream?job_id=`: the eco2 SSE stream (default domain).
    Eco2Stream,
    /// `GET /api/v1/{domain}/{job_id}/events`: the eco2 SSE stream of the
    /// `scan` or `chat` domain.
    Eco2Events,
    /// `GET /healthz`: the process is up.
    Healthz,
    /// `GET /readyz`: the subscriber connection is up.
    Readyz,
    /// `GET /metrics`: Prometheus text.
    Metrics,
    /// `GET /`: the demo page (only with `GatewayOptions::demo_page`).
    DemoPage,
}

impl RouteKind {
    /// Whether the route answers with an event stream (the front serves
    /// those itself instead of handing the connection to hyper).
    pub(crate) const fn is_sse(self) -> bool {
        matches!(
            self,
            RouteKind::NativeEvents | RouteKind::Eco2Stream | RouteKind::Eco2Events
        )
    }
}

/// Every route: its axum path pattern (`{name}` matches one non-empty path
/// segment) and what it serves. All are `GET`s.
pub(crate) const ROUTES: &[(&str, RouteKind)] = &[
    ("/v1/jobs/{job_id}/events", RouteKind::NativeEvents),
    ("/v1/jobs/{job_id}/state", RouteKind::NativeState),
    ("/api/v1/stream", RouteKind::Eco2Stream),
    ("/api/v1/{domain}/{job_id}/events", RouteKind::Eco2Events),
    ("/healthz", RouteKind::Healthz),
    ("/readyz", RouteKind::Readyz),
    ("/metrics", RouteKind::Metrics),
    ("/", RouteKind::DemoPage),
];

/// Whether `path` (without its query) is one of the SSE routes, matched as
/// axum matches it: segment by segment, a `{param}` taking any one
/// non-empty segment.
pub(crate) fn is_sse_path(path: &str) -> bool {
    ROUTES
        .iter()
        .any(|&(pattern, kind)| kind.is_sse() && matches(pattern, path))
}

/// Whether `path` matches the route `pattern`.
fn matches(pattern: &str, path: &str) -> bool {
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) => {
                let param = w.starts_with('{') && w.ends_with('}');
                if !(if param { !g.is_empty() } else { w == g }) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_paths() {
        assert!(is_sse_path("/v1/jobs/j1/events"));
        assert!(is_sse_path("/api/v1/stream"));
        assert!(is_sse_path("/api/v1/scan/abcdefghijk/events"));
        // Unknown domains are the handler's 404, with its JSON body.
        assert!(is_sse_path("/api/v1/other/abcdefghijk/events"));
        assert!(is_sse_path("/v1/jobs/bad%20id/events"));
        assert!(!is_sse_path("/v1/jobs/j1/state"));
        assert!(!is_sse_path("/healthz"));
        assert!(!is_sse_path("/"));
        // Not a route at all: hyper's 404.
        assert!(!is_sse_path("/v1/jobs//events"));
        assert!(!is_sse_path("/v1/jobs/a/b/events"));
        assert!(!is_sse_path("/v1/jobs/j1/events/"));
        assert!(!is_sse_path("/api/v1/stream/"));
        assert!(!is_sse_path(""));
    }

    #[test]
    fn every_pattern_is_well_formed() {
        for &(pattern, _) in ROUTES {
            assert!(pattern.starts_with('/'), "{pattern}");
            for seg in pattern.split('/').skip(1) {
                let braces = seg.matches(['{', '}']).count();
                assert!(
                    braces == 0 || (braces == 2 && seg.starts_with('{') && seg.ends_with('}')),
                    "{pattern}: a parameter is a whole segment"
                );
            }
        }
    }
}
