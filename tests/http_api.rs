//! The forwarded HTTP API (`/api/summarize`, `/api/classify`) end to end: the real binary, the
//! emulator, and every error path of api.md.

mod common;

use common::*;
use emulator::{Fault, Faults};
use serde_json::json;

#[tokio::test]
async fn summarize_returns_a_summary_with_model_and_usage() {
    let (emulator, handler) = started().await;
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": ARTICLE, "max_words": 20})).await;
    assert_eq!(status, 200, "{body}");
    let summary = body["summary"].as_str().unwrap();
    assert!(summary.contains("budget"), "{summary}");
    assert!(summary.split_whitespace().count() <= 20, "{summary}");
    assert_eq!(body["model"], "gpt-4o-mini-2024-07-18");
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap())
    );

    // The default route is v1, with the deployment in `model`.
    let request = emulator.requests().pop().unwrap();
    assert_eq!(request.path, "/openai/v1/chat/completions");
    assert_eq!(request.body["model"], DEPLOYMENT);
    assert!(!request.query.contains("api-version"), "{}", request.query);
    assert!(request.body["max_completion_tokens"].as_u64().is_some(), "{}", request.body);
    assert_eq!(request.body["messages"][0]["role"], "system");
    assert!(request.body["messages"][0]["content"].as_str().unwrap().contains("20 words"));
}

#[tokio::test]
async fn classify_constrains_the_answer_to_the_labels() {
    let (emulator, handler) = started().await;
    let labels = json!(["billing", "technical support", "sales"]);
    let text = "My invoice shows a billing error: I was charged twice.";
    let (status, body) = post_json(&handler, "/api/classify", &json!({"text": text, "labels": labels})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["label"], "billing");
    assert_eq!(body["labels"], json!(["billing"]));
    let confidence = body["confidence"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&confidence));

    let request = emulator.requests().pop().unwrap();
    let format = &request.body["response_format"];
    assert_eq!(format["type"], "json_schema");
    assert_eq!(format["json_schema"]["strict"], true);
    assert_eq!(format["json_schema"]["schema"]["properties"]["label"]["enum"], labels);

    let (status, body) =
        post_json(&handler, "/api/classify", &json!({"text": text, "labels": labels, "multi_label": true})).await;
    assert_eq!(status, 200, "{body}");
    let chosen = body["labels"].as_array().unwrap();
    assert!(!chosen.is_empty() && chosen.iter().all(|l| labels.as_array().unwrap().contains(l)), "{body}");
    assert_eq!(body["label"], chosen[0]);
}

#[tokio::test]
async fn a_label_outside_the_set_is_never_passed_through() {
    let (_emulator, handler) = started().await;
    let body = json!({"text": "[[emulator:bad_label]] anything", "labels": ["a", "b"]});
    let (status, body) = post_json(&handler, "/api/classify", &body).await;
    assert_eq!(status, 500, "{body}");
    assert_error(&body, "internal");
    assert!(body["error"]["message"].as_str().unwrap().contains("not one of the requested labels"), "{body}");
}

#[tokio::test]
async fn only_a_bearer_token_is_ever_sent() {
    let (emulator, handler) = started().await;
    for _ in 0..3 {
        let (status, _) = post_json(&handler, "/api/summarize", &json!({"text": ARTICLE})).await;
        assert_eq!(status, 200);
    }
    let requests = emulator.requests();
    // The process's first call probes `reasoning_effort` once (gpt-4o-mini refuses it).
    assert_eq!((requests.len(), emulator.stats().model_refusals), (4, 1));
    for request in &requests {
        let names: Vec<&str> = request.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert!(!names.contains(&"api-key"), "{names:?}");
        let auth: Vec<&str> =
            request.headers.iter().filter(|(n, _)| n == "authorization").map(|(_, v)| v.as_str()).collect();
        assert_eq!(auth.len(), 1, "{names:?}");
        assert!(auth[0].starts_with("Bearer "), "{auth:?}");
    }
    assert_eq!(emulator.stats().api_key_requests, 0);
}

