//! Typed extractors for what a request names: the job (from the path or,
//! on eco2's `/api/v1/stream`, the query) and the client's
//! `Last-Event-ID`.
//!
//! Handlers receive a valid [`JobId`] or never run: an invalid one is a
//! [`GatewayRejection`], counted in `relay_sse_rejected_total`, and answered
//! the same way on every route. [`crate::auth::Authorized`] wraps these to
//! check the token against the job.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use relay_core::{JobId, KeySpace};

use crate::frame::Framing;
use crate::gateway::Gateway;
use crate::rejection::{BadJobId, GatewayRejection, ECO2_MIN_JOB_ID};

/// An extractor that names one job (what a stream token must be for).
pub(crate) trait NamesJob {
    /// The job the request is for.
    fn job(&self) -> &JobId;
}

/// A job stream route in the gateway's default domain: its extractor also
/// says how the stream is framed, so one handler serves them all.
pub(crate) trait DefaultDomainStream: NamesJob {
    /// The route's wire framing.
    const FRAMING: Framing;
}

impl DefaultDomainStream for Job {
    const FRAMING: Framing = Framing::Native;
}

impl DefaultDomainStream for Eco2QueryJob {
    const FRAMING: Framing = Framing::Eco2;
}

/// The job of a native route, from its `{job_id}` path segment.
#[derive(Debug)]
pub(crate) struct Job(pub JobId);

impl NamesJob for Job {
    fn job(&self) -> &JobId {
        &self.0
    }
}

impl FromRequestParts<Gateway> for Job {
    type Rejection = GatewayRejection;

    async fn from_request_parts(parts: &mut Parts, gw: &Gateway) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, gw).await?;
        JobId::new(raw).map(Job).map_err(|e| {
            GatewayRejection::InvalidJobId(BadJobId::Invalid(e)).counted(&gw.inner.metrics)
        })
    }
}

/// eco2 job ids: at least [`ECO2_MIN_JOB_ID`] characters, then the usual
/// job id rules.
fn eco2_job_id(raw: &str) -> Result<JobId, BadJobId> {
    if raw.chars().count() < ECO2_MIN_JOB_ID {
        return Err(BadJobId::TooShort);
    }
    Ok(JobId::new(raw)?)
}

/// eco2 `/api/v1/stream?job_id=`: the job from the query (in the
/// gateway's default domain). Missing or invalid: `422`.
#[derive(Debug)]
pub(crate) struct Eco2QueryJob(pub JobId);

impl NamesJob for Eco2QueryJob {
    fn job(&self) -> &JobId {
        &self.0
    }
}

impl FromRequestParts<Gateway> for Eco2QueryJob {
    type Rejection = GatewayRejection;

    async fn from_request_parts(parts: &mut Parts, gw: &Gateway) -> Result<Self, Self::Rejection> {
        let Query(params) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)?;
        let raw = params.get("job_id").map_or("", String::as_str);
        eco2_job_id(raw)
            .map(Eco2QueryJob)
            .map_err(|e| GatewayRejection::InvalidJobIdParam(e).counted(&gw.inner.metrics))
    }
}

/// eco2 `/api/v1/{domain}/{job_id}/events`: the domain's key space (`scan`
/// or `chat`; else `404`, checked first) and the job (invalid: `400`).
#[derive(Debug)]
pub(crate) struct Eco2PathJob {
    /// The key space of the path's domain.
    pub keys: KeySpace,
    /// The job.
    pub job: JobId,
}

impl NamesJob for Eco2PathJob {
    fn job(&self) -> &JobId {
        &self.job
    }
}

impl FromRequestParts<Gateway> for Eco2PathJob {
    type Rejection = GatewayRejection;

    async fn from_request_parts(parts: &mut Parts, gw: &Gateway) -> Result<Self, Self::Rejection> {
        let Path((domain, raw)) = Path::<(String, String)>::from_request_parts(parts, gw).await?;
        let keys = match domain.as_str() {
            "scan" => gw.inner.scan_keys.clone(),
            "chat" => gw.inner.chat_keys.clone(),
            _ => return Err(GatewayRejection::UnknownDomain),
        };
        let job = eco2_job_id(&raw)
            .map_err(|e| GatewayRejection::InvalidJobId(e).counted(&gw.inner.metrics))?;
        Ok(Eco2PathJob { keys, job })
    }
}

/// The client's last event id, raw: the `Last-Event-ID` header, else the
/// `last_event_id` query parameter (for clients that cannot set headers);
/// blank counts as absent.
#[derive(Debug)]
pub(crate) struct LastEventId(pub Option<String>);

impl FromRequestParts<Gateway> for LastEventId {
    type Rejection = GatewayRejection;

    async fn from_request_parts(parts: &mut Parts, _: &Gateway) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty());
        if let Some(id) = header {
            return Ok(LastEventId(Some(id.to_owned())));
        }
        let Query(params) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)?;
        let query = params
            .get("last_event_id")
            .map(|s| s.trim())
            .filter(|s| !s.is_empty());
        Ok(LastEventId(query.map(str::to_owned)))
    }
}
