//! Streamed chat completions: `"stream": true` with `stream_options.include_usage`, the answer
//! read as server-sent events as it arrives and each piece of text passed on at once.
//!
//! Azure OpenAI's stream (content-streaming and content-filter articles): a prompt annotation
//! (`prompt_filter_results`, empty `choices`), content chunks with `content_filter_results`
//! (default filter) or annotation chunks with `content_filter_offsets` after the text they
//! judge (asynchronous filter), a chunk with the `finish_reason` (`content_filter` when the
//! filter stops the answer mid-way), a usage chunk with empty `choices`, and `data: [DONE]`.
//! Everything in it is untrusted: events are size-bounded and every field is optional.
//!
//! Retries follow the plain call's rules until the first text has been passed on, never after:
//! the caller would see it twice.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::response::{WireUsage, filtered_categories};
use super::{
    ChatRequest, Completion, Effort, Failure, Next, OpenAiClient, Sent, Timeouts, Usage, finish_chat_span, without_url,
};
use crate::error::ApiError;
use crate::telemetry::ChatSpan;

/// Largest single event accepted from upstream (a chunk is a few hundred bytes).
const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Where a streamed call's text goes, and when the call began (for the time to first chunk).
pub(super) struct StreamTo<'a> {
    deltas: &'a mpsc::Sender<String>,
    chat: &'a ChatSpan,
    started: Instant,
}

/// The plain request body plus `stream` and `stream_options`.
pub(super) fn with_stream_fields(body: Vec<u8>) -> Result<Vec<u8>, ApiError> {
    let encoding = |e: serde_json::Error| ApiError::internal(format!("could not encode the request: {e}"));
    let mut body: Value = serde_json::from_slice(&body).map_err(encoding)?;
    if let Some(object) = body.as_object_mut() {
        object.insert("stream".into(), Value::Bool(true));
        object.insert("stream_options".into(), serde_json::json!({"include_usage": true}));
    }
    serde_json::to_vec(&body).map_err(encoding)
}

impl OpenAiClient {
    /// Sends `request` streamed: each piece of the answer's text goes to `deltas` as it arrives,
    /// and the whole answer is returned at the end, as [`OpenAiClient::complete`] returns it.
    /// A closed `deltas` (the caller went away) stops the call and releases the upstream request.
    pub async fn complete_streaming(
        &self,
        request: &ChatRequest,
        deadline: Instant,
        deltas: &mpsc::Sender<String>,
    ) -> Result<Completion, ApiError> {
        let chat = self.chat_span(request);
        let to = StreamTo { deltas, chat: &chat, started: Instant::now() };
        let result =
            self.complete_with_retries(request, deadline, &chat, Some(&to)).instrument(chat.span().clone()).await;
        finish_chat_span(&chat, &result);
        result
    }

