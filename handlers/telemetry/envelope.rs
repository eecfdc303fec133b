//! Application Insights items written straight from finished spans, on the export task: each
//! span becomes one JSON item (a request for server and consumer spans, a dependency for the
//! others), plus one trace item per kept event; a batch is one gzip JSON array.
//!
//! Why not the `opentelemetry-application-insights` span exporter: it builds each item through
//! hash maps of every attribute and resource attribute, then a tree of owned strings, then
//! serialises it and gzips the batch at the default level; measured, that doubled the handler's
//! CPU per request (BENCHMARKS.md, "Application Insights export"). Here each item is serialised
//! once from borrowed span data, and the batch is compressed at the fast level (about a fifth of
//! the JSON's size still). The metrics exporter (one batch a minute) stays the crate's.
//!
//! Shape, as Application Insights reads it (and as the crate wrote it before): `name`, `time`
//! (RFC 3339, ms), `sampleRate` (percent), `iKey`, `tags` (`ai.operation.id` = trace id,
//! `ai.operation.parentId` = parent span id, `ai.operation.name`, `ai.cloud.role` =
//! `service.name`, `ai.cloud.roleInstance` = `service.instance.id`, `ai.application.ver`,
//! `ai.internal.sdkVersion`) and `data` (`baseType`, `baseData` with `ver` 2). Span attributes
//! become `properties` (custom dimensions), except where in our code a span was opened.

use std::borrow::Cow;
use std::io::Write as _;
use std::time::{Duration, SystemTime};

use flate2::Compression;
use flate2::write::GzEncoder;
use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

/// Span events Application Insights gets (as trace items): Azure OpenAI's error answers. Log
/// lines reach it through the host already, pacing waits are in the dependency's duration, and
/// content events (`LOG_SENSITIVE_DATA`) must never reach it.
const KEPT_EVENTS: &[&str] = &["azure.openai.error_response"];

/// Attributes that say where in our code a span was opened: no use in the portal.
const SOURCE_ATTRIBUTES: &[&str] = &["code.file.path", "code.line.number", "code.module.name", "target"];

/// Application Insights' own limits: longer names and values are cut there; cut here, on a
/// character boundary, so that the item is never refused for them.
const MAX_NAME: usize = 1024;
const MAX_KEY: usize = 150;
const MAX_VALUE: usize = 8192;

/// What every item of this process carries, from the resource and the settings.
#[derive(Debug, Clone)]
pub struct Items {
    instrumentation_key: String,
    /// Percent: 100 × the sampler's ratio.
    sample_rate: f64,
    role: Option<String>,
    role_instance: Option<String>,
    version: Option<String>,
    sdk: String,
}

