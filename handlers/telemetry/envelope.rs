//! Application Insights items written straight from finished spans, on the export task: each
//! span becomes one JSON item (a request for server and consumer spans, a dependency for the
//! others), plus one trace item per kept event; a batch is one gzip JSON array.
//!
//! Why not the `opentelemetry-application-insights` span exporter: it builds each item through
//! hash maps of every attribute and resource attribute, then a tree of owned strings, then
//! serialises it and gzips the batch at the default level; measured, that doubled the handler's
//! CPU per request (BENCHMARKS.md, "Application Insights export"). Here each item is written once,
//! as JSON text, from the borrowed span into the batch's one buffer (no serde: the items' strings
//! almost never need escaping, and checking that first is several times faster than escaping byte
//! by byte), and the batch is compressed at the fast level (about a fifth of the JSON's size
//! still). The metrics exporter (one batch a minute) stays the crate's.
//!
//! Shape, as Application Insights reads it (and as the crate wrote it before): `name`, `time`
//! (RFC 3339, ms), `sampleRate` (percent), `iKey`, `tags` (`ai.operation.id` = trace id,
//! `ai.operation.parentId` = parent span id, `ai.operation.name`, `ai.cloud.role` =
//! `service.name`, `ai.cloud.roleInstance` = `service.instance.id`, `ai.application.ver`,
//! `ai.internal.sdkVersion`) and `data` (`baseType`, `baseData` with `ver` 2). Span attributes
//! become `properties` (custom dimensions), except those an item carries as its own fields
//! already (the status code, the method, the server address and port, the legacy
//! `gen_ai.system`) and those that say where in our code a span was opened.

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::Compression;
use flate2::write::GzEncoder;
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

use super::recorder::SAMPLE_RATE;

/// Span events Application Insights gets (as trace items): Azure OpenAI's error answers. Log
/// lines reach it through the host already, pacing waits are in the dependency's duration, and
/// content events (`LOG_SENSITIVE_DATA`) must never reach it.
const KEPT_EVENTS: &[&str] = &["azure.openai.error_response"];

/// Attributes no item carries as a custom dimension: where in our code a span was opened, and
/// what the item has as a field of its own (`responseCode`/`resultCode`, the request's name,
/// `target`, `gen_ai.provider.name`).
const NOT_DIMENSIONS: &[&str] = &[
    "code.file.path",
    "code.line.number",
    "code.module.name",
    "target",
    "http.response.status_code",
    "http.request.method",
    "server.address",
    "server.port",
    "gen_ai.system",
    SAMPLE_RATE,
];

/// Application Insights' own limits: longer names and values are cut there; cut here, on a
/// character boundary, so that the item is never refused for them.
const MAX_NAME: usize = 1024;
const MAX_KEY: usize = 150;
const MAX_VALUE: usize = 8192;

/// What every item of this process carries, from the resource and the settings: the constant
/// part of the tags, written once.
#[derive(Debug, Clone)]
pub struct Items {
    /// `"iKey":"…"`.
    head: Vec<u8>,
    /// `,"ai.cloud.role":"…",…,"ai.internal.sdkVersion":"…"}` (closes the tags).
    tags_tail: Vec<u8>,
    instrumentation_key: String,
}

/// The items of one batch, back to back in one buffer.
#[derive(Debug, Default)]
pub struct Batch {
    json: Vec<u8>,
    ends: Vec<usize>,
}

