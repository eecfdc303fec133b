//! The Azure OpenAI chat-completions client: reqwest (rustls), `Authorization: Bearer` only,
//! a per-request timeout, retries that honour the server's waits within the caller's deadline,
//! and every upstream error mapped to one `api.md` code with a message that says what to fix.

pub mod context;
pub mod pacing;
mod response;
pub mod retry;
mod stream;

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
use pacing::{Pacer, Permit};
use retry::{MAX_ATTEMPTS, server_hint, wait_before_retry};

/// One chat completion to ask for.
#[derive(Debug, Clone, Serialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
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
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    /// Adds another call's usage (a long document is many calls; `usage` sums them all).
    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
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
}

/// A failed attempt: the error, the server's retry hint, whether the token was refused, and
/// whether part of the answer had already been passed on (then it is never retried).
struct Failure {
    error: ApiError,
    hint: Option<Duration>,
    token_refused: bool,
    committed: bool,
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
        let pacer = Pacer::new(settings.max_concurrency, settings.tokens_per_minute);
        let url = reqwest::Url::parse(&settings.chat_completions_url())
            .map_err(|e| ApiError::internal(format!("the chat completions URL does not parse: {e}")))?;
        let context = ContextWindow::new(settings.context_tokens);
        Ok(Self { http, url, settings, tokens, pacer, context, log_content: false })
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

    /// The deployment's context window (`AOAI_CONTEXT_TOKENS`, else learned from refusals).
    pub fn context(&self) -> &ContextWindow {
        &self.context
    }

    /// Sends `request`, retrying transient failures until `deadline`, inside one chat span.
    pub async fn complete(&self, request: &ChatRequest, deadline: Instant) -> Result<Completion, ApiError> {
        let chat = self.chat_span(request);
        let result = self.complete_with_retries(request, deadline, &chat).instrument(chat.span().clone()).await;
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

    async fn complete_with_retries(
        &self,
        request: &ChatRequest,
        deadline: Instant,
        chat: &ChatSpan,
    ) -> Result<Completion, ApiError> {
        // Encoded once; each attempt shares the same buffer.
        let body = axum::body::Bytes::from(self.body(request)?);
        let cost = request_cost(request);
        self.with_retries(deadline, || self.attempt(&body, cost, deadline, chat, request)).await
    }

    /// Runs `attempt` until it succeeds, fails for good, or the next wait would pass `deadline`.
    async fn with_retries<F, Fut>(&self, deadline: Instant, mut attempt: F) -> Result<Completion, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Completion, Failure>>,
    {
        let mut refreshed_token = false;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let failure = match attempt().await {
                Ok(mut completion) => {
                    completion.attempts = attempts;
                    return Ok(completion);
                }
                Err(failure) => failure,
            };
            if failure.committed {
                // Part of the answer already reached the caller: a retry would repeat it.
                return Err(failure.error);
            }
            if failure.token_refused && !refreshed_token {
                // A token the resource refused (revoked, clock skew): fetch a new one once.
                refreshed_token = true;
                continue;
            }
            let retryable =
                matches!(failure.error, ApiError::UpstreamThrottled { .. } | ApiError::UpstreamUnavailable { .. });
            if !retryable || attempts >= MAX_ATTEMPTS {
                return Err(match failure.hint {
                    Some(hint) => with_retry_after(failure.error, hint),
                    None => failure.error,
                });
            }
            let wait = wait_before_retry(attempts, failure.hint, self.settings.max_retry_wait);
            if Instant::now() + wait >= deadline {
                tracing::warn!(
                    attempt = attempts,
                    wait_ms = wait.as_millis() as u64,
                    "retry would pass the deadline; giving up"
                );
                return Err(with_retry_after(failure.error, failure.hint.unwrap_or(wait)));
            }
            tracing::info!(
                attempt = attempts,
                wait_ms = wait.as_millis() as u64,
                code = failure.error.code(),
                "retrying Azure OpenAI"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// The request body in one pass; the v1 route also names the deployment as `model`.
    fn body(&self, request: &ChatRequest) -> Result<Vec<u8>, ApiError> {
        #[derive(Serialize)]
        struct WithModel<'a> {
            model: &'a str,
            #[serde(flatten)]
            request: &'a ChatRequest,
        }
        let encoded = match self.settings.route {
            ApiRoute::V1 => serde_json::to_vec(&WithModel { model: &self.settings.deployment, request }),
            ApiRoute::Dated { .. } => serde_json::to_vec(request),
        };
        encoded.map_err(|e| ApiError::internal(format!("could not encode the request: {e}")))
    }

    async fn attempt(
        &self,
        body: &axum::body::Bytes,
        cost: u64,
        deadline: Instant,
        chat: &ChatSpan,
        request: &ChatRequest,
    ) -> Result<Completion, Failure> {
        let sent = self.send(body, cost, deadline, chat, Timeouts::whole_answer(&self.settings)).await?;
        if sent.response.status().as_u16() != 200 {
            return Err(self.refused(sent, request).await);
        }
        let headers = sent.response.headers().clone();
        let body = sent.response.bytes().await.map_err(|e| {
            plain(ApiError::UpstreamUnavailable {
                message: format!("reading Azure OpenAI's answer failed: {}", without_url(&e)),
            })
        })?;
        response::parse_completion(&body, &headers).map_err(plain)
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
        let queued = Instant::now();
        let permit = self.pacer.acquire(cost, deadline).await.map_err(plain)?;
        if queued.elapsed() >= Duration::from_millis(1) {
            chat.record_queued(queued.elapsed());
        }
        let token = self.tokens.token().await.map_err(plain)?;
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
        chat.record_answer(
            response.status().as_u16(),
            response.headers().get("apim-request-id").and_then(|v| v.to_str().ok()),
        );
        Ok(Sent { response, token, _permit: permit })
    }

    /// A non-200 answer as the failure it means (its body read, a refused token invalidated,
    /// a context-window refusal learned).
    async fn refused(&self, sent: Sent, request: &ChatRequest) -> Failure {
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
        let token_refused = status == 401 && !matches!(error, ApiError::UpstreamPermissionDenied { .. });
        if token_refused {
            self.tokens.invalidate(&sent.token);
        }
        Failure { error, hint: server_hint(&headers), token_refused, committed: false }
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
    Failure { error, hint: None, token_refused: false, committed: false }
}

/// Azure OpenAI's estimate of what `request` costs against the tokens-per-minute limit.
fn request_cost(request: &ChatRequest) -> u64 {
    let prompt_chars = request.messages.iter().map(|m| m.content.chars().count()).sum();
    token_cost::estimated_tokens(prompt_chars, request.max_completion_tokens)
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
