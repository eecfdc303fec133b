//! Application Insights' ingestion endpoint (Breeze): `POST /v2.1/track`, the route the Azure
//! Monitor exporters use with Microsoft Entra authentication, and `POST /v2/track`, which takes no
//! authentication at all.
//!
//! The resource behaves like the project's Bicep makes it: local (instrumentation-key) auth
//! disabled, so every batch needs a bearer token for `https://monitor.azure.com` whose principal
//! holds Monitoring Metrics Publisher on the resource. Checks, in the service's order:
//! - `/v2/track` with an `Authorization` header: 400 "Incorrect API was used - v2 API does not
//!   support authentication" (the status line the .NET SDK documents);
//! - no, unknown, expired or wrong-audience token: 401 ("please provide the valid authorization
//!   token");
//! - no role: 403 ("provided credentials do not grant the access to ingest the telemetry into
//!   the component");
//! - then each item: its `iKey` must be the resource's and `name`, `time`, `data.baseType`,
//!   `data.baseData` present; bad items are rejected one by one (400 per item).
//!
//! Answers are the track response: `{"itemsReceived","itemsAccepted","errors":[{"index",
//! "statusCode","message"}]}` with 200 when all items were accepted, 206 when some were, 400 when
//! none were. The body may be gzip (`Content-Encoding: gzip`, as the Rust exporter sends it), a
//! JSON array, one JSON object, or JSON lines. Accepted items are kept for tests.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::errors::json_response;
use crate::state::Shared;
use crate::stats::RecordedTrack;
use crate::tokens::{self, Invalid, MONITOR_AUDIENCE};

/// Decompressed bodies past this are refused (413), like any bounded ingestion front end.
const MAX_BODY: u64 = 64 * 1024 * 1024;

/// A failure the ingestion endpoint is told to answer every batch with, until cleared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IngestionFault {
    /// 401, as for a missing or invalid token.
    Unauthorized,
    /// 403, as for a principal without Monitoring Metrics Publisher.
    Forbidden,
    /// 429 with `Retry-After`.
    Throttled { retry_after_secs: u64 },
    /// 500 with no track response.
    ServerError,
    /// 503.
    Unavailable,
    /// Answers 200, but only after this long (longer than the client waits).
    Slow { delay_ms: u64 },
    /// A partial success: of each batch only the first item is accepted, every other one is
    /// refused with its own 429 (206; a one-item batch is accepted whole).
    PartiallyThrottled,
}

pub(crate) async fn track_v2_1(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    handle(&shared, "/v2.1/track", &headers, &body).await
}

pub(crate) async fn track_v2(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    handle(&shared, "/v2/track", &headers, &body).await
}

