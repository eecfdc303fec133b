//! The Azure OpenAI data plane over real HTTP: auth checks in order, error bodies, routes,
//! structured answers, markers, scripted faults and the TPM budget.

use std::time::Duration;

use emulator::{Emulator, EmulatorConfig, Fault, Faults};
use serde_json::{Value, json};

mod common;
use common::{client, openai_bearer};

const DATED: &str = "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21";

async fn chat(
    emulator: &Emulator,
    path: &str,
    auth: Option<&str>,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = client().post(format!("{}{path}", emulator.endpoint())).json(body);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.json().await.unwrap())
}

fn summarize(text: &str) -> Value {
    json!({"messages": [{"role": "system", "content": "Summarise in at most 20 words."}, {"role": "user", "content": text}], "max_completion_tokens": 124})
}

fn classify(text: &str, labels: &[&str], multi: bool) -> Value {
    let enumeration = json!({"type": "string", "enum": labels});
    let properties = if multi {
        json!({"labels": {"type": "array", "items": enumeration}, "confidence": {"type": "number"}})
    } else {
        json!({"label": enumeration, "confidence": {"type": "number"}})
    };
    let required: Vec<&String> = properties.as_object().unwrap().keys().collect();
    let schema =
        json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false});
    json!({"messages": [{"role": "system", "content": "Classify."}, {"role": "user", "content": text}], "max_completion_tokens": 60,
           "response_format": {"type": "json_schema", "json_schema": {"name": "c", "strict": true, "schema": schema}}})
}

const ARTICLE: &str = "The city council approved a new budget on Tuesday. It funds three new libraries and repairs to the old bridge. Opponents said the plan raises property taxes too quickly.";

#[tokio::test]
async fn a_managed_identity_token_is_accepted_and_the_answer_has_the_real_shape() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let bearer = openai_bearer(&emulator).await;
    let (status, headers, body) = chat(&emulator, DATED, Some(&bearer), &summarize(ARTICLE)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(
        content,
        "The city council approved a new budget on Tuesday. It funds three new libraries and repairs to the old bridge.",
        "whole sentences within 20 words"
    );
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    for name in [
        "apim-request-id",
        "x-request-id",
        "x-ms-region",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-remaining-requests",
    ] {
        assert!(headers.contains_key(name), "{name}");
    }
    let recorded = emulator.requests().pop().unwrap();
    assert_eq!(recorded.path, "/openai/deployments/gpt-4o-mini/chat/completions");
    assert_eq!(recorded.query, "api-version=2024-10-21");
    assert!(recorded.headers.contains(&("authorization".into(), "Bearer <redacted>".into())), "{:?}", recorded.headers);
    let stats = emulator.stats();
    assert_eq!((stats.identity_requests, stats.chat_requests, stats.chat_ok), (1, 1, 1));
    assert!(stats.tokens_used > 0 && stats.max_concurrent_chat == 1);
}

#[tokio::test]
async fn auth_failures_have_azure_openai_bodies_in_the_service_order() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let bearer = openai_bearer(&emulator).await;
    // A key, even with a valid token: 403.
    let response = client()
        .post(format!("{}{DATED}", emulator.endpoint()))
        .header("api-key", "k")
        .header("authorization", &bearer)
        .json(&summarize("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {"code": "AuthenticationTypeDisabled", "message": "Key based authentication is disabled for this resource."}})
    );
    // No token, an unknown token, a Basic scheme: 401.
    for auth in [None, Some("Bearer not-a-token"), Some("Basic abc")] {
        let (status, _, body) = chat(&emulator, DATED, auth, &summarize("x")).await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("401")), "{auth:?}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("audience is incorrect (https://cognitiveservices.azure.com)")
        );
    }
    // Missing api-version on the dated route: 404 Resource not found.
    let (status, _, body) =
        chat(&emulator, "/openai/deployments/gpt-4o-mini/chat/completions", Some(&bearer), &summarize("x")).await;
    assert_eq!((status, body), (404, json!({"error": {"code": "404", "message": "Resource not found"}})));
    // Unknown deployment.
    let path = "/openai/deployments/gpt-typo/chat/completions?api-version=2024-10-21";
    let (status, _, body) = chat(&emulator, path, Some(&bearer), &summarize("x")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("DeploymentNotFound")));
    // Role missing: 401 PermissionDenied naming the system-assigned identity.
    emulator.set_role_assigned(false);
    let (status, _, body) = chat(&emulator, DATED, Some(&bearer), &summarize("x")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("PermissionDenied")));
    assert!(body["error"]["message"].as_str().unwrap().contains("`5a1f0c5e-0000-4000-8000-00000000a11d`"));
    emulator.set_role_assigned(true);
    // Expired (a short-lived token, so the steps above never race its expiry on a busy machine).
    emulator.set_token_lifetime(Duration::from_millis(50));
    let bearer = openai_bearer(&emulator).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, _) = chat(&emulator, DATED, Some(&bearer), &summarize("x")).await;
    assert_eq!(status, 401);
    let stats = emulator.stats();
    assert_eq!(
        (stats.api_key_requests, stats.unauthorized, stats.expired_tokens, stats.not_found, stats.permission_denied),
        (1, 4, 1, 2, 1)
    );
}

