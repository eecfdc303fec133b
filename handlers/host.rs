//! The Functions host protocol for non-forwarded invocations: `POST /{FunctionName}` with
//! `{"Data": {..}, "Metadata": {..}}` in, `{"Outputs": {..}, "Logs": [..], "ReturnValue": ..}` out.
//!
//! The host JSON-encodes every string value a second time (a queue message `{"id":"a"}` arrives
//! as a JSON string holding the JSON string literal `"{\"id\":\"a\"}"`), numbers arrive as
//! strings, and other hosts and tools send singly encoded strings or plain objects: every form
//! is accepted here, so no other module sees the difference.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;

use base64::Engine;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// A decoded invocation request.
#[derive(Debug, Default)]
pub struct Invocation {
    data: Map<String, Value>,
    metadata: Map<String, Value>,
}

/// `Data.req` of an HTTP trigger in payload mode.
#[derive(Debug, Default)]
pub struct HttpTrigger {
    pub method: String,
    pub body: Option<String>,
    pub params: Map<String, Value>,
}

impl Invocation {
    /// Decodes an invocation body. The `Data` strings (a queue message, a blob, an HTTP request's
    /// `Body`: up to a 1 000-job batch) are decoded straight from the body into their own
    /// buffer: serde_json decodes an escaped string into a scratch buffer first and then copies
    /// it, three copies of a batch at once instead of two.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let whole: &RawValue = serde_json::from_slice(body)
            .map_err(|e| invalid_payload(format!("the invocation body is not JSON ({e})")))?;
        if !whole.get().starts_with('{') {
            return Err(invalid_payload("the invocation body must be an object with `Data` and `Metadata`".into()));
        }
        let top: HashMap<String, &RawValue> = serde_json::from_str(whole.get())
            .map_err(|e| invalid_payload(format!("the invocation body is not JSON ({e})")))?;
        let section = |name: &str| -> Result<Option<HashMap<String, &RawValue>>, ApiError> {
            let raw = top.get(name).or_else(|| top.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v));
            match raw.map(|raw| raw.get()) {
                None | Some("null") => Ok(None),
                Some(text) if text.starts_with('{') => serde_json::from_str(text)
                    .map(Some)
                    .map_err(|e| invalid_payload(format!("`{name}` could not be read ({e})"))),
                Some(text) => {
                    let kind = serde_json::from_str::<Value>(text).map_or("not JSON", |v| crate::jobs::input::kind(&v));
                    Err(invalid_payload(format!("`{name}` must be an object (got {kind})")))
                }
            }
        };
        let data = section("Data")?.unwrap_or_default();
        if data.is_empty() {
            return Err(invalid_payload("the invocation has no `Data`".into()));
        }
        let metadata = section("Metadata")?.unwrap_or_default();
        Ok(Self { data: decode_members(data, 2)?, metadata: decode_members(metadata, 1)? })
    }

    /// The text of input binding `name` (a queue message, a blob), decoded from every encoding
    /// the host uses; `None` when absent or null (a blob that does not exist).
    pub fn input_text(&self, name: &str) -> Option<String> {
        lookup(&self.data, name).and_then(decode_text)
    }

    /// The content of blob input binding `name`; `None` when the blob does not exist (the host
    /// then sends the JSON text `null`, encoded like any other string).
    pub fn blob_text(&self, name: &str) -> Option<String> {
        self.input_text(name).filter(|text| !text.trim().is_empty() && text.trim() != "null")
    }

    pub fn metadata_text(&self, name: &str) -> Option<String> {
        lookup(&self.metadata, name).and_then(decode_text)
    }

    /// A number that the host sends as a string (`"DequeueCount": "1"`).
    pub fn metadata_u32(&self, name: &str) -> Option<u32> {
        self.metadata_text(name).and_then(|t| t.trim().parse().ok())
    }

    /// `Data.<name>` of an HTTP trigger, taken out of the payload (route params also fall back
    /// to Metadata). Taken, not cloned: its `Body` is the caller's whole body (a batch submit
    /// holds up to 1 000 jobs), moved into [`HttpTrigger::body`] without a copy.
    pub fn take_http_trigger(&mut self, name: &str) -> Result<HttpTrigger, ApiError> {
        let mut req = match take(&mut self.data, name) {
            Some(Value::Object(map)) => map,
            Some(Value::String(s)) => match serde_json::from_str(&s) {
                Ok(Value::Object(map)) => map,
                _ => return Err(invalid_payload(format!("`Data.{name}` is not an HTTP request object"))),
            },
            _ => return Err(invalid_payload(format!("the invocation has no HTTP request in `Data.{name}`"))),
        };
        let method = lookup(&req, "Method").and_then(Value::as_str).unwrap_or("POST").to_ascii_uppercase();
        let body = take(&mut req, "Body").and_then(|b| match b {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        });
        let mut params = match take(&mut req, "Params") {
            Some(Value::Object(p)) => p,
            _ => Map::new(),
        };
        for (k, v) in &self.metadata {
            if !params.contains_key(k) && k.eq_ignore_ascii_case("id") {
                params.insert("id".into(), v.clone());
            }
        }
        Ok(HttpTrigger { method, body, params })
    }
}

