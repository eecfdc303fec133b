//! The Azure OpenAI chat-completions client: reqwest (rustls), `Authorization: Bearer` only,
//! a per-request timeout, retries that honour the server's waits within the caller's deadline,
//! and every upstream error mapped to one `api.md` code with a message that says what to fix.
//! Reasoning models get the lowest `reasoning_effort` they accept and room for their hidden
//! reasoning tokens (`reasoning.rs`); a 200 is never sent again (it was charged).

pub mod context;
pub mod pacing;
mod reasoning;
mod response;
pub mod retry;
mod stream;

pub use reasoning::{Effort, Learned};
use reasoning::{ReasoningPolicy, Refusal};

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;

use crate::config::{ApiRoute, OpenAiSettings, Settings};
use crate::error::ApiError;
use crate::http_client::SharedHttpClient;
use crate::identity::{BearerToken, TokenProvider};
use crate::telemetry::{ChatAnswer, ChatCall, ChatSpan, trace_headers};
pub use context::ContextWindow;
use pacing::{Pacer, Permit, Signal};
use retry::{MAX_ATTEMPTS, server_hint, wait_before_retry};

/// One chat completion to ask for.
#[derive(Debug, Clone, Serialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    /// The visible answer's budget. The client sends it plus room for a reasoning model's
    /// hidden reasoning tokens ([`Effort::reserve`]).
    #[serde(skip)]
    pub max_completion_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: &'static str,
    pub content: String,
}

/// What came back, trimmed to what the jobs and telemetry use.
#[derive(Debug, Clone)]
pub struct Completion {
    pub content: String,
    pub model: String,
    pub usage: Usage,
    pub response_id: String,
    pub apim_request_id: Option<String>,
    pub attempts: u32,
    /// `stop`, `length` (cut off by the token budget), ...; `None` when the service sent none.
    pub finish_reason: Option<String>,
    /// The `reasoning_effort` the call was sent with.
    pub effort: Option<Effort>,
}

impl Completion {
    /// Cut off by `max_completion_tokens` (hidden reasoning included).
    pub fn cut_off(&self) -> bool {
        self.finish_reason.as_deref() == Some("length")
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Hidden reasoning tokens (inside `completion_tokens`), when the service reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    /// The usage of two calls (both are charged).
    pub fn plus(self, other: Usage) -> Usage {
        let reasoning_tokens = match (self.reasoning_tokens, other.reasoning_tokens) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
        };
        Usage {
            prompt_tokens: self.prompt_tokens.saturating_add(other.prompt_tokens),
            completion_tokens: self.completion_tokens.saturating_add(other.completion_tokens),
            total_tokens: self.total_tokens.saturating_add(other.total_tokens),
            reasoning_tokens,
        }
    }
}

impl Usage {
    /// Adds another call's usage (a long document is many calls; `usage` sums them all).
    pub fn add(&mut self, other: &Usage) {
        *self = self.plus(*other);
    }
}

pub struct OpenAiClient {
    http: SharedHttpClient,
    /// Parsed once: reqwest would parse a string on every attempt.
    url: reqwest::Url,
    settings: OpenAiSettings,
    tokens: Arc<TokenProvider>,
    pacer: Pacer,
    /// The deployment's context window, as set or learned (shared by every request).
    context: ContextWindow,
    /// `LOG_SENSITIVE_DATA`: add prompt and completion text to the chat span as debug events.
    log_content: bool,
    reasoning: ReasoningPolicy,
}

/// A failed attempt: the error, the server's retry hint, and what to do next.
struct Failure {
    error: ApiError,
    hint: Option<Duration>,
    next: Next,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Retry if the error is transient.
    Usual,
    /// The token was refused: fetch a new one and send again.
    TokenRefused,
    /// The `reasoning_effort` to send was corrected: send again at once.
    EffortAdjusted,
    /// Never send again (a 200 that could not be read was charged; no token could be had; the
    /// pacer refused the call because its budget comes back only after the deadline).
    Stop,
}