impl Batch {
    /// Room for about `spans` spans' items (a span's item is about 1 KiB), so that the buffer is
    /// not grown item by item.
    pub fn for_spans(spans: usize) -> Self {
        Self { json: Vec::with_capacity(spans.saturating_mul(1024)), ends: Vec::with_capacity(spans) }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn item(&self, index: usize) -> &[u8] {
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        &self.json[start..self.ends[index]]
    }

    /// Keeps only the items at `indices` (a partial success's retryable ones), in batch order.
    pub fn retain(&mut self, indices: &[usize]) {
        let mut indices = indices.to_vec();
        indices.sort_unstable();
        indices.dedup();
        let mut kept = Batch::default();
        for &index in indices.iter().filter(|&&i| i < self.len()) {
            kept.json.extend_from_slice(self.item(index));
            kept.ends.push(kept.json.len());
        }
        *self = kept;
    }

    /// The request body: the items as a JSON array, gzip at the fast level.
    pub fn body(&self) -> Vec<u8> {
        let mut gzip = GzEncoder::new(Vec::with_capacity(self.json.len() / 4), Compression::fast());
        // Writing into memory cannot fail.
        let _ = gzip.write_all(b"[");
        for index in 0..self.len() {
            if index > 0 {
                let _ = gzip.write_all(b",");
            }
            let _ = gzip.write_all(self.item(index));
        }
        let _ = gzip.write_all(b"]");
        gzip.finish().unwrap_or_default()
    }

    fn end_item(&mut self) {
        self.ends.push(self.json.len());
    }
}

impl Items {
    pub fn new(instrumentation_key: &str) -> Self {
        let mut items =
            Self { head: Vec::new(), tags_tail: Vec::new(), instrumentation_key: instrumentation_key.to_owned() };
        items.set_tags(&[], &format!("keyless-jobs:{}", env!("CARGO_PKG_VERSION")));
        items
    }

    /// Cloud role (`service.namespace.service.name`), role instance, application version and
    /// SDK from the resource; no other resource attribute goes into any item.
    pub fn set_resource(&mut self, resource: &Resource) {
        let get = |key: &str| resource.get(&opentelemetry::Key::from(key.to_owned())).map(|v| v.as_str().into_owned());
        let role = get("service.name").map(|name| match get("service.namespace") {
            Some(namespace) => format!("{namespace}.{name}"),
            None => name,
        });
        let sdk = match get("telemetry.sdk.name") {
            Some(sdk) => format!("{sdk}:{}", get("telemetry.sdk.version").unwrap_or_else(|| "0.0.0".into())),
            None => format!("keyless-jobs:{}", env!("CARGO_PKG_VERSION")),
        };
        let tags = [
            ("ai.cloud.role", role),
            ("ai.cloud.roleInstance", get("service.instance.id")),
            ("ai.application.ver", get("service.version")),
        ];
        let tags: Vec<(&str, String)> = tags.into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
        self.set_tags(&tags, &sdk);
    }

    fn set_tags(&mut self, tags: &[(&str, String)], sdk: &str) {
        let mut head = Vec::new();
        head.extend_from_slice(b"\"iKey\":");
        string(&mut head, &self.instrumentation_key);
        let mut tail = Vec::new();
        for (key, value) in tags {
            member(&mut tail, key, value);
        }
        member(&mut tail, "ai.internal.sdkVersion", sdk);
        tail.push(b'}');
        self.head = head;
        self.tags_tail = tail;
    }

