//! One span per request from the host: the function, the trigger kind, the host's invocation
//! id and (recorded by the queue worker) the job id, continuing the caller's trace context.
//! Payload-mode invocations also run with a log buffer, for their response's `Logs`.

use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use opentelemetry::trace::SpanContext;
use tracing::Instrument;
use tracing::field::Empty;

use super::{capture, propagation, recorder};
use crate::error::ApiError;

/// Payload-mode HTTP bodies up to this size are read for a `traceparent` in `Data.req.Headers`
/// (when exporting only); larger ones start a trace of their own rather than be parsed twice.
const PEEK_LIMIT: u64 = 1024 * 1024;

/// How the host reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A forwarded HTTP request (`/api/<route>`): the caller's method, headers and body.
    Forwarded,
    /// `POST /<function>` with an invocation payload from an HTTP trigger.
    PayloadHttp,
    /// `POST /<function>` with an invocation payload from a queue trigger.
    PayloadQueue,
}

pub async fn invocation_span(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if path == "/" {
        return next.run(request).await;
    }
    let invocation_id = request
        .headers()
        .get("x-azure-functions-invocationid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (function, mode) = match path.strip_prefix("/api/") {
        Some(route) => (route.to_owned(), Mode::Forwarded),
        None => {
            let name = path.trim_start_matches('/').to_owned();
            // The one queue-triggered function; every other payload-mode function is HTTP.
            let mode = if name == "process_job" { Mode::PayloadQueue } else { Mode::PayloadHttp };
            (name, mode)
        }
    };
    // FaaS conventions: "pubsub" for a queue trigger, span kind consumer; "http", server.
    let (trigger, kind) = if mode == Mode::PayloadQueue { ("pubsub", "consumer") } else { ("http", "server") };
    let name = match mode {
        Mode::Forwarded => format!("{} {path}", request.method()),
        _ => function.clone(),
    };
    let (request, parent) = match parent_context(request, mode).await {
        Ok(found) => found,
        Err(error) => return error.into_response(),
    };
    // Without the recorder there is no trace to continue, and the span is made as is.
    let span = recorder::continuing(parent.as_ref(), || {
        tracing::info_span!(
            "invocation",
            otel.name = %name,
            otel.kind = kind,
            otel.status_code = Empty,
            faas.name = %function,
            faas.trigger = trigger,
            faas.invocation_id = %invocation_id,
            job.id = Empty,
            http.request.method = %request.method(),
            http.response.status_code = Empty,
        )
    });
    let started = Instant::now();
    async move {
        let response = match mode {
            Mode::Forwarded => next.run(request).await,
            Mode::PayloadHttp | Mode::PayloadQueue => capture::scope(next.run(request)).await,
        };
        let status = response.status().as_u16();
        let span = tracing::Span::current();
        span.record("http.response.status_code", i64::from(status));
        if status >= 500 {
            span.record("otel.status_code", "error");
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        // The host logs every execution with its duration; ours adds a line at info only when the
        // invocation failed (a second info line per call cost ~15 % of its CPU, BENCHMARKS.md).
        if status >= 400 {
            tracing::info!(status, elapsed_ms, "invocation finished");
        } else {
            tracing::debug!(status, elapsed_ms, "invocation finished");
        }
        response
    }
    .instrument(span)
    .await
}

/// The caller's trace context: the request's own headers, else (payload-mode HTTP, exporting,
/// small body) `Data.req.Headers`. Returns the request whole either way.
async fn parent_context(request: Request, mode: Mode) -> Result<(Request, Option<SpanContext>), ApiError> {
    if let Some(context) = propagation::from_headers(request.headers()) {
        return Ok((request, Some(context)));
    }
    let length = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let peek = mode == Mode::PayloadHttp && length.is_some_and(|n| n <= PEEK_LIMIT) && recorder::active();
    if !peek {
        return Ok((request, None));
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, PEEK_LIMIT as usize)
        .await
        .map_err(|_| ApiError::invalid("", "the invocation body could not be read"))?;
    let context = propagation::from_payload(&bytes);
    Ok((Request::from_parts(parts, Body::from(bytes)), context))
}