    pub(super) async fn stream_attempt(
        &self,
        body: &axum::body::Bytes,
        cost: u64,
        effort: Option<Effort>,
        deadline: Instant,
        request: &ChatRequest,
        to: &StreamTo<'_>,
    ) -> Result<Completion, Failure> {
        // The status within the request timeout; the body then until the deadline, with no
        // gap between two chunks longer than the request timeout.
        let timeouts = Timeouts { headers: self.settings.request_timeout, total: Duration::MAX };
        let sent = self.send(body, cost, deadline, to.chat, timeouts).await?;
        if sent.response.status().as_u16() != 200 {
            return Err(self.refused(sent, effort, request).await);
        }
        self.reasoning.accepted(effort);
        let apim_request_id =
            sent.response.headers().get("apim-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let Sent { mut response, _permit, .. } = sent;
        let mut decoder = SseDecoder::default();
        let mut answer = Assembly::default();
        let mut committed = false;
        // Once text has reached the caller nothing is sent again (it would be read twice); before
        // that a broken stream is retried like any transient failure.
        let fail = |error: ApiError, committed: bool| Failure {
            error,
            hint: None,
            next: if committed { Next::Stop } else { Next::Usual },
        };
        while !answer.done {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let message = "the invocation's deadline passed while Azure OpenAI was still answering".to_owned();
                return Err(fail(ApiError::UpstreamUnavailable { message }, committed));
            }
            let idle = self.settings.request_timeout.min(remaining);
            let read = tokio::select! {
                biased;
                () = to.deltas.closed() => return Err(fail(caller_gone(), true)),
                read = tokio::time::timeout(idle, response.chunk()) => read,
            };
            let bytes = match read {
                Ok(Ok(Some(bytes))) => bytes,
                Ok(Ok(None)) => {
                    let message = "Azure OpenAI's answer stream ended before `data: [DONE]`".to_owned();
                    return Err(fail(ApiError::UpstreamUnavailable { message }, committed));
                }
                Ok(Err(e)) => {
                    let message = format!("reading Azure OpenAI's answer stream failed: {}", without_url(&e));
                    return Err(fail(ApiError::UpstreamUnavailable { message }, committed));
                }
                Err(_) => {
                    let message = format!("Azure OpenAI's answer stream sent nothing for {} ms", idle.as_millis());
                    return Err(fail(ApiError::UpstreamUnavailable { message }, committed));
                }
            };
            // An event that cannot be read was charged like an unreadable 200: never sent again.
            for data in decoder.feed(&bytes).map_err(|e| fail(e, true))? {
                let text = answer.apply(&data).map_err(|e| match e {
                    ApiError::UpstreamUnavailable { .. } | ApiError::Internal { .. } => fail(e, true),
                    other => fail(other, committed),
                })?;
                let Some(text) = text else { continue };
                if !committed {
                    to.chat.record_time_to_first_chunk(to.started.elapsed());
                    committed = true;
                }
                if to.deltas.send(text).await.is_err() {
                    return Err(fail(caller_gone(), true));
                }
            }
        }
        // Dropping the response here closes the connection even if upstream sent more after [DONE].
        let mut completion = answer.into_completion(apim_request_id).map_err(|e| fail(e, true))?;
        completion.effort = effort;
        Ok(completion)
    }
}

fn caller_gone() -> ApiError {
    ApiError::internal("the caller closed the connection; the answer stream was abandoned")
}

/// Server-sent events from bytes as they arrive: complete events' `data`, in order.
/// Lines end in `\n` or `\r\n`; comments and fields other than `data` are skipped.
#[derive(Default)]
pub(crate) struct SseDecoder {
    line: Vec<u8>,
    data: String,
    has_data: bool,
}

impl SseDecoder {
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, ApiError> {
        let mut events = Vec::new();
        for &byte in bytes {
            if byte != b'\n' {
                self.line.push(byte);
                if self.line.len() + self.data.len() > MAX_EVENT_BYTES {
                    return Err(ApiError::UpstreamUnavailable {
                        message: format!(
                            "Azure OpenAI's answer stream sent an event larger than {MAX_EVENT_BYTES} bytes"
                        ),
                    });
                }
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                if self.has_data {
                    events.push(std::mem::take(&mut self.data));
                    self.has_data = false;
                }
                continue;
            }
            let line = String::from_utf8(line).map_err(|_| ApiError::UpstreamUnavailable {
                message: "Azure OpenAI's answer stream is not UTF-8".into(),
            })?;
            let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
            if field == "data" {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
                self.has_data = true;
            }
        }
        Ok(events)
    }
}

