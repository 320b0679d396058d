//! The gateway's routes: the table of every method and path pattern and
//! what it serves, and the axum `Router` built from it with its layers
//! (body limit, CORS).
//!
//! The table is the one list of routes: [`Gateway::router`] is built from
//! it, and the HTTP/1.1 front derives from it which requests are SSE
//! streams it writes itself ([`is_sse_path`]). Written
//! twice, the two lists drifted apart silently: a new SSE route missing
//! from the front still worked, through hyper, at several times the
//! memory per idle stream.

use axum::extract::State;
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::extract::{Eco2QueryJob, Job};
use crate::gateway::Gateway;
use crate::handlers::{
    default_domain_events, demo_page, eco2_events, healthz, metrics_handler, native_state, readyz,
};
use crate::publish::publish_event;
use crate::rejection::GatewayRejection;

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
    /// `POST /v1/jobs/{job_id}/events`: publish one event (disabled
    /// without publisher keys).
    Publish,
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

    /// The route's method: `POST` for the publish route (the one route
    /// that reads a body), `GET` for every other.
    pub(crate) const fn is_post(self) -> bool {
        matches!(self, RouteKind::Publish)
    }
}

/// Every route: its axum path pattern (`{name}` matches one non-empty path
/// segment) and what it serves; its method is [`RouteKind::is_post`]'s
/// (one path may serve both).
pub(crate) const ROUTES: &[(&str, RouteKind)] = &[
    ("/v1/jobs/{job_id}/events", RouteKind::NativeEvents),
    ("/v1/jobs/{job_id}/events", RouteKind::Publish),
    ("/v1/jobs/{job_id}/state", RouteKind::NativeState),
    ("/api/v1/stream", RouteKind::Eco2Stream),
    ("/api/v1/{domain}/{job_id}/events", RouteKind::Eco2Events),
    ("/healthz", RouteKind::Healthz),
    ("/readyz", RouteKind::Readyz),
    (METRICS_PATH, RouteKind::Metrics),
    ("/", RouteKind::DemoPage),
];

/// Where `/metrics` is served (also alone, on `--metrics-addr`).
pub(crate) const METRICS_PATH: &str = "/metrics";

/// Whether `path` (without its query) is one of the SSE routes (all
/// `GET`s), matched as axum matches it: segment by segment, a `{param}`
/// taking any one non-empty segment.
pub(crate) fn is_sse_path(path: &str) -> bool {
    ROUTES
        .iter()
        .any(|&(pattern, kind)| kind.is_sse() && matches(pattern, path))
}

/// Whether a request for `path` is a `POST` route's: it reads its own
/// body, under its own limit.
fn reads_body(method: &Method, path: &str) -> bool {
    method == Method::POST
        && ROUTES
            .iter()
            .any(|&(pattern, kind)| kind.is_post() && matches(pattern, path))
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

impl Gateway {
    /// The gateway's routes (with CORS when origins are configured), its
    /// state applied: serve it alone, or mount it in an application with
    /// `nest_service(prefix, gateway.router())` (any outer state type) next
    /// to the application's own routes and layers.
    pub fn router(&self) -> Router {
        let mut r = Router::new();
        for &(path, kind) in ROUTES {
            let handler = match kind {
                RouteKind::NativeEvents => get(default_domain_events::<Job>),
                RouteKind::NativeState => get(native_state),
                RouteKind::Eco2Stream => get(default_domain_events::<Eco2QueryJob>),
                RouteKind::Eco2Events => get(eco2_events),
                RouteKind::Healthz => get(healthz),
                RouteKind::Readyz => get(readyz),
                RouteKind::Metrics => get(metrics_handler),
                RouteKind::DemoPage if self.inner.opts.demo_page => get(demo_page),
                RouteKind::DemoPage => continue,
                // Axum merges it with the path's `GET`.
                RouteKind::Publish => post(publish_event),
            };
            r = r.route(path, handler);
        }
        let r = r
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                limit_body,
            ))
            .with_state(self.clone());
        match cors(&self.inner.opts.allow_origins) {
            Some(layer) => r.layer(layer),
            None => r,
        }
    }

    /// A router serving only `/metrics` (for `--metrics-addr`).
    pub fn metrics_router(&self) -> Router {
        Router::new()
            .route(METRICS_PATH, get(metrics_handler))
            .with_state(self.clone())
    }
}

/// The CORS layer for `origins` (`*`: any; none: no CORS headers).
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
            ]),
    )
}

/// Refuses a request whose declared body exceeds `max_body_bytes` (413).
/// The `GET` routes never read a body; this keeps a client from making the
/// server wait for (and discard) a large one. A `POST` is left to the
/// publish route, which reads its body under its own limit
/// (`max_publish_bytes`).
async fn limit_body(
    State(gw): State<Gateway>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if reads_body(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let max = gw.inner.opts.max_body_bytes as u64;
    if declared.is_some_and(|n| n > max) {
        let refused = GatewayRejection::BodyTooLarge { max }.counted(&gw.inner.metrics);
        return refused.into_response();
    }
    next.run(req).await
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
    fn only_the_publish_route_is_a_post_and_it_is_no_stream() {
        let posts: Vec<_> = ROUTES.iter().filter(|(_, k)| k.is_post()).collect();
        assert_eq!(posts, [&("/v1/jobs/{job_id}/events", RouteKind::Publish)]);
        assert!(!RouteKind::Publish.is_sse());
        assert!(reads_body(&Method::POST, "/v1/jobs/j1/events"));
        assert!(!reads_body(&Method::GET, "/v1/jobs/j1/events"));
        assert!(!reads_body(&Method::POST, "/healthz"));
        assert!(!reads_body(&Method::POST, "/v1/jobs/j1/state"));
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