impl Items {
    /// `sample_rate` is the sampler's ratio (0..=1).
    pub fn new(instrumentation_key: &str, sample_rate: f64) -> Self {
        Self {
            instrumentation_key: instrumentation_key.to_owned(),
            sample_rate: sample_rate * 100.0,
            role: None,
            role_instance: None,
            version: None,
            sdk: format!("keyless-jobs:{}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// Cloud role (`service.namespace.service.name`), role instance, application version and
    /// SDK from the resource; no other resource attribute goes into any item.
    pub fn set_resource(&mut self, resource: &Resource) {
        let get = |key: &str| resource.get(&opentelemetry::Key::from(key.to_owned())).map(|v| v.as_str().into_owned());
        self.role = get("service.name").map(|name| match get("service.namespace") {
            Some(namespace) => format!("{namespace}.{name}"),
            None => name,
        });
        self.role_instance = get("service.instance.id");
        self.version = get("service.version");
        if let Some(sdk) = get("telemetry.sdk.name") {
            self.sdk = format!("{sdk}:{}", get("telemetry.sdk.version").unwrap_or_else(|| "0.0.0".into()));
        }
    }

    /// Appends the span's items (its own, then its kept events') to `out`, one JSON text each.
    pub fn add(&self, span: &SpanData, out: &mut Vec<Vec<u8>>) {
        let trace_id = span.span_context.trace_id().to_string();
        let span_id = span.span_context.span_id().to_string();
        let parent_id = (span.parent_span_id != SpanId::INVALID).then(|| span.parent_span_id.to_string());
        let duration = duration_text(span.end_time.duration_since(span.start_time).unwrap_or_default());
        let name = cut(&span.name, MAX_NAME);
        let (item, base_type, operation_name, base_data) = match span.span_kind {
            SpanKind::Server | SpanKind::Consumer => {
                let response_code = match attribute(span, "http.response.status_code") {
                    Some(code) => code.as_str(),
                    None => status_code(&span.status).into(),
                };
                let data = BaseData::Request {
                    ver: 2,
                    id: &span_id,
                    name,
                    duration,
                    response_code,
                    success: !matches!(span.status, Status::Error { .. }),
                    // The request is named after the span; the method is in its name already.
                    properties: Properties { attributes: &span.attributes, skip: &["http.request.method"] },
                };
                // Operation name = the function, as the host names its own request.
                let function = attribute(span, "faas.name").map(Value::as_str);
                ("Microsoft.ApplicationInsights.Request", "RequestData", function, data)
            }
            SpanKind::Client | SpanKind::Producer | SpanKind::Internal => {
                let chat = attribute(span, "gen_ai.operation.name").is_some();
                let result_code = match attribute(span, "http.response.status_code") {
                    Some(code) => code.as_str(),
                    None => status_code(&span.status).into(),
                };
                let success = match &span.status {
                    Status::Ok => Some(true),
                    Status::Error { .. } => Some(false),
                    // A chat call that ended without an error is a success (set on failure only).
                    Status::Unset => chat.then_some(true),
                };
                let target = attribute(span, "server.address").map(|host| match attribute(span, "server.port") {
                    Some(port) => format!("{}:{}", host.as_str(), port.as_str()),
                    None => host.as_str().into_owned(),
                });
                // Type HTTP for every Azure OpenAI call, answered or not (an unanswered one has
                // no `http.*` attribute).
                let kind = if span.span_kind == SpanKind::Internal {
                    Some("InProc")
                } else if chat || span.attributes.iter().any(|kv| kv.key.as_str().starts_with("http.")) {
                    Some("HTTP")
                } else {
                    None
                };
                let data = BaseData::Dependency {
                    ver: 2,
                    id: &span_id,
                    name,
                    duration,
                    result_code,
                    success,
                    target,
                    kind,
                    properties: Properties { attributes: &span.attributes, skip: &[] },
                };
                ("Microsoft.ApplicationInsights.RemoteDependency", "RemoteDependencyData", None, data)
            }
        };
        let tags = Tags { items: self, operation_id: &trace_id, parent_id: parent_id.as_deref(), operation_name };
        out.push(self.envelope(item, span.start_time, tags, base_type, base_data));
        for event in span.events.iter().filter(|e| KEPT_EVENTS.contains(&e.name.as_ref())) {
            let tags = Tags { items: self, operation_id: &trace_id, parent_id: Some(&span_id), operation_name: None };
            let data = BaseData::Message {
                ver: 2,
                message: cut(&event.name, MAX_VALUE),
                properties: Properties { attributes: &event.attributes, skip: &[] },
            };
            out.push(self.envelope(
                "Microsoft.ApplicationInsights.Message",
                event.timestamp,
                tags,
                "MessageData",
                data,
            ));
        }
    }

    fn envelope(
        &self,
        name: &'static str,
        time: SystemTime,
        tags: Tags<'_>,
        base_type: &'static str,
        base_data: BaseData<'_>,
    ) -> Vec<u8> {
        let envelope = Envelope {
            name,
            time: time_text(time),
            sample_rate: self.sample_rate,
            ikey: &self.instrumentation_key,
            tags,
            data: Data { base_type, base_data },
        };
        // Serialising borrowed strings and numbers into a Vec cannot fail.
        serde_json::to_vec(&envelope).unwrap_or_default()
    }
}

/// One request body: the items as a JSON array, gzip at the fast level.
pub fn body(items: &[Vec<u8>]) -> Vec<u8> {
    let mut json = Vec::with_capacity(items.iter().map(|i| i.len() + 1).sum::<usize>() + 2);
    json.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        json.extend_from_slice(item);
    }
    json.push(b']');
    let mut gzip = GzEncoder::new(Vec::with_capacity(json.len() / 4), Compression::fast());
    // Writing into memory cannot fail.
    let _ = gzip.write_all(&json);
    gzip.finish().unwrap_or_default()
}

#[derive(Serialize)]
struct Envelope<'a> {
    name: &'static str,
    time: String,
    #[serde(rename = "sampleRate")]
    sample_rate: f64,
    #[serde(rename = "iKey")]
    ikey: &'a str,
    tags: Tags<'a>,
    data: Data<'a>,
}

struct Tags<'a> {
    items: &'a Items,
    operation_id: &'a str,
    parent_id: Option<&'a str>,
    operation_name: Option<Cow<'a, str>>,
}

