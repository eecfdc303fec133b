//! Azure OpenAI's error answers, with the exact bodies and headers the real service sends.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::quota::Limit;

/// A JSON response with extra headers.
pub(crate) fn json_response(status: u16, body: Value, headers: &[(&str, String)]) -> Response {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(*name), HeaderValue::try_from(value.as_str())) {
            map.insert(n, v);
        }
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, map, axum::Json(body)).into_response()
}

fn error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

pub(crate) fn resource_not_found() -> (u16, Value) {
    (404, error("404", "Resource not found"))
}

pub(crate) fn key_auth_disabled() -> (u16, Value) {
    (403, error("AuthenticationTypeDisabled", "Key based authentication is disabled for this resource."))
}

pub(crate) fn unauthorized() -> (u16, Value) {
    let message = "Unauthorized. Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), or have expired.";
    (401, error("401", message))
}

pub(crate) fn tenant_mismatch(tid: &str) -> (u16, Value) {
    let message = format!("Token tenant {tid} does not match resource tenant.");
    (400, error("Tenant provided in token does not match resource token", &message))
}

pub(crate) fn permission_denied(oid: &str) -> (u16, Value) {
    let message = format!(
        "The principal `{oid}` lacks the required data action \
         `Microsoft.CognitiveServices/accounts/OpenAI/deployments/chat/completions/action` to perform \
         `POST /openai/deployments/{{deployment-id}}/chat/completions` operation."
    );
    (401, error("PermissionDenied", &message))
}

pub(crate) fn deployment_not_found() -> (u16, Value) {
    let message = "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.";
    (404, error("DeploymentNotFound", message))
}

pub(crate) fn bad_request(message: &str) -> (u16, Value) {
    (400, json!({"error": {"code": "BadRequest", "message": message, "type": "invalid_request_error", "param": null}}))
}

/// 400 `context_length_exceeded`, worded as the service words it: "you requested" when the
/// completion allowance tips it over, "your messages resulted in" when the prompt alone does.
pub(crate) fn context_length_exceeded(window: u64, prompt_tokens: u64, completion_tokens: u64) -> (u16, Value) {
    let message = if prompt_tokens > window || completion_tokens == 0 {
        format!(
            "This model's maximum context length is {window} tokens. However, your messages resulted in \
             {prompt_tokens} tokens. Please reduce the length of the messages."
        )
    } else {
        format!(
            "This model's maximum context length is {window} tokens. However, you requested {} tokens \
             ({prompt_tokens} in the messages, {completion_tokens} in the completion). Please reduce the length of \
             the messages or completion.",
            prompt_tokens + completion_tokens
        )
    };
    let body = json!({"error": {
        "message": message,
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }});
    (400, body)
}

pub(crate) fn server_error() -> (u16, Value) {
    (500, error("InternalServerError", "The server had an error while processing your request. Sorry about that!"))
}

/// 429 body and headers for a wait of `retry_after_ms`: "token rate limit" or "call rate limit"
/// (the request limit) in the message, as the service words them, and `policy-id`
/// `DeploymentRatelimit-Token` / `-Call`. The `x-ratelimit-remaining-*` headers are the caller's.
pub(crate) fn throttled(
    retry_after_ms: u64,
    api_version: &str,
    limit: Limit,
) -> (u16, Value, Vec<(&'static str, String)>) {
    let seconds = retry_after_ms.div_ceil(1000).max(1);
    let (which, policy) = match limit {
        Limit::Tokens => ("token", "DeploymentRatelimit-Token"),
        Limit::Requests => ("call", "DeploymentRatelimit-Call"),
    };
    let message = format!(
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version {api_version} have exceeded \
         {which} rate limit of your current OpenAI S0 pricing tier. Please retry after {seconds} seconds. \
         Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."
    );
    let headers = vec![
        ("retry-after-ms", retry_after_ms.to_string()),
        ("retry-after", seconds.to_string()),
        ("policy-id", policy.to_owned()),
    ];
    (429, error("429", &message), headers)
}

fn safe() -> Value {
    json!({"filtered": false, "severity": "safe"})
}

/// Content-filter results with every category safe (and no jailbreak).
pub(crate) fn safe_results(with_jailbreak: bool) -> Value {
    let mut results = json!({"hate": safe(), "self_harm": safe(), "sexual": safe(), "violence": safe()});
    if with_jailbreak {
        results["jailbreak"] = json!({"filtered": false, "detected": false});
    }
    results
}

/// The 400 answer to a prompt the content filter blocked (a jailbreak detection).
pub(crate) fn prompt_filtered() -> (u16, Value) {
    let mut result = safe_results(true);
    result["jailbreak"] = json!({"filtered": true, "detected": true});
    let body = json!({"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. \
                    Please modify your prompt and retry. To learn more about our content filtering policies please \
                    read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
        "type": null,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": result}
    }});
    (400, body)
}

