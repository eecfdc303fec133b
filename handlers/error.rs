//! The one error type of the API: each variant maps to one `api.md` code, one HTTP status and
//! one JSON shape, here and nowhere else. It also says how a queue job treats it: retry within
//! the invocation, hand the message back to the queue, or record a `failed` Result at once.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidInput { field: String, message: String },
    #[error("{message}")]
    PayloadTooLarge { field: Option<String>, message: String },
    #[error("{message}")]
    UnsupportedMediaType { message: String },
    /// The token was refused or could not be obtained (not logged in, wrong tenant, keys-only proxy).
    #[error("{message}")]
    UpstreamAuthFailed { message: String, transient: bool },
    #[error("{message}")]
    UpstreamPermissionDenied { message: String },
    #[error("{message}")]
    UpstreamThrottled { message: String, retry_after: Option<Duration> },
    #[error("{message}")]
    UpstreamUnavailable { message: String },
    /// The model's answer did not match what was asked for (e.g. an extraction's JSON Schema),
    /// even after one retry.
    #[error("{message}")]
    UpstreamInvalidOutput { message: String },
    /// The model's answer was cut off by the token budget (`finish_reason: "length"`) even
    /// after a retry with a larger budget, or came back empty.
    #[error("{message}")]
    UpstreamIncomplete { message: String },
    #[error("{message}")]
    ContentFiltered { message: String },
    #[error("{message}")]
    DeploymentNotFound { message: String },
    #[error("{message}")]
    Configuration { message: String },
    #[error("{message}")]
    NotFound { message: String },
    /// A job id already used for a different input (its Result carries another digest).
    #[error("{message}")]
    Conflict { message: String },
    /// The request (headers or body) did not arrive in time.
    #[error("{message}")]
    RequestTimeout { message: String },
    /// Too many large requests at once: this one could not get its share of the memory budget
    /// (`INVOCATION_MEMORY_BUDGET_MB`) within its deadline. 503 with `Retry-After`.
    #[error("{message}")]
    ServerBusy { message: String, retry_after: Duration },
    #[error("{message}")]
    Internal { message: String },
}

/// What a queue job does with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Retrying cannot help (bad input, content filter, label outside the set, a reused id):
    /// write a `failed` Result now.
    Permanent,
    /// May succeed later (throttling, 5xx, identity endpoint, role or deployment still
    /// propagating): fail the
    /// invocation so the host redelivers, until the last allowed delivery.
    Transient,
}

/// The JSON error shape of `api.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Position of the offending job in a batch submit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

