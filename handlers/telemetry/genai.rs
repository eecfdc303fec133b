//! The span of one Azure OpenAI chat call (retries included), named and attributed after the
//! OpenTelemetry GenAI semantic conventions, plus the credential kind and the
//! `apim-request-id` that Azure support asks for.
//!
//! A call in a trace that is not exported (sampled out) gets no span at all: nobody would read
//! it, and at a high request rate its fields were most of what export cost. Its metrics are
//! recorded either way ([`super::metrics`]), and its events and log lines belong to the
//! invocation's span instead (stdout never shows the chat span itself).
//!
//! Content never enters the span: the prompt and the completion are recorded as lengths and
//! SHA-256 hashes. With `LOG_SENSITIVE_DATA=true` (the client's `log_content`) the text is
//! added as debug events, for debugging only.

use std::sync::Mutex;
use std::time::Instant;

use opentelemetry::KeyValue;
use sha2::{Digest, Sha256};
use tracing::Span;
use tracing::field::Empty;

use super::envelope::hex;
use super::metrics::{ChatMeasure, GenAiMetrics};
use super::recorder;
use crate::error::ApiError;

/// What the chat span records of a call: plain values, so that telemetry knows nothing of the
/// client (which depends on telemetry, not the other way round).
#[derive(Debug, Clone, Copy)]
pub struct ChatCall<'a> {
    pub deployment: &'a str,
    /// The endpoint's host and port.
    pub server: (&'a str, Option<u16>),
    /// `max_completion_tokens` sent.
    pub max_tokens: u32,
    /// The messages, as (role, content).
    pub messages: &'a [(&'a str, &'a str)],
    /// The credential's description (identifiers are dropped before recording).
    pub credential: &'a str,
    /// `LOG_SENSITIVE_DATA`: add prompt and completion text as debug events.
    pub log_content: bool,
}

/// What a successful call answered.
#[derive(Debug, Clone, Copy)]
pub struct ChatAnswer<'a> {
    pub content: &'a str,
    pub model: &'a str,
    pub response_id: &'a str,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub attempts: u32,
    pub apim_request_id: Option<&'a str>,
}

/// `gen_ai.provider.name` (and the older `gen_ai.system`) for Azure OpenAI.
pub const PROVIDER: &str = "azure.ai.openai";

/// Whether `meta` is the chat span (stdout leaves it out).
pub fn is_chat_span(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.target().starts_with("handler") && meta.fields().field("gen_ai.operation.name").is_some()
}

/// The chat span; [`ChatSpan::span`] instruments the call, [`ChatSpan::finish`] records the outcome.
pub struct ChatSpan {
    span: Span,
    log_content: bool,
    /// Whether this span is exported (see [`ChatSpan::start`]).
    exporting: bool,
    /// What the answers said so far (the call's attempts run one after another); the span gets
    /// the last answer's status and request id.
    answers: Mutex<Answers>,
}

#[derive(Default)]
struct Answers {
    last_status: Option<u16>,
    request_id: Option<String>,
    throttled: u32,
    first_chunk: Option<f64>,
    /// What the metrics need at the end, when metrics are exported; taken by the end.
    measure: Option<Measure>,
}

impl Answers {
    /// Records the call's metrics, when metrics are exported: `outcome` is the answer, or the
    /// error's code.
    fn record_metrics(&self, outcome: Result<&ChatAnswer<'_>, &str>) {
        let Some(measure) = &self.measure else { return };
        let answered = outcome.ok();
        GenAiMetrics::record(&ChatMeasure {
            request_model: &measure.deployment,
            response_model: answered.map(|a| a.model),
            server: (&measure.address, measure.port),
            error_type: outcome.err(),
            duration: measure.started.elapsed(),
            first_chunk: self.first_chunk,
            throttled: self.throttled,
            input_tokens: answered.map(|a| a.input_tokens),
            output_tokens: answered.map(|a| a.output_tokens),
        });
    }
}

/// The call's metric attributes known at its start, and the start.
struct Measure {
    started: Instant,
    deployment: String,
    address: String,
    port: Option<u16>,
}