impl Serialize for Tags<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let items = self.items;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("ai.operation.id", self.operation_id)?;
        if let Some(parent) = self.parent_id {
            map.serialize_entry("ai.operation.parentId", parent)?;
        }
        if let Some(name) = &self.operation_name {
            map.serialize_entry("ai.operation.name", cut(name, MAX_NAME).as_ref())?;
        }
        for (key, value) in [
            ("ai.cloud.role", &items.role),
            ("ai.cloud.roleInstance", &items.role_instance),
            ("ai.application.ver", &items.version),
        ] {
            if let Some(value) = value {
                map.serialize_entry(key, value)?;
            }
        }
        map.serialize_entry("ai.internal.sdkVersion", &items.sdk)?;
        map.end()
    }
}

#[derive(Serialize)]
struct Data<'a> {
    #[serde(rename = "baseType")]
    base_type: &'static str,
    #[serde(rename = "baseData")]
    base_data: BaseData<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum BaseData<'a> {
    Request {
        ver: u8,
        id: &'a str,
        name: Cow<'a, str>,
        duration: String,
        #[serde(rename = "responseCode")]
        response_code: Cow<'a, str>,
        success: bool,
        properties: Properties<'a>,
    },
    Dependency {
        ver: u8,
        id: &'a str,
        name: Cow<'a, str>,
        duration: String,
        #[serde(rename = "resultCode")]
        result_code: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        success: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
        kind: Option<&'static str>,
        properties: Properties<'a>,
    },
    Message {
        ver: u8,
        message: Cow<'a, str>,
        properties: Properties<'a>,
    },
}

/// Attributes as custom dimensions: every value as text, cut to the service's limits.
struct Properties<'a> {
    attributes: &'a [KeyValue],
    skip: &'static [&'static str],
}

impl Serialize for Properties<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for kv in self.attributes {
            let key = kv.key.as_str();
            if SOURCE_ATTRIBUTES.contains(&key) || self.skip.contains(&key) || key.starts_with("_MS.") {
                continue;
            }
            map.serialize_entry(cut(key, MAX_KEY).as_ref(), cut(&kv.value.as_str(), MAX_VALUE).as_ref())?;
        }
        map.end()
    }
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
fn cut(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(text[..end].to_owned())
}

/// `d.hh:mm:ss.ffffff`, Application Insights' duration format.
fn duration_text(duration: Duration) -> String {
    let micros = duration.as_micros();
    let seconds = micros / 1_000_000;
    format!(
        "{}.{:02}:{:02}:{:02}.{:06}",
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
        micros % 1_000_000
    )
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-12-01T18:20:00.123Z`.
fn time_text(time: SystemTime) -> String {
    let time = time::OffsetDateTime::from(time);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.millisecond()
    )
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
        let mut writer = Items::new("00000000-0000-4000-8000-0000000a1b2c", 0.25);
        let resource = Resource::builder_empty()
            .with_service_name("func-app")
            .with_attributes([
                KeyValue::new("service.instance.id", "instance-7"),
                KeyValue::new("deployment.environment", "x"),
            ])
            .build();
        writer.set_resource(&resource);
        let mut out = Vec::new();
        writer.add(span, &mut out);
        let body = body(&out);
        let mut json = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut json).unwrap();
        serde_json::from_slice::<Vec<Json>>(&json).unwrap()
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
        assert_eq!(data["properties"]["faas.name"], "summarize");
    }
}
