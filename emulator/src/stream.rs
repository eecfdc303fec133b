//! Streamed chat completions (`"stream": true`) the way Azure OpenAI sends them: server-sent
//! events over a chunked body, one `data: {chunk}` per event, then `data: [DONE]`.
//!
//! The sequence (content-streaming and content-filter articles of the Azure OpenAI docs):
//! 1. the prompt annotation: empty `id`/`object`/`model`, `created: 0`, `prompt_filter_results`
//!    and an empty `choices`;
//! 2. the role chunk (`delta: {role: "assistant", content: ""}`, empty `content_filter_results`);
//! 3. content chunks of a word or so, each with its `content_filter_results` (the default
//!    filter), or, with the asynchronous filter, without them and followed every few chunks by
//!    an annotation chunk (empty `id`, `content_filter_offsets`);
//! 4. the finish chunk (`delta: {}`, the plain answer's `finish_reason`), or mid-stream a
//!    `finish_reason: "content_filter"` chunk naming the filtered category;
//! 5. with `stream_options.include_usage`, a usage chunk with empty `choices` (and `usage: null`
//!    on every chunk before it);
//! 6. `data: [DONE]`.
//!
//! A configurable delay separates chunks, a hold pauses streams after a number of content
//! chunks until released (tests order events by it, not by time), and a body dropped before its
//! end (the client closed the connection) is counted as abandoned.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::clock::unix_secs;
use crate::errors;
use crate::state::Shared;

/// How a stream ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// `finish_reason: "stop"`.
    Stop,
    /// `finish_reason: "content_filter"` after about half of the content.
    ContentFilter,
    /// The connection is cut after about half of the content, without `[DONE]`.
    Drop,
}

/// Everything one streamed answer needs, decided before the first byte.
pub(crate) struct Plan {
    pub content: String,
    pub model: String,
    /// The plain answer's usage (reported as is when the stream runs to its end).
    pub usage: Value,
    /// The plain answer's `finish_reason` (`stop`, `length`, or `content_filter` with no content).
    pub finish_reason: String,
    pub include_usage: bool,
    pub async_filter: bool,
    pub ending: Ending,
    pub chunk_delay: Duration,
    /// Pause after this many content chunks until `Emulator::release_streams`.
    pub hold_after: Option<u32>,
}

/// One step of the stream.
enum Step {
    Event(Value),
    /// The hold point (a no-op when no hold applies).
    Hold,
    Done,
    Cut,
}