impl ChatSpan {
    /// Opens the span as a child of the current one (the invocation's). `server` is the
    /// endpoint's host and port, parsed once by the client.
    pub fn start(call: &ChatCall<'_>) -> Self {
        let ChatCall { deployment, server, max_tokens, messages, credential, log_content } = *call;
        let measure = GenAiMetrics::installed().then(|| Measure {
            started: Instant::now(),
            deployment: deployment.to_owned(),
            address: server.0.to_owned(),
            port: server.1,
        });
        if recorder::unsampled(&Span::current()) {
            if log_content {
                // In the invocation's span, where the answer's event goes too.
                log_prompt(messages);
            }
            let answers = Mutex::new(Answers { measure, ..Answers::default() });
            return Self { span: Span::none(), log_content, exporting: false, answers };
        }
        let span = tracing::info_span!(
            "chat",
            otel.name = %format_args!("chat {deployment}"),
            otel.kind = "client",
            otel.status_code = Empty,
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = PROVIDER,
            gen_ai.system = PROVIDER,
            gen_ai.request.model = %deployment,
            gen_ai.request.max_tokens = i64::from(max_tokens),
            gen_ai.prompt.length = Empty,
            gen_ai.prompt.sha256 = Empty,
            server.address = server.0,
            server.port = server.1.map(i64::from),
            azure.credential = %credential_kind(credential),
            gen_ai.response.model = Empty,
            gen_ai.response.id = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            gen_ai.completion.length = Empty,
            gen_ai.completion.sha256 = Empty,
            http.response.status_code = Empty,
            azure.apim_request_id = Empty,
            azure.openai.attempts = Empty,
            azure.openai.throttled_answers = Empty,
            gen_ai.response.time_to_first_chunk = Empty,
            error.type = Empty,
        );
        // Lengths and hashes are for exported spans only (stdout leaves this span out): for a
        // trace that is not exported (no exporter, or sampled out), hashing the prompt and the
        // answer would be work nobody reads.
        let exporting = recorder::sampled(&span);
        if exporting {
            let prompt = Fingerprint::of(messages.iter().map(|(_, content)| *content));
            span.record("gen_ai.prompt.length", prompt.chars);
            span.record("gen_ai.prompt.sha256", prompt.sha256.as_str());
        }
        if log_content {
            span.in_scope(|| log_prompt(messages));
        }
        let answers = Mutex::new(Answers { measure, ..Answers::default() });
        Self { span, log_content, exporting, answers }
    }

    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Notes one HTTP answer. Span attributes are recorded once, in [`ChatSpan::finish`]
    /// (a second record of a key would export both values); each failed answer becomes an event.
    pub fn record_answer(&self, status: u16, apim_request_id: Option<&str>) {
        let request_id = apim_request_id.map(str::to_owned);
        if status != 200 {
            let mut attributes = vec![KeyValue::new("http.response.status_code", i64::from(status))];
            if let Some(id) = &request_id {
                attributes.push(KeyValue::new("azure.apim_request_id", id.clone()));
            }
            recorder::add_event(&self.span, "azure.openai.error_response", attributes);
        }
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers.last_status = Some(status);
        answers.throttled += u32::from(status == 429);
        answers.request_id = request_id;
    }

    /// A wait for a concurrency slot or the tokens-per-minute budget, as a span event only
    /// (under load it happens on most calls: too many for stdout).
    pub fn record_queued(&self, waited: std::time::Duration) {
        let waited_ms = i64::try_from(waited.as_millis()).unwrap_or(i64::MAX);
        recorder::add_event(&self.span, "azure.openai.pacing_wait", vec![KeyValue::new("wait_ms", waited_ms)]);
    }

    /// A streamed call's first content reached the caller, `elapsed` after the call began
    /// (waits and retries included: what the reader waited).
    pub fn record_time_to_first_chunk(&self, elapsed: std::time::Duration) {
        self.span.record("gen_ai.response.time_to_first_chunk", elapsed.as_secs_f64());
        self.answers.lock().unwrap_or_else(|e| e.into_inner()).first_chunk = Some(elapsed.as_secs_f64());
    }

