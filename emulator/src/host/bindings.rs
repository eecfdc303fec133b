//! The host's binding behaviour for functions in invocation mode, against an in-memory storage
//! account: a function's bindings are read from its `function.json`, blob input paths are
//! resolved from binding data (`{id}` from route parameters; for a queue trigger, the JSON
//! message's top-level properties, case-insensitively, then the message's own `Id`), and the
//! response's `Outputs` are applied only on a 2xx answer (blob outputs written, queue outputs
//! enqueued, one message per array element), with the host's base64 gotcha on strings.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use super::{HandlerProcess, http_invocation, queue_invocation};

/// One binding of a `function.json`.
#[derive(Clone, Debug)]
pub struct Binding {
    pub kind: String,
    pub direction: String,
    pub name: String,
    /// Blob bindings: the path template (`inputs/{id}.json`).
    pub path: Option<String>,
    /// Queue bindings: the queue.
    pub queue_name: Option<String>,
}

/// A function folder's bindings.
#[derive(Clone, Debug)]
pub struct Function {
    pub name: String,
    pub bindings: Vec<Binding>,
}

impl Function {
    /// Reads `root/name/function.json`.
    pub fn load(root: &Path, name: &str) -> Result<Self, String> {
        let path = root.join(name).join("function.json");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let text_of = |b: &Value, key: &str| b[key].as_str().map(str::to_owned);
        let bindings = json["bindings"]
            .as_array()
            .ok_or_else(|| format!("{}: no bindings", path.display()))?
            .iter()
            .map(|b| Binding {
                kind: text_of(b, "type").unwrap_or_default(),
                direction: text_of(b, "direction").unwrap_or_default(),
                name: text_of(b, "name").unwrap_or_default(),
                path: text_of(b, "path"),
                queue_name: text_of(b, "queueName"),
            })
            .collect();
        Ok(Self { name: name.to_owned(), bindings })
    }

    fn trigger(&self, kind: &str) -> Option<&Binding> {
        self.bindings.iter().find(|b| b.kind == kind && b.direction == "in")
    }
}

/// What an HTTP-triggered invocation did.
#[derive(Debug)]
pub struct HttpOutcome {
    /// The invocation's own status (not 2xx: the host fails the request with 500).
    pub invocation_status: u16,
    /// The invocation response body.
    pub invocation: Value,
    /// The caller's status and parsed body, from the `res` output.
    pub status: u16,
    pub body: Value,
}

/// An in-memory storage account: blobs by path, queues by name.
#[derive(Default)]
pub struct Storage {
    blobs: Mutex<HashMap<String, String>>,
    queues: Mutex<HashMap<String, VecDeque<String>>>,
}

impl Storage {
    pub fn blob(&self, path: &str) -> Option<String> {
        self.blobs.lock().unwrap_or_else(|e| e.into_inner()).get(path).cloned()
    }

    pub fn put_blob(&self, path: &str, content: impl Into<String>) {
        self.blobs.lock().unwrap_or_else(|e| e.into_inner()).insert(path.to_owned(), content.into());
    }