/// The SSE response for `plan`; `headers` are added (request ids, rate-limit headers).
pub(crate) fn response(shared: Arc<Shared>, plan: Plan, headers: &[(&str, String)]) -> Response {
    let steps = steps(&plan);
    let release_at_start = shared.release_generation();
    {
        let mut inner = shared.lock();
        inner.stats.streams_started += 1;
    }
    let state = Progress {
        shared,
        steps: steps.into_iter(),
        release_at_start,
        plan_delay: plan.chunk_delay,
        hold: plan.hold_after.is_some(),
        sent_any: false,
        finished: false,
    };
    let body = futures_util::stream::unfold(state, |mut state| async move {
        let next = state.next().await?;
        Some((next, state))
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let map = response.headers_mut();
    map.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    map.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, must-revalidate"));
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (header::HeaderName::try_from(*name), HeaderValue::try_from(value.as_str())) {
            map.insert(n, v);
        }
    }
    response
}

/// The stream's state; dropped before its end means the client went away.
struct Progress {
    shared: Arc<Shared>,
    steps: std::vec::IntoIter<Step>,
    release_at_start: u64,
    plan_delay: Duration,
    hold: bool,
    sent_any: bool,
    finished: bool,
}

impl Progress {
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            let step = self.steps.next()?;
            if self.sent_any && !self.plan_delay.is_zero() && !matches!(step, Step::Hold) {
                tokio::time::sleep(self.plan_delay).await;
            }
            match step {
                Step::Event(chunk) => {
                    self.sent_any = true;
                    return Some(Ok(Bytes::from(format!("data: {chunk}\n\n"))));
                }
                Step::Hold => {
                    if self.hold {
                        self.shared.lock().stats.streams_holding += 1;
                        self.shared.wait_release(self.release_at_start).await;
                        self.shared.lock().stats.streams_holding -= 1;
                    }
                }
                Step::Done => {
                    self.finished = true;
                    self.shared.lock().stats.streams_completed += 1;
                    return Some(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
                }
                Step::Cut => {
                    // Ending the body cleanly would look like a complete answer to a client that
                    // reads to the end; an error aborts the chunked body, which is what a
                    // dropped connection looks like.
                    self.finished = true;
                    self.shared.lock().stats.streams_cut += 1;
                    return Some(Err(std::io::Error::other("the emulator cut the stream (stream_drop)")));
                }
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.finished {
            let mut inner = self.shared.lock();
            inner.stats.streams_abandoned += 1;
        }
    }
}

/// Splits `content` into word-sized pieces that concatenate back to it exactly.
pub(crate) fn pieces(content: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut previous_was_space = true;
    for (i, c) in content.char_indices() {
        let space = c.is_whitespace();
        if space && !previous_was_space && i > start {
            out.push(&content[start..i]);
            start = i;
        }
        previous_was_space = space;
    }
    if start < content.len() {
        out.push(&content[start..]);
    }
    out
}

fn steps(plan: &Plan) -> Vec<Step> {
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = unix_secs(SystemTime::now());
    let chunk = |choices: Value| {
        let mut chunk = json!({
            "choices": choices,
            "created": created,
            "id": id,
            "model": plan.model,
            "object": "chat.completion.chunk",
            "system_fingerprint": "fp_emulator",
        });
        if plan.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let annotation = |choices: Value| json!({"choices": choices, "created": 0, "id": "", "model": "", "object": ""});
    let mut steps = vec![Step::Event(json!({
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": errors::safe_results(true)}],
    }))];
    steps.push(Step::Event(chunk(json!([{
        "content_filter_results": {},
        "delta": {"content": "", "refusal": null, "role": "assistant"},
        "finish_reason": null,
        "index": 0,
        "logprobs": null,
    }]))));
    let pieces = pieces(&plan.content);
    let cut_at = match plan.ending {
        Ending::Stop => pieces.len(),
        Ending::ContentFilter | Ending::Drop => pieces.len().div_ceil(2).max(1).min(pieces.len()),
    };
    let hold_at = plan.hold_after.map(|n| n as usize);
    let mut sent_chars = 0usize;
    let mut checked = 0usize;
    for (i, piece) in pieces.iter().take(cut_at).enumerate() {
        if hold_at == Some(i) {
            steps.push(Step::Hold);
        }
        let mut choice = json!({"delta": {"content": piece}, "finish_reason": null, "index": 0, "logprobs": null});
        if !plan.async_filter {
            choice["content_filter_results"] = errors::safe_results(false);
        }
        steps.push(Step::Event(chunk(json!([choice]))));
        sent_chars += piece.chars().count();
        // The asynchronous filter annotates what it has checked every few chunks.
        if plan.async_filter && (i + 1) % 4 == 0 {
            steps.push(Step::Event(annotation(json!([async_annotation(checked, sent_chars, false)]))));
            checked = sent_chars;
        }
    }
    if hold_at.is_some_and(|at| at >= cut_at) {
        steps.push(Step::Hold);
    }
    match plan.ending {
        Ending::Stop => {
            if plan.async_filter && checked < sent_chars {
                steps.push(Step::Event(annotation(json!([async_annotation(checked, sent_chars, false)]))));
            }
            let results =
                if plan.finish_reason == "content_filter" { errors::completion_filtered_results() } else { json!({}) };
            steps.push(Step::Event(chunk(json!([{
                "content_filter_results": results,
                "delta": {},
                "finish_reason": plan.finish_reason,
                "index": 0,
                "logprobs": null,
            }]))));
        }
        Ending::ContentFilter => {
            if plan.async_filter {
                steps.push(Step::Event(annotation(json!([async_annotation(checked, sent_chars, true)]))));
            } else {
                steps.push(Step::Event(chunk(json!([{
                    "content_filter_results": errors::completion_filtered_results(),
                    "delta": {},
                    "finish_reason": "content_filter",
                    "index": 0,
                    "logprobs": null,
                }]))));
            }
        }
        Ending::Drop => {
            steps.push(Step::Cut);
            return steps;
        }
    }
    if plan.include_usage {
        let mut usage = chunk(json!([]));
        usage["usage"] = plan.usage.clone();
        if plan.ending == Ending::ContentFilter {
            // Billed: the reasoning and the text generated before the filter stopped it.
            let reasoning = plan.usage["completion_tokens_details"]["reasoning_tokens"].as_u64().unwrap_or(0);
            let completion = reasoning + (sent_chars.div_ceil(4) as u64).max(1);
            let prompt = plan.usage["prompt_tokens"].as_u64().unwrap_or(0);
            usage["usage"]["completion_tokens"] = json!(completion);
            usage["usage"]["total_tokens"] = json!(prompt + completion);
        }
        steps.push(Step::Event(usage));
    }
    steps.push(Step::Done);
    steps
}

/// An asynchronous-filter annotation for the text between `checked` and `sent` (characters).
fn async_annotation(checked: usize, sent: usize, filtered: bool) -> Value {
    let (results, finish_reason) = if filtered {
        (errors::completion_filtered_results(), json!("content_filter"))
    } else {
        (errors::safe_results(false), Value::Null)
    };
    json!({
        "index": 0,
        "finish_reason": finish_reason,
        "content_filter_results": results,
        "content_filter_offsets": {"check_offset": sent, "start_offset": checked, "end_offset": sent},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_concatenate_back() {
        for text in ["Hello world. Foo", "  leading", "a\n- b\n- c", "", "one"] {
            assert_eq!(pieces(text).concat(), text);
        }
        assert_eq!(pieces("Hello world. Foo"), vec!["Hello", " world.", " Foo"]);
    }
}
