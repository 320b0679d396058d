//! Stream access tokens: HMAC-SHA256 over (job id, expiry).
//!
//! A token grants read access to one job's event stream until its expiry. It
//! is issued by whoever creates the job (the scan API, `relayctl token`) with
//! the secret shared with the gateways, and checked by the gateway.
//!
//! Format (URL-safe, no padding, fits in a query string):
//! `base64url(job_id) "." expiry_unix_secs "." base64url(hmac_sha256(secret, job_id "\n" expiry))`.
//!
//! ```
//! use std::time::Duration;
//! use relay_core::{auth, JobId};
//! let job = JobId::new("job-1").unwrap();
//! let token = auth::issue_at(b"secret", &job, 1_000);
//! assert_eq!(auth::verify(b"secret", Some(&token), &job, 999), Ok(()));
//! assert_eq!(auth::verify(b"secret", Some(&token), &job, 1_001), Err(auth::AuthError::Expired));
//! assert_eq!(auth::verify(b"other", Some(&token), &job, 999), Err(auth::AuthError::Invalid));
//! let other = JobId::new("job-2").unwrap();
//! assert_eq!(auth::verify(b"secret", Some(&token), &other, 999), Err(auth::AuthError::WrongJob));
//! assert_eq!(auth::verify(b"secret", None, &job, 999), Err(auth::AuthError::Missing));
//! # let _ = auth::issue(b"secret", &job, Duration::from_secs(60));
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::event::JobId;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted before any decoding (bounds work on hostile input).
pub const MAX_TOKEN_LEN: usize = 512;

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Error)]
pub enum AuthError {
    /// No token was presented (HTTP 401).
    #[error("missing token")]
    Missing,
    /// The token is malformed or its signature does not verify (HTTP 401).
    #[error("invalid token")]
    Invalid,
    /// The token is valid but for another job (HTTP 403).
    #[error("token is for another job")]
    WrongJob,
    /// The token is valid but expired (HTTP 401).
    #[error("token expired")]
    Expired,
}

impl AuthError {
    /// The HTTP status code to answer with.
    pub fn http_status(self) -> u16 {
        match self {
            AuthError::WrongJob => 403,
            _ => 401,
        }
    }
}

/// Current unix time in seconds.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mac(secret: &[u8], job: &str, expiry: u64) -> HmacSha256 {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut m = <HmacSha256 as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(job.as_bytes());
    m.update(b"\n");
    m.update(expiry.to_string().as_bytes());
    m
}

/// Issues a token for `job` that expires at `expiry` (unix seconds).
pub fn issue_at(secret: &[u8], job: &JobId, expiry: u64) -> String {
    let sig = mac(secret, job.as_str(), expiry).finalize().into_bytes();
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(job.as_str()),
        expiry,
        URL_SAFE_NO_PAD.encode(sig)
    )
}

/// Issues a token for `job` valid for `ttl` from now.
pub fn issue(secret: &[u8], job: &JobId, ttl: Duration) -> String {
    issue_at(secret, job, now_unix().saturating_add(ttl.as_secs()))
}

/// Checks `token` (as presented, `None` when absent) for access to `job` at
/// `now` (unix seconds). The signature is compared in constant time.
pub fn verify(secret: &[u8], token: Option<&str>, job: &JobId, now: u64) -> Result<(), AuthError> {
    let token = token
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Missing)?;
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Invalid);
    }
    let mut parts = token.split('.');
    let (Some(job_b64), Some(expiry), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Invalid);
    };
    let token_job = URL_SAFE_NO_PAD
        .decode(job_b64)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(AuthError::Invalid)?;
    let expiry: u64 = expiry.parse().map_err(|_| AuthError::Invalid)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| AuthError::Invalid)?;
    mac(secret, &token_job, expiry)
        .verify_slice(&sig)
        .map_err(|_| AuthError::Invalid)?;
    if token_job != job.as_str() {
        return Err(AuthError::WrongJob);
    }
    if now >= expiry {
        return Err(AuthError::Expired);
    }
    Ok(())
}

/// The publisher keys of an HTTP publish endpoint: shared secrets a
/// producer presents as `Authorization: Bearer <key>`.
///
/// Keys are never kept in the clear: each is stored as an HMAC-SHA256 tag
/// under a random per-process key, and a presented key is tagged the same
/// way and compared with every stored tag in constant time (no early exit,
/// and the comparison does not depend on the keys' lengths). Its `Debug`
/// output shows only how many keys there are.
///
/// ```
/// use relay_core::auth::{PublisherKeys, KeyError};
/// let keys = PublisherKeys::new(["old-key", "new-key"]);
/// assert!(keys.is_enabled());
/// assert_eq!(keys.check(Some("new-key")), Ok(()));
/// assert_eq!(keys.check(Some("guess")), Err(KeyError::Wrong));
/// assert_eq!(keys.check(None), Err(KeyError::Missing));
/// assert_eq!(PublisherKeys::default().check(Some("new-key")), Err(KeyError::Disabled));
/// ```
#[derive(Clone, Default)]
pub struct PublisherKeys {
    /// The per-process HMAC key the tags are computed under.
    salt: [u8; 32],
    /// One tag per configured key.
    tags: Vec<[u8; 32]>,
}