    pub fn blob_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.blobs.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        paths.sort();
        paths
    }

    /// The messages waiting on `queue`, oldest first.
    pub fn messages(&self, queue: &str) -> Vec<String> {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Takes the oldest message of `queue`.
    pub fn pop(&self, queue: &str) -> Option<String> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).get_mut(queue).and_then(VecDeque::pop_front)
    }

    fn enqueue(&self, queue: &str, message: String) {
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).entry(queue.to_owned()).or_default().push_back(message);
    }

    /// Blob inputs of `function`, resolved with `data` (binding data); a missing blob is `None`.
    fn blob_inputs(
        &self,
        function: &Function,
        data: &Map<String, Value>,
    ) -> Result<Vec<(String, Option<String>)>, String> {
        function
            .bindings
            .iter()
            .filter(|b| b.kind == "blob" && b.direction == "in")
            .map(|b| {
                let path = resolve(b.path.as_deref().unwrap_or_default(), data)?;
                Ok((b.name.clone(), self.blob(&path)))
            })
            .collect()
    }

    /// Invokes HTTP-triggered `function` (payload mode) as the host does.
    pub async fn invoke_http(
        &self,
        handler: &HandlerProcess,
        function: &Function,
        method: &str,
        url: &str,
        params: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<HttpOutcome, String> {
        function.trigger("httpTrigger").ok_or_else(|| format!("{} has no httpTrigger", function.name))?;
        let data: Map<String, Value> =
            params.iter().map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned()))).collect();
        let inputs = self.blob_inputs(function, &data)?;
        let inputs: Vec<(&str, Option<&str>)> = inputs.iter().map(|(n, v)| (n.as_str(), v.as_deref())).collect();
        let (payload, metadata) = http_invocation(method, url, params, body, &inputs);
        let response = handler.invoke(&function.name, payload, metadata).await;
        let invocation_status = response.status().as_u16();
        let invocation: Value = response.json().await.map_err(|e| format!("the invocation answer is not JSON: {e}"))?;
        if !(200..300).contains(&invocation_status) {
            return Ok(HttpOutcome { invocation_status, invocation, status: 500, body: Value::Null });
        }
        self.apply_outputs(function, &invocation, &data)?;
        let res = &invocation["Outputs"]["res"];
        let status = res["statusCode"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(200);
        let body = match &res["body"] {
            Value::String(text) => serde_json::from_str(text).unwrap_or(Value::String(text.clone())),
            other => other.clone(),
        };
        Ok(HttpOutcome { invocation_status, invocation, status, body })
    }

    /// Delivers `message` to queue-triggered `function` as the host does; returns the
    /// invocation's status and body (outputs applied on 2xx).
    pub async fn invoke_queue(
        &self,
        handler: &HandlerProcess,
        function: &Function,
        message: &str,
        dequeue_count: u32,
    ) -> Result<(u16, Value), String> {
        let trigger =
            function.trigger("queueTrigger").ok_or_else(|| format!("{} has no queueTrigger", function.name))?;
        let message_id = uuid::Uuid::new_v4().to_string();
        // Binding data: the message id, overridden by the JSON message's own properties.
        let mut data = Map::new();
        data.insert("Id".into(), Value::String(message_id.clone()));
        if let Ok(Value::Object(properties)) = serde_json::from_str::<Value>(message) {
            for (key, value) in properties {
                data.retain(|k, _| !k.eq_ignore_ascii_case(&key));
                data.insert(key, value);
            }
        }
        let inputs = self.blob_inputs(function, &data)?;
        let inputs: Vec<(&str, Option<&str>)> = inputs.iter().map(|(n, v)| (n.as_str(), v.as_deref())).collect();
        let (payload, metadata) = queue_invocation(&trigger.name, message, dequeue_count, &message_id, &inputs);
        let response = handler.invoke(&function.name, payload, metadata).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.map_err(|e| format!("the invocation answer is not JSON: {e}"))?;
        if (200..300).contains(&status) {
            self.apply_outputs(function, &body, &data)?;
        }
        Ok((status, body))
    }

    fn apply_outputs(&self, function: &Function, invocation: &Value, data: &Map<String, Value>) -> Result<(), String> {
        let outputs = invocation["Outputs"].as_object().cloned().unwrap_or_default();
        for binding in function.bindings.iter().filter(|b| b.direction == "out" && b.kind != "http") {
            let Some(value) = outputs.iter().find(|(k, _)| k.eq_ignore_ascii_case(&binding.name)).map(|(_, v)| v)
            else {
                continue;
            };
            match binding.kind.as_str() {
                "blob" => {
                    let path = resolve(binding.path.as_deref().unwrap_or_default(), data)?;
                    self.put_blob(&path, host_text(value));
                }
                "queue" => {
                    let queue = binding.queue_name.clone().unwrap_or_default();
                    match value {
                        Value::Array(items) => items.iter().for_each(|item| self.enqueue(&queue, host_text(item))),
                        Value::Null => {}
                        other => self.enqueue(&queue, host_text(other)),
                    }
                }
                other => return Err(format!("binding type `{other}` is not emulated")),
            }
        }
        Ok(())
    }
}

/// An output value as the host writes it: objects as JSON text; a string that decodes as
/// base64 is written decoded (`GetBindingValue` without `dataType: binary`).
fn host_text(value: &Value) -> String {
    match value {
        Value::String(text) => match STANDARD.decode(text) {
            Ok(bytes) if !text.is_empty() => String::from_utf8_lossy(&bytes).into_owned(),
            _ => text.clone(),
        },
        other => other.to_string(),
    }
}

/// `inputs/{id}.json` with binding data; names match case-insensitively; an unresolved name
/// fails the invocation, as in the host.
fn resolve(template: &str, data: &Map<String, Value>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').ok_or_else(|| format!("unclosed `{{` in `{template}`"))? + start;
        let name = &rest[start + 1..end];
        let value = data
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .ok_or_else(|| format!("no value for `{{{name}}}` in binding path `{template}`"))?;
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_resolve_case_insensitively() {
        let data = json!({"Id": "m-1", "id": "job-7"});
        let data = data.as_object().unwrap();
        assert_eq!(resolve("results/{Id}.json", data).unwrap(), "results/m-1.json");
        let only_lower = json!({"id": "job-7"});
        assert_eq!(resolve("inputs/{Id}.json", only_lower.as_object().unwrap()).unwrap(), "inputs/job-7.json");
        assert!(resolve("inputs/{name}.json", only_lower.as_object().unwrap()).is_err());
    }

    #[test]
    fn base64_strings_are_written_decoded() {
        assert_eq!(host_text(&json!("dGVzdA==")), "test");
        assert_eq!(host_text(&json!("{\"a\":1}")), "{\"a\":1}");
        assert_eq!(host_text(&json!({"a": 1})), "{\"a\":1}");
    }
}