#[tokio::test]
async fn the_v1_route_takes_the_deployment_from_model_and_checks_the_tenant() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let bearer = openai_bearer(&emulator).await;
    let mut body = summarize(ARTICLE);
    body["model"] = json!("gpt-4o-mini");
    let (status, _, answer) = chat(&emulator, "/openai/v1/chat/completions", Some(&bearer), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(emulator.requests().pop().unwrap().path, "/openai/v1/chat/completions");
    body["model"] = json!("other");
    let (status, _, answer) = chat(&emulator, "/openai/v1/chat/completions", Some(&bearer), &body).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (404, Some("DeploymentNotFound")));
    // A CLI token from another tenant.
    let az: Value = client()
        .get(format!("{}?tenant=22222222-2222-2222-2222-222222222222", emulator.az_token_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = format!("Bearer {}", az["accessToken"].as_str().unwrap());
    let (status, _, answer) = chat(&emulator, DATED, Some(&bearer), &summarize("x")).await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["code"], "Tenant provided in token does not match resource token");
    assert_eq!(
        answer["error"]["message"],
        "Token tenant 22222222-2222-2222-2222-222222222222 does not match resource tenant."
    );
}

#[tokio::test]
async fn structured_answers_conform_to_the_schema_and_follow_the_text() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let bearer = openai_bearer(&emulator).await;
    let labels = ["billing", "technical support", "sales", "feedback"];
    let content = |body: &Value| -> Value {
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap()
    };
    let (_, _, body) = chat(
        &emulator,
        DATED,
        Some(&bearer),
        &classify("My invoice shows a billing error: I was charged twice.", &labels, false),
    )
    .await;
    let answer = content(&body);
    assert_eq!(answer["label"], "billing", "{answer}");
    assert!((0.0..=1.0).contains(&answer["confidence"].as_f64().unwrap()));
    let (_, _, body) = chat(
        &emulator,
        DATED,
        Some(&bearer),
        &classify("The app crashes at login and support never answers", &labels, false),
    )
    .await;
    assert_eq!(content(&body)["label"], "technical support");
    let (_, _, body) = chat(
        &emulator,
        DATED,
        Some(&bearer),
        &classify("Wrong invoice, and we also want to buy 20 more seats", &labels, true),
    )
    .await;
    let chosen = content(&body)["labels"].as_array().unwrap().clone();
    assert!(
        (1..=3).contains(&chosen.len()) && chosen.contains(&json!("billing")) && chosen.contains(&json!("sales")),
        "{chosen:?}"
    );
    let (_, _, body) =
        chat(&emulator, DATED, Some(&bearer), &classify("[[emulator:bad_label]] an invoice", &labels, false)).await;
    let label = content(&body)["label"].clone();
    assert!(!labels.contains(&label.as_str().unwrap()), "{label}");
}

