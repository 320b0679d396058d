//! Stream tokens: with an `auth_secret`, a request for a job's events or
//! state must carry a token signed for that job (`Authorization: Bearer …`,
//! or `?token=` for an EventSource, which cannot set headers). The
//! [`Authorized`] extractor checks it, so no handler can forget to.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use relay_core::auth;

use crate::extract::NamesJob;
use crate::gateway::Gateway;
use crate::rejection::GatewayRejection;

/// The job extractor `J`, once the request's token is valid for its job
/// (on an open gateway, any request). The job is validated first: an
/// invalid job id is refused as such, whatever the token.
#[derive(Debug)]
pub(crate) struct Authorized<J>(pub J);

impl<J> FromRequestParts<Gateway> for Authorized<J>
where
    J: FromRequestParts<Gateway, Rejection = GatewayRejection> + NamesJob + Send,
{
    type Rejection = GatewayRejection;

    async fn from_request_parts(parts: &mut Parts, gw: &Gateway) -> Result<Self, Self::Rejection> {
        let named = J::from_request_parts(parts, gw).await?;
        let Some(secret) = &gw.inner.opts.auth_secret else {
            return Ok(Authorized(named));
        };
        let Query(params) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)?;
        let token = bearer(&parts.headers).or(params.get("token").map(String::as_str));
        auth::verify(secret, token, named.job(), auth::now_unix())
            .map_err(|e| GatewayRejection::Auth(e).counted(&gw.inner.metrics))?;
        Ok(Authorized(named))
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme matched
/// case-insensitively); any other scheme is no token. Also the publisher
/// key of the publish route.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}