    /// Appends the span's items (its own, then its kept events') to `batch`.
    pub fn add(&self, span: &SpanData, batch: &mut Batch) {
        let trace_id = trace_hex(span.span_context.trace_id());
        let span_id = span_hex(span.span_context.span_id());
        let parent_id = (span.parent_span_id != SpanId::INVALID).then(|| span_hex(span.parent_span_id));
        let parent_id = parent_id.as_ref().map(|id| text(id));
        let duration = span.end_time.duration_since(span.start_time).unwrap_or_default();
        let server = matches!(span.span_kind, SpanKind::Server | SpanKind::Consumer);
        let chat = attribute(span, "gen_ai.operation.name").is_some();
        // The recorder's percentage for a trace kept below 100 %; the portal counts the item
        // 100 / sampleRate times.
        let sample_rate = match attribute(span, SAMPLE_RATE) {
            Some(Value::F64(percent)) if *percent > 0.0 && *percent < 100.0 => *percent,
            _ => 100.0,
        };
        let out = &mut batch.json;
        let (item, base_type, operation) = if server {
            // Operation name = the function, as the host names its own request.
            let function = attribute(span, "faas.name").map(Value::as_str);
            ("Microsoft.ApplicationInsights.Request", "RequestData", function)
        } else {
            ("Microsoft.ApplicationInsights.RemoteDependency", "RemoteDependencyData", None)
        };
        let operation_id = text(&trace_id);
        let at =
            Open { time: span.start_time, sample_rate, operation_id, parent_id, operation_name: operation.as_deref() };
        self.open(out, item, &at, base_type);
        out.extend_from_slice(b"\"ver\":2,\"id\":");
        string(out, text(&span_id));
        out.extend_from_slice(b",\"name\":");
        string(out, cut(&span.name, MAX_NAME));
        out.extend_from_slice(b",\"duration\":\"");
        duration_text(out, duration);
        let code = match attribute(span, "http.response.status_code") {
            Some(code) => code.as_str(),
            None => status_code(&span.status).into(),
        };
        if server {
            out.extend_from_slice(b"\",\"responseCode\":");
            string(out, &code);
            let failed = matches!(span.status, Status::Error { .. });
            out.extend_from_slice(if failed { b",\"success\":false" } else { b",\"success\":true" });
        } else {
            out.extend_from_slice(b"\",\"resultCode\":");
            string(out, &code);
            let success = match &span.status {
                Status::Ok => Some(true),
                Status::Error { .. } => Some(false),
                // A chat call that ended without an error is a success (set on failure only).
                Status::Unset => chat.then_some(true),
            };
            if let Some(success) = success {
                out.extend_from_slice(if success { b",\"success\":true" } else { b",\"success\":false" });
            }
            if let Some(host) = attribute(span, "server.address") {
                out.extend_from_slice(b",\"target\":");
                match attribute(span, "server.port") {
                    Some(port) => string(out, &format!("{}:{}", host.as_str(), port.as_str())),
                    None => string(out, &host.as_str()),
                }
            }
            // Type HTTP for every Azure OpenAI call, answered or not (an unanswered one has
            // no `http.*` attribute).
            let kind = if span.span_kind == SpanKind::Internal {
                Some("InProc")
            } else if chat || span.attributes.iter().any(|kv| kv.key.as_str().starts_with("http.")) {
                Some("HTTP")
            } else {
                None
            };
            if let Some(kind) = kind {
                out.extend_from_slice(b",\"type\":");
                string(out, kind);
            }
        }
        properties(out, &span.attributes, NOT_DIMENSIONS);
        out.extend_from_slice(b"}}}");
        batch.end_item();
        for event in span.events.iter().filter(|e| KEPT_EVENTS.contains(&e.name.as_ref())) {
            let out = &mut batch.json;
            let message = "Microsoft.ApplicationInsights.Message";
            let at = Open {
                time: event.timestamp,
                sample_rate,
                operation_id: text(&trace_id),
                parent_id: Some(text(&span_id)),
                operation_name: None,
            };
            self.open(out, message, &at, "MessageData");
            out.extend_from_slice(b"\"ver\":2,\"message\":");
            string(out, cut(&event.name, MAX_VALUE));
            properties(out, &event.attributes, &[]);
            out.extend_from_slice(b"}}}");
            batch.end_item();
        }
    }

    /// Writes an item up to the start of its `baseData` members.
    fn open(&self, out: &mut Vec<u8>, name: &str, at: &Open, base_type: &str) {
        let Open { time, sample_rate, operation_id, parent_id, operation_name } = *at;
        out.extend_from_slice(b"{\"name\":");
        string(out, name);
        out.extend_from_slice(b",\"time\":\"");
        time_text(out, time);
        out.extend_from_slice(b"\",\"sampleRate\":");
        if sample_rate == 100.0 {
            out.extend_from_slice(b"100");
        } else if sample_rate >= 1e-3 {
            let _ = write!(out, "{sample_rate}");
        } else {
            // `{}` never uses an exponent: a tiny rate would be hundreds of digits.
            let _ = write!(out, "{sample_rate:e}");
        }
        out.push(b',');
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b",\"tags\":{");
        out.extend_from_slice(b"\"ai.operation.id\":");
        string(out, operation_id);
        if let Some(parent) = parent_id {
            member(out, "ai.operation.parentId", parent);
        }
        if let Some(name) = operation_name {
            member(out, "ai.operation.name", cut(name, MAX_NAME));
        }
        out.extend_from_slice(&self.tags_tail);
        out.extend_from_slice(b",\"data\":{\"baseType\":");
        string(out, base_type);
        out.extend_from_slice(b",\"baseData\":{");
    }
}