#[tokio::test]
async fn a_dated_api_version_selects_the_deployments_route() {
    let emulator = emulator().await;
    let handler = HandlerEnv::managed_identity(&emulator).set("AZURE_OPENAI_API_VERSION", "2024-10-21").spawn().await;
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": ARTICLE})).await;
    assert_eq!(status, 200, "{body}");
    let request = emulator.requests().pop().unwrap();
    assert_eq!(request.path, "/openai/deployments/gpt-4o-mini/chat/completions");
    assert!(request.query.contains("api-version=2024-10-21"), "{}", request.query);
    assert!(request.body.get("model").is_none(), "{}", request.body);
}

#[tokio::test]
async fn each_bad_input_gets_a_400_naming_the_field() {
    let (emulator, handler) = started().await;
    let long = "x".repeat(1_000_001);
    let cases = [
        ("/api/summarize", json!({}), "invalid_input", Some("text")),
        ("/api/summarize", json!({"text": ""}), "invalid_input", Some("text")),
        ("/api/summarize", json!({"text": 42}), "invalid_input", Some("text")),
        ("/api/summarize", json!({"text": long}), "payload_too_large", Some("text")),
        ("/api/summarize", json!({"text": "t", "max_words": 9}), "invalid_input", Some("max_words")),
        ("/api/summarize", json!({"text": "t", "max_words": 501}), "invalid_input", Some("max_words")),
        ("/api/summarize", json!({"text": "t", "style": "haiku"}), "invalid_input", Some("style")),
        ("/api/summarize", json!({"text": "t", "language": "not a tag"}), "invalid_input", Some("language")),
        ("/api/summarize", json!({"text": "t", "temperature": 1}), "invalid_input", Some("temperature")),
        ("/api/summarize", json!(["text"]), "invalid_input", Some("")),
        ("/api/classify", json!({"labels": ["a", "b"]}), "invalid_input", Some("text")),
        ("/api/classify", json!({"text": "t"}), "invalid_input", Some("labels")),
        ("/api/classify", json!({"text": "t", "labels": ["only"]}), "invalid_input", Some("labels")),
        ("/api/classify", json!({"text": "t", "labels": ["a", "a"]}), "invalid_input", Some("labels[1]")),
        ("/api/classify", json!({"text": "t", "labels": ["a", " "]}), "invalid_input", Some("labels[1]")),
        (
            "/api/classify",
            json!({"text": "t", "labels": ["a", "b"], "multi_label": 1}),
            "invalid_input",
            Some("multi_label"),
        ),
    ];
    for (path, body, code, field) in cases {
        let (status, answer) = post_json(&handler, path, &body).await;
        let expected = if code == "payload_too_large" { 413 } else { 400 };
        assert_eq!(status, expected, "{path} {body}: {answer}");
        assert_error(&answer, code);
        assert_eq!(answer["error"]["field"].as_str(), field, "{path}: {answer}");
    }
    // Not JSON, wrong media type, too large a body.
    let response = handler
        .forward(
            reqwest::Method::POST,
            "/api/summarize",
            &[("content-type", "application/json")],
            Some(b"{not json".to_vec()),
        )
        .await;
    let (status, answer) = read(response).await;
    assert_eq!(status, 400);
    assert_error(&answer, "invalid_input");
    let response = handler
        .forward(reqwest::Method::POST, "/api/summarize", &[("content-type", "text/plain")], Some(b"hello".to_vec()))
        .await;
    let (status, answer) = read(response).await;
    assert_eq!(status, 415);
    assert_error(&answer, "unsupported_media_type");
    let huge = vec![b' '; handler::functions::API_BODY_LIMIT + 1];
    let response = handler
        .forward(reqwest::Method::POST, "/api/summarize", &[("content-type", "application/json")], Some(huge))
        .await;
    let (status, answer) = read(response).await;
    assert_eq!(status, 413);
    assert_error(&answer, "payload_too_large");
    assert_eq!(emulator.stats().chat_requests, 0, "bad input never reaches Azure OpenAI");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let (_emulator, handler) = started().await;
    let (status, body) = read(handler.forward(reqwest::Method::POST, "/api/translate", &[], None).await).await;
    assert_eq!(status, 404);
    assert_error(&body, "not_found");
    let (status, body) = read(handler.forward(reqwest::Method::GET, "/api/summarize", &[], None).await).await;
    assert_eq!(status, 405, "{body}");
}