impl OpenAiClient {
    /// The client the settings describe: their credential (see [`TokenProvider::from_settings`])
    /// and one shared HTTP client for both, built on first use. Used by the server and `doctor`.
    pub fn from_settings(settings: &Settings) -> Result<Self, ApiError> {
        let http = SharedHttpClient::default();
        let tokens = TokenProvider::from_settings(&settings.identity, http.clone())?;
        Ok(Self::new(settings.openai.clone(), Arc::new(tokens), http)?.with_content_logging(settings.log.sensitive))
    }

    pub fn new(settings: OpenAiSettings, tokens: Arc<TokenProvider>, http: SharedHttpClient) -> Result<Self, ApiError> {
        let pacer = Pacer::new(&settings);
        let url = reqwest::Url::parse(&settings.chat_completions_url())
            .map_err(|e| ApiError::internal(format!("the chat completions URL does not parse: {e}")))?;
        let reasoning = ReasoningPolicy::new(settings.reasoning_effort);
        let context = ContextWindow::new(settings.context_tokens);
        Ok(Self { http, url, settings, tokens, pacer, context, log_content: false, reasoning })
    }

    /// Whether prompt and completion text go into telemetry (debugging only; off by default).
    pub fn with_content_logging(mut self, on: bool) -> Self {
        self.log_content = on;
        self
    }

    pub fn deployment(&self) -> &str {
        &self.settings.deployment
    }

    /// The token provider, shareable with other clients of the same credential (an exporter asks
    /// it for `token_for(MONITOR_SCOPE, ..)`; each scope has its own cache).
    pub fn tokens(&self) -> &Arc<TokenProvider> {
        &self.tokens
    }

    /// The HTTP client, for other callers sharing its pool (Application Insights export).
    pub fn http(&self) -> SharedHttpClient {
        self.http.clone()
    }

    /// What the process has learned about the deployment's model and its `reasoning_effort`.
    pub fn reasoning(&self) -> Learned {
        self.reasoning.learned()
    }

    /// Completion tokens each call adds to its answer's budget for hidden reasoning now
    /// ([`Effort::reserve`] of the effort in use), e.g. for context-window arithmetic.
    pub fn reasoning_reserve(&self) -> u32 {
        self.reasoning.effort_to_send().map_or(0, Effort::reserve)
    }

    /// Whether `AOAI_REASONING_EFFORT` fixes the effort (rather than the process finding it).
    pub fn reasoning_effort_configured(&self) -> bool {
        self.reasoning.configured().is_some()
    }

    pub fn settings(&self) -> &OpenAiSettings {
        &self.settings
    }

    /// The deployment's context window (`AOAI_CONTEXT_TOKENS`, else learned from refusals).
    pub fn context(&self) -> &ContextWindow {
        &self.context
    }

    /// Sends `request`, retrying transient failures until `deadline`, inside one chat span.
    pub async fn complete(&self, request: &ChatRequest, deadline: Instant) -> Result<Completion, ApiError> {
        let chat = self.chat_span(request);
        let result = self.complete_with_retries(request, deadline, &chat, None).instrument(chat.span().clone()).await;
        finish_chat_span(&chat, &result);
        result
    }

    /// The chat span of one call (its attempts included).
    fn chat_span(&self, request: &ChatRequest) -> ChatSpan {
        let server = (self.url.host_str().unwrap_or_default(), self.url.port_or_known_default());
        let messages: Vec<(&str, &str)> = request.messages.iter().map(|m| (m.role, m.content.as_str())).collect();
        ChatSpan::start(&ChatCall {
            deployment: &self.settings.deployment,
            server,
            max_tokens: request.max_completion_tokens,
            messages: &messages,
            credential: self.tokens.description(),
            log_content: self.log_content,
        })
    }