/// What an item's opening says besides its type.
struct Open<'a> {
    time: SystemTime,
    /// Percent.
    sample_rate: f64,
    operation_id: &'a str,
    parent_id: Option<&'a str>,
    operation_name: Option<&'a str>,
}

/// `,"properties":{…}`: attributes (but `skip`) as custom dimensions, every value as text, cut
/// to the service's limits.
fn properties(out: &mut Vec<u8>, attributes: &[KeyValue], skip: &[&str]) {
    out.extend_from_slice(b",\"properties\":{");
    let mut first = true;
    for kv in attributes {
        let key = kv.key.as_str();
        if skip.contains(&key) || key.starts_with("_MS.") {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        string(out, cut(key, MAX_KEY));
        out.push(b':');
        match &kv.value {
            Value::I64(n) => {
                out.push(b'"');
                let _ = write!(out, "{n}");
                out.push(b'"');
            }
            Value::Bool(b) => out.extend_from_slice(if *b { b"\"true\"" } else { b"\"false\"" }),
            Value::String(s) => string(out, cut(s.as_str(), MAX_VALUE)),
            other => string(out, cut(&other.as_str(), MAX_VALUE)),
        }
    }
    out.push(b'}');
}

/// `,"key":"value"`.
fn member(out: &mut Vec<u8>, key: &str, value: &str) {
    out.push(b',');
    string(out, key);
    out.push(b':');
    string(out, value);
}

/// A JSON string. Most texts here need no escaping; checking that first and copying them whole
/// is what makes this writer cheap.
fn string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    // A fold, not `all`: without the early exit the check compiles to vector instructions.
    let plain = text.bytes().fold(true, |plain, b| plain & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.extend_from_slice(text.as_bytes());
    } else {
        for c in text.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => {
                    let mut utf8 = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
            }
        }
    }
    out.push(b'"');
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
}

/// A result code from the span status when no HTTP status was recorded (as the crate maps it).
fn status_code(status: &Status) -> &'static str {
    match status {
        Status::Unset => "0",
        Status::Ok => "1",
        Status::Error { .. } => "2",
    }
}

/// At most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of `bytes` (`M` = 2 × `N`).
pub(super) fn hex<const N: usize, const M: usize>(bytes: [u8; N]) -> [u8; M] {
    let mut out = [0; M];
    for (i, byte) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(byte >> 4)];
        out[2 * i + 1] = HEX[usize::from(byte & 15)];
    }
    out
}

fn trace_hex(id: TraceId) -> [u8; 32] {
    hex(id.to_bytes())
}

fn span_hex(id: SpanId) -> [u8; 16] {
    hex(id.to_bytes())
}

/// Hex digits are ASCII.
fn text(hex: &[u8]) -> &str {
    std::str::from_utf8(hex).unwrap_or_default()
}

