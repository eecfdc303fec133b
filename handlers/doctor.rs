//! `handler doctor`: checks, in order, the settings, the credential choice, a token (showing
//! its identity claims, never the token) and one minimal chat completion, printing ✔ or ✘
//! per step with the fix for each failure. Exit code 0 only when every step passes.

use std::time::{Duration, Instant};

use crate::config::{ApiRoute, ConfigError, SETTINGS, Settings};
use crate::openai::{ChatRequest, Learned, Message, OpenAiClient};

const CHAT_DEADLINE: Duration = Duration::from_secs(45);

/// Runs the checks; returns the process exit code.
pub async fn run(settings: Result<Settings, ConfigError>) -> i32 {
    println!("keyless-jobs doctor {}", env!("CARGO_PKG_VERSION"));
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            return fail(
                "settings",
                &e.to_string(),
                "set it in local.settings.json (Values) locally, or in the Function App's app settings in Azure",
            );
        }
    };
    let route = match &settings.openai.route {
        ApiRoute::Dated { api_version } => format!("/openai/deployments/... api-version {api_version}"),
        ApiRoute::V1 => "/openai/v1/chat/completions".to_owned(),
    };
    pass(
        "settings",
        &format!("endpoint {}, deployment {}, route {route}", settings.openai.endpoint, settings.openai.deployment),
    );
    for line in settings_in_effect(std::env::vars()) {
        println!("  {line}");
    }
    if let ApiRoute::Dated { api_version } = &settings.openai.route {
        warn(
            "api",
            &format!(
                "AZURE_OPENAI_API_VERSION is the dated version {api_version}; reasoning models (gpt-5 family) need 2024-12-01-preview or later, and Microsoft recommends the v1 route"
            ),
            "set AZURE_OPENAI_API_VERSION=v1 (or remove it: v1 is the default)",
        );
    }

    let client = match OpenAiClient::from_settings(&settings) {
        Ok(c) => c,
        Err(e) => return fail("credential", &e.to_string(), "check AZURE_TOKEN_CREDENTIALS and AZURE_CLIENT_ID"),
    };
    let tokens = client.tokens();
    pass("credential", &format!("{}, chosen because {}", tokens.description(), settings.identity.reason));

    // As long as a CLI may reasonably take; the fetch itself gives up after FETCH_LIMIT.
    let token = match tokens.token(std::time::Instant::now() + crate::identity::FETCH_LIMIT).await {
        Ok(t) => t,
        Err(e) => return fail("token", &e.to_string(), fix_for(e.code())),
    };
    let claims = token.claims().unwrap_or_default();
    let who = claims
        .upn
        .as_deref()
        .map(|u| format!("user {u}"))
        .or_else(|| claims.appid.as_deref().map(|a| format!("app id {a}")))
        .unwrap_or_else(|| "unknown principal".into());
    let expiry = claims
        .exp
        .map(|exp| {
            let left = exp - time::OffsetDateTime::now_utc().unix_timestamp();
            format!("expires in {} min", left.max(0) / 60)
        })
        .unwrap_or_else(|| "expiry not in claims".into());
    pass(
        "token",
        &format!(
            "{who}, object id {}, tenant {}, {expiry}",
            claims.oid.as_deref().unwrap_or("?"),
            claims.tid.as_deref().unwrap_or("?")
        ),
    );

    let request = ChatRequest {
        messages: vec![Message { role: "user", content: "Reply with the word OK.".into() }],
        max_completion_tokens: 16,
        response_format: None,
    };
    let started = Instant::now();
    let completion = match client.complete(&request, Instant::now() + CHAT_DEADLINE).await {
        Ok(c) => c,
        Err(e) => return fail("chat", &format!("{e} ({})", e.code()), fix_for(e.code())),
    };
    pass(
        "chat",
        &format!(
            "deployment {} answered in {} ms ({} tokens)",
            settings.openai.deployment,
            started.elapsed().as_millis(),
            completion.usage.total_tokens
        ),
    );
    pass("model", &model_report(&client, &completion.model, completion.usage.reasoning_tokens));
    println!("all checks passed");
    0
}

