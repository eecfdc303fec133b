//! One binary for every current deployment (contract v2), end to end through the real binary
//! and the emulator: a non-reasoning model (gpt-4o-mini), a reasoning model whose lowest
//! effort is `minimal` (gpt-5-mini) and one whose lowest is `none` (gpt-5.4-mini), with only
//! the endpoint, the deployment and the identity set. Also the `AOAI_REASONING_EFFORT`
//! override, `finish_reason: "length"`, the dated api-version gate, an unreadable 200, and
//! `handler doctor`'s report of the model.

mod common;

use common::*;
use emulator::host::HandlerProcess;
use emulator::{Emulator, EmulatorConfig, Fault, Faults};
use serde_json::{Value, json};

const TICKET: &str = "My invoice shows a billing error: I was charged twice for the same order.";

/// Only the endpoint, the identity and `deployment` set; a test adds what differs.
fn on(emulator: &Emulator, deployment: &str) -> HandlerEnv {
    HandlerEnv::managed_identity(emulator).set("AZURE_OPENAI_DEPLOYMENT", deployment)
}

async fn handler_for(emulator: &Emulator, deployment: &str) -> HandlerProcess {
    on(emulator, deployment).spawn().await
}

/// Summarises `ARTICLE`, expecting the configuration error; returns its message.
async fn configuration_error(handler: &HandlerProcess) -> String {
    let (status, body) = post_json(handler, "/api/summarize", &json!({"text": ARTICLE})).await;
    assert_eq!(status, 500, "{body}");
    assert_error(&body, "configuration_error");
    body["error"]["message"].as_str().unwrap().to_owned()
}

/// Summarise, classify (single and multi-label) and a queue job; returns the usages.
async fn every_job(handler: &HandlerProcess, model: &str) -> Vec<Value> {
    let (status, body) = post_json(handler, "/api/summarize", &json!({"text": ARTICLE, "max_words": 30})).await;
    assert_eq!(status, 200, "{model}: {body}");
    assert!(body["summary"].as_str().unwrap().contains("budget"), "{model}: {body}");
    assert_eq!(body["model"], model);
    assert!(body.get("truncated").is_none(), "{body}");
    let mut usages = vec![body["usage"].clone()];

    let labels = json!(["billing", "technical support", "sales"]);
    let (status, body) = post_json(handler, "/api/classify", &json!({"text": TICKET, "labels": labels})).await;
    assert_eq!(status, 200, "{model}: {body}");
    assert_eq!(body["label"], "billing", "{body}");
    usages.push(body["usage"].clone());

    let multi = json!({"text": TICKET, "labels": labels, "multi_label": true});
    let (status, body) = post_json(handler, "/api/classify", &multi).await;
    assert_eq!(status, 200, "{model}: {body}");
    assert!(body["labels"].as_array().is_some_and(|l| l.contains(&json!("billing"))), "{body}");
    usages.push(body["usage"].clone());

    let job = json!({"id": format!("job-{model}"), "task": "classify", "input": {"text": TICKET, "labels": labels}});
    let (status, body) = invoke_job(handler, &job.to_string(), 1, None).await;
    assert_eq!(status, 200, "{body}");
    let result = written_result(&body);
    assert_eq!((result["status"].as_str(), result["output"]["label"].as_str()), (Some("succeeded"), Some("billing")));
    usages.push(result["output"]["usage"].clone());
    usages
}