/// Why a presented publisher key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Error)]
pub enum KeyError {
    /// No key is configured: publishing is disabled for everyone.
    #[error("publishing is disabled: no publisher key is configured")]
    Disabled,
    /// No key was presented.
    #[error("missing publisher key (Authorization: Bearer <key>)")]
    Missing,
    /// The presented key is none of the configured ones.
    #[error("wrong publisher key")]
    Wrong,
}

impl PublisherKeys {
    /// The set of `keys`; empty (blank) keys are ignored, so an unset
    /// variable cannot enable an empty key. No keys: disabled.
    pub fn new<I, K>(keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        let salt: [u8; 32] = rand::random();
        let tags = keys
            .into_iter()
            .filter(|k| !k.as_ref().trim().is_empty())
            .map(|k| {
                Self::tag_with(&salt, k.as_ref())
                    .finalize()
                    .into_bytes()
                    .into()
            })
            .collect();
        Self { salt, tags }
    }

    /// Whether any key is configured.
    pub fn is_enabled(&self) -> bool {
        !self.tags.is_empty()
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// Whether no key is configured (publishing disabled).
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    fn tag_with(salt: &[u8; 32], key: &str) -> HmacSha256 {
        let mut m = <HmacSha256 as Mac>::new_from_slice(salt)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(key.trim().as_bytes());
        m
    }

    /// Checks a presented key (`None` or blank: absent) against every
    /// configured key.
    pub fn check(&self, presented: Option<&str>) -> Result<(), KeyError> {
        if self.tags.is_empty() {
            return Err(KeyError::Disabled);
        }
        let presented = presented
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(KeyError::Missing)?;
        let mac = Self::tag_with(&self.salt, presented);
        // Every tag is compared (constant time each), whatever matched.
        let matched = self.tags.iter().fold(false, |hit, tag| {
            mac.clone().verify_slice(tag).is_ok() | hit
        });
        if matched {
            Ok(())
        } else {
            Err(KeyError::Wrong)
        }
    }
}

impl std::fmt::Debug for PublisherKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherKeys")
            .field("keys", &self.tags.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(s: &str) -> JobId {
        JobId::new(s).unwrap()
    }

    #[test]
    fn round_trip_and_errors() {
        let j = job("a.b:c-d_e");
        let t = issue(b"k", &j, Duration::from_secs(60));
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        assert_eq!(verify(b"k", Some(&t), &j, now_unix()), Ok(()));
        assert_eq!(verify(b"k", Some(""), &j, 0), Err(AuthError::Missing));
        assert_eq!(
            verify(b"k", Some("garbage"), &j, 0),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            verify(b"k", Some("a.b.c.d"), &j, 0),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            verify(b"k", Some(&"x".repeat(600)), &j, 0),
            Err(AuthError::Invalid)
        );
        // Tampering with the expiry or the job breaks the signature.
        let t = issue_at(b"k", &j, 100);
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], 999_999, parts[2]);
        assert_eq!(verify(b"k", Some(&forged), &j, 0), Err(AuthError::Invalid));
        let forged = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode("zzz"),
            parts[1],
            parts[2]
        );
        assert_eq!(
            verify(b"k", Some(&forged), &job("zzz"), 0),
            Err(AuthError::Invalid)
        );
        assert_eq!(verify(b"k", Some(&t), &j, 100), Err(AuthError::Expired));
        assert_eq!(AuthError::WrongJob.http_status(), 403);
        assert_eq!(AuthError::Expired.http_status(), 401);
    }

    #[test]
    fn publisher_keys() {
        let keys = PublisherKeys::new(["k1", "", "  ", "second key"]);
        assert_eq!(keys.len(), 2, "blank keys are ignored");
        assert_eq!(keys.check(Some("k1")), Ok(()));
        assert_eq!(keys.check(Some(" second key ")), Ok(()));
        assert_eq!(keys.check(Some("k2")), Err(KeyError::Wrong));
        assert_eq!(keys.check(Some("k1k1")), Err(KeyError::Wrong));
        assert_eq!(keys.check(Some("")), Err(KeyError::Missing));
        assert_eq!(keys.check(None), Err(KeyError::Missing));
        let none = PublisherKeys::new(["", " "]);
        assert!(!none.is_enabled());
        assert_eq!(none.check(Some("")), Err(KeyError::Disabled));
        assert_eq!(none.check(Some("k1")), Err(KeyError::Disabled));
        let debug = format!("{keys:?}");
        assert!(
            !debug.contains("k1") && debug.contains("keys: 2"),
            "{debug}"
        );
    }
}
