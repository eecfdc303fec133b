//! W3C trace context in and out: the caller's `traceparent` (and `tracestate`) continues in the
//! invocation span, and every Azure OpenAI request carries the chat span's.
//!
//! Where an incoming context can be:
//! - forwarded HTTP (`/api/...`): the caller's own headers, which the host keeps;
//! - any request from the host that carries the headers itself (the host adds none today);
//! - payload-mode HTTP triggers (`submit_jobs`, `get_job`): `Data.req.Headers` of the body.
//!
//! Queue invocations have no carrier: the host sends no `traceparent`, and a job message has no
//! field for one, so each queue job starts a trace of its own.
//!
//! Only the W3C format is read and written (`OTEL_PROPAGATORS` is not consulted). Without the
//! span recorder (no trace export) nothing is injected.

use std::collections::HashMap;

use axum::http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde_json::Value;
use tracing::Span;

use super::recorder;

/// The caller's context in `headers`, if it holds a valid one.
pub fn from_headers(headers: &HeaderMap) -> Option<SpanContext> {
    valid(TraceContextPropagator::new().extract(&HeaderExtractor(headers)))
}

/// The caller's context in an invocation payload's `Data.req.Headers` (names in any case,
/// values as the host's `["v"]` lists or plain strings; `Data.req` as an object or JSON text).
pub fn from_payload(body: &[u8]) -> Option<SpanContext> {
    let payload: Value = serde_json::from_slice(body).ok()?;
    let data = field(&payload, "Data")?;
    let req = field(data, "req")?;
    let req = match req {
        Value::String(text) => serde_json::from_str(text).ok()?,
        other => other.clone(),
    };
    let headers = field(&req, "Headers")?.as_object()?;
    let carrier: HashMap<String, String> = headers
        .iter()
        .filter_map(|(name, value)| {
            let value = match value {
                Value::String(s) => s.clone(),
                Value::Array(items) => items.first()?.as_str()?.to_owned(),
                _ => return None,
            };
            Some((name.to_ascii_lowercase(), value))
        })
        .collect();
    valid(TraceContextPropagator::new().extract(&Carrier(carrier)))
}

/// `traceparent` (and `tracestate`) for a request sent from inside the current span; empty
/// when the span is not exported.
pub fn trace_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    let Some(context) = recorder::span_context(&Span::current()).filter(SpanContext::is_valid) else {
        return headers;
    };
    let traceparent =
        format!("00-{}-{}-{:02x}", context.trace_id(), context.span_id(), context.trace_flags().to_u8() & 1);
    if let Ok(value) = HeaderValue::from_str(&traceparent) {
        headers.insert("traceparent", value);
    }
    let state = context.trace_state().header();
    if !state.is_empty()
        && let Ok(value) = HeaderValue::from_str(&state)
    {
        headers.insert("tracestate", value);
    }
    headers
}

fn valid(context: opentelemetry::Context) -> Option<SpanContext> {
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.clone())
}

/// A JSON member by name, case-insensitively (the host's serializer settings vary).
fn field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    value.as_object()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

/// Lower-cased header names from a payload.
struct Carrier(HashMap<String, String>);

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(&key.to_ascii_lowercase()).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn trace_id(context: &SpanContext) -> String {
        context.trace_id().to_string()
    }

    #[test]
    fn a_payload_carries_the_callers_context_in_any_encoding() {
        let payloads = [
            serde_json::json!({"Data": {"req": {"Headers": {"Traceparent": [TRACEPARENT]}}}}),
            serde_json::json!({"data": {"req": {"headers": {"traceparent": TRACEPARENT}}}}),
            serde_json::json!({"Data": {"req": serde_json::json!({"Headers": {"traceparent": [TRACEPARENT]}}).to_string()}}),
        ];
        for payload in payloads {
            let context = from_payload(payload.to_string().as_bytes()).unwrap_or_else(|| panic!("{payload}"));
            assert_eq!(trace_id(&context), "4bf92f3577b34da6a3ce929d0e0e4736");
        }
    }

    #[test]
    fn missing_or_invalid_contexts_are_ignored() {
        let mut headers = HeaderMap::new();
        assert!(from_headers(&headers).is_none());
        headers.insert("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse().unwrap());
        assert!(from_headers(&headers).is_none());
        headers.insert("traceparent", TRACEPARENT.parse().unwrap());
        assert_eq!(trace_id(&from_headers(&headers).unwrap()), "4bf92f3577b34da6a3ce929d0e0e4736");
        for body in [&b"not json"[..], br#"{"Data": {"job": "x"}}"#, br#"{"Data": {"req": {"Headers": {}}}}"#] {
            assert!(from_payload(body).is_none());
        }
    }

    #[test]
    fn nothing_is_injected_without_an_exported_span() {
        assert!(trace_headers().is_empty());
    }
}