/// The answer put together from its chunks.
#[derive(Default)]
pub(crate) struct Assembly {
    content: String,
    refusal: String,
    model: String,
    id: String,
    usage: Option<Usage>,
    finish_reason: Option<String>,
    pub(crate) done: bool,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    prompt_filter_results: Option<Vec<PromptFilter>>,
    /// The older name of `prompt_filter_results` (2023-era API versions).
    #[serde(default)]
    prompt_annotations: Option<Vec<PromptFilter>>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct PromptFilter {
    #[serde(default)]
    content_filter_results: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
    /// Per content chunk (default filter) or per annotation chunk (asynchronous filter, with
    /// `content_filter_offsets`); either way a `filtered: true` stops the answer.
    #[serde(default)]
    content_filter_results: Option<Value>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

impl Assembly {
    /// Takes one event's data; returns the text to pass on, if it carries any.
    pub(crate) fn apply(&mut self, data: &str) -> Result<Option<String>, ApiError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let chunk: Chunk = serde_json::from_str(data).map_err(|e| ApiError::UpstreamUnavailable {
            message: format!("Azure OpenAI's answer stream sent an event that is not a chunk ({e})"),
        })?;
        if let Some(error) = chunk.error {
            return Err(mid_stream_error(&error));
        }
        let prompt = chunk.prompt_filter_results.or(chunk.prompt_annotations).unwrap_or_default();
        if let Some(results) = prompt.iter().filter_map(|p| p.content_filter_results.as_ref()).find(|r| filtered(r)) {
            return Err(ApiError::ContentFiltered {
                message: format!(
                    "Azure OpenAI's content filter blocked the input ({}). This is not retried.",
                    categories(results)
                ),
            });
        }
        if let Some(id) = chunk.id.filter(|id| !id.is_empty()) {
            self.id = id;
        }
        if let Some(model) = chunk.model.filter(|m| !m.is_empty()) {
            self.model = model;
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(Usage::from(usage));
        }
        let mut text = None;
        // One answer is asked for (`n` is 1): other indexes are not ours.
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            let results = choice.content_filter_results.as_ref();
            if choice.finish_reason.as_deref() == Some("content_filter") || results.is_some_and(filtered) {
                let details = results.map(categories).unwrap_or_else(|| "no details".into());
                return Err(ApiError::ContentFiltered {
                    message: format!(
                        "Azure OpenAI's content filter stopped the model's answer part-way ({details}). This is not retried."
                    ),
                });
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
            if let Some(delta) = choice.delta {
                if let Some(refusal) = delta.refusal {
                    self.refusal.push_str(&refusal);
                }
                if let Some(content) = delta.content.filter(|c| !c.is_empty()) {
                    self.content.push_str(&content);
                    text = Some(content);
                }
            }
        }
        Ok(text)
    }

    /// The finished answer, checked as a plain answer is.
    pub(crate) fn into_completion(self, apim_request_id: Option<String>) -> Result<Completion, ApiError> {
        if !self.refusal.is_empty() {
            // The refusal is model output: like any completion, it stays out of errors and logs.
            return Err(ApiError::ContentFiltered {
                message: format!(
                    "the model refused to answer (a refusal of {} characters). This is not retried.",
                    self.refusal.chars().count()
                ),
            });
        }
        if self.finish_reason.is_none() {
            return Err(ApiError::UpstreamUnavailable {
                message: "Azure OpenAI's answer stream ended without a finish reason".into(),
            });
        }
        let usage = self.usage.unwrap_or_else(|| {
            tracing::warn!("Azure OpenAI's answer stream had no usage chunk (stream_options.include_usage needs api-version 2024-09-01-preview or later); usage reported as 0");
            Usage::default()
        });
        Ok(Completion {
            content: self.content,
            model: self.model,
            usage,
            response_id: self.id,
            apim_request_id,
            attempts: 1,
            finish_reason: self.finish_reason,
            effort: None,
        })
    }
}

fn filtered(results: &Value) -> bool {
    results.as_object().is_some_and(|map| map.values().any(|v| v["filtered"].as_bool() == Some(true)))
}

fn categories(results: &Value) -> String {
    filtered_categories(&serde_json::json!({ "content_filter_results": results }))
}

/// An `error` event inside a 200 stream (the service failed after it began answering).
fn mid_stream_error(error: &Value) -> ApiError {
    let code = error["code"].as_str().unwrap_or_default();
    let message: String = error["message"].as_str().unwrap_or_default().chars().take(300).collect();
    if code == "content_filter" {
        return ApiError::ContentFiltered {
            message: format!("Azure OpenAI's content filter stopped the answer ({message}). This is not retried."),
        };
    }
    ApiError::UpstreamUnavailable { message: format!("Azure OpenAI failed mid-answer ({code}: {message})") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_and_line_endings() {
        let mut decoder = SseDecoder::default();
        assert!(decoder.feed(b"data: {\"a\":").unwrap().is_empty());
        assert_eq!(decoder.feed(b"1}\r\n\r\n: comment\n\ndata: x\ndata: y\n").unwrap(), vec!["{\"a\":1}"]);
        assert_eq!(decoder.feed(b"\nevent: ignored\ndata:[DONE]\n\n").unwrap(), vec!["x\ny", "[DONE]"]);
    }

    #[test]
    fn an_oversized_event_is_refused() {
        let mut decoder = SseDecoder::default();
        let err = decoder.feed(&vec![b'a'; MAX_EVENT_BYTES + 1]).unwrap_err();
        assert_eq!(err.code(), "upstream_unavailable");
    }

    #[test]
    fn the_service_sequence_assembles() {
        let mut answer = Assembly::default();
        let events = [
            r#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}]}"#,
            r#"{"choices":[{"content_filter_results":{},"delta":{"content":"","refusal":null,"role":"assistant"},"finish_reason":null,"index":0}],"id":"chatcmpl-1","model":"gpt-4o-mini-2024-07-18","object":"chat.completion.chunk","usage":null}"#,
            r#"{"choices":[{"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}},"delta":{"content":"Hello"},"finish_reason":null,"index":0}],"id":"chatcmpl-1","model":"gpt-4o-mini-2024-07-18"}"#,
            r#"{"choices":[{"index":0,"finish_reason":null,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}},"content_filter_offsets":{"check_offset":5,"start_offset":0,"end_offset":5}}],"created":0,"id":"","model":"","object":""}"#,
            r#"{"choices":[{"delta":{"content":" world"},"finish_reason":null,"index":0}],"id":"chatcmpl-1","model":"gpt-4o-mini-2024-07-18"}"#,
            r#"{"choices":[{"content_filter_results":{},"delta":{},"finish_reason":"stop","index":0}],"id":"chatcmpl-1"}"#,
            r#"{"choices":[],"id":"chatcmpl-1","model":"gpt-4o-mini-2024-07-18","usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#,
            "[DONE]",
        ];
        let texts: Vec<String> = events.iter().filter_map(|e| answer.apply(e).unwrap()).collect();
        assert_eq!(texts, vec!["Hello", " world"]);
        assert!(answer.done);
        let completion = answer.into_completion(Some("apim".into())).unwrap();
        assert_eq!(completion.content, "Hello world");
        assert_eq!(completion.model, "gpt-4o-mini-2024-07-18");
        assert_eq!(completion.response_id, "chatcmpl-1");
        assert_eq!(
            completion.usage,
            Usage { prompt_tokens: 9, completion_tokens: 2, total_tokens: 11, reasoning_tokens: None }
        );
        assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn filters_refusals_and_errors_stop_the_answer() {
        let mid_stream = r#"{"choices":[{"index":0,"finish_reason":"content_filter","delta":{},"content_filter_results":{"violence":{"filtered":true,"severity":"medium"}}}]}"#;
        let err = Assembly::default().apply(mid_stream).unwrap_err();
        assert_eq!(err.code(), "content_filtered");
        assert!(err.to_string().contains("violence (medium)"), "{err}");
        let annotation = r#"{"choices":[{"index":0,"finish_reason":null,"content_filter_results":{"protected_material_text":{"detected":true,"filtered":true}},"content_filter_offsets":{"check_offset":65,"start_offset":65,"end_offset":1056}}],"id":""}"#;
        assert_eq!(Assembly::default().apply(annotation).unwrap_err().code(), "content_filtered");
        let error = r#"{"error":{"code":"server_error","message":"The server had an error"}}"#;
        assert_eq!(Assembly::default().apply(error).unwrap_err().code(), "upstream_unavailable");
        assert_eq!(Assembly::default().apply("not json").unwrap_err().code(), "upstream_unavailable");

        let mut refused = Assembly::default();
        refused.apply(r#"{"choices":[{"index":0,"delta":{"refusal":"I can't"},"finish_reason":null}]}"#).unwrap();
        refused.apply(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#).unwrap();
        let err = refused.into_completion(None).unwrap_err();
        assert_eq!(err.code(), "content_filtered");
        assert!(!err.to_string().contains("I can't"));

        let unfinished = Assembly::default();
        assert_eq!(unfinished.into_completion(None).unwrap_err().code(), "upstream_unavailable");
    }
}