/// The model behind the deployment, whether it reasons, and the effort the process settled on.
fn model_report(client: &OpenAiClient, model: &str, reasoning_tokens: Option<u64>) -> String {
    let how = if client.reasoning_effort_configured() {
        "set by AOAI_REASONING_EFFORT"
    } else {
        "the lowest it accepts, found on the first call"
    };
    match client.reasoning() {
        Learned::Effort(effort) => format!(
            "{model}: a reasoning model; reasoning_effort `{}` ({how}); {} reasoning tokens in this call",
            effort.as_str(),
            reasoning_tokens.unwrap_or(0)
        ),
        Learned::NotReasoning => format!("{model}: not a reasoning model (no reasoning_effort is sent)"),
        Learned::Unknown => format!("{model}: whether it reasons is not known yet"),
    }
}

/// One line per setting of the table that is set (with its value, truncated) or defaulted, and a
/// warning for each variable that looks like a setting but is not one (a typo is otherwise
/// silently ignored).
fn settings_in_effect(vars: impl Iterator<Item = (String, String)>) -> Vec<String> {
    let vars: std::collections::BTreeMap<String, String> = vars.filter(|(_, v)| !v.trim().is_empty()).collect();
    let mut lines = Vec::new();
    for setting in SETTINGS {
        match vars.get(setting.name) {
            Some(value) => lines.push(format!("{} = {}", setting.name, crate::config::table::echo(value.trim()))),
            None => {
                if let Some(default) = setting.example().filter(|v| !v.is_empty() && !setting.required()) {
                    lines.push(format!("{} = {default} (default)", setting.name));
                }
            }
        }
    }
    let ours = |name: &str| ["AOAI_", "AZURE_OPENAI_", "LOG_"].iter().any(|p| name.starts_with(p));
    for name in vars.keys().filter(|n| ours(n) && !SETTINGS.iter().any(|s| s.name == n.as_str())) {
        lines.push(format!("⚠ {name} is set but is not a setting of this handler (a typo?); see docs/settings.md"));
    }
    lines
}

/// The fix for a failed step, by error code (the messages carry the specifics).
fn fix_for(code: &str) -> &'static str {
    match code {
        "upstream_permission_denied" => {
            "assign the role as shown above, then wait 5-30 minutes for it to apply and run doctor again"
        }
        "upstream_auth_failed" => {
            "log in or fix the identity as the message says (locally: `az login`; in Azure: enable the system-assigned identity)"
        }
        "deployment_not_found" => {
            "set AZURE_OPENAI_DEPLOYMENT to a deployment that exists: az cognitiveservices account deployment list -g <group> -n <resource> -o table"
        }
        "upstream_throttled" => "the deployment is over its quota: wait, or raise its tokens-per-minute capacity",
        "upstream_unavailable" => {
            "check AZURE_OPENAI_ENDPOINT and network access to it; the identity endpoint or Azure OpenAI did not answer"
        }
        "configuration_error" => {
            "check AZURE_OPENAI_API_VERSION (v1 serves every current model), AOAI_REASONING_EFFORT and that the deployment is a chat model"
        }
        "upstream_incomplete" => "the model's answer was cut off by its token budget; run doctor again",
        _ => "see the message above",
    }
}

fn pass(step: &str, detail: &str) {
    println!("✔ {step:<10} {detail}");
}

/// A finding that does not fail the checks.
fn warn(step: &str, message: &str, fix: &str) {
    println!("! {step:<10} {message}");
    println!("  fix: {fix}");
}

fn fail(step: &str, message: &str, fix: &str) -> i32 {
    println!("✘ {step:<10} {message}");
    println!("  fix: {fix}");
    1
}

#[cfg(test)]
mod tests {
    use super::settings_in_effect;

    #[test]
    fn lists_settings_in_effect_and_flags_unknown_ones() {
        let vars = [("AOAI_MAX_CONCURRENCY", "16"), ("AOAI_MAX_CONCURENCY", "4"), ("PATH", "/bin")];
        let lines = settings_in_effect(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        assert!(lines.contains(&"AOAI_MAX_CONCURRENCY = 16".to_owned()), "{lines:?}");
        assert!(lines.contains(&"LOG_FORMAT = text (default)".to_owned()), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("⚠ AOAI_MAX_CONCURENCY is set but")), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains("PATH")), "{lines:?}");
    }
}