impl HttpTrigger {
    pub fn param(&self, name: &str) -> Option<String> {
        lookup(&self.params, name).and_then(decode_text)
    }
}

/// The response to an invocation.
#[derive(Debug, Default, Serialize)]
pub struct InvocationResponse {
    #[serde(rename = "Outputs")]
    pub outputs: Map<String, Value>,
    #[serde(rename = "Logs")]
    pub logs: Vec<String>,
    #[serde(rename = "ReturnValue")]
    pub return_value: Value,
}

/// The response body, written in one buffer sized up front: outputs hold whole documents (a
/// Result, escaped once more as a JSON string), and growing the buffer as it fills cost more
/// than the encoding itself.
impl IntoResponse for InvocationResponse {
    fn into_response(self) -> Response {
        let text_len = |value: &Value| value.as_str().map_or(256, str::len);
        let estimate = 256
            + self.outputs.values().map(|v| text_len(v) + text_len(v) / 8).sum::<usize>()
            + self.logs.iter().map(|line| line.len() + 8).sum::<usize>();
        let mut body = Vec::with_capacity(estimate);
        match serde_json::to_writer(&mut body, &self) {
            Ok(()) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => ApiError::internal(format!("could not encode the invocation response: {e}")).into_response(),
        }
    }
}

impl InvocationResponse {
    /// Sets output binding `name`. Values are JSON documents, never bare words: the host would
    /// base64-decode a string that happens to be valid base64.
    pub fn output(&mut self, name: &str, value: impl Into<Value>) -> &mut Self {
        self.outputs.insert(name.to_owned(), value.into());
        self
    }

    /// Sets the `res` output of an HTTP trigger in payload mode.
    pub fn http_response(&mut self, status: u16, json_body: String) -> &mut Self {
        let res = serde_json::json!({"statusCode": status, "body": json_body, "headers": {"Content-Type": "application/json"}});
        self.output("res", res)
    }

    /// Sets `res` to `error` (status, JSON error body, and `Retry-After` when it has one).
    pub fn http_error(&mut self, error: &ApiError) -> &mut Self {
        let mut headers = serde_json::json!({"Content-Type": "application/json"});
        if let Some(wait) = error.retry_after_secs() {
            headers["Retry-After"] = Value::String(wait.to_string());
        }
        let res = serde_json::json!({"statusCode": error.status().as_u16(), "body": crate::error::envelope_json(&error.body()), "headers": headers});
        self.output("res", res)
    }