    /// The attempts of one call; with `stream`, each attempt streams (see `stream.rs`).
    async fn complete_with_retries(
        &self,
        request: &ChatRequest,
        deadline: Instant,
        chat: &ChatSpan,
        stream: Option<&stream::StreamTo<'_>>,
    ) -> Result<Completion, ApiError> {
        let prompt_chars = request.messages.iter().map(|m| m.content.chars().count()).sum();
        // Encoded once per effort; each attempt at that effort shares the same buffer.
        let mut encoded: Option<(Option<Effort>, axum::body::Bytes, u64)> = None;
        let mut refreshed_token = false;
        let mut adjustments = 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // An unknown deployment is probed by one call at a time, so that at most one call
            // of the process meets a 400 while the effort is found.
            let probe = if self.reasoning.learned() == Learned::Unknown {
                match tokio::time::timeout_at(deadline.into(), self.reasoning.probe.lock()).await {
                    Ok(guard) => Some(guard),
                    Err(_) => {
                        return Err(ApiError::UpstreamUnavailable {
                            message: "the invocation's deadline passed while the first call to the deployment was still finding its reasoning effort".into(),
                        });
                    }
                }
            } else {
                None
            };
            let effort = self.reasoning.effort_to_send();
            if encoded.as_ref().is_none_or(|(e, _, _)| *e != effort) {
                let budget = request.max_completion_tokens.saturating_add(effort.map_or(0, Effort::reserve));
                let mut body = self.body(request, effort, budget)?;
                if stream.is_some() {
                    body = stream::with_stream_fields(body)?;
                }
                let body = axum::body::Bytes::from(body);
                encoded = Some((effort, body, token_cost::estimated_tokens(prompt_chars, budget)));
            }
            let Some((_, body, cost)) = &encoded else { continue };
            let outcome = match stream {
                None => self.attempt(body, *cost, effort, deadline, chat, request).await,
                Some(to) => self.stream_attempt(body, *cost, effort, deadline, request, to).await,
            };
            drop(probe);
            let failure = match outcome {
                Ok(mut completion) => {
                    completion.attempts = attempt;
                    return Ok(completion);
                }
                Err(failure) => failure,
            };
            match failure.next {
                Next::TokenRefused if !refreshed_token => {
                    // A token the resource refused (revoked, clock skew): fetch a new one once.
                    refreshed_token = true;
                    continue;
                }
                Next::EffortAdjusted if adjustments < 2 => {
                    // Not a retry: the same call, sent the way the deployment accepts.
                    adjustments += 1;
                    attempt -= 1;
                    continue;
                }
                Next::Stop => return Err(failure.error),
                _ => {}
            }
            let retryable =
                matches!(failure.error, ApiError::UpstreamThrottled { .. } | ApiError::UpstreamUnavailable { .. });
            if !retryable || attempt >= MAX_ATTEMPTS {
                return Err(match failure.hint {
                    Some(hint) => with_retry_after(failure.error, hint),
                    None => failure.error,
                });
            }
            let wait = wait_before_retry(attempt, failure.hint, self.settings.max_retry_wait);
            if Instant::now() + wait >= deadline {
                tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, "retry would pass the deadline; giving up");
                return Err(with_retry_after(failure.error, failure.hint.unwrap_or(wait)));
            }
            tracing::info!(
                attempt,
                wait_ms = wait.as_millis() as u64,
                code = failure.error.code(),
                "retrying Azure OpenAI"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// The request body in one pass: the v1 route also names the deployment as `model`; the
    /// budget includes room for reasoning; `reasoning_effort` only when there is one to send.
    fn body(&self, request: &ChatRequest, effort: Option<Effort>, budget: u32) -> Result<Vec<u8>, ApiError> {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            model: Option<&'a str>,
            max_completion_tokens: u32,
            #[serde(skip_serializing_if = "Option::is_none")]
            reasoning_effort: Option<&'static str>,
            #[serde(flatten)]
            request: &'a ChatRequest,
        }
        let model = match self.settings.route {
            ApiRoute::V1 => Some(self.settings.deployment.as_str()),
            ApiRoute::Dated { .. } => None,
        };
        let wire = Wire { model, max_completion_tokens: budget, reasoning_effort: effort.map(Effort::as_str), request };
        serde_json::to_vec(&wire).map_err(|e| ApiError::internal(format!("could not encode the request: {e}")))
    }

