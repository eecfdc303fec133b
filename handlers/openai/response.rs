//! Reading Azure OpenAI's answers: a 200 body becomes a [`Completion`] (a filtered or refused
//! answer is an error), and every other status becomes the one `api.md` error that says what
//! to fix.

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use super::{Completion, Usage};
use crate::config::OpenAiSettings;
use crate::echo::{echo, echo_n};
use crate::error::ApiError;
use crate::identity::BearerToken;

/// Longest upstream error message quoted (characters).
const UPSTREAM_MESSAGE_CHARS: usize = 300;

/// One message a person can act on, per upstream failure.
pub(super) fn upstream_error(settings: &OpenAiSettings, status: u16, text: &str, token: &BearerToken) -> ApiError {
    let parsed: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let error = &parsed["error"];
    // Upstream text is untrusted too: it reaches error bodies, Results and logs escaped and capped.
    let code =
        error["code"].as_str().map(echo).or_else(|| error["code"].as_u64().map(|n| n.to_string())).unwrap_or_default();
    let said = echo_n(error["message"].as_str().unwrap_or(text), UPSTREAM_MESSAGE_CHARS);
    let deployment = &settings.deployment;
    let endpoint = &settings.endpoint;
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
        400 if said.contains("is enabled only for api versions") => {
            let current = match &settings.route {
                crate::config::ApiRoute::Dated { api_version } => api_version.as_str(),
                crate::config::ApiRoute::V1 => "v1",
            };
            ApiError::Configuration {
                message: format!(
                    "Deployment `{deployment}` runs a model that this api-version does not serve ({said}). AZURE_OPENAI_API_VERSION is `{current}`: set it to `v1` (recommended; the /openai/v1 route serves every current model) or to a dated version at least as recent as the one named."
                ),
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

/// The service's message when it refused a request as longer than the context window.
pub(super) fn context_length_exceeded(status: u16, text: &str) -> Option<String> {
    if status != 400 || !text.contains("context_length_exceeded") {
        return None;
    }
    let parsed: Value = serde_json::from_str(text).ok()?;
    (parsed["error"]["code"] == "context_length_exceeded")
        .then(|| parsed["error"]["message"].as_str().map(str::to_owned))?
}

fn permission_denied_message(said: &str, token: &BearerToken, endpoint: &str) -> String {
    let claims = token.claims().unwrap_or_default();
    // Claims come from whoever issued the token: echoed escaped and capped like any input.
    let oid = claims.oid.as_deref().map_or_else(|| "<object-id>".to_owned(), echo);
    let (who, principal_type) = match (&claims.upn, &claims.appid) {
        (Some(upn), _) => (format!("user {}", echo(upn)), "User"),
        (None, Some(appid)) => (format!("managed identity (app id {})", echo(appid)), "ServicePrincipal"),
        _ => ("the identity".to_owned(), "ServicePrincipal"),
    };
    let resource = endpoint.split("//").nth(1).and_then(|h| h.split('.').next()).unwrap_or("<resource>");
    format!(
        "Azure OpenAI denied access (401 PermissionDenied: {said}). The {who}, object id {oid}, needs the role \"Cognitive Services OpenAI User\" (5e0bd9bd-7b93-4f28-af87-19fc36ad61bd) on the Azure OpenAI account. Assign it: az role assignment create --assignee-object-id {oid} --assignee-principal-type {principal_type} --role \"Cognitive Services OpenAI User\" --scope $(az cognitiveservices account list --query \"[?name=='{resource}'].id\" -o tsv). New role assignments take 5-30 minutes to apply; queue jobs are retried meanwhile."
    )
}

/// `usage` as Azure OpenAI sends it, in a whole answer and in a stream's last chunk alike; a
/// missing count reads as 0 (a missing `reasoning_tokens`: the model does not report it).
#[derive(Deserialize, Default)]
pub(super) struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
    #[serde(default)]
    completion_tokens_details: Option<WireDetails>,
}

#[derive(Deserialize)]
struct WireDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(wire: WireUsage) -> Self {
        Usage {
            prompt_tokens: wire.prompt_tokens,
            completion_tokens: wire.completion_tokens,
            total_tokens: wire.total_tokens,
            reasoning_tokens: wire.completion_tokens_details.and_then(|d| d.reasoning_tokens),
        }
    }
}

pub(super) fn parse_completion(raw: &[u8], headers: &HeaderMap) -> Result<Completion, ApiError> {
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        id: String,
        #[serde(default)]
        model: String,
        #[serde(default)]
        choices: Vec<Choice>,
        #[serde(default)]
        usage: WireUsage,
    }
    #[derive(Deserialize)]
    struct Choice {
        #[serde(default)]
        finish_reason: Option<String>,
        #[serde(default)]
        message: Option<ChoiceMessage>,
        // `content_filter_results` is skipped, not built into a `Value`: it is in every answer
        // and read only when the answer was filtered (re-parsed below); building it was ~9 % of a
        // request's instructions.
    }
    #[derive(Deserialize)]
    struct ChoiceMessage {
        #[serde(default)]
        content: Option<String>,
        #[serde(default)]
        refusal: Option<String>,
    }
    // A 200 is charged: one that cannot be read is reported, never asked for again.
    let unreadable = |why: String| {
        ApiError::internal(format!(
            "Azure OpenAI answered 200 with {why}; the call was charged, so it is not sent again. A proxy between this app and Azure OpenAI may have changed the answer."
        ))
    };
    let body: Body =
        serde_json::from_slice(raw).map_err(|e| unreadable(format!("a body that is not a chat completion ({e})")))?;
    let choice = body.choices.into_iter().next().ok_or_else(|| unreadable("no choices".into()))?;
    if choice.finish_reason.as_deref() == Some("content_filter") {
        let details = serde_json::from_slice::<Value>(raw)
            .ok()
            .and_then(|answer| answer.pointer("/choices/0/content_filter_results").cloned())
            .map(|results| filtered_categories(&serde_json::json!({"content_filter_results": results})))
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
    let usage = Usage::from(body.usage);
    Ok(Completion {
        content: message.content.unwrap_or_default(),
        // Echoed into every output: a deployment's model name is short; a hostile one is cut.
        model: echo(&body.model),
        usage,
        response_id: body.id,
        apim_request_id: header("apim-request-id"),
        attempts: 1,
        finish_reason: choice.finish_reason,
        effort: None,
    })
}

/// "jailbreak, violence (medium)" from either spelling Azure uses.
pub(super) fn filtered_categories(error: &Value) -> String {
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
                .take(20)
                .map(|(k, v)| match v["severity"].as_str() {
                    Some(sev) if sev != "safe" => format!("{} ({})", echo(k), echo(sev)),
                    _ => echo(k),
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