    /// The answer of an HTTP trigger in payload mode that failed before it could run: the
    /// invocation succeeds and the caller gets `error` (a failed invocation would reach the
    /// caller as a bare 500).
    pub fn for_http_error(error: &ApiError) -> Response {
        tracing::info!(code = error.code(), status = error.status().as_u16(), "{error}");
        let mut response = Self::default();
        response.http_error(error);
        response.into_response()
    }

    /// The response body with `messages` as the queue output it was started for.
    pub fn into_response_with(self, messages: QueueMessages) -> Response {
        messages.finish(self)
    }
}

/// A queue output binding with many messages (a batch submit's), written straight into the
/// response body as each message is built: a batch's messages are its whole input, and holding
/// them all, then encoding them into the response, would hold it twice more.
#[derive(Debug)]
pub struct QueueMessages {
    /// `{"Outputs":{"<name>":[` and the messages so far.
    body: Vec<u8>,
    count: usize,
}

impl QueueMessages {
    /// For output binding `name`, written into `buffer` (cleared; e.g. the request's own,
    /// whose memory is then reused rather than more taken) when it has room for `capacity`
    /// bytes, else into a new one: the buffer is never copied as it grows, and capacity not
    /// written to costs address space, not memory.
    pub fn new(name: &str, mut buffer: Vec<u8>, capacity: usize) -> Self {
        buffer.clear();
        let mut body = if buffer.capacity() >= capacity { buffer } else { Vec::with_capacity(capacity) };
        body.extend_from_slice(b"{\"Outputs\":{");
        write_string(&mut body, name);
        body.extend_from_slice(b":[");
        Self { body, count: 0 }
    }

    pub fn push(&mut self, message: &str) {
        if self.count > 0 {
            self.body.push(b',');
        }
        write_string(&mut self.body, message);
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Closes the array and appends the rest of `response` (its other outputs, `Logs`, `ReturnValue`).
    fn finish(mut self, response: InvocationResponse) -> Response {
        let encoded = (
            serde_json::to_string(&response.outputs),
            serde_json::to_string(&response.logs),
            serde_json::to_string(&response.return_value),
        );
        let (Ok(outputs), Ok(logs), Ok(return_value)) = encoded else {
            return ApiError::internal("could not encode the invocation response").into_response();
        };
        self.body.push(b']');
        // The other outputs: `outputs` is `{...}`; its members follow the queue's.
        if outputs.len() > 2 {
            self.body.push(b',');
            self.body.extend_from_slice(&outputs.as_bytes()[1..outputs.len() - 1]);
        }
        self.body.extend_from_slice(b"},\"Logs\":");
        self.body.extend_from_slice(logs.as_bytes());
        self.body.extend_from_slice(b",\"ReturnValue\":");
        self.body.extend_from_slice(return_value.as_bytes());
        self.body.push(b'}');
        ([(header::CONTENT_TYPE, "application/json")], self.body).into_response()
    }
}

/// `text` as a JSON string literal, appended.
fn write_string(out: &mut Vec<u8>, text: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

fn invalid_payload(message: String) -> ApiError {
    ApiError::invalid("", format!("malformed invocation payload: {message}"))
}

/// Keys as sent, or in another case (the host is case-insensitive about them).
fn lookup<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

/// The members of an object, decoded; strings (and, `depth` levels down, the strings of object
/// members) without serde_json's scratch copy.
fn decode_members(members: HashMap<String, &RawValue>, depth: u8) -> Result<Map<String, Value>, ApiError> {
    members.into_iter().map(|(name, raw)| Ok((name, decode_raw(raw, depth)?))).collect()
}

fn decode_raw(raw: &RawValue, depth: u8) -> Result<Value, ApiError> {
    let text = raw.get();
    let invalid = |e: String| invalid_payload(format!("a value could not be read ({e})"));
    if text.starts_with('"') {
        return unescape(text).map(Value::String).ok_or_else(|| invalid("a string with an invalid escape".into()));
    }
    if depth > 1 && text.starts_with('{') {
        let members: HashMap<String, &RawValue> = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        return decode_members(members, depth - 1).map(Value::Object);
    }
    serde_json::from_str(text).map_err(|e| invalid(e.to_string()))
}

/// The text of a JSON string literal (quotes included, already checked by the parser), decoded
/// into one buffer of its encoded size; `None` for an invalid escape or a lone surrogate.
fn unescape(literal: &str) -> Option<String> {
    let inner = literal.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut rest = inner;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        // An escape is ASCII (else invalid), so `at + 2` is a character boundary.
        let escape = *rest.as_bytes().get(at + 1).filter(|b| b.is_ascii())?;
        rest = &rest[at + 2..];
        let decoded = match escape {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let first = hex4(rest)?;
                rest = &rest[4..];
                match first {
                    0xD800..=0xDBFF => {
                        let low =
                            rest.strip_prefix("\\u").and_then(hex4).filter(|low| (0xDC00..=0xDFFF).contains(low))?;
                        rest = &rest[6..];
                        char::from_u32(0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00))?
                    }
                    _ => char::from_u32(first)?,
                }
            }
            _ => return None,
        };
        out.push(decoded);
    }
    out.push_str(rest);
    Some(out)
}