async fn handle(shared: &Shared, path: &'static str, headers: &HeaderMap, body: &[u8]) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .map(|(_, token)| token.trim().to_owned());
    let encoding = headers.get("content-encoding").and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
    let decoded = decode(body, encoding.as_deref());
    let items = decoded.as_deref().map(parse).unwrap_or_default();
    let keep = shared.config.keep_telemetry;
    let mut record = RecordedTrack {
        path: path.to_owned(),
        bearer: bearer.clone(),
        audience: None,
        content_encoding: encoding.clone(),
        status: 0,
        items: if keep { items.clone() } else { Vec::new() },
    };
    let (status, answer, extra) = decide(shared, path, headers, bearer.as_deref(), decoded, &items, &mut record);
    record.status = status;
    let delay = {
        let mut inner = shared.lock();
        inner.stats.track_requests += 1;
        if keep {
            inner.tracks.push(record);
        }
        match &inner.ingestion_fault {
            Some(IngestionFault::Slow { delay_ms }) => Duration::from_millis(*delay_ms),
            _ => Duration::ZERO,
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    json_response(status, answer, &extra)
}

type Answer = (u16, Value, Vec<(&'static str, String)>);

fn decide(
    shared: &Shared,
    path: &str,
    headers: &HeaderMap,
    bearer: Option<&str>,
    decoded: Result<Vec<u8>, u16>,
    items: &[Value],
    record: &mut RecordedTrack,
) -> Answer {
    let received = items.len();
    if path == "/v2/track" && headers.contains_key("authorization") {
        return all_failed(400, received, "Incorrect API was used - v2 API does not support authentication");
    }
    let claims = match bearer {
        None => Err(Invalid::Unknown),
        Some(token) => tokens::validate(shared, token),
    };
    match claims {
        Ok(claims) => {
            record.audience = Some(claims.aud.to_owned());
            if claims.aud != MONITOR_AUDIENCE {
                return all_failed(401, received, UNAUTHORIZED);
            }
        }
        Err(_) => return all_failed(401, received, UNAUTHORIZED),
    }
    let fault = {
        let inner = shared.lock();
        if !inner.monitoring_role_assigned {
            return all_failed(403, received, FORBIDDEN);
        }
        inner.ingestion_fault.clone()
    };
    match fault {
        Some(IngestionFault::Unauthorized) => return all_failed(401, received, UNAUTHORIZED),
        Some(IngestionFault::Forbidden) => return all_failed(403, received, FORBIDDEN),
        Some(IngestionFault::Throttled { retry_after_secs }) => {
            let (status, body, _) = all_failed(429, received, "Too many requests");
            return (status, body, vec![("retry-after", retry_after_secs.max(1).to_string())]);
        }
        Some(IngestionFault::ServerError) => return (500, json!({}), Vec::new()),
        Some(IngestionFault::Unavailable) => return all_failed(503, received, "Service unavailable"),
        Some(IngestionFault::Slow { .. } | IngestionFault::PartiallyThrottled) | None => {}
    }
    let throttle_after_first = fault == Some(IngestionFault::PartiallyThrottled);
    let body = match decoded {
        Ok(body) => body,
        Err(413) => return all_failed(413, received, "Request body too large"),
        Err(status) => return all_failed(status, received, "The request body could not be decoded"),
    };
    if items.is_empty() {
        let message = if body.is_empty() { "Request body is empty" } else { "Request body is not valid JSON" };
        return (
            400,
            json!({"itemsReceived": 0, "itemsAccepted": 0, "errors": [{"index": 0, "statusCode": 400, "message": message}]}),
            Vec::new(),
        );
    }
    let ikey = &shared.config.instrumentation_key;
    let keep = shared.config.keep_telemetry;
    let mut errors = Vec::new();
    let mut accepted = Vec::new();
    let mut accepted_count = 0;
    for (index, item) in items.iter().enumerate() {
        if throttle_after_first && index > 0 {
            errors.push(json!({"index": index, "statusCode": 429, "message": "Too many requests"}));
            continue;
        }
        match check_item(item, ikey) {
            Ok(()) => {
                accepted_count += 1;
                if keep {
                    accepted.push(item.clone());
                }
            }
            Err(message) => errors.push(json!({"index": index, "statusCode": 400, "message": message})),
        }
    }
    {
        let mut inner = shared.lock();
        inner.stats.telemetry_items += accepted_count as u64;
        inner.telemetry.extend(accepted);
    }
    let status = match accepted_count {
        n if n == received => 200,
        0 => 400,
        _ => 206,
    };
    (status, json!({"itemsReceived": received, "itemsAccepted": accepted_count, "errors": errors}), Vec::new())
}

const UNAUTHORIZED: &str = "Unauthorized - please provide the valid authorization token";
const FORBIDDEN: &str =
    "Forbidden - provided credentials do not grant the access to ingest the telemetry into the component";

/// The track response for a batch refused as a whole: every item fails with `status`.
fn all_failed(status: u16, received: usize, message: &str) -> Answer {
    let errors: Vec<Value> =
        (0..received.max(1)).map(|index| json!({"index": index, "statusCode": status, "message": message})).collect();
    (status, json!({"itemsReceived": received, "itemsAccepted": 0, "errors": errors}), Vec::new())
}

/// One item's checks: the resource's instrumentation key and the envelope's required fields.
fn check_item(item: &Value, ikey: &str) -> Result<(), String> {
    for field in ["name", "time"] {
        if item[field].as_str().is_none_or(str::is_empty) {
            return Err(format!("Field '{field}' on type 'Envelope' is required but missing or empty."));
        }
    }
    let key = item["iKey"].as_str().or_else(|| item["ikey"].as_str()).unwrap_or_default();
    if !key.eq_ignore_ascii_case(ikey) {
        return Err("Invalid instrumentation key".to_owned());
    }
    if item["data"]["baseType"].as_str().is_none_or(str::is_empty) {
        return Err("Field 'baseType' on type 'Data' is required but missing or empty.".to_owned());
    }
    if !item["data"]["baseData"].is_object() {
        return Err("Field 'baseData' on type 'Data' is required but missing or empty.".to_owned());
    }
    Ok(())
}

/// The body as sent, or gunzipped; `Err(status)` when it cannot be read.
fn decode(body: &[u8], encoding: Option<&str>) -> Result<Vec<u8>, u16> {
    match encoding {
        None | Some("identity") => Ok(body.to_vec()),
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body).take(MAX_BODY + 1).read_to_end(&mut out).map_err(|_| 400u16)?;
            if out.len() as u64 > MAX_BODY { Err(413) } else { Ok(out) }
        }
        Some(_) => Err(415),
    }
}

/// A JSON array of envelopes, one envelope, or JSON lines; nothing when it is none of these.
fn parse(body: &[u8]) -> Vec<Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => items,
        Ok(item @ Value::Object(_)) => vec![item],
        Ok(_) => Vec::new(),
        Err(_) => {
            let lines: Result<Vec<Value>, _> = body
                .split(|b| *b == b'\n')
                .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
                .map(serde_json::from_slice::<Value>)
                .collect();
            lines.unwrap_or_default()
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct FaultBody {
    pub fault: Option<IngestionFault>,
}