/// The completion's filter results when the answer itself was withheld (violence, medium).
pub(crate) fn completion_filtered_results() -> Value {
    let mut results = safe_results(false);
    results["violence"] = json!({"filtered": true, "severity": "medium"});
    results
}

/// 400 for a reasoning model on a dated api-version older than it supports.
pub(crate) fn api_version_too_old(model: &str) -> (u16, Value) {
    let message = format!(
        "Model {model} is enabled only for api versions {} and later",
        crate::models::REASONING_MIN_API_VERSION
    );
    (400, error("BadRequest", &message))
}

fn invalid_request(message: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}})
}

/// 400 `unsupported_parameter` (a reasoning model given `max_tokens`, `top_p`, penalties, ...).
pub(crate) fn unsupported_parameter(param: &str) -> (u16, Value) {
    let hint = if param == "max_tokens" { " Use 'max_completion_tokens' instead." } else { "" };
    let message = format!("Unsupported parameter: '{param}' is not supported with this model.{hint}");
    (400, invalid_request(&message, Some(param), Some("unsupported_parameter")))
}

/// 400 `unsupported_value` for a `temperature` other than 1 on a reasoning model.
pub(crate) fn unsupported_temperature(value: &Value) -> (u16, Value) {
    let message = format!(
        "Unsupported value: 'temperature' does not support {value} with this model. Only the default (1) value is supported."
    );
    (400, invalid_request(&message, Some("temperature"), Some("unsupported_value")))
}

/// 400 `unsupported_value` for a `reasoning_effort` the model does not accept.
pub(crate) fn unsupported_effort(value: &str, accepted: &[&str]) -> (u16, Value) {
    let quoted: Vec<String> = accepted.iter().map(|a| format!("'{a}'")).collect();
    let list = match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{}, and {last}", rest.join(", ")),
        _ => quoted.join(""),
    };
    let message = format!(
        "Unsupported value: 'reasoning_effort' does not support '{value}' with this model. Supported values are: {list}."
    );
    (400, invalid_request(&message, Some("reasoning_effort"), Some("unsupported_value")))
}

/// 400 for `reasoning_effort` sent to a model that does not reason.
pub(crate) fn unrecognized_argument(name: &str) -> (u16, Value) {
    (400, invalid_request(&format!("Unrecognized request argument supplied: {name}"), None, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_length_exceeded_has_the_service_body_in_both_wordings() {
        let (status, body) = context_length_exceeded(16_384, 20_113, 0);
        assert_eq!(status, 400);
        assert_eq!(
            body,
            json!({"error": {
                "message": "This model's maximum context length is 16384 tokens. However, your messages resulted in 20113 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})
        );
        let (_, body) = context_length_exceeded(16_384, 16_000, 424);
        assert_eq!(
            body["error"]["message"],
            "This model's maximum context length is 16384 tokens. However, you requested 16424 tokens (16000 in the \
             messages, 424 in the completion). Please reduce the length of the messages or completion."
        );
    }
}
