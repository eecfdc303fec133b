//! The request bodies the functions accept: a JSON body for the forwarded HTTP API
//! (`Content-Type` checked, size bounded), and the raw invocation payload from the host.
//! Bodies are read into one buffer sized from `Content-Length` (no chunk list and copy).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, header};
use futures_util::StreamExt;
use serde_json::Value;

use super::submit_jobs::{MAX_JOBS_PER_SUBMIT, MAX_MESSAGE_BYTES};
use crate::error::ApiError;

/// Bodies of the forwarded HTTP API: 1 000 000 characters fit even when every one is a
/// \u-escaped character outside ASCII (6 bytes; 12 for a surrogate pair is beyond this).
pub const API_BODY_LIMIT: usize = 8 * 1024 * 1024;
/// Invocation payloads from the host, sized from the largest valid batch submit: 1 000 jobs of
/// at most 48 KiB as queue messages, in compact JSON, arrive as the string `Data.req.Body`,
/// where escaping at most doubles them (`"` becomes `\"`); plus 1 MiB for the envelope (the
/// request's headers, metadata). 97 MiB. A batch padded with whitespace or `\u` escapes
/// beyond it gets 413 naming this limit.
pub const INVOCATION_BODY_LIMIT: usize = 2 * MAX_JOBS_PER_SUBMIT * MAX_MESSAGE_BYTES + 1024 * 1024;

/// A JSON request body: `Content-Type` must be JSON (or absent), size bounded by `LIMIT`.
pub struct JsonBody<const LIMIT: usize>(pub Value);

/// The raw body of an invocation from the host, size bounded. Its buffer has room to spare
/// (see [`read_body`]), so that a function can reuse it for its answer.
pub struct RawBody(pub Vec<u8>);

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

async fn read_limited(request: Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let expected = content_length(request.headers());
    read_body(request.into_body(), limit, expected, super::serve::READ_TIMEOUT).await
}

/// The request's `Content-Length`, when it has a valid one.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// The whole body, at most `limit` bytes, arriving within `timeout` (a peer that stalls half
/// way, slowloris, gets 408 instead of holding the request open). `expected` (the request's
/// `Content-Length`) sizes the buffer up front, and one over `limit` is refused without being
/// stored.
pub(super) async fn read_body(
    body: Body,
    limit: usize,
    expected: Option<u64>,
    timeout: Duration,
) -> Result<Vec<u8>, ApiError> {
    if let Some(length) = expected.filter(|n| *n > limit as u64) {
        // Refused by its declared size, nothing stored; what the peer sends is read and dropped
        // (within the timeout), so that it gets this answer rather than a reset connection.
        let mut chunks = body.into_data_stream();
        let _ = tokio::time::timeout(timeout, async { while let Some(Ok(_)) = chunks.next().await {} }).await;
        return Err(too_large(limit, &format!("the body is {length} bytes")));
    }
    match tokio::time::timeout(timeout, collect(body, limit, expected.map_or(0, |n| n as usize))).await {
        Ok(read) => read,
        Err(_) => Err(ApiError::RequestTimeout {
            message: format!("the request body did not arrive within {} s", timeout.as_secs_f64()),
        }),
    }
}

/// Reads into one buffer sized from `expected` (`axum::body::to_bytes` collects a list of chunks
/// and then copies them, twice the body at its peak), with an eighth more room that costs
/// nothing until used: `submit_jobs` writes its answer, about the size of the body, into it.
async fn collect(body: Body, limit: usize, expected: usize) -> Result<Vec<u8>, ApiError> {
    let expected = expected.min(limit);
    let mut buffer = Vec::with_capacity(expected + expected / 8);
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid("", format!("the body could not be read: {e}")))?;
        if buffer.len() + chunk.len() > limit {
            return Err(too_large(limit, "the body is larger"));
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer)
}

fn too_large(limit: usize, got: &str) -> ApiError {
    let limit_text = if limit == INVOCATION_BODY_LIMIT {
        format!(
            "{limit} bytes ({} MiB), the invocation body limit: the largest valid batch, {MAX_JOBS_PER_SUBMIT} jobs of at most {MAX_MESSAGE_BYTES} bytes as queue messages, in compact JSON",
            limit / (1024 * 1024)
        )
    } else {
        format!("{limit} bytes ({} MiB)", limit / (1024 * 1024))
    };
    ApiError::PayloadTooLarge { field: None, message: format!("{got}; the limit is {limit_text}") }
}