/// `d.hh:mm:ss.ffffff`, Application Insights' duration format.
fn duration_text(out: &mut Vec<u8>, duration: Duration) {
    let micros = duration.as_micros();
    let seconds = micros / 1_000_000;
    let _ = write!(
        out,
        "{}.{:02}:{:02}:{:02}.{:06}",
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
        micros % 1_000_000
    );
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-12-01T18:20:00.123Z`.
fn time_text(out: &mut Vec<u8>, time: SystemTime) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (year, month, day) = civil_date(seconds / 86_400);
    let of_day = seconds % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_millis()
    );
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (days ≥ 0), by the
/// era-of-400-years method (each era has 146 097 days).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::UNIX_EPOCH;

    use opentelemetry::trace::{Event, SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry::{InstrumentationScope, KeyValue};
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use serde_json::{Value as Json, json};

    use super::*;

    fn span(kind: SpanKind, attributes: Vec<KeyValue>, events: Vec<Event>) -> SpanData {
        let context = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let start = UNIX_EPOCH + Duration::from_millis(1_764_612_000_123);
        let mut span_events = SpanEvents::default();
        span_events.events = events;
        SpanData {
            span_context: context,
            parent_span_id: SpanId::from_hex("1111111111111111").unwrap(),
            parent_span_is_remote: false,
            span_kind: kind,
            name: Cow::Borrowed("chat gpt-4o-mini"),
            start_time: start,
            end_time: start + Duration::from_micros(3_723_000_456),
            attributes,
            dropped_attributes_count: 0,
            events: span_events,
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("keyless-jobs").build(),
        }
    }

    fn items(span: &SpanData) -> Vec<Json> {
        let mut writer = Items::new("00000000-0000-4000-8000-0000000a1b2c");
        let resource = Resource::builder_empty()
            .with_service_name("func-app")
            .with_attributes([
                KeyValue::new("service.instance.id", "instance-7"),
                KeyValue::new("deployment.environment", "x"),
            ])
            .build();
        writer.set_resource(&resource);
        let mut batch = Batch::default();
        writer.add(span, &mut batch);
        let body = batch.body();
        let mut json = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut json).unwrap();
        serde_json::from_slice::<Vec<Json>>(&json).unwrap()
    }

    #[test]
    fn a_tiny_sample_rate_is_written_as_a_short_number() {
        let text = |rate: f64| {
            let mut batch = Batch::default();
            Items::new("k").add(&span(SpanKind::Client, vec![KeyValue::new(SAMPLE_RATE, rate)], vec![]), &mut batch);
            String::from_utf8(batch.json).unwrap()
        };
        assert!(text(1e-300).contains(r#""sampleRate":1e-300,"#), "{}", text(1e-300));
        assert!(text(0.5).contains(r#""sampleRate":0.5,"#), "{}", text(0.5));
    }

    #[test]
    fn a_chat_span_is_an_http_dependency_with_its_dimensions_and_error_answers() {
        let attributes = vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("server.address", "res.openai.azure.com"),
            KeyValue::new("server.port", 443_i64),
            KeyValue::new("gen_ai.usage.input_tokens", 57_i64),
            KeyValue::new("code.file.path", "handlers/telemetry/genai.rs"),
            KeyValue::new("long", "é".repeat(5000)),
            KeyValue::new(SAMPLE_RATE, 25.0),
        ];
        let error = Event::new(
            "azure.openai.error_response",
            UNIX_EPOCH + Duration::from_secs(1_764_612_001),
            vec![KeyValue::new("http.response.status_code", 429_i64)],
            0,
        );
        let content =
            Event::new("gen_ai.content.prompt", UNIX_EPOCH, vec![KeyValue::new("gen_ai.prompt", "secret")], 0);
        let items = items(&span(SpanKind::Client, attributes, vec![error, content]));
        assert_eq!(items.len(), 2, "the dependency and the error answer, not the content: {items:#?}");
        let dependency = &items[0];
        assert_eq!(dependency["name"], "Microsoft.ApplicationInsights.RemoteDependency");
        assert_eq!(dependency["time"], "2025-12-01T18:00:00.123Z");
        assert_eq!(dependency["sampleRate"], 25.0);
        assert_eq!(dependency["iKey"], "00000000-0000-4000-8000-0000000a1b2c");
        assert_eq!(
            dependency["tags"],
            json!({
                "ai.operation.id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "ai.operation.parentId": "1111111111111111",
                "ai.cloud.role": "func-app",
                "ai.cloud.roleInstance": "instance-7",
                "ai.internal.sdkVersion": format!("keyless-jobs:{}", env!("CARGO_PKG_VERSION")),
            })
        );
        let data = &dependency["data"]["baseData"];
        assert_eq!(dependency["data"]["baseType"], "RemoteDependencyData");
        assert_eq!(data["id"], "00f067aa0ba902b7");
        assert_eq!(data["duration"], "0.01:02:03.000456");
        assert_eq!(
            (&data["type"], &data["target"], &data["success"]),
            (&json!("HTTP"), &json!("res.openai.azure.com:443"), &json!(true))
        );
        assert_eq!(data["resultCode"], "0");
        let properties = data["properties"].as_object().unwrap();
        assert_eq!(properties["gen_ai.usage.input_tokens"], "57");
        assert!(!properties.contains_key("code.file.path") && !properties.contains_key("deployment.environment"));
        assert!(!properties.contains_key("server.address"), "the target says it: {properties:?}");
        assert!(!properties.contains_key(SAMPLE_RATE), "sampleRate says it: {properties:?}");
        assert_eq!(properties["long"].as_str().unwrap().len(), MAX_VALUE, "cut on a character boundary");
        let message = &items[1];
        assert_eq!(message["data"]["baseType"], "MessageData");
        assert_eq!(message["data"]["baseData"]["message"], "azure.openai.error_response");
        assert_eq!(message["data"]["baseData"]["properties"]["http.response.status_code"], "429");
        assert_eq!(message["tags"]["ai.operation.parentId"], "00f067aa0ba902b7", "the span is the parent");
    }

    #[test]
    fn a_server_span_is_a_request_named_like_the_span_with_the_function_as_operation() {
        let attributes = vec![
            KeyValue::new("faas.name", "summarize"),
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.response.status_code", 200_i64),
        ];
        let mut server = span(SpanKind::Server, attributes, Vec::new());
        server.name = Cow::Borrowed("POST /api/summarize");
        server.status = Status::error("boom");
        let items = items(&server);
        let request = &items[0];
        assert_eq!(request["name"], "Microsoft.ApplicationInsights.Request");
        assert_eq!(request["tags"]["ai.operation.name"], "summarize");
        let data = &request["data"]["baseData"];
        assert_eq!(
            (&data["name"], &data["responseCode"], &data["success"]),
            (&json!("POST /api/summarize"), &json!("200"), &json!(false))
        );
        assert!(data["properties"].get("http.request.method").is_none());
        assert!(data["properties"].get("http.response.status_code").is_none(), "the responseCode says it");
        assert_eq!(data["properties"]["faas.name"], "summarize");
    }

    #[test]
    fn strings_are_json_whatever_they_hold() {
        for text in ["plain", "quote \" and \\ back", "line\nfeed\t\r\u{1}\u{1f}", "é ✓ 🎉", ""] {
            let mut out = Vec::new();
            string(&mut out, text);
            assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), text, "{}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn times_are_rfc3339_in_utc_on_any_day() {
        for days in [0_u64, 59, 60, 365, 10_957, 11_016, 20_423, 47_482, 2_932_896] {
            let time = UNIX_EPOCH + Duration::from_millis(days * 86_400_000 + 45_296_789);
            let mut out = Vec::new();
            time_text(&mut out, time);
            let expected = time::OffsetDateTime::from(time);
            let parsed = time::OffsetDateTime::parse(
                std::str::from_utf8(&out).unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap();
            assert_eq!(parsed, expected, "{}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn a_partial_retry_keeps_only_the_named_items() {
        let mut batch = Batch::default();
        for item in [&b"{\"a\":1}"[..], b"{\"b\":2}", b"{\"c\":3}"] {
            batch.json.extend_from_slice(item);
            batch.end_item();
        }
        batch.retain(&[2, 0, 9, 2]);
        let mut json = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&batch.body()[..]), &mut json).unwrap();
        assert_eq!(serde_json::from_slice::<Json>(&json).unwrap(), json!([{"a": 1}, {"c": 3}]));
    }
}