#[tokio::test]
async fn markers_and_scripted_faults_answer_like_the_service() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let bearer = openai_bearer(&emulator).await;
    let (status, _, body) = chat(&emulator, DATED, Some(&bearer), &summarize("[[emulator:content_filter]] hi")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("content_filter")));
    assert_eq!(body["error"]["innererror"]["code"], "ResponsibleAIPolicyViolation");
    assert_eq!(body["error"]["innererror"]["content_filter_result"]["jailbreak"]["filtered"], true);
    let (status, _, body) =
        chat(&emulator, DATED, Some(&bearer), &summarize("[[emulator:content_filter_completion]] hi")).await;
    assert_eq!((status, body["choices"][0]["finish_reason"].as_str()), (200, Some("content_filter")));
    assert_eq!(body["choices"][0]["message"]["content"], "");
    assert_eq!(body["choices"][0]["content_filter_results"]["violence"]["severity"], "medium");
    let (status, headers, body) = chat(&emulator, DATED, Some(&bearer), &summarize("[[emulator:throttle]] hi")).await;
    assert_eq!(
        (status, headers["retry-after-ms"].to_str().unwrap(), headers["retry-after"].to_str().unwrap()),
        (429, "1000", "1")
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("Please retry after 1 seconds"));
    let (status, _, body) = chat(&emulator, DATED, Some(&bearer), &summarize("[[emulator:error500]] hi")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (500, Some("InternalServerError")));

    let script = vec![Fault::Throttle { retry_after_ms: 2500 }, Fault::Ok, Fault::AuthenticationTypeDisabled];
    emulator.set_faults(Faults { script, ..Faults::default() });
    let (status, headers, _) = chat(&emulator, DATED, Some(&bearer), &summarize("hi")).await;
    assert_eq!(
        (status, headers["retry-after-ms"].to_str().unwrap(), headers["retry-after"].to_str().unwrap()),
        (429, "2500", "3")
    );
    assert_eq!(chat(&emulator, DATED, Some(&bearer), &summarize("hi")).await.0, 200);
    assert_eq!(chat(&emulator, DATED, Some(&bearer), &summarize("hi")).await.0, 403);
    emulator.set_faults(Faults { throttle_rate: 1.0, retry_after_ms: 20, ..Faults::default() });
    let (status, headers, _) = chat(&emulator, DATED, Some(&bearer), &summarize("hi")).await;
    assert_eq!((status, headers["retry-after-ms"].to_str().unwrap()), (429, "20"));
    let stats = emulator.stats();
    assert_eq!(
        (stats.content_filtered, stats.throttled, stats.server_errors, stats.chat_ok, stats.api_key_requests),
        (2, 3, 1, 2, 0)
    );
}

#[tokio::test]
async fn the_tpm_budget_answers_429_with_the_wait_until_it_fits() {
    // 100 000 TPM: 100 000 tokens per 60 s, 600 RPM = 100 requests per 10 s.
    let emulator =
        Emulator::start(EmulatorConfig { tokens_per_minute: Some(100_000), ..Default::default() }).await.unwrap();
    let bearer = openai_bearer(&emulator).await;
    let body = json!({"messages": [{"role": "user", "content": "x".repeat(40_000)}], "max_completion_tokens": 30_000});
    // 10 000 + 30 000 = 40 000 a request: two fit, the third does not.
    let (status, headers, _) = chat(&emulator, DATED, Some(&bearer), &body).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-ratelimit-remaining-tokens"], "60000");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "99");
    assert_eq!(chat(&emulator, DATED, Some(&bearer), &body).await.0, 200);
    let (status, headers, answer) = chat(&emulator, DATED, Some(&bearer), &body).await;
    assert_eq!(status, 429, "{answer}");
    let wait: u64 = headers["retry-after-ms"].to_str().unwrap().parse().unwrap();
    assert!((55_000..=60_000).contains(&wait), "{wait}");
    assert_eq!(headers["retry-after"].to_str().unwrap(), wait.div_ceil(1000).to_string());
    assert_eq!(headers["x-ratelimit-remaining-tokens"], "20000");
    assert_eq!(headers["policy-id"], "DeploymentRatelimit-Token");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("have exceeded token rate limit") && message.contains("Please retry after"), "{message}");
    let small = json!({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 100});
    assert_eq!(chat(&emulator, DATED, Some(&bearer), &small).await.0, 200, "a rejected request consumed nothing");
    let stats = emulator.stats();
    assert_eq!((stats.throttled, stats.throttled_tokens, stats.admitted_tokens), (1, 1, 80_101));
}

