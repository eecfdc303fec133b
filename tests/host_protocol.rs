//! The host protocol: queue invocations in every encoding the host uses, malformed payloads,
//! readiness, start-up failures and graceful shutdown, all against the real binary.

mod common;

use std::time::Duration;

use common::*;
use emulator::Faults;
use serde_json::{Value, json};

fn summarize_job(id: &str) -> String {
    json!({"id": id, "task": "summarize", "input": {"text": ARTICLE, "max_words": 20}}).to_string()
}

#[tokio::test]
async fn a_queue_job_writes_its_result_to_blob_and_queue() {
    let (_emulator, handler) = started().await;
    let (status, body) = invoke_job(&handler, &summarize_job("job-1"), 1, None).await;
    assert_eq!(status, 200, "{body}");
    let result = written_result(&body);
    assert_eq!(result["id"], "job-1");
    assert_eq!(result["task"], "summarize");
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["attempts"], 1);
    assert!(result["output"]["summary"].as_str().unwrap().contains("budget"), "{result}");
    assert!(result["output"]["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert!(time_is_rfc3339(result["completed_at"].as_str().unwrap()), "{result}");
    assert!(body["Logs"].as_array().is_some_and(|l| !l.is_empty()), "{body}");

    let classify = json!({"id": "job-2", "task": "classify", "input": {"text": "The invoice is wrong", "labels": ["billing", "sales"]}});
    let (status, body) = invoke_job(&handler, &classify.to_string(), 1, None).await;
    assert_eq!(status, 200, "{body}");
    let result = written_result(&body);
    assert_eq!(
        (result["status"].as_str(), result["output"]["label"].as_str()),
        (Some("succeeded"), Some("billing")),
        "{result}"
    );
}

#[tokio::test]
async fn a_message_without_id_takes_the_queue_message_id() {
    let (_emulator, handler) = started().await;
    let message = json!({"task": "summarize", "input": {"text": ARTICLE}}).to_string();
    let (data, metadata) = emulator::host::queue_invocation(
        "job",
        &message,
        1,
        "3f2a0c1e-0000-4000-8000-000000000001",
        &[("existing_result", None)],
    );
    let (status, body) = read(handler.invoke("process_job", data, metadata).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(written_result(&body)["id"], "3f2a0c1e-0000-4000-8000-000000000001");
}

#[tokio::test]
async fn queue_messages_are_accepted_in_every_encoding() {
    let (_emulator, handler) = started().await;
    let metadata = json!({"DequeueCount": "1", "Id": "\"m\""});
    // One id per encoding: a second message with one id would be re-emitted, not run.
    for encoding in 0..3 {
        let message = summarize_job(&format!("enc-{encoding}"));
        let data = match encoding {
            0 => Value::String(serde_json::to_string(&message).unwrap()), // the host: JSON-encoded twice
            1 => Value::String(message.clone()),                          // singly encoded
            _ => serde_json::from_str(&message).unwrap(),                 // a plain object
        };
        let (status, body) =
            read(handler.invoke("process_job", json!({"job": data, "existing_result": null}), metadata.clone()).await)
                .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(written_result(&body)["status"], "succeeded");
    }
}

#[tokio::test]
async fn malformed_invocations_get_json_errors_and_the_process_keeps_serving() {
    let (emulator, handler) = started().await;
    let client = reqwest::Client::new();
    let bodies: [&[u8]; 5] = [b"", b"not json", b"[1,2]", br#"{"Data": 7}"#, br#"{"Data": {}, "Metadata": {}}"#];
    for body in bodies {
        let response =
            client.post(format!("{}/process_job", handler.base_url())).body(body.to_vec()).send().await.unwrap();
        let (status, answer) = read(response).await;
        assert_eq!(status, 400, "{}: {answer}", String::from_utf8_lossy(body));
        assert_error(&answer, "invalid_input");
    }
    // A payload without the trigger binding.
    let (status, answer) = read(handler.invoke("process_job", json!({"other": "x"}), json!({})).await).await;
    assert_eq!(status, 400, "{answer}");
    // An unknown function name.
    let (status, answer) = read(handler.invoke("no_such_function", json!({"x": 1}), json!({})).await).await;
    assert_eq!(status, 404, "{answer}");
    assert_error(&answer, "not_found");
    // Still serving.
    let (status, body) = invoke_job(&handler, &summarize_job("after"), 1, None).await;
    assert_eq!((status, written_result(&body)["status"].as_str()), (200, Some("succeeded")));
    assert_eq!(emulator.stats().chat_ok, 1);
}

#[tokio::test]
async fn a_malformed_message_gets_a_failed_result_not_a_retry() {
    let (emulator, handler) = started().await;
    for (message, field) in [
        ("not json at all", ""),
        (r#"{"id":"bad-1","task":"translate","input":{}}"#, "task"),
        (r#"{"id":"bad-2","task":"summarize","input":{"text":""}}"#, "input.text"),
    ] {
        let (status, body) = invoke_job(&handler, message, 1, None).await;
        assert_eq!(status, 200, "{body}");
        let result = written_result(&body);
        assert_eq!(result["status"], "failed", "{result}");
        assert_eq!(result["error"]["code"], "invalid_input");
        assert_eq!(result["error"]["field"].as_str().unwrap_or(""), field, "{result}");
    }
    assert_eq!(emulator.stats().chat_requests, 0);
}

#[tokio::test]
async fn readiness_answers_on_the_root() {
    let (_emulator, handler) = started().await;
    let response = reqwest::get(format!("{}/", handler.base_url())).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(handler.base_url().starts_with("http://127.0.0.1:"));
}

#[tokio::test]
async fn missing_or_invalid_settings_fail_at_start_up_naming_the_setting() {
    let emulator = emulator().await;
    let cases = [
        (HandlerEnv::managed_identity(&emulator).unset("AZURE_OPENAI_ENDPOINT"), "AZURE_OPENAI_ENDPOINT"),
        (HandlerEnv::managed_identity(&emulator).unset("AZURE_OPENAI_DEPLOYMENT"), "AZURE_OPENAI_DEPLOYMENT"),
        (
            HandlerEnv::managed_identity(&emulator).set("AZURE_OPENAI_ENDPOINT", "http://example.com"),
            "AZURE_OPENAI_ENDPOINT",
        ),
        (HandlerEnv::managed_identity(&emulator).set("AZURE_TOKEN_CREDENTIALS", "Nope"), "AZURE_TOKEN_CREDENTIALS"),
        (HandlerEnv::managed_identity(&emulator).set("AOAI_MAX_CONCURRENCY", "lots"), "AOAI_MAX_CONCURRENCY"),
    ];
    for (env, setting) in cases {
        let output = match env.try_spawn().await {
            Ok(_) => panic!("started despite a bad {setting}"),
            Err(output) => output,
        };
        let line = output.lines().find(|l| l.contains("configuration error")).unwrap_or_else(|| panic!("{output}"));
        assert!(line.contains(setting), "{line}");
    }
    let err =
        HandlerEnv::managed_identity(&emulator).set("AZURE_TOKEN_CREDENTIALS", "Nope").try_spawn().await.err().unwrap();
    assert!(err.contains("ManagedIdentityCredential, AzureCliCredential"), "lists the allowed values: {err}");
}

#[tokio::test]
async fn sigterm_finishes_in_flight_invocations() {
    let (emulator, mut handler) = started().await;
    emulator.set_faults(Faults { latency_ms: 1500, ..Faults::default() });
    let base = handler.base_url();
    let in_flight = tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(format!("{base}/api/summarize"))
            .header("content-type", "application/json")
            .body(json!({"text": ARTICLE}).to_string())
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = handler.terminate(Duration::from_secs(10)).await.expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert_eq!(in_flight.await.unwrap(), 200, "the in-flight request finished");
}

fn time_is_rfc3339(s: &str) -> bool {
    s.len() >= 20 && s.as_bytes()[4] == b'-' && s.contains('T') && (s.ends_with('Z') || s.contains('+'))
}