    async fn attempt(
        &self,
        body: &axum::body::Bytes,
        cost: u64,
        effort: Option<Effort>,
        deadline: Instant,
        chat: &ChatSpan,
        request: &ChatRequest,
    ) -> Result<Completion, Failure> {
        let sent = self.send(body, cost, deadline, chat, Timeouts::whole_answer(&self.settings)).await?;
        if sent.response.status().as_u16() != 200 {
            return Err(self.refused(sent, effort, request).await);
        }
        let headers = sent.response.headers().clone();
        let body = sent.response.bytes().await.map_err(|e| {
            plain(ApiError::UpstreamUnavailable {
                message: format!("reading Azure OpenAI's answer failed: {}", without_url(&e)),
            })
        })?;
        // Charged either way: an answer that cannot be read is not asked for again.
        let mut completion = response::parse_completion(&body, &headers).map_err(|error| Failure {
            error,
            hint: None,
            next: Next::Stop,
        })?;
        self.reasoning.accepted(effort);
        completion.effort = effort;
        Ok(completion)
    }

    /// One HTTP exchange up to the answer's status and headers: a pacing slot and budget, a
    /// token, the request. The slot is held by the returned [`Sent`] until it is dropped.
    async fn send(
        &self,
        body: &axum::body::Bytes,
        cost: u64,
        deadline: Instant,
        chat: &ChatSpan,
        timeouts: Timeouts,
    ) -> Result<Sent, Failure> {
        // No token: the token cache already waited (within `deadline`) and backs off between
        // fetches, so retrying here would only wait again.
        let no_token = |error: ApiError| Failure { error, hint: None, next: Next::Stop };
        // A call that cannot be sent must not hold a pacer slot (nor the first-answer probe):
        // make sure a token can be had first, then take the current one after the pacer's wait
        // (a cache hit), so a token that aged while paced is never sent.
        self.tokens.token(deadline).await.map_err(no_token)?;
        let queued = Instant::now();
        // A pacer refusal already waited as long as the deadline allows: never retried.
        let permit = self.pacer.acquire(cost, deadline).await.map_err(|error| Failure {
            error,
            hint: None,
            next: Next::Stop,
        })?;
        if queued.elapsed() >= Duration::from_millis(1) {
            chat.record_queued(queued.elapsed());
        }
        let token = self.tokens.token(deadline).await.map_err(no_token)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let total = timeouts.total.min(remaining);
        let headers_within = timeouts.headers.min(remaining);
        if total.is_zero() || headers_within.is_zero() {
            return Err(plain(ApiError::UpstreamUnavailable {
                message: "the invocation's deadline passed before Azure OpenAI could be called".into(),
            }));
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.secret())).map_err(|_| {
            plain(ApiError::internal("the credential returned a token that is not a valid header value"))
        })?;
        auth.set_sensitive(true);
        let http = self.http.get().map_err(|e| plain(ApiError::internal(e)))?;
        let sending = http
            .post(self.url.clone())
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json")
            .headers(trace_headers())
            .timeout(total)
            .body(body.clone())
            .send();
        let sent = match tokio::time::timeout(headers_within, sending).await {
            Ok(sent) => sent,
            Err(_) => {
                return Err(plain(ApiError::UpstreamUnavailable {
                    message: format!("the request to Azure OpenAI timed out after {} ms", headers_within.as_millis()),
                }));
            }
        };
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_timeout() {
                    format!("timed out after {} ms", total.as_millis())
                } else {
                    format!("failed: {}", without_url(&e))
                };
                return Err(plain(ApiError::UpstreamUnavailable {
                    message: format!("the request to Azure OpenAI {what}"),
                }));
            }
        };
        let status = response.status().as_u16();
        chat.record_answer(status, response.headers().get("apim-request-id").and_then(|v| v.to_str().ok()));
        // Every answer (a stream's status and headers included) steers the adaptive pacer. Its
        // hold after a 429 honours the hint no longer than any other wait
        // (`AOAI_MAX_RETRY_WAIT_SECONDS`): a hostile `retry-after: 1e300` must not stall every call.
        let hold = server_hint(response.headers()).map(|wait| wait.min(self.settings.max_retry_wait));
        self.pacer.observe(Signal::from_headers(status, response.headers(), hold), cost, &permit);
        Ok(Sent { response, token, _permit: permit })
    }

    /// A non-200 answer as the failure it means: its body read, a context-window refusal or a
    /// refused `reasoning_effort` learned, a refused token invalidated.
    async fn refused(&self, sent: Sent, effort: Option<Effort>, request: &ChatRequest) -> Failure {
        let status = sent.response.status().as_u16();
        let headers = sent.response.headers().clone();
        let text = match sent.response.bytes().await {
            Ok(body) => String::from_utf8_lossy(&body).into_owned(),
            Err(e) => {
                return plain(ApiError::UpstreamUnavailable {
                    message: format!("reading Azure OpenAI's answer failed: {}", without_url(&e)),
                });
            }
        };
        if let Some(message) = response::context_length_exceeded(status, &text) {
            let estimated = request.messages.iter().map(|m| context::estimated_tokens(&m.content)).sum();
            self.context.learn(&message, estimated);
        }
        let error = response::upstream_error(&self.settings, status, &text, &sent.token);
        if status == 400 {
            match self.reasoning.refused(effort, &text, &self.settings.deployment) {
                Refusal::Other => {}
                Refusal::Adjusted => return Failure { error, hint: None, next: Next::EffortAdjusted },
                Refusal::Misconfigured(error) => return Failure { error, hint: None, next: Next::Stop },
            }
        }
        let token_refused = status == 401 && !matches!(error, ApiError::UpstreamPermissionDenied { .. });
        if token_refused {
            self.tokens.invalidate(&sent.token);
        }
        let next = if token_refused { Next::TokenRefused } else { Next::Usual };
        Failure { error, hint: server_hint(&headers), next }
    }
}