#[tokio::test]
async fn six_requests_per_minute_per_thousand_tpm_over_ten_seconds_whoever_sends_them() {
    // 1 000 TPM: 6 RPM, one request per 10 s, for the deployment (both routes, every token).
    let emulator =
        Emulator::start(EmulatorConfig { tokens_per_minute: Some(1000), ..Default::default() }).await.unwrap();
    let first = openai_bearer(&emulator).await;
    let second = openai_bearer(&emulator).await;
    let (status, headers, _) = chat(&emulator, DATED, Some(&first), &summarize("hi")).await;
    assert_eq!((status, headers["x-ratelimit-remaining-requests"].to_str().unwrap()), (200, "0"));
    let mut on_v1 = summarize("hi");
    on_v1["model"] = json!("gpt-4o-mini");
    let (status, headers, answer) = chat(&emulator, "/openai/v1/chat/completions", Some(&second), &on_v1).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(headers["policy-id"], "DeploymentRatelimit-Call");
    let wait: u64 = headers["retry-after-ms"].to_str().unwrap().parse().unwrap();
    assert!((9_000..=10_000).contains(&wait), "{wait}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("have exceeded call rate limit"), "{answer}");
    assert_eq!(emulator.stats().throttled_requests, 1);
}

#[tokio::test]
async fn the_control_api_drives_the_same_state() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let base = format!("{}/_emulator", emulator.endpoint());
    let c = client();
    c.put(format!("{base}/faults"))
        .json(&json!({"script": [{"kind": "server_error"}]}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    c.put(format!("{base}/role")).json(&json!({"assigned": true})).send().await.unwrap().error_for_status().unwrap();
    c.put(format!("{base}/token-lifetime"))
        .json(&json!({"seconds": 0.5}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let bearer = openai_bearer(&emulator).await;
    assert_eq!(chat(&emulator, DATED, Some(&bearer), &summarize("hi")).await.0, 500);
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(chat(&emulator, DATED, Some(&bearer), &summarize("hi")).await.0, 401, "a 0.5 s token expired");
    c.put(format!("{base}/identity-failure"))
        .json(&json!({"status": 503}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let url =
        format!("{}?api-version=2019-08-01&resource=https://cognitiveservices.azure.com", emulator.identity_endpoint());
    let response = c.get(&url).header("x-identity-header", emulator.identity_header()).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.json::<Value>().await.unwrap()["error"].is_object());
    let stats: emulator::Stats = c.get(format!("{base}/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!((stats.server_errors, stats.expired_tokens, stats.identity_requests), (1, 1, 2));
    c.post(format!("{base}/reset")).send().await.unwrap().error_for_status().unwrap();
    assert_eq!(emulator.stats(), emulator::Stats::default());
    assert!(emulator.requests().is_empty());
}

fn v1(model: &str, extra: Value) -> Value {
    let mut body = classify("my invoice is wrong", &["billing", "sales"], false);
    body["model"] = json!(model);
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

const V1: &str = "/openai/v1/chat/completions";

#[tokio::test]
async fn reasoning_models_refuse_what_the_service_refuses_with_its_bodies() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let bearer = openai_bearer(&emulator).await;
    let error = |body: &Value| (body["error"]["code"].clone(), body["error"]["param"].clone());
    let (status, _, body) = chat(&emulator, V1, Some(&bearer), &v1("gpt-5-mini", json!({"max_tokens": 50}))).await;
    assert_eq!((status, error(&body)), (400, (json!("unsupported_parameter"), json!("max_tokens"))));
    assert_eq!(
        body["error"]["message"],
        "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
    );
    let (status, _, body) = chat(&emulator, V1, Some(&bearer), &v1("gpt-5-mini", json!({"temperature": 0.2}))).await;
    assert_eq!((status, error(&body)), (400, (json!("unsupported_value"), json!("temperature"))));
    assert!(body["error"]["message"].as_str().unwrap().contains("Only the default (1) value is supported."));
    for param in ["top_p", "presence_penalty", "frequency_penalty", "logprobs"] {
        let (status, _, body) = chat(&emulator, V1, Some(&bearer), &v1("gpt-5.4-mini", json!({param: 1}))).await;
        assert_eq!((status, error(&body)), (400, (json!("unsupported_parameter"), json!(param))));
    }
    // gpt-5.1 and later: `minimal` is rejected, `none` is the lowest.
    let (status, _, body) =
        chat(&emulator, V1, Some(&bearer), &v1("gpt-5.4-mini", json!({"reasoning_effort": "minimal"}))).await;
    assert_eq!((status, error(&body)), (400, (json!("unsupported_value"), json!("reasoning_effort"))));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("Supported values are: 'none', 'low', 'medium', and 'high'.")
    );
    // gpt-5-mini: `none` is rejected, `minimal` is the lowest.
    let (status, _, body) =
        chat(&emulator, V1, Some(&bearer), &v1("gpt-5-mini", json!({"reasoning_effort": "none"}))).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("'minimal', 'low', 'medium', and 'high'"));
    // A model that does not reason refuses the argument.
    let (status, _, body) =
        chat(&emulator, V1, Some(&bearer), &v1("gpt-4o-mini", json!({"reasoning_effort": "low"}))).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error": {"message": "Unrecognized request argument supplied: reasoning_effort", "type": "invalid_request_error", "param": null, "code": null}})
        )
    );
    // The dated route serves reasoning models from 2024-12-01-preview only; v1 serves them all.
    let old = "/openai/deployments/gpt-5-mini/chat/completions?api-version=2024-10-21";
    let (status, _, body) = chat(&emulator, old, Some(&bearer), &summarize(ARTICLE)).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error": {"code": "BadRequest", "message": "Model gpt-5-mini is enabled only for api versions 2024-12-01-preview and later"}})
        )
    );
    let new = "/openai/deployments/gpt-5-mini/chat/completions?api-version=2025-04-01-preview";
    let (status, _, _) = chat(&emulator, new, Some(&bearer), &summarize(ARTICLE)).await;
    assert_eq!(status, 200);
    assert_eq!(emulator.stats().model_refusals, 10);
}

#[tokio::test]
async fn reasoning_spends_hidden_tokens_inside_the_budget_and_may_starve_the_answer() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let bearer = openai_bearer(&emulator).await;
    // gpt-5-mini at its default (medium) effort spends a classify call's whole budget reasoning.
    let (status, _, body) = chat(&emulator, V1, Some(&bearer), &v1("gpt-5-mini", json!({}))).await;
    assert_eq!(status, 200);
    assert_eq!(body["model"], "gpt-5-mini-2025-08-07");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["choices"][0]["message"]["content"], "");
    assert_eq!(body["usage"]["completion_tokens"], 60);
    assert_eq!(body["usage"]["completion_tokens_details"]["reasoning_tokens"], 60);
    // At `minimal` the label fits, and the reasoning tokens are reported.
    let (_, _, body) =
        chat(&emulator, V1, Some(&bearer), &v1("gpt-5-mini", json!({"reasoning_effort": "minimal"}))).await;
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let answer: Value = serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(answer["label"], "billing");
    let details = &body["usage"]["completion_tokens_details"]["reasoning_tokens"];
    assert!(details.as_u64().unwrap() > 0 && body["usage"]["completion_tokens"].as_u64() > details.as_u64());
    // gpt-5.4-mini reasons at `none` by default; `low` spends tokens and cuts a tight answer.
    let (_, _, body) = chat(&emulator, V1, Some(&bearer), &v1("gpt-5.4-mini", json!({}))).await;
    assert_eq!(
        (
            body["choices"][0]["finish_reason"].as_str(),
            body["usage"]["completion_tokens_details"]["reasoning_tokens"].as_u64()
        ),
        (Some("stop"), Some(0))
    );
    let tight = v1("gpt-5.4-mini", json!({"reasoning_effort": "low", "max_completion_tokens": 100}));
    let (_, _, body) = chat(&emulator, V1, Some(&bearer), &tight).await;
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let cut = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!cut.is_empty() && serde_json::from_str::<Value>(cut).is_err(), "{cut}");
    // The markers force the two `length` outcomes on any model.
    let mut starved = summarize(&format!("{ARTICLE} [[emulator:starved]]"));
    starved["model"] = json!("gpt-4o-mini");
    let (_, _, body) = chat(&emulator, V1, Some(&bearer), &starved).await;
    assert_eq!(
        (body["choices"][0]["finish_reason"].as_str(), body["choices"][0]["message"]["content"].as_str()),
        (Some("length"), Some(""))
    );
    let mut cut = summarize(&format!("{ARTICLE} [[emulator:length]]"));
    cut["model"] = json!("gpt-4o-mini");
    let (_, _, body) = chat(&emulator, V1, Some(&bearer), &cut).await;
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert!(!body["choices"][0]["message"]["content"].as_str().unwrap().is_empty());
    let stats = emulator.stats();
    assert_eq!(stats.length_finishes, 4);
    assert!(stats.reasoning_tokens >= 60 + 96);
}
