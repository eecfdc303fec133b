//! The request bodies the functions accept: a JSON body for the forwarded HTTP API
//! (`Content-Type` checked, size bounded), and the raw invocation payload from the host.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde_json::Value;

use crate::error::ApiError;

/// Bodies of the forwarded HTTP API: 1 000 000 characters fit even when every one is a
/// \u-escaped character outside ASCII (6 bytes; 12 for a surrogate pair is beyond this).
pub const API_BODY_LIMIT: usize = 8 * 1024 * 1024;
/// Invocation payloads from the host (a 1000-job batch arrives inside one).
pub const INVOCATION_BODY_LIMIT: usize = 128 * 1024 * 1024;

/// A JSON request body: `Content-Type` must be JSON (or absent), size bounded by `LIMIT`.
pub struct JsonBody<const LIMIT: usize>(pub Value);

/// The raw body of an invocation from the host, size bounded.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync, const LIMIT: usize> FromRequest<S> for JsonBody<LIMIT> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
            let content_type = content_type.to_str().unwrap_or_default().to_ascii_lowercase();
            if !content_type.starts_with("application/json") && !content_type.contains("+json") {
                return Err(ApiError::UnsupportedMediaType {
                    message: format!(
                        "Content-Type must be application/json (got `{}`); with curl, add -H 'Content-Type: application/json'",
                        crate::echo::echo(&content_type)
                    ),
                });
            }
        }
        let bytes = read_limited(request, LIMIT).await?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid("", format!("the body is not valid JSON: {e}")))?;
        Ok(Self(value))
    }
}

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        read_limited(request, INVOCATION_BODY_LIMIT).await.map(Self)
    }
}

async fn read_limited(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    read_body(request.into_body(), limit, super::serve::READ_TIMEOUT).await
}

/// The whole body, at most `limit` bytes, arriving within `timeout` (a peer that stalls half
/// way, slowloris, gets 408 instead of holding the request open).
pub(super) async fn read_body(body: axum::body::Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(read) => read.map_err(|_| ApiError::PayloadTooLarge {
            field: None,
            message: format!("the body is larger than {limit} bytes (or could not be read)"),
        }),
        Err(_) => Err(ApiError::RequestTimeout {
            message: format!("the request body did not arrive within {} s", timeout.as_secs_f64()),
        }),
    }
}
