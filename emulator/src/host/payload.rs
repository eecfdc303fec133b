//! Invocation payloads (`Data`, `Metadata`) built exactly as the Functions host encodes them
//! (`ScriptInvocationContextExtensions.GetHttpScriptInvocationContextValue`): strings are
//! JSON-encoded a second time, numbers become strings, objects stay objects.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use crate::clock::{offset_format, utc_now_format};
use crate::query::pairs;

/// A string value as the host sends it: a JSON string whose content is a JSON string literal.
fn twice(text: &str) -> Value {
    Value::String(Value::String(text.to_owned()).to_string())
}

/// Any JSON value as the host sends it: objects as they are, everything else serialised to a string.
fn encoded(value: &Value) -> Value {
    match value {
        Value::Object(_) => value.clone(),
        other => Value::String(other.to_string()),
    }
}

fn sys(now: SystemTime) -> Value {
    json!({"MethodName": "", "UtcNow": utc_now_format(now), "RandGuid": uuid::Uuid::new_v4().to_string()})
}

/// Input bindings: a blob's text encoded like any string; a missing blob as the host sends it,
/// `JsonConvert.SerializeObject(null)`, i.e. the string `null`.
fn add_inputs(data: &mut Map<String, Value>, extra_inputs: &[(&str, Option<&str>)]) {
    for (name, value) in extra_inputs {
        data.insert((*name).to_owned(), value.map_or_else(|| Value::String("null".to_owned()), twice));
    }
}

/// Sets `key` in `metadata`, replacing a key that differs only in case (binding data is
/// case-insensitive; the first spelling is kept).
fn merge(metadata: &mut Map<String, Value>, key: &str, value: Value) {
    let existing = metadata.keys().find(|k| k.eq_ignore_ascii_case(key)).cloned();
    metadata.insert(existing.unwrap_or_else(|| key.to_owned()), value);
}

/// `Data` and `Metadata` of a queue-triggered invocation of the message `message` (its text).
/// `sys.MethodName` is filled in by `HandlerProcess::invoke`.
pub fn queue_invocation(
    binding: &str,
    message: &str,
    dequeue_count: u32,
    message_id: &str,
    extra_inputs: &[(&str, Option<&str>)],
) -> (Value, Value) {
    let mut data = Map::new();
    data.insert(binding.to_owned(), twice(message));
    add_inputs(&mut data, extra_inputs);
    let now = SystemTime::now();
    let receipt = STANDARD.encode(rand::random::<[u8; 24]>());
    let mut metadata = Map::new();
    metadata.insert("DequeueCount".into(), Value::String(dequeue_count.to_string()));
    metadata.insert("ExpirationTime".into(), json!(offset_format(now + Duration::from_secs(7 * 86_400))));
    metadata.insert("Id".into(), twice(message_id));
    metadata.insert("InsertionTime".into(), json!(offset_format(now)));
    metadata.insert("NextVisibleTime".into(), json!(offset_format(now + Duration::from_secs(30))));
    metadata.insert("PopReceipt".into(), twice(&receipt));
    if let Ok(Value::Object(properties)) = serde_json::from_str::<Value>(message) {
        for (key, value) in properties.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("sys")) {
            merge(&mut metadata, key, encoded(value));
        }
    }
    metadata.insert("sys".into(), sys(now));
    (Value::Object(data), Value::Object(metadata))
}

/// `Data` (`req` plus `extra_inputs`) and `Metadata` of an HTTP-triggered invocation in payload
/// mode. `url` is the caller's full URL (its query string becomes `Query`), `params` the route
/// parameters.
pub fn http_invocation(
    method: &str,
    url: &str,
    params: &[(&str, &str)],
    body: Option<&str>,
    extra_inputs: &[(&str, Option<&str>)],
) -> (Value, Value) {
    let query: Map<String, Value> =
        pairs(url.split_once('?').map_or("", |(_, q)| q)).into_iter().map(|(k, v)| (k, json!(v))).collect();
    let host = url.split_once("://").map_or(url, |(_, rest)| rest).split(['/', '?']).next().unwrap_or("");
    let mut headers = vec![("Host", host.to_owned()), ("User-Agent", "curl/8.5.0".to_owned())];
    if let Some(body) = body {
        headers.push(("Content-Type", "application/json".into()));
        headers.push(("Content-Length", body.len().to_string()));
    }
    let params_object: Map<String, Value> = params.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
    let mut req = json!({
        "Url": url,
        "Method": method.to_uppercase(),
        "Query": query.clone(),
        "Headers": headers.iter().map(|(k, v)| ((*k).to_owned(), json!([v]))).collect::<Map<_, _>>(),
        "Params": params_object,
        "Identities": [],
    });
    if let Some(body) = body.filter(|b| !b.is_empty()) {
        req["Body"] = json!(body);
    }
    let mut data = Map::new();
    data.insert("req".into(), req);
    add_inputs(&mut data, extra_inputs);
    // Binding data (the HTTP extension's `GetRequestBindingData`): a JSON object body's top-level
    // members except arrays and nulls (objects as they are, everything else as its text), then
    // each query parameter, then the route parameters, then `Query` and `Headers` unless taken.
    let mut metadata = Map::new();
    if let Some(Ok(Value::Object(members))) = body.filter(|b| !b.is_empty()).map(serde_json::from_str::<Value>) {
        for (key, value) in members {
            let value = match value {
                Value::Array(_) | Value::Null => continue,
                Value::Object(_) => value,
                Value::String(text) => twice(&text),
                Value::Bool(flag) => twice(if flag { "True" } else { "False" }),
                Value::Number(number) => twice(&number.to_string()),
            };
            merge(&mut metadata, &key, value);
        }
    }
    // `code` (the function key) is not binding data.
    for (key, value) in query.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("code")) {
        merge(&mut metadata, key, twice(value.as_str().unwrap_or_default()));
    }
    for (key, value) in params {
        merge(&mut metadata, key, twice(value));
    }
    if !metadata.keys().any(|k| k.eq_ignore_ascii_case("Query")) {
        metadata.insert("Query".into(), Value::Object(query));
    }
    if !metadata.keys().any(|k| k.eq_ignore_ascii_case("Headers")) {
        metadata.insert("Headers".into(), headers.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect());
    }
    metadata.insert("sys".into(), sys(SystemTime::now()));
    (Value::Object(data), Value::Object(metadata))
}
