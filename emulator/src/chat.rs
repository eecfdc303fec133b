//! The chat-completions routes (dated and v1): records the request, applies Azure OpenAI's
//! checks in the service's order (auth, deployment, the model's parameters: `params.rs`), then
//! the deployment's quota and injected faults, then answers, spending a reasoning model's hidden
//! reasoning tokens inside `max_completion_tokens` (`models.rs`); every answer past the quota
//! carries `x-ratelimit-remaining-tokens/-requests`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use crate::clock::unix_secs;
use crate::content::{self, prompt_chars};
use crate::errors::{self, json_response};
use crate::faults::{Fault, marker_fault};
use crate::models::{Effort, ModelProfile};
use crate::params;
use crate::query::param;
use crate::quota::{Limit, Quota, Remaining};
use crate::state::Shared;
use crate::stats::{RecordedRequest, Stats};
use crate::stream::{self, Ending, Plan};
use crate::tokens::{self, Invalid};

type Headers = Vec<(&'static str, String)>;

/// What to do with a request that passed the checks.
enum Decision {
    Reply(u16, Value, Headers),
    Answer { shape: Shape, latency: Duration, quota: Headers },
}

/// How a 200 answer is made.
struct Shape {
    model: ModelProfile,
    /// The effort a reasoning model runs at; `None` for a model that does not reason.
    effort: Option<Effort>,
    /// `ContentFilterCompletion`, `BadLabel`, `Length` or `ReasoningStarved`, when injected.
    fault: Option<Fault>,
    /// How a streamed answer ends (`content_filter_stream`, `stream_drop`).
    ending: Ending,
}

pub(crate) async fn dated(
    State(shared): State<Arc<Shared>>,
    Path(deployment): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/openai/deployments/{deployment}/chat/completions");
    handle(shared, path, Some(deployment), query, headers, body).await
}

pub(crate) async fn v1(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(shared, "/openai/v1/chat/completions".into(), None, query, headers, body).await
}

async fn handle(
    shared: Arc<Shared>,
    path: String,
    deployment: Option<String>,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let query = query.unwrap_or_default();
    {
        let mut inner = shared.lock();
        inner.stats.chat_requests += 1;
        let headers = redacted(&headers);
        inner.requests.push(RecordedRequest {
            method: "POST".into(),
            path,
            query: query.clone(),
            headers,
            body: json.clone(),
        });
    }
    let _in_flight = shared.enter_chat();
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut common: Headers = vec![
        ("apim-request-id", request_id.clone()),
        ("x-request-id", request_id),
        ("x-ms-region", "Emulated Region".into()),
    ];
    let api_version = param(&query, "api-version");
    match decide(&shared, deployment, api_version.as_deref(), &headers, &json) {
        Decision::Reply(status, body, extra) => {
            common.extend(extra);
            json_response(status, body, &common)
        }
        Decision::Answer { shape, latency, quota } => {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let body = completion(&shared, &json, &shape);
            common.extend(quota);
            if json["stream"] == Value::Bool(true) {
                let plan = stream_plan(&shared, &json, &body, shape.ending);
                return stream::response(shared.clone(), plan, &common);
            }
            json_response(200, body, &common)
        }
    }
}

/// The streamed form of the answer `body` (the same content, model and prompt tokens).
fn stream_plan(shared: &Shared, request: &Value, body: &Value, ending: Ending) -> Plan {
    let faults = shared.lock().faults.clone();
    if ending == Ending::ContentFilter {
        shared.lock().stats.content_filtered += 1;
    }
    Plan {
        content: body["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned(),
        model: body["model"].as_str().unwrap_or_default().to_owned(),
        usage: body["usage"].clone(),
        finish_reason: body["choices"][0]["finish_reason"].as_str().unwrap_or("stop").to_owned(),
        include_usage: request["stream_options"]["include_usage"] == Value::Bool(true),
        async_filter: faults.stream_async_filter,
        ending,
        chunk_delay: Duration::from_millis(faults.stream_chunk_delay_ms),
        hold_after: faults.stream_hold_after,
    }
}

fn count(shared: &Shared, f: impl FnOnce(&mut Stats)) {
    f(&mut shared.lock().stats);
}

fn reply((status, body): (u16, Value)) -> Decision {
    Decision::Reply(status, body, Vec::new())
}

/// Azure OpenAI's checks in order, then the TPM budget, then faults.
fn decide(
    shared: &Shared,
    dated: Option<String>,
    api_version: Option<&str>,
    headers: &HeaderMap,
    body: &Value,
) -> Decision {
    let config = &shared.config;
    if dated.is_some() && api_version.is_none() {
        count(shared, |s| s.not_found += 1);
        return reply(errors::resource_not_found());
    }
    if headers.contains_key("api-key") {
        count(shared, |s| s.api_key_requests += 1);
        return reply(errors::key_auth_disabled());
    }
    let token = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.split_once(' '));
    let claims = match token.filter(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty()) {
        None => Err(Invalid::Unknown),
        // A token for another resource (e.g. Azure Monitor) is refused like an unknown one.
        Some((_, token)) => tokens::validate(shared, token.trim())
            .and_then(|claims| if claims.aud == tokens::AUDIENCE { Ok(claims) } else { Err(Invalid::Unknown) }),
    };
    let claims = match claims {
        Ok(claims) => claims,
        Err(why) => {
            count(shared, |s| {
                s.unauthorized += 1;
                s.expired_tokens += u64::from(matches!(why, Invalid::Expired));
            });
            return reply(errors::unauthorized());
        }
    };
    if claims.tid != config.resource_tenant {
        return reply(errors::tenant_mismatch(&claims.tid));
    }
    if !shared.lock().role_assigned {
        count(shared, |s| s.permission_denied += 1);
        return reply(errors::permission_denied(&claims.oid));
    }
    // The api-version gate applies to the dated route only; `v1` serves every model.
    let gated_version = api_version.filter(|_| dated.is_some());
    let deployment = dated.or_else(|| body["model"].as_str().map(str::to_owned)).unwrap_or_default();
    if !config.deployments.contains(&deployment) {
        count(shared, |s| s.not_found += 1);
        return reply(errors::deployment_not_found());
    }
    if !body["messages"].is_array() {
        let message =
            if body.is_null() { "The request body is not valid JSON." } else { "'messages' is a required property" };
        return reply(errors::bad_request(message));
    }
    let streamed = body["stream"] == Value::Bool(true);
    if !body["stream_options"].is_null() && !streamed {
        return reply(errors::bad_request("The 'stream_options' parameter is only allowed when 'stream' is enabled."));
    }
    if let Some(refusal) = crate::strict_schema::refusal(body) {
        return reply((400, refusal));
    }
    let model = config.model_of(&deployment);
    let effort = match params::check(&model, gated_version, body) {
        Ok(effort) => effort,
        Err(refusal) => {
            count(shared, |s| s.model_refusals += 1);
            return reply(refusal);
        }
    };
    let window = config.context_window(&deployment);
    let prompt_tokens = content::prompt_tokens(body);
    let completion_tokens = content::max_completion(body).unwrap_or(0);
    if prompt_tokens + completion_tokens > window {
        count(shared, |s| s.context_length_exceeded += 1);
        return reply(errors::context_length_exceeded(window, prompt_tokens, completion_tokens));
    }
    let api_version = api_version.unwrap_or("v1");
    let mut inner = shared.lock();
    let quota = match config.tokens_per_minute {
        None => remaining_headers(Remaining { tokens: 1_000_000, requests: 1_000 }),
        Some(tokens_per_minute) => {
            // The limiter's estimate (a larger allowance than u32 is charged as u32::MAX: over any budget).
            let max_completion = content::max_completion(body).unwrap_or(256);
            let cost =
                token_cost::estimated_tokens(prompt_chars(body), u32::try_from(max_completion).unwrap_or(u32::MAX));
            let quota = inner
                .quotas
                .entry(deployment.clone())
                .or_insert_with(|| Quota::new(tokens_per_minute, config.token_window));
            match quota.admit(Instant::now(), cost) {
                Ok(remaining) => {
                    inner.stats.admitted_tokens += cost;
                    remaining_headers(remaining)
                }
                Err(refused) => {
                    inner.stats.throttled += 1;
                    match refused.limit {
                        Limit::Tokens => inner.stats.throttled_tokens += 1,
                        Limit::Requests => inner.stats.throttled_requests += 1,
                    }
                    let ms = u64::try_from(refused.retry_after.as_millis()).unwrap_or(u64::MAX).max(1);
                    let (status, body, mut headers) = errors::throttled(ms, api_version, refused.limit);
                    headers.extend(remaining_headers(refused.remaining));
                    return Decision::Reply(status, body, headers);
                }
            }
        }
    };
    let marker = marker_fault(&content::text_of(body, &["user"]));
    let fault = match inner.script.pop_front() {
        Some(Fault::Ok) => marker,
        Some(fault) => Some(fault),
        None => marker.or_else(|| {
            let roll: f64 = rand::random();
            if roll < inner.faults.throttle_rate {
                Some(Fault::Throttle { retry_after_ms: 0 })
            } else if roll < inner.faults.throttle_rate + inner.faults.server_error_rate {
                Some(Fault::ServerError)
            } else {
                None
            }
        }),
    };
    let latency = Duration::from_millis(inner.faults.latency_ms);
    let stats = &mut inner.stats;
    let reported = model.reported_name();
    let answer = |fault: Option<Fault>, ending: Ending| Decision::Answer {
        shape: Shape { model, effort, fault, ending },
        latency,
        quota: quota.clone(),
    };
    let reply = |(status, body): (u16, Value)| Decision::Reply(status, body, quota.clone());
    match fault {
        None | Some(Fault::Ok) => answer(None, Ending::Stop),
        Some(
            fault @ (Fault::BadLabel
            | Fault::InvalidOutput
            | Fault::ContentFilterCompletion
            | Fault::Length
            | Fault::ReasoningStarved),
        ) => answer(Some(fault), Ending::Stop),
        Some(Fault::ContentFilterMidStream) if streamed => answer(None, Ending::ContentFilter),
        Some(Fault::ContentFilterMidStream) => answer(Some(Fault::ContentFilterCompletion), Ending::Stop),
        Some(Fault::StreamDrop) if streamed => answer(None, Ending::Drop),
        Some(Fault::StreamDrop) => {
            stats.server_errors += 1;
            reply(errors::server_error())
        }
        Some(Fault::Throttle { retry_after_ms }) => {
            stats.throttled += 1;
            let ms = if retry_after_ms == 0 { inner.faults.throttle_ms() } else { retry_after_ms };
            // An injected 429 stands for a full window: nothing left.
            let (status, body, mut headers) = errors::throttled(ms, api_version, Limit::Tokens);
            headers.extend(remaining_headers(Remaining { tokens: 0, requests: 0 }));
            Decision::Reply(status, body, headers)
        }
        Some(Fault::ServerError) => {
            stats.server_errors += 1;
            reply(errors::server_error())
        }
        Some(Fault::ContentFilterPrompt) => {
            stats.content_filtered += 1;
            reply(errors::prompt_filtered())
        }
        Some(Fault::PermissionDenied) => {
            stats.permission_denied += 1;
            reply(errors::permission_denied(&claims.oid))
        }
        Some(Fault::TenantMismatch) => reply(errors::tenant_mismatch(&claims.tid)),
        Some(Fault::UnreadableAnswer) => {
            stats.chat_ok += 1;
            reply((200, json!({"object": "chat.completion", "model": reported, "choices": "unavailable"})))
        }
        Some(Fault::AuthenticationTypeDisabled) => reply(errors::key_auth_disabled()),
    }
}

fn remaining_headers(remaining: Remaining) -> Headers {
    vec![
        ("x-ratelimit-remaining-tokens", remaining.tokens.to_string()),
        ("x-ratelimit-remaining-requests", remaining.requests.to_string()),
    ]
}

/// The 200 answer body; counts it.
fn completion(shared: &Shared, request: &Value, shape: &Shape) -> Value {
    let filtered = shape.fault == Some(Fault::ContentFilterCompletion);
    let bad_label = shape.fault == Some(Fault::BadLabel);
    let mut content = if filtered {
        String::new()
    } else if shape.fault == Some(Fault::InvalidOutput) {
        content::not_matching(request)
    } else {
        content::answer(request, bad_label)
    };
    let prompt_tokens = content::prompt_tokens(request);
    let budget = content::max_completion(request);
    // Hidden reasoning comes first and counts inside max_completion_tokens; the visible answer
    // gets what is left, and is cut where the budget ends.
    let mut reasoning_tokens = shape.effort.map_or(0, Effort::reasoning_tokens);
    let mut length = false;
    if shape.fault == Some(Fault::ReasoningStarved) {
        reasoning_tokens = budget.unwrap_or(256).max(reasoning_tokens);
    }
    if let Some(budget) = budget {
        reasoning_tokens = reasoning_tokens.min(budget);
        let room = budget - reasoning_tokens;
        if tokens_of(&content) > room {
            content = content.chars().take(usize::try_from(room * 4).unwrap_or(usize::MAX)).collect();
            length = true;
        }
    }
    if shape.fault == Some(Fault::Length) && !content.is_empty() {
        let half = content.chars().count().div_ceil(2);
        content = content.chars().take(half).collect();
        length = true;
    }
    length |= shape.fault == Some(Fault::ReasoningStarved);
    let completion_tokens = reasoning_tokens + if content.is_empty() { 0 } else { tokens_of(&content).max(1) };
    let (finish_reason, results) = if filtered {
        ("content_filter", errors::completion_filtered_results())
    } else if length {
        ("length", errors::safe_results(false))
    } else {
        ("stop", errors::safe_results(false))
    };
    let body = json!({
        "id": format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        "object": "chat.completion",
        "created": unix_secs(SystemTime::now()),
        "model": shape.model.reported_name(),
        "system_fingerprint": "fp_emulator",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": errors::safe_results(true)}],
        "choices": [{
            "index": 0,
            "finish_reason": finish_reason,
            "logprobs": null,
            "message": {"role": "assistant", "content": content, "refusal": null},
            "content_filter_results": results,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    });
    let mut inner = shared.lock();
    inner.stats.chat_ok += 1;
    inner.stats.tokens_used += prompt_tokens + completion_tokens;
    inner.stats.content_filtered += u64::from(filtered);
    inner.stats.reasoning_tokens += reasoning_tokens;
    inner.stats.length_finishes += u64::from(length);
    body
}

/// Tokens of visible text, at the emulator's 4 characters a token.
fn tokens_of(text: &str) -> u64 {
    text.chars().count().div_ceil(4) as u64
}

/// Headers as recorded: lower-case names, credentials replaced.
fn redacted(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            let value = match name.as_str() {
                "authorization" => format!("{} <redacted>", value.split_whitespace().next().unwrap_or("")),
                "api-key" => "<redacted>".to_owned(),
                _ => value,
            };
            (name.as_str().to_owned(), value)
        })
        .collect()
}