#[derive(Debug, Serialize)]
struct Envelope<'a> {
    error: &'a ErrorBody,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidInput { field: field.into(), message: message.into() }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal { message: message.into() }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidInput { .. } => "invalid_input",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::UpstreamAuthFailed { .. } => "upstream_auth_failed",
            Self::UpstreamPermissionDenied { .. } => "upstream_permission_denied",
            Self::UpstreamThrottled { .. } => "upstream_throttled",
            Self::UpstreamUnavailable { .. } => "upstream_unavailable",
            Self::UpstreamInvalidOutput { .. } => "upstream_invalid_output",
            Self::UpstreamIncomplete { .. } => "upstream_incomplete",
            Self::ContentFiltered { .. } => "content_filtered",
            Self::DeploymentNotFound { .. } => "deployment_not_found",
            Self::Configuration { .. } => "configuration_error",
            Self::NotFound { .. } => "not_found",
            Self::Conflict { .. } => "conflict",
            Self::RequestTimeout { .. } => "request_timeout",
            Self::ServerBusy { .. } => "server_busy",
            Self::Internal { .. } => "internal",
        }
    }

    /// Upstream failures are the gateway's (502/503/504-family), not the caller's.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidInput { .. } => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::UpstreamAuthFailed { .. } | Self::UpstreamPermissionDenied { .. } => StatusCode::BAD_GATEWAY,
            Self::DeploymentNotFound { .. } | Self::UpstreamInvalidOutput { .. } | Self::UpstreamIncomplete { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Self::UpstreamThrottled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamUnavailable { .. } | Self::ServerBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::ContentFiltered { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Configuration { .. } | Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn disposition(&self) -> Disposition {
        match self {
            // A new deployment takes minutes to appear: redelivery waits for it, and the last
            // delivery records the failure.
            Self::UpstreamThrottled { .. }
            | Self::UpstreamUnavailable { .. }
            | Self::UpstreamIncomplete { .. }
            | Self::UpstreamPermissionDenied { .. }
            | Self::DeploymentNotFound { .. }
            | Self::ServerBusy { .. } => Disposition::Transient,
            Self::UpstreamAuthFailed { transient, .. } if *transient => Disposition::Transient,
            _ => Disposition::Permanent,
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            Self::InvalidInput { field, .. } => Some(field),
            Self::PayloadTooLarge { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// Whole seconds for a `Retry-After` header (at least 1), when the error says when to retry.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::UpstreamThrottled { retry_after: Some(wait), .. } | Self::ServerBusy { retry_after: wait, .. } => {
                Some(wait.as_secs_f64().ceil().max(1.0) as u64)
            }
            _ => None,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code().to_owned(),
            message: self.to_string(),
            field: self.field().map(str::to_owned),
            index: None,
        }
    }

    /// Prefixes the field with the job's position in a batch (`jobs[3].input.text`).
    pub fn at_index(self, index: usize) -> (usize, Self) {
        let prefix = |f: &str| if f.is_empty() { format!("jobs[{index}]") } else { format!("jobs[{index}].{f}") };
        let err = match self {
            Self::InvalidInput { field, message } => {
                Self::InvalidInput { field: prefix(&field), message: format!("jobs[{index}]: {message}") }
            }
            Self::PayloadTooLarge { field, message } => Self::PayloadTooLarge {
                field: Some(prefix(field.as_deref().unwrap_or(""))),
                message: format!("jobs[{index}]: {message}"),
            },
            other => other,
        };
        (index, err)
    }
}

/// The JSON text of an error body, for places that build responses by hand (invocation `res`).
pub fn envelope_json(body: &ErrorBody) -> String {
    serde_json::to_string(&Envelope { error: body })
        .unwrap_or_else(|_| r#"{"error":{"code":"internal","message":"error could not be encoded"}}"#.to_owned())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Operators see the same diagnostic as the caller. Messages carry field names, limits
        // and upstream error texts, never request text or tokens.
        if self.status().is_server_error() || matches!(self.status(), StatusCode::TOO_MANY_REQUESTS) {
            tracing::warn!(code = self.code(), status = self.status().as_u16(), "{self}");
        } else {
            tracing::info!(code = self.code(), status = self.status().as_u16(), "{self}");
        }
        let retry_after = self.retry_after_secs();
        let mut response = (
            self.status(),
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            envelope_json(&self.body()),
        )
            .into_response();
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_api_shape() {
        let err = ApiError::invalid("text", "text must be 1..=100000 characters (got 0)");
        let json: serde_json::Value = serde_json::from_str(&envelope_json(&err.body())).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "invalid_input", "message": "text must be 1..=100000 characters (got 0)", "field": "text"}})
        );
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(err.disposition(), Disposition::Permanent);
    }

    #[test]
    fn throttling_is_transient_and_says_when_to_retry() {
        let err =
            ApiError::UpstreamThrottled { message: "slow down".into(), retry_after: Some(Duration::from_millis(1500)) };
        assert_eq!(err.disposition(), Disposition::Transient);
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }

    /// Issue 12, item 9: `deployment_not_found` was permanent although a new deployment takes
    /// minutes to appear; a reused id is a permanent 409 `conflict`.
    #[test]
    fn missing_deployment_is_transient_and_conflict_permanent() {
        let missing = ApiError::DeploymentNotFound { message: "not yet".into() };
        assert_eq!(missing.disposition(), Disposition::Transient);
        let conflict = ApiError::Conflict { message: "other input".into() };
        assert_eq!(
            (conflict.code(), conflict.status(), conflict.disposition()),
            ("conflict", StatusCode::CONFLICT, Disposition::Permanent)
        );
    }

    #[test]
    fn batch_errors_name_the_index() {
        let (index, err) = ApiError::invalid("input.text", "text is required").at_index(3);
        assert_eq!(index, 3);
        assert_eq!(err.field(), Some("jobs[3].input.text"));
    }
}
