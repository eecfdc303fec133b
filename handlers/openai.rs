//! The Azure OpenAI chat-completions client: reqwest (rustls), `Authorization: Bearer` only,
//! a per-request timeout, retries that honour the server's waits within the caller's deadline,
//! and every upstream error mapped to one `api.md` code with a message that says what to fix.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;

use crate::config::{ApiRoute, OpenAiSettings};
use crate::error::ApiError;
use crate::identity::{BearerToken, TokenProvider};
use crate::pacing::{Pacer, estimated_cost};
use crate::retry::{MAX_ATTEMPTS, server_hint, wait_before_retry};
use crate::telemetry::{ChatSpan, trace_headers};

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

pub struct OpenAiClient {
    http: reqwest::Client,
    url: String,
    settings: OpenAiSettings,
    tokens: Arc<TokenProvider>,
    pacer: Pacer,
    /// `LOG_SENSITIVE_DATA`: add prompt and completion text to the chat span as debug events.
    log_content: bool,
}

/// A failed attempt: the error, the server's retry hint, and whether the token was refused.
struct Failure {
    error: ApiError,
    hint: Option<Duration>,
    token_refused: bool,
}

impl OpenAiClient {
    pub fn new(settings: OpenAiSettings, tokens: Arc<TokenProvider>) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("keyless-jobs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::internal(format!("could not build the HTTP client: {e}")))?;
        let pacer = Pacer::new(settings.max_concurrency, settings.tokens_per_minute);
        Ok(Self { http, url: settings.chat_completions_url(), settings, tokens, pacer, log_content: false })
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

    /// Sends `request`, retrying transient failures until `deadline`, inside one chat span.
    pub async fn complete(&self, request: &ChatRequest, deadline: Instant) -> Result<Completion, ApiError> {
        let chat = ChatSpan::start(&self.settings, request, self.tokens.description(), self.log_content);
        let result = self.complete_with_retries(request, deadline, &chat).instrument(chat.span().clone()).await;
        chat.finish(&result);
        result
    }

    async fn complete_with_retries(
        &self,
        request: &ChatRequest,
        deadline: Instant,
        chat: &ChatSpan,
    ) -> Result<Completion, ApiError> {
        let body = self.body(request)?;
        let prompt_chars = request.messages.iter().map(|m| m.content.chars().count()).sum();
        let cost = estimated_cost(prompt_chars, request.max_completion_tokens);
        let mut refreshed_token = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.attempt(&body, cost, deadline, chat).await {
                Ok(mut completion) => {
                    completion.attempts = attempt;
                    return Ok(completion);
                }
                Err(failure) => failure,
            };
            if failure.token_refused && !refreshed_token {
                // A token the resource refused (revoked, clock skew): fetch a new one once.
                refreshed_token = true;
                continue;
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

    fn body(&self, request: &ChatRequest) -> Result<Vec<u8>, ApiError> {
        let mut value = serde_json::to_value(request)
            .map_err(|e| ApiError::internal(format!("could not encode the request: {e}")))?;
        if self.settings.route == ApiRoute::V1 {
            value["model"] = Value::String(self.settings.deployment.clone());
        }
        serde_json::to_vec(&value).map_err(|e| ApiError::internal(format!("could not encode the request: {e}")))
    }

    async fn attempt(&self, body: &[u8], cost: u64, deadline: Instant, chat: &ChatSpan) -> Result<Completion, Failure> {
        let plain = |error: ApiError| Failure { error, hint: None, token_refused: false };
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
        let sent = self
            .http
            .post(&self.url)
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json")
            .headers(trace_headers())
            .timeout(timeout)
            .body(body.to_vec())
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
        chat.record_answer(status, &headers);
        let text = response.text().await.map_err(|e| {
            plain(ApiError::UpstreamUnavailable {
                message: format!("reading Azure OpenAI's answer failed: {}", without_url(&e)),
            })
        })?;
        if status == 200 {
            return parse_completion(&text, &headers).map_err(plain);
        }
        let error = self.map_error(status, &text, &token);
        let token_refused = status == 401 && !matches!(error, ApiError::UpstreamPermissionDenied { .. });
        if token_refused {
            self.tokens.invalidate(&token);
        }
        Err(Failure { error, hint: server_hint(&headers), token_refused })
    }

    /// One message a person can act on, per upstream failure.
    fn map_error(&self, status: u16, text: &str, token: &BearerToken) -> ApiError {
        let parsed: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let error = &parsed["error"];
        let code = error["code"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| error["code"].as_u64().map(|n| n.to_string()))
            .unwrap_or_default();
        let said = error["message"].as_str().map(str::to_owned).unwrap_or_else(|| text.chars().take(300).collect());
        let deployment = &self.settings.deployment;
        let endpoint = &self.settings.endpoint;
        match status {
            400 if code == "content_filter" => ApiError::ContentFiltered {
                message: format!(
                    "Azure OpenAI's content filter blocked the input ({}). This is not retried.",
                    filtered_categories(error)
                ),
            },
            400 if code.contains("Tenant") || said.contains("does not match resource tenant") => {
                ApiError::UpstreamAuthFailed {
                    message: format!(
                        "Azure OpenAI rejected the token's tenant ({said}). Set AZURE_TENANT_ID to the tenant of the Azure OpenAI resource (or run `az login --tenant <tenant-id>`)."
                    ),
                    transient: true,
                }
            }
            400 if code == "context_length_exceeded" => ApiError::invalid(
                "text",
                format!("the input is too long for deployment `{deployment}`'s context window ({said})"),
            ),
            400 => ApiError::Configuration {
                message: format!(
                    "Azure OpenAI rejected the request ({code}: {said}). Check that deployment `{deployment}` is a chat model that supports this api route and AZURE_OPENAI_API_VERSION."
                ),
            },
            401 if code == "PermissionDenied" => {
                ApiError::UpstreamPermissionDenied { message: permission_denied_message(&said, token, endpoint) }
            }
            401 => ApiError::UpstreamAuthFailed {
                message: format!(
                    "Azure OpenAI refused the Entra token (401 {code}: {said}). The token is fetched for {}; check that AZURE_OPENAI_ENDPOINT is an Azure OpenAI resource.",
                    crate::identity::COGNITIVE_SERVICES_SCOPE
                ),
                transient: true,
            },
            403 if code == "AuthenticationTypeDisabled" => ApiError::UpstreamAuthFailed {
                message: format!(
                    "Azure OpenAI says key-based authentication is disabled (403 AuthenticationTypeDisabled: {said}). This app never sends an API key, only an Entra token: something between it and {endpoint} (a proxy or API Management policy) added one. Remove it."
                ),
                transient: false,
            },
            403 => ApiError::UpstreamPermissionDenied {
                message: format!(
                    "Azure OpenAI answered 403 ({code}: {said}). If the resource restricts network access, allow this Function App's outbound traffic or use a private endpoint."
                ),
            },
            404 => ApiError::DeploymentNotFound {
                message: format!(
                    "Deployment `{deployment}` was not found at {endpoint} (404 {code}: {said}). Check AZURE_OPENAI_DEPLOYMENT (the deployment name, not the model name) and AZURE_OPENAI_ENDPOINT; a new deployment can take a few minutes to appear."
                ),
            },
            408 | 429 => ApiError::UpstreamThrottled {
                message: format!("Azure OpenAI is throttling deployment `{deployment}` ({status}: {said})"),
                retry_after: None,
            },
            500..=599 => {
                ApiError::UpstreamUnavailable { message: format!("Azure OpenAI answered {status} ({code}: {said})") }
            }
            _ => ApiError::internal(format!("Azure OpenAI answered an unexpected {status} ({code}: {said})")),
        }
    }
}

fn permission_denied_message(said: &str, token: &BearerToken, endpoint: &str) -> String {
    let claims = token.claims().unwrap_or_default();
    let oid = claims.oid.as_deref().unwrap_or("<object-id>");
    let (who, principal_type) = match (&claims.upn, &claims.appid) {
        (Some(upn), _) => (format!("user {upn}"), "User"),
        (None, Some(appid)) => (format!("managed identity (app id {appid})"), "ServicePrincipal"),
        _ => ("the identity".to_owned(), "ServicePrincipal"),
    };
    let resource = endpoint.split("//").nth(1).and_then(|h| h.split('.').next()).unwrap_or("<resource>");
    format!(
        "Azure OpenAI denied access (401 PermissionDenied: {said}). The {who}, object id {oid}, needs the role \"Cognitive Services OpenAI User\" (5e0bd9bd-7b93-4f28-af87-19fc36ad61bd) on the Azure OpenAI account. Assign it: az role assignment create --assignee-object-id {oid} --assignee-principal-type {principal_type} --role \"Cognitive Services OpenAI User\" --scope $(az cognitiveservices account list --query \"[?name=='{resource}'].id\" -o tsv). New role assignments take 5-30 minutes to apply; queue jobs are retried meanwhile."
    )
}

fn parse_completion(text: &str, headers: &HeaderMap) -> Result<Completion, ApiError> {
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        id: String,
        #[serde(default)]
        model: String,
        #[serde(default)]
        choices: Vec<Choice>,
        #[serde(default)]
        usage: Usage,
    }
    #[derive(Deserialize)]
    struct Choice {
        #[serde(default)]
        finish_reason: Option<String>,
        #[serde(default)]
        message: Option<ChoiceMessage>,
        #[serde(default)]
        content_filter_results: Option<Value>,
    }
    #[derive(Deserialize)]
    struct ChoiceMessage {
        #[serde(default)]
        content: Option<String>,
        #[serde(default)]
        refusal: Option<String>,
    }
    let body: Body = serde_json::from_str(text).map_err(|e| ApiError::UpstreamUnavailable {
        message: format!("Azure OpenAI answered 200 with a body that is not a chat completion ({e})"),
    })?;
    let choice = body
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::UpstreamUnavailable { message: "Azure OpenAI answered without choices".into() })?;
    if choice.finish_reason.as_deref() == Some("content_filter") {
        let details = choice
            .content_filter_results
            .as_ref()
            .map(|v| filtered_categories(&serde_json::json!({"content_filter_results": v})))
            .unwrap_or_else(|| "no details".into());
        return Err(ApiError::ContentFiltered {
            message: format!(
                "Azure OpenAI's content filter withheld the model's answer ({details}). This is not retried."
            ),
        });
    }
    let message = choice.message.unwrap_or(ChoiceMessage { content: None, refusal: None });
    if let Some(refusal) = message.refusal.filter(|r| !r.is_empty()) {
        // The refusal is model output: like any completion, it stays out of errors and logs.
        return Err(ApiError::ContentFiltered {
            message: format!(
                "the model refused to answer (a refusal of {} characters). This is not retried.",
                refusal.chars().count()
            ),
        });
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok(Completion {
        content: message.content.unwrap_or_default(),
        model: body.model,
        usage: body.usage,
        response_id: body.id,
        apim_request_id: header("apim-request-id"),
        attempts: 1,
    })
}

/// "jailbreak, violence (medium)" from either spelling Azure uses.
fn filtered_categories(error: &Value) -> String {
    let inner = error.get("innererror").or_else(|| error.get("inner_error")).unwrap_or(error);
    let results = inner
        .get("content_filter_result")
        .or_else(|| inner.get("content_filter_results"))
        .or_else(|| error.get("content_filter_results"));
    let mut categories: Vec<String> = results
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter(|(_, v)| v["filtered"].as_bool() == Some(true))
                .map(|(k, v)| match v["severity"].as_str() {
                    Some(sev) if sev != "safe" => format!("{k} ({sev})"),
                    _ => k.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    categories.sort();
    if categories.is_empty() {
        "category not reported".into()
    } else {
        format!("categories: {}", categories.join(", "))
    }
}

fn with_retry_after(error: ApiError, wait: Duration) -> ApiError {
    match error {
        ApiError::UpstreamThrottled { message, .. } => ApiError::UpstreamThrottled { message, retry_after: Some(wait) },
        other => other,
    }
}

/// reqwest errors print the URL; keep the message free of query strings.
fn without_url(error: &reqwest::Error) -> String {
    let mut e: &dyn std::error::Error = error;
    let mut text = error.without_url_ref().to_string();
    while let Some(source) = e.source() {
        text = format!("{text}: {source}");
        e = source;
    }
    text
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        if self.is_timeout() {
            "timed out".into()
        } else if self.is_connect() {
            "could not connect".into()
        } else {
            "request error".into()
        }
    }
}