    pub fn finish(&self, result: Result<ChatAnswer<'_>, &ApiError>) {
        let span = &self.span;
        // Entered (no await follows), so the events below belong to the chat span and stdout
        // shows them in the invocation's context.
        let _entered = span.enter();
        let answers = std::mem::take(&mut *self.answers.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(status) = answers.last_status {
            span.record("http.response.status_code", i64::from(status));
        }
        if let Some(id) = &answers.request_id {
            span.record("azure.apim_request_id", id.as_str());
        }
        if answers.throttled > 0 {
            span.record("azure.openai.throttled_answers", i64::from(answers.throttled));
        }
        answers.record_metrics(result.as_ref().map_err(|e| e.code()));
        match result {
            Ok(completion) => {
                if self.exporting {
                    let text = Fingerprint::of([completion.content]);
                    span.record("gen_ai.completion.length", text.chars);
                    span.record("gen_ai.completion.sha256", text.sha256.as_str());
                }
                span.record("gen_ai.response.model", completion.model);
                span.record("gen_ai.response.id", completion.response_id);
                span.record("gen_ai.usage.input_tokens", saturating_i64(completion.input_tokens));
                span.record("gen_ai.usage.output_tokens", saturating_i64(completion.output_tokens));
                span.record("azure.openai.attempts", i64::from(completion.attempts));
                // One line per call for stdout and `Logs`: what support and budgets need, no text.
                tracing::info!(
                    model = %completion.model,
                    input_tokens = completion.input_tokens,
                    output_tokens = completion.output_tokens,
                    attempts = completion.attempts,
                    apim_request_id = completion.apim_request_id.unwrap_or("-"),
                    "Azure OpenAI answered"
                );
                if self.log_content {
                    tracing::debug!(gen_ai.completion = %completion.content, "gen_ai.content.completion");
                }
            }
            Err(error) => {
                span.record("error.type", error.code());
                span.record("otel.status_code", "error");
                tracing::info!(code = error.code(), "Azure OpenAI call failed");
            }
        }
    }
}

/// `LOG_SENSITIVE_DATA`'s prompt event, in the current span.
fn log_prompt(messages: &[(&str, &str)]) {
    #[derive(serde::Serialize)]
    struct Message<'a> {
        role: &'a str,
        content: &'a str,
    }
    let messages: Vec<Message<'_>> = messages.iter().map(|&(role, content)| Message { role, content }).collect();
    let messages = serde_json::to_string(&messages).unwrap_or_default();
    tracing::debug!(gen_ai.prompt = %messages, "gen_ai.content.prompt");
}

impl Drop for ChatSpan {
    /// A call dropped before it finished (its caller went away) still counts in the duration
    /// metric, as `cancelled`.
    fn drop(&mut self) {
        // After `finish` the answers (and their measure) are gone: nothing is recorded twice.
        self.answers.get_mut().unwrap_or_else(|e| e.into_inner()).record_metrics(Err("cancelled"));
    }
}

/// Length and hash of a text: enough to correlate and compare calls without the text.
struct Fingerprint {
    chars: i64,
    sha256: String,
}

impl Fingerprint {
    /// The parts are hashed joined with `\n` (the messages' contents, in order).
    fn of<'a>(parts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut hasher = Sha256::new();
        let mut chars = 0usize;
        for (i, part) in parts.into_iter().enumerate() {
            if i > 0 {
                hasher.update(b"\n");
            }
            hasher.update(part.as_bytes());
            chars += part.chars().count();
        }
        // By table, not `write!` per byte (which showed in the export profile).
        let digest: [u8; 32] = hasher.finalize().into();
        let sha256 = hex::<32, 64>(digest).map(char::from).iter().collect();
        Self { chars: i64::try_from(chars).unwrap_or(i64::MAX), sha256 }
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The credential's kind, without identifiers: "ManagedIdentityCredential (user-assigned)".
fn credential_kind(description: &str) -> String {
    match description.split_once(", client id") {
        Some((kind, _)) => format!("{kind})"),
        None => description.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_hash_the_joined_text() {
        let one = Fingerprint::of(["a", "bc"]);
        assert_eq!(one.chars, 3);
        // printf 'a\nbc' | sha256sum
        assert_eq!(one.sha256, "b4c620724d95022be9765d6f660a36f90835acab2437b5e8cd71812940b29346");
        assert_ne!(one.sha256, Fingerprint::of(["ab", "c"]).sha256);
    }

    #[test]
    fn the_credential_kind_drops_identifiers() {
        assert_eq!(
            credential_kind("ManagedIdentityCredential (user-assigned, client id 0000)"),
            "ManagedIdentityCredential (user-assigned)"
        );
        assert_eq!(credential_kind("AzureCliCredential"), "AzureCliCredential");
    }
}