fn finish_chat_span(chat: &ChatSpan, result: &Result<Completion, ApiError>) {
    chat.finish(result.as_ref().map(|c| ChatAnswer {
        content: &c.content,
        model: &c.model,
        response_id: &c.response_id,
        input_tokens: c.usage.prompt_tokens,
        output_tokens: c.usage.completion_tokens,
        attempts: c.attempts,
        apim_request_id: c.apim_request_id.as_deref(),
    }));
}

/// An answer whose status and headers have arrived; holds the pacing slot.
struct Sent {
    response: reqwest::Response,
    token: BearerToken,
    _permit: Permit,
}

/// How long one exchange may take.
#[derive(Clone, Copy)]
struct Timeouts {
    /// Until the status and headers.
    headers: Duration,
    /// Until the last byte of the body.
    total: Duration,
}

impl Timeouts {
    /// A plain answer: `AOAI_REQUEST_TIMEOUT_SECONDS` for the whole exchange.
    fn whole_answer(settings: &OpenAiSettings) -> Self {
        Self { headers: settings.request_timeout, total: settings.request_timeout }
    }
}

fn plain(error: ApiError) -> Failure {
    Failure { error, hint: None, next: Next::Usual }
}

fn with_retry_after(error: ApiError, wait: Duration) -> ApiError {
    match error {
        ApiError::UpstreamThrottled { message, .. } => ApiError::UpstreamThrottled { message, retry_after: Some(wait) },
        other => other,
    }
}

/// What went wrong with a request, without its URL (reqwest's own `Display` prints it).
fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request error"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}