/// Four hex digits at the start of `text`.
fn hex4(text: &str) -> Option<u32> {
    let digits = text.get(..4)?;
    digits.bytes().all(|b| b.is_ascii_hexdigit()).then(|| u32::from_str_radix(digits, 16).ok())?
}

/// Removes `name` (as sent, or in another case) from `map`.
fn take(map: &mut Map<String, Value>, name: &str) -> Option<Value> {
    match map.remove(name) {
        Some(value) => Some(value),
        None => {
            let key = map.keys().find(|k| k.eq_ignore_ascii_case(name))?.clone();
            map.remove(&key)
        }
    }
}

/// Decodes a value the host serialised: a JSON string whose content is a JSON string literal
/// (decoded twice), a singly encoded string, an object or array (its JSON text), or a scalar.
fn decode_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::String(inner)) => Some(inner),
            _ => Some(s.clone()),
        },
        other => Some(other.to_string()),
    }
}

/// A queue message's JSON: as text, or base64 of it (a `binary` binding or a mismatched
/// `messageEncoding`).
pub fn message_json(text: &str) -> Result<Value, ApiError> {
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(value) => Ok(value),
        Err(e) => base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| ApiError::invalid("", format!("the queue message is not a JSON job ({e})"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn queue_message_in_every_encoding() {
        let message = r#"{"id":"a","task":"summarize"}"#;
        let twice = serde_json::to_string(message).unwrap();
        for data in [json!({"job": twice}), json!({"job": message}), json!({"job": {"id": "a", "task": "summarize"}})] {
            let body = json!({"Data": data, "Metadata": {"DequeueCount": "2", "Id": "\"m-1\""}});
            let inv = Invocation::parse(body.to_string().as_bytes()).unwrap();
            let text = inv.input_text("job").unwrap();
            assert_eq!(message_json(&text).unwrap(), json!({"id": "a", "task": "summarize"}));
            assert_eq!(inv.metadata_u32("DequeueCount"), Some(2));
            assert_eq!(inv.metadata_text("Id").as_deref(), Some("m-1"));
        }
    }

    #[test]
    fn base64_messages_and_numbers() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(r#"{"task":"classify"}"#);
        assert_eq!(message_json(&b64).unwrap(), json!({"task": "classify"}));
        let inv = Invocation::parse(br#"{"Data":{"job":"x"},"Metadata":{"DequeueCount":3}}"#).unwrap();
        assert_eq!(inv.metadata_u32("DequeueCount"), Some(3));
        assert!(message_json("not json").is_err());
    }

    #[test]
    fn malformed_payloads_are_rejected() {
        for body in [&b"nope"[..], b"[]", b"{}", br#"{"Data": 5}"#, br#"{"Data": {}}"#] {
            assert_eq!(Invocation::parse(body).unwrap_err().code(), "invalid_input");
        }
    }

    #[test]
    fn http_trigger_in_payload_mode() {
        let body = json!({"Data": {"req": {"Method": "get", "Params": {"id": "j1"}, "Body": null}, "result": null}, "Metadata": {}});
        let mut inv = Invocation::parse(body.to_string().as_bytes()).unwrap();
        let req = inv.take_http_trigger("req").unwrap();
        assert_eq!((req.method.as_str(), req.param("id").as_deref(), req.body), ("GET", Some("j1"), None));
        assert_eq!(inv.input_text("result"), None);
    }

    #[test]
    fn messages_are_written_exactly_as_a_value_would_be() {
        let messages = ["{\"a\":\"q\\\"\\n\\u0001\"}", "x\u{1}\u{7f}é\t\r\u{8}\u{c}\\"];
        let mut response = InvocationResponse::default();
        response.logs.push("enqueued 2 job(s)".into());
        response.http_response(202, "{}".into());
        let mut expected = serde_json::to_value(&response).unwrap();
        expected["Outputs"]["outjobs"] = Value::from(messages.to_vec());
        let mut queue = QueueMessages::new("outjobs", b"reused".to_vec(), 10);
        messages.iter().for_each(|m| queue.push(m));
        assert_eq!(queue.len(), 2);
        let written = response.into_response_with(queue);
        let bytes = futures_util::FutureExt::now_or_never(axum::body::to_bytes(written.into_body(), usize::MAX));
        let written: Value = serde_json::from_slice(&bytes.unwrap().unwrap()).unwrap();
        assert_eq!(written, expected);
    }

    #[test]
    fn strings_decode_exactly_as_serde_json_decodes_them() {
        let texts = [
            "plain",
            "",
            "q\"uote\\ back/slash\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}",
            "é 漢字 😀 \u{2028}",
            "{\"id\":\"a\",\"input\":{\"text\":\"t \\\"x\\\"\"}}",
        ];
        for text in texts {
            let literal = serde_json::to_string(text).unwrap();
            assert_eq!(unescape(&literal).as_deref(), Some(text), "{literal}");
        }
        // Escapes serde_json never writes but accepts.
        for literal in [r#""\/\u00e9\uD83D\uDE00\u0041""#, r#""\u00E9\ud83d\ude00""#] {
            let expected: String = serde_json::from_str(literal).unwrap();
            assert_eq!(unescape(literal), Some(expected), "{literal}");
        }
        // Random literals of escapes and characters: the same text, or the same refusal.
        let pieces = [
            "a", "é", "😀", "\\\"", "\\\\", "\\/", "\\n", "\\b", "\\uD83D", "\\uDE00", "\\u0000", "\\u00e9", "\\uFFFF",
            "\\x",
        ];
        for _ in 0..5000 {
            let inner: String =
                (0..rand::random_range(0..8)).map(|_| pieces[rand::random_range(0..pieces.len())]).collect();
            let literal = format!("\"{inner}\"");
            assert_eq!(unescape(&literal), serde_json::from_str::<String>(&literal).ok(), "{literal}");
        }
        for invalid in [r#""\uD800""#, r#""\uDC00x""#, r#""\uD800\u0041""#, r#""\x""#, r#""\u12""#, r#""\"#, r#""\é""#]
        {
            assert_eq!(unescape(invalid), None, "{invalid}");
        }
    }

    #[test]
    fn a_missing_blob_arrives_as_the_text_null() {
        let body = json!({"Data": {"result": "null", "other": serde_json::to_string("{\"a\":1}").unwrap()}});
        let inv = Invocation::parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(inv.blob_text("result"), None);
        assert_eq!(inv.blob_text("missing"), None);
        assert_eq!(inv.blob_text("other").as_deref(), Some("{\"a\":1}"));
    }
}