#[tokio::test]
async fn one_binary_serves_every_kind_of_deployment_with_no_400_after_the_first_call() {
    let emulator = emulator().await;
    // (deployment, reported model, effort settled on: None = the model does not reason)
    let cases = [
        ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", None),
        ("gpt-5-mini", "gpt-5-mini-2025-08-07", Some("minimal")),
        ("gpt-5.4-mini", "gpt-5.4-mini-2026-03-17", Some("none")),
    ];
    for (deployment, model, effort) in cases {
        emulator.reset_stats();
        let handler = handler_for(&emulator, deployment).await;
        let usages = every_job(&handler, model).await;
        let requests = emulator.requests();
        let stats = emulator.stats();
        // gpt-5-mini accepts the first call's `minimal`; the others refuse it once, on the first call.
        let probes = u64::from(deployment != "gpt-5-mini");
        assert_eq!((stats.model_refusals, stats.chat_requests, stats.chat_ok), (probes, 4 + probes, 4), "{deployment}");
        assert_eq!(stats.length_finishes, 0, "{deployment}: no answer was cut off");
        for (i, request) in requests.iter().enumerate() {
            let body = &request.body;
            assert_eq!(request.path, "/openai/v1/chat/completions", "{deployment}");
            assert_eq!(body["model"], deployment);
            for forbidden in ["max_tokens", "temperature", "top_p", "presence_penalty", "frequency_penalty", "logprobs"]
            {
                assert!(body.get(forbidden).is_none(), "{deployment}: {forbidden} sent: {body}");
            }
            let sent = body["reasoning_effort"].as_str();
            if i == 0 {
                assert_eq!(sent, Some("minimal"), "{deployment}: the first call probes with the lowest effort");
            } else {
                assert_eq!(sent, effort, "{deployment}: request {i}");
            }
        }
        for usage in &usages {
            let reasoning = usage["reasoning_tokens"].as_u64();
            assert!(reasoning.is_some(), "{deployment}: reasoning tokens reported: {usage}");
            if deployment == "gpt-5-mini" {
                assert!(reasoning.unwrap() > 0, "{usage}");
            }
        }
        let mut handler = handler;
        handler.terminate(std::time::Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn without_a_reasoning_effort_a_reasoning_model_starves_and_the_handler_never_lets_that_through() {
    // What the service does with a classify budget and no effort: the whole budget on reasoning.
    let emulator = emulator().await;
    let handler = on(&emulator, "gpt-5-mini").set("AOAI_REASONING_EFFORT", "medium").spawn().await;
    // At `medium` the budget still leaves room for the label: no call is cut off.
    let (status, body) =
        post_json(&handler, "/api/classify", &json!({"text": TICKET, "labels": ["billing", "sales"]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["reasoning_tokens"], 384);
    let request = &emulator.requests()[0];
    assert_eq!(request.body["reasoning_effort"], "medium");
    assert!(request.body["max_completion_tokens"].as_u64().unwrap() > 384 + 40, "{}", request.body);
    assert_eq!((emulator.stats().model_refusals, emulator.stats().length_finishes), (0, 0));
}

#[tokio::test]
async fn a_configured_effort_the_model_refuses_is_a_configuration_error_naming_the_setting() {
    let emulator = emulator().await;
    let handler = on(&emulator, "gpt-5.4-mini").set("AOAI_REASONING_EFFORT", "minimal").spawn().await;
    let message = configuration_error(&handler).await;
    assert!(message.contains("AOAI_REASONING_EFFORT") && message.contains("none, low, medium, high"), "{message}");
    assert_eq!(emulator.stats().chat_requests, 1, "not retried");
    // A setting outside the five values stops start-up with one line naming it.
    let refused = HandlerEnv::managed_identity(&emulator).set("AOAI_REASONING_EFFORT", "max").try_spawn().await;
    let error = refused.err().expect("start-up fails");
    assert!(error.contains("AOAI_REASONING_EFFORT"), "{error}");
}

#[tokio::test]
async fn a_dated_api_version_too_old_for_the_model_names_the_setting_and_the_fix() {
    let emulator = emulator().await;
    let handler = on(&emulator, "gpt-5-mini").set("AZURE_OPENAI_API_VERSION", "2024-10-21").spawn().await;
    let message = configuration_error(&handler).await;
    assert!(message.contains("AZURE_OPENAI_API_VERSION is `2024-10-21`") && message.contains("`v1`"), "{message}");
    assert!(message.contains("2024-12-01-preview"), "{message}");
    // A dated version recent enough serves it.
    let handler = on(&emulator, "gpt-5-mini").set("AZURE_OPENAI_API_VERSION", "2025-04-01-preview").spawn().await;
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": ARTICLE})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_cut_off_summary_is_retried_with_a_larger_budget_then_marked_truncated() {
    let emulator = emulator().await;
    let handler = handler_for(&emulator, "gpt-5.4-mini").await;
    // Cut off once: the retry with twice the budget completes it; usage counts both calls.
    emulator.set_faults(Faults { script: vec![Fault::Length], ..Faults::default() });
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": ARTICLE})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("truncated").is_none(), "{body}");
    let sent: Vec<u64> =
        emulator.requests().iter().filter_map(|r| r.body["max_completion_tokens"].as_u64()).skip(1).collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[1], sent[0] * 2, "twice the budget");
    // Cut off every time: returned with `truncated: true`, never silently.
    let text = format!("{ARTICLE} [[emulator:length]]");
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": text})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["truncated"], true, "{body}");
    assert!(!body["summary"].as_str().unwrap().is_empty());
    // All of the budget spent on reasoning: an empty answer is never a 200 summary.
    let text = format!("{ARTICLE} [[emulator:starved]]");
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": text})).await;
    assert_eq!(status, 502, "{body}");
    assert_error(&body, "upstream_incomplete");
}

#[tokio::test]
async fn a_cut_off_classification_is_retried_then_fails_as_transient_upstream_incomplete() {
    let emulator = emulator().await;
    let handler = on(&emulator, "gpt-5-mini")
        .set("AzureFunctionsJobHost__extensions__queues__maxDequeueCount", "2")
        .spawn()
        .await;
    let input = json!({"text": format!("{TICKET} [[emulator:length]]"), "labels": ["billing", "sales"]});
    let (status, body) = post_json(&handler, "/api/classify", &input).await;
    assert_eq!(status, 502, "{body}");
    assert_error(&body, "upstream_incomplete");
    assert_eq!(emulator.stats().length_finishes, 2, "cut off, retried once with a larger budget, cut off again");
    // On the queue it is transient: redelivered, and recorded on the last allowed delivery.
    let job = json!({"id": "cut", "task": "classify", "input": input}).to_string();
    let (status, _) = invoke_job(&handler, &job, 1, None).await;
    assert_eq!(status, 500, "redeliver");
    let (status, body) = invoke_job(&handler, &job, 2, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(written_result(&body)["error"]["code"], "upstream_incomplete");
    // Cut off once only: the retry's label is returned.
    emulator.set_faults(Faults { script: vec![Fault::Length], ..Faults::default() });
    let (status, body) =
        post_json(&handler, "/api/classify", &json!({"text": TICKET, "labels": ["billing", "sales"]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["label"], "billing");
}

#[tokio::test]
async fn a_200_that_cannot_be_read_is_never_sent_again() {
    let emulator = emulator().await;
    let handler = handler_for(&emulator, "gpt-5-mini").await;
    emulator.set_faults(Faults { script: vec![Fault::UnreadableAnswer], ..Faults::default() });
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": ARTICLE})).await;
    assert_eq!(status, 500, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("not sent again"), "{body}");
    assert_eq!(emulator.stats().chat_requests, 1, "a charged 200 is not retried");
    // On the queue it is permanent: a failed Result at once, no redelivery to pay for again.
    emulator.set_faults(Faults { script: vec![Fault::UnreadableAnswer], ..Faults::default() });
    let job = json!({"id": "unreadable", "task": "summarize", "input": {"text": ARTICLE}}).to_string();
    let (status, body) = invoke_job(&handler, &job, 1, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(written_result(&body)["status"], "failed");
}

/// Runs `handler doctor` with only the endpoint, the deployment and the identity set.
async fn doctor(emulator: &Emulator, deployment: &str, api_version: Option<&str>) -> (i32, String) {
    let mut command = tokio::process::Command::new(handler_bin());
    command.arg("doctor").env("AZURE_OPENAI_ENDPOINT", emulator.endpoint());
    command.env("AZURE_OPENAI_DEPLOYMENT", deployment).env("NO_PROXY", "127.0.0.1,localhost");
    command.env("IDENTITY_ENDPOINT", emulator.identity_endpoint()).env("IDENTITY_HEADER", emulator.identity_header());
    for name in ["AZURE_CLIENT_ID", "AZURE_TOKEN_CREDENTIALS", "AOAI_REASONING_EFFORT", "FUNCTIONS_CUSTOMHANDLER_PORT"]
    {
        command.env_remove(name);
    }
    match api_version {
        Some(v) => command.env("AZURE_OPENAI_API_VERSION", v),
        None => command.env_remove("AZURE_OPENAI_API_VERSION"),
    };
    let output = command.output().await.expect("doctor runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn doctor_reports_the_model_whether_it_reasons_and_the_effort_and_warns_on_a_dated_version() {
    let emulator = emulator().await;
    let (code, out) = doctor(&emulator, "gpt-5.4-mini", None).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("✔ model") && out.contains("gpt-5.4-mini-2026-03-17: a reasoning model"), "{out}");
    assert!(out.contains("reasoning_effort `none` (the lowest it accepts"), "{out}");
    assert!(!out.contains("! api"), "no warning on v1:\n{out}");
    let (code, out) = doctor(&emulator, "gpt-4o-mini", None).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("gpt-4o-mini-2024-07-18: not a reasoning model"), "{out}");
    // A dated version: a warning with the fix, not a failure when the model is served.
    let (code, out) = doctor(&emulator, "gpt-5-mini", Some("2025-04-01-preview")).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("! api") && out.contains("AZURE_OPENAI_API_VERSION=v1"), "{out}");
    assert!(out.contains("reasoning_effort `minimal`"), "{out}");
    // Too old for the model: the chat step fails naming the setting.
    let (code, out) = doctor(&emulator, "gpt-5-mini", Some("2024-10-21")).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("✘ chat") && out.contains("AZURE_OPENAI_API_VERSION is `2024-10-21`"), "{out}");
}

#[tokio::test]
async fn concurrent_first_calls_wait_for_one_probe_so_only_one_400_is_ever_seen() {
    let emulator = emulator().await;
    let handler = handler_for(&emulator, "gpt-5.4-mini").await;
    let body = json!({"text": TICKET, "labels": ["billing", "sales"]});
    let call = || post_json(&handler, "/api/classify", &body);
    // Six first calls at once: one probes, the others wait for what it learns.
    let answers = tokio::join!(call(), call(), call(), call(), call(), call());
    for (status, answer) in [answers.0, answers.1, answers.2, answers.3, answers.4, answers.5] {
        assert_eq!(status, 200, "{answer}");
    }
    let stats = emulator.stats();
    assert_eq!((stats.model_refusals, stats.chat_ok), (1, 6), "{stats:?}");
    assert!(stats.max_concurrent_chat >= 1);
}

#[tokio::test]
async fn a_long_document_on_a_reasoning_model_leaves_room_for_reasoning_in_every_part() {
    // gpt-5-mini at `medium` (a 4 096-token reasoning reserve) with an 8 192-token window set up
    // front, and a text of about 4 200 tokens: it fits one call only if the reserve is forgotten (then
    // the service refuses it as too long). Every
    // part's size counts the reserve, so none is refused as too long and none is cut off.
    let window = 8_192;
    let config = EmulatorConfig { context_tokens: vec![("gpt-5-mini".into(), window)], ..Default::default() };
    let emulator = emulator_with(config).await;
    let handler = on(&emulator, "gpt-5-mini")
        .set("AOAI_CONTEXT_TOKENS", window.to_string())
        .set("AOAI_REASONING_EFFORT", "medium")
        .spawn()
        .await;
    let text = ARTICLE.repeat(60);
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": text, "max_words": 60})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["parts"].as_u64().unwrap() > 1, "{body}");
    assert!(body["usage"]["reasoning_tokens"].as_u64().unwrap() > 0, "{body}");
    let stats = emulator.stats();
    assert_eq!((stats.context_length_exceeded, stats.length_finishes, stats.model_refusals), (0, 0, 0), "{stats:?}");
    for request in emulator.requests() {
        assert_eq!(request.body["reasoning_effort"], "medium");
        let size = request_tokens(&request.body);
        assert!(size <= window, "a call of {size} tokens for a window of {window}");
    }
}