#[tokio::test]
async fn permission_denied_names_the_role_and_the_principal() {
    let (emulator, handler) = started().await;
    emulator.set_role_assigned(false);
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": ARTICLE})).await;
    assert_eq!(status, 502, "{body}");
    assert_error(&body, "upstream_permission_denied");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("Cognitive Services OpenAI User"), "{message}");
    assert!(message.contains("5-30 minutes"), "{message}");
    assert!(message.contains("5a1f0c5e-0000-4000-8000-00000000a11d"), "names the object id: {message}");
    assert!(message.contains("az role assignment create"), "{message}");
}

#[tokio::test]
async fn keys_disabled_says_this_app_sends_none() {
    let (emulator, handler) = started().await;
    emulator.set_faults(Faults { script: vec![Fault::AuthenticationTypeDisabled], ..Faults::default() });
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": ARTICLE})).await;
    assert_eq!(status, 502, "{body}");
    assert_error(&body, "upstream_auth_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("never sends an API key"), "{message}");
}

#[tokio::test]
async fn an_unknown_deployment_is_named() {
    let emulator = emulator().await;
    let handler = HandlerEnv::managed_identity(&emulator).set("AZURE_OPENAI_DEPLOYMENT", "gpt-typo").spawn().await;
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": ARTICLE})).await;
    assert_eq!(status, 502, "{body}");
    assert_error(&body, "deployment_not_found");
    assert!(body["error"]["message"].as_str().unwrap().contains("`gpt-typo`"), "{body}");
}

#[tokio::test]
async fn content_filtered_input_is_reported_not_retried() {
    let (emulator, handler) = started().await;
    // The message names the categories Azure flagged: the prompt's, or the withheld answer's.
    for (marker, category) in
        [("[[emulator:content_filter]]", "jailbreak"), ("[[emulator:content_filter_completion]]", "violence (medium)")]
    {
        let (status, body) =
            post_json(&handler, "/api/summarize", &json!({"text": format!("{marker} {ARTICLE}")})).await;
        assert_eq!(status, 422, "{body}");
        assert_error(&body, "content_filtered");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("categories: {category}")), "{message}");
    }
    let stats = emulator.stats();
    // One extra request: the process's first call probes `reasoning_effort` (refused by gpt-4o-mini).
    assert_eq!((stats.chat_requests, stats.model_refusals), (3, 1), "no retries of a permanent failure");
}

#[tokio::test]
async fn a_429_storm_is_retried_honouring_retry_after_ms() {
    let (emulator, handler) = started().await;
    let throttle = Fault::Throttle { retry_after_ms: 50 };
    emulator.set_faults(Faults {
        script: vec![throttle.clone(), throttle.clone(), throttle, Fault::ServerError],
        ..Faults::default()
    });
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": ARTICLE})).await;
    assert_eq!(status, 200, "{body}");
    let stats = emulator.stats();
    assert_eq!((stats.throttled, stats.server_errors, stats.chat_ok), (3, 1, 1));
}

#[tokio::test]
async fn throttling_beyond_the_budget_answers_429_with_retry_after() {
    let (emulator, handler) = started().await;
    // The server asks for a wait longer than AOAI_MAX_RETRY_WAIT_SECONDS allows per try, every time.
    emulator.set_faults(Faults { throttle_rate: 1.0, retry_after_ms: 20, ..Faults::default() });
    let response = post_json_response(&handler, "/api/summarize", &json!({"text": ARTICLE})).await;
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(retry_after.as_deref(), Some("1"), "the caller is told when to retry");
    let (status, body) = read(response).await;
    assert_eq!(status, 429, "{body}");
    assert_error(&body, "upstream_throttled");
    assert_eq!(emulator.stats().throttled, 6, "MAX_ATTEMPTS tries, then give up");
}
