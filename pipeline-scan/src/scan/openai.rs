//! A minimal OpenAI-compatible chat-completions client (reqwest) shared by
//! [`OpenAiVision`](super::vision::OpenAiVision) and
//! [`OpenAiAnswer`](super::answer::OpenAiAnswer).
//!
//! It asks for a JSON object (`response_format: {"type":"json_object"}`),
//! retries 429 and 5xx responses, timeouts and connection errors with
//! exponential backoff (honouring a `Retry-After` of a few seconds), and
//! parses `choices[0].message.content` as JSON.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::pipeline::StageError;

/// Why a model call failed. Compares equal by kind and data (a connection
/// failure or a malformed response by its message: the HTTP client's and
/// the JSON parser's errors have no equality).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The request timed out (after retries).
    #[error("model request timed out")]
    Timeout,
    /// Too many requests (after retries).
    #[error("model rate limited (429)")]
    RateLimited,
    /// The server failed (5xx, after retries).
    #[error("model server error {0}")]
    Server(u16),
    /// The server refused the request (4xx other than 429).
    #[error("model request rejected with {status}: {body}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Body excerpt.
        body: String,
    },
    /// Transport failure (connect, reset, client setup), the HTTP client's
    /// error as source.
    #[error("model connection: {0}")]
    Connection(#[source] reqwest::Error),
    /// The response does not have the expected shape.
    #[error("malformed model response: {0}")]
    Malformed(#[source] MalformedResponse),
}

/// What is wrong with a model response; the JSON parser's error, where there
/// is one, is the source.
#[derive(Debug, thiserror::Error)]
pub enum MalformedResponse {
    /// The response body is not JSON.
    #[error("body is not JSON: {0}")]
    Body(#[source] serde_json::Error),
    /// The body has no `choices[0].message.content` string.
    #[error("no choices[0].message.content")]
    NoContent,
    /// The message content is not a JSON object.
    #[error("content is not a JSON object: {0}")]
    Content(#[source] serde_json::Error),
    /// The content is JSON but not the value the caller asked for.
    #[error("{what}: {source}")]
    Shape {
        /// What was expected (`classification`, `final answer`).
        what: &'static str,
        /// Why it does not fit.
        #[source]
        source: serde_json::Error,
    },
}

impl PartialEq for ModelError {
    fn eq(&self, other: &Self) -> bool {
        use ModelError::*;
        match (self, other) {
            (Timeout, Timeout) | (RateLimited, RateLimited) => true,
            (Server(a), Server(b)) => a == b,
            (
                Rejected { status, body },
                Rejected {
                    status: s2,
                    body: b2,
                },
            ) => status == s2 && body == b2,
            (Connection(a), Connection(b)) => a.to_string() == b.to_string(),
            (Malformed(a), Malformed(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl Eq for ModelError {}

impl ModelError {
    /// Whether a later attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ModelError::Rejected { .. })
    }
}

impl From<ModelError> for StageError {
    /// Retryable unless the model refused the request; the model error is
    /// the source.
    fn from(e: ModelError) -> Self {
        StageError::caused_by(e.is_retryable(), e.to_string(), Arc::new(e))
    }
}

/// Client settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenAiConfig {
    /// Base URL, e.g. `https://api.openai.com/v1` (requests go to `{base}/chat/completions`).
    pub base_url: String,
    /// Default model.
    pub model: String,
    /// Bearer key (`None`: no Authorization header, for local servers).
    pub api_key: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries after the first request (for 429, 5xx, timeouts, connection errors).
    pub max_retries: u32,
    /// First retry delay (doubles each retry).
    pub backoff: Duration,
}

impl OpenAiConfig {
    /// Defaults: 30 s timeout, 2 retries, 500 ms backoff.
    pub fn new(
        base_url: impl Into<String>,
        model: impl Into<String>,
        api_key: Option<String>,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key,
            timeout: Duration::from_secs(30),
            max_retries: 2,
            backoff: Duration::from_millis(500),
        }
    }
}

/// The HTTP client.
#[derive(Clone, Debug)]
pub struct OpenAiClient {
    http: reqwest::Client,
    config: OpenAiConfig,
}

impl OpenAiClient {
    /// Builds the client.
    pub fn new(config: OpenAiConfig) -> Result<Self, ModelError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(ModelError::Connection)?;
        Ok(Self { http, config })
    }

    /// The configuration.
    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// Sends `messages` and returns the assistant message content parsed as JSON.
    pub async fn chat_json(
        &self,
        messages: Value,
        model: Option<&str>,
    ) -> Result<Value, ModelError> {
        let url = format!(
            "{}/chat/completions",
            self.config.base_url.trim_end_matches('/')
        );
        let body = json!({
            "model": model.unwrap_or(&self.config.model),
            "messages": messages,
            "response_format": {"type": "json_object"},
            "temperature": 0,
        });
        let mut delay = self.config.backoff;
        let mut attempt = 0;
        loop {
            let result = self.once(&url, &body).await;
            match result {
                Err((err, retry_after))
                    if err.is_retryable()
                        && !matches!(err, ModelError::Malformed(_))
                        && attempt < self.config.max_retries =>
                {
                    attempt += 1;
                    let wait = retry_after.unwrap_or(delay).min(Duration::from_secs(10));
                    tracing::warn!(error = %err, wait_ms = wait.as_millis() as u64, "model call failed; retrying");
                    tokio::time::sleep(wait).await;
                    delay *= 2;
                }
                Err((err, _)) => return Err(err),
                Ok(v) => return Ok(v),
            }
        }
    }

    async fn once(&self, url: &str, body: &Value) -> Result<Value, (ModelError, Option<Duration>)> {
        let mut req = self.http.post(url).json(body);
        if let Some(key) = &self.config.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| (classify_reqwest(e), None))?;
        let status = resp.status();
        if status.as_u16() == 429 || status.is_server_error() {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let err = if status.as_u16() == 429 {
                ModelError::RateLimited
            } else {
                ModelError::Server(status.as_u16())
            };
            return Err((err, retry_after));
        }
        let text = resp.text().await.map_err(|e| (classify_reqwest(e), None))?;
        if !status.is_success() {
            return Err((
                ModelError::Rejected {
                    status: status.as_u16(),
                    body: text.chars().take(200).collect(),
                },
                None,
            ));
        }
        parse_completion(&text).map_err(|e| (e, None))
    }
}

fn classify_reqwest(e: reqwest::Error) -> ModelError {
    if e.is_timeout() {
        ModelError::Timeout
    } else {
        ModelError::Connection(e)
    }
}

/// Extracts and parses `choices[0].message.content` (tolerating a fenced `json`
/// code block around the object).
pub fn parse_completion(text: &str) -> Result<Value, ModelError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| ModelError::Malformed(MalformedResponse::Body(e)))?;
    let content = v
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or(ModelError::Malformed(MalformedResponse::NoContent))?;
    let trimmed = content
        .trim()
        .trim_start_matches("```json")
        .trim_start_matches("```")
        .trim_end_matches("```")
        .trim();
    serde_json::from_str(trimmed).map_err(|e| ModelError::Malformed(MalformedResponse::Content(e)))
}

/// A parsed completion as the caller's `T` (`what` names it in the error).
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    value: Value,
) -> Result<T, ModelError> {
    serde_json::from_value(value)
        .map_err(|source| ModelError::Malformed(MalformedResponse::Shape { what, source }))
}
