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
use crate::identity::TokenProvider;
use crate::telemetry::{ChatAnswer, ChatCall, ChatSpan, trace_headers};
pub use context::ContextWindow;
use pacing::{Pacer, Signal};
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
    /// Never send again (a 200 that could not be read was charged).
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

    pub fn tokens(&self) -> &TokenProvider {
        &self.tokens
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
        let server = (self.url.host_str().unwrap_or_default(), self.url.port_or_known_default());
        let messages: Vec<(&str, &str)> = request.messages.iter().map(|m| (m.role, m.content.as_str())).collect();
        let chat = ChatSpan::start(&ChatCall {
            deployment: &self.settings.deployment,
            server,
            max_tokens: request.max_completion_tokens,
            messages: &messages,
            credential: self.tokens.description(),
            log_content: self.log_content,
        });
        let result = self.complete_with_retries(request, deadline, &chat).instrument(chat.span().clone()).await;
        chat.finish(result.as_ref().map(|c| ChatAnswer {
            content: &c.content,
            model: &c.model,
            response_id: &c.response_id,
            input_tokens: c.usage.prompt_tokens,
            output_tokens: c.usage.completion_tokens,
            attempts: c.attempts,
            apim_request_id: c.apim_request_id.as_deref(),
        }));
        result
    }

    async fn complete_with_retries(
        &self,
        request: &ChatRequest,
        deadline: Instant,
        chat: &ChatSpan,
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
                let body = axum::body::Bytes::from(self.body(request, effort, budget)?);
                encoded = Some((effort, body, token_cost::estimated_tokens(prompt_chars, budget)));
            }
            let Some((_, body, cost)) = &encoded else { continue };
            let outcome = self.attempt(body, *cost, effort, deadline, chat, request).await;
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
        let plain = |error: ApiError| Failure { error, hint: None, next: Next::Usual };
        let queued = Instant::now();
        let _permit = self.pacer.acquire(cost, deadline).await.map_err(plain)?;
        if queued.elapsed() >= Duration::from_millis(1) {
            chat.record_queued(queued.elapsed());
        }
        let token = self.tokens.token().await.map_err(plain)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = self.settings.request_timeout.min(remaining);
        if timeout.is_zero() {
            return Err(plain(ApiError::UpstreamUnavailable {
                message: "the invocation's deadline passed before Azure OpenAI could be called".into(),
            }));
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.secret())).map_err(|_| {
            plain(ApiError::internal("the credential returned a token that is not a valid header value"))
        })?;
        auth.set_sensitive(true);
        let http = self.http.get().map_err(|e| plain(ApiError::internal(e)))?;
        let sent = http
            .post(self.url.clone())
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json")
            .headers(trace_headers())
            .timeout(timeout)
            .body(body.clone())
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_timeout() {
                    format!("timed out after {} ms", timeout.as_millis())
                } else {
                    format!("failed: {}", without_url(&e))
                };
                return Err(plain(ApiError::UpstreamUnavailable {
                    message: format!("the request to Azure OpenAI {what}"),
                }));
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        chat.record_answer(status, headers.get("apim-request-id").and_then(|v| v.to_str().ok()));
        let hint = server_hint(&headers);
        self.pacer.observe(Signal::from_headers(status, &headers, hint), cost);
        let body = response.bytes().await.map_err(|e| {
            plain(ApiError::UpstreamUnavailable {
                message: format!("reading Azure OpenAI's answer failed: {}", without_url(&e)),
            })
        })?;
        if status == 200 {
            // Charged either way: an answer that cannot be read is not asked for again.
            let mut completion = response::parse_completion(&body, &headers).map_err(|error| Failure {
                error,
                hint: None,
                next: Next::Stop,
            })?;
            self.reasoning.accepted(effort);
            completion.effort = effort;
            return Ok(completion);
        }
        let text = String::from_utf8_lossy(&body);
        if let Some(message) = response::context_length_exceeded(status, &text) {
            let estimated = request.messages.iter().map(|m| context::estimated_tokens(&m.content)).sum();
            self.context.learn(&message, estimated);
        }
        let error = response::upstream_error(&self.settings, status, &text, &token);
        if status == 400 {
            match self.reasoning.refused(effort, &text, &self.settings.deployment) {
                Refusal::Other => {}
                Refusal::Adjusted => return Err(Failure { error, hint: None, next: Next::EffortAdjusted }),
                Refusal::Misconfigured(error) => return Err(Failure { error, hint: None, next: Next::Stop }),
            }
        }
        let token_refused = status == 401 && !matches!(error, ApiError::UpstreamPermissionDenied { .. });
        if token_refused {
            self.tokens.invalidate(&token);
        }
        let next = if token_refused { Next::TokenRefused } else { Next::Usual };
        Err(Failure { error, hint, next })
    }
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
