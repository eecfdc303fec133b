//! Batch jobs that never lose work: the async job API (submit, poll), permanent vs transient
//! failures across deliveries (`DequeueCount` rising), the last-delivery Result, and
//! idempotent redelivery — the real binary driven with the host's invocation payloads.

mod common;

use common::*;
use emulator::Faults;
use emulator::host::{HandlerProcess, http_invocation};
use serde_json::{Value, json};

async fn submit(handler: &HandlerProcess, body: &Value) -> (u16, Value, Value) {
    let text = body.to_string();
    let (data, metadata) = http_invocation("POST", "http://localhost:7071/api/jobs", &[], Some(&text), &[]);
    let (status, invocation) = read(handler.invoke("submit_jobs", data, metadata).await).await;
    assert_eq!(status, 200, "the invocation itself succeeds: {invocation}");
    let res = &invocation["Outputs"]["res"];
    let http_status = res["statusCode"].as_u64().unwrap() as u16;
    let http_body: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
    (http_status, http_body, invocation["Outputs"]["outjobs"].clone())
}

async fn poll(handler: &HandlerProcess, id: &str, blob: Option<&str>) -> (u16, Value) {
    let url = format!("http://localhost:7071/api/jobs/{id}");
    let (data, metadata) = http_invocation("GET", &url, &[("id", id)], None, &[("result", blob)]);
    let (status, invocation) = read(handler.invoke("get_job", data, metadata).await).await;
    assert_eq!(status, 200, "{invocation}");
    let res = &invocation["Outputs"]["res"];
    assert_eq!(res["headers"]["Content-Type"], "application/json");
    (res["statusCode"].as_u64().unwrap() as u16, serde_json::from_str(res["body"].as_str().unwrap()).unwrap())
}

#[tokio::test]
async fn submit_process_and_poll_a_batch() {
    let (_emulator, handler) = started().await;
    let jobs = json!({"jobs": [
        {"task": "summarize", "input": {"text": ARTICLE, "max_words": 20}},
        {"id": "mine-1", "task": "classify", "input": {"text": "the invoice is wrong", "labels": ["billing", "sales"]}},
    ]});
    let (status, body, outjobs) = submit(&handler, &jobs).await;
    assert_eq!(status, 202, "{body}");
    let accepted = body["accepted"].as_array().unwrap();
    assert_eq!(accepted.len(), 2);
    assert_eq!(accepted[1]["id"], "mine-1");
    let generated = accepted[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(accepted[0]["status_url"], format!("/api/jobs/{generated}"));
    let messages = outjobs.as_array().expect("one queue message per job");
    assert_eq!(messages.len(), 2);

    // Before the worker ran: 404.
    let (status, body) = poll(&handler, &generated, None).await;
    assert_eq!(status, 404, "{body}");
    assert_error(&body, "not_found");

    for (message, id) in messages.iter().zip([generated.as_str(), "mine-1"]) {
        let message = message.as_str().unwrap();
        assert_eq!(serde_json::from_str::<Value>(message).unwrap()["id"], id);
        let (status, invocation) = invoke_job(&handler, message, 1, None).await;
        assert_eq!(status, 200);
        let blob = invocation["Outputs"]["result_blob"].as_str().unwrap().to_owned();
        let (status, result) = poll(&handler, id, Some(&blob)).await;
        assert_eq!(status, 200, "{result}");
        assert_eq!((result["id"].as_str(), result["status"].as_str()), (Some(id), Some("succeeded")));
    }
}

#[tokio::test]
async fn a_single_job_can_be_submitted_without_the_batch_wrapper() {
    let (_emulator, handler) = started().await;
    let (status, body, outjobs) = submit(&handler, &json!({"task": "summarize", "input": {"text": ARTICLE}})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(outjobs.as_array().unwrap().len(), 1);
    assert_eq!(body["status_url"], format!("/api/jobs/{}", body["accepted"][0]["id"].as_str().unwrap()));
}

#[tokio::test]
async fn an_invalid_job_rejects_the_whole_batch_naming_index_and_field() {
    let (_emulator, handler) = started().await;
    let jobs = json!({"jobs": [
        {"task": "summarize", "input": {"text": "fine"}},
        {"task": "summarize", "input": {"text": "fine", "max_words": 3}},
        {"task": "classify", "input": {"text": "t", "labels": ["a"]}},
    ]});
    let (status, body, outjobs) = submit(&handler, &jobs).await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "invalid_input");
    assert_eq!(body["error"]["index"], 1);
    assert_eq!(body["error"]["field"], "jobs[1].input.max_words");
    assert_eq!(body["errors"].as_array().unwrap().len(), 2, "every invalid job is listed");
    assert!(outjobs.is_null(), "nothing is enqueued: {outjobs}");

    let cases = [
        (json!({"jobs": []}), "jobs"),
        (json!({"jobs": "x"}), "jobs"),
        (json!({"jobs": vec![json!({"task": "summarize", "input": {"text": "t"}}); 1001]}), "jobs"),
        (
            json!({"jobs": [{"id": "a", "task": "summarize", "input": {"text": "t"}}, {"id": "a", "task": "summarize", "input": {"text": "t"}}]}),
            "jobs[1].id",
        ),
        (json!({"task": "summarize", "input": {"text": "x".repeat(60_000)}}), "jobs[0].input"),
    ];
    for (body, field) in cases {
        let (status, answer, outjobs) = submit(&handler, &body).await;
        assert!(status == 400 || status == 413, "{status}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
        assert!(outjobs.is_null());
    }
}

#[tokio::test]
async fn polling_validates_the_id() {
    let (_emulator, handler) = started().await;
    let (status, body) = poll(&handler, "../../etc", None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "id");
}

#[tokio::test]
async fn permanent_failures_write_a_failed_result_at_once() {
    let (emulator, handler) = started().await;
    let cases = [
        (
            json!({"id": "cf", "task": "summarize", "input": {"text": "[[emulator:content_filter]] x"}}),
            "content_filtered",
        ),
        (
            json!({"id": "bl", "task": "classify", "input": {"text": "[[emulator:bad_label]] x", "labels": ["a", "b"]}}),
            "internal",
        ),
        (json!({"id": "iv", "task": "classify", "input": {"text": "x", "labels": "a"}}), "invalid_input"),
    ];
    for (message, code) in cases {
        let (status, body) = invoke_job(&handler, &message.to_string(), 1, None).await;
        assert_eq!(status, 200, "{body}");
        let result = written_result(&body);
        assert_eq!(
            (result["status"].as_str(), result["error"]["code"].as_str()),
            (Some("failed"), Some(code)),
            "{result}"
        );
        assert_eq!(result["id"], message["id"]);
        assert_eq!(result["attempts"], 1);
    }
    let stats = emulator.stats();
    // Plus the process's one `reasoning_effort` probe (refused by gpt-4o-mini).
    assert_eq!((stats.chat_requests, stats.model_refusals), (3, 1), "one call each for the two valid jobs, no retries");
}

/// Issue 12, item 9: a missing deployment was permanent on the first delivery, although a new
/// deployment takes minutes to appear (the error says so): redelivered, recorded on the last.
#[tokio::test]
async fn a_deployment_that_does_not_exist_is_redelivered_then_recorded() {
    let emulator = emulator().await;
    let handler = HandlerEnv::managed_identity(&emulator)
        .set("AZURE_OPENAI_DEPLOYMENT", "missing")
        .set("AzureFunctionsJobHost__extensions__queues__maxDequeueCount", "2")
        .spawn()
        .await;
    let message = json!({"id": "nd", "task": "summarize", "input": {"text": ARTICLE}}).to_string();
    let (status, body) = invoke_job(&handler, &message, 1, None).await;
    assert_eq!(status, 500, "the host redelivers: {body}");
    assert_eq!(body["error"]["code"], "deployment_not_found", "{body}");
    let (status, body) = invoke_job(&handler, &message, 2, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(written_result(&body)["error"]["code"], "deployment_not_found");
}

#[tokio::test]
async fn transient_failures_are_redelivered_until_the_last_delivery_writes_a_result() {
    let emulator = emulator().await;
    let handler = HandlerEnv::managed_identity(&emulator)
        .set("AzureFunctionsJobHost__extensions__queues__maxDequeueCount", "3")
        .spawn()
        .await;
    emulator.set_faults(Faults { throttle_rate: 1.0, retry_after_ms: 10, ..Faults::default() });
    let message = json!({"id": "busy", "task": "summarize", "input": {"text": ARTICLE}}).to_string();
    for delivery in 1..3 {
        let (status, body) = invoke_job(&handler, &message, delivery, None).await;
        assert_eq!(status, 500, "delivery {delivery} fails so the host redelivers: {body}");
        assert_error(&body, "upstream_throttled");
    }
    let (status, body) = invoke_job(&handler, &message, 3, None).await;
    assert_eq!(status, 200, "{body}");
    let result = written_result(&body);
    assert_eq!((result["status"].as_str(), result["attempts"].as_u64()), (Some("failed"), Some(3)));
    assert_eq!(result["error"]["code"], "upstream_throttled");
    assert!(result["error"]["message"].as_str().unwrap().contains("gave up after 3 deliveries"), "{result}");

    // The storm passes: a later delivery of another job succeeds.
    emulator.set_faults(Faults::default());
    let (status, body) = invoke_job(&handler, &message.replace("busy", "calm"), 2, None).await;
    assert_eq!(status, 200);
    assert_eq!(written_result(&body)["attempts"], 2);
}

#[tokio::test]
async fn a_wait_longer_than_the_invocation_budget_hands_the_message_back_at_once() {
    let emulator = emulator().await;
    let handler =
        HandlerEnv::managed_identity(&emulator).set("AzureFunctionsJobHost__functionTimeout", "00:00:05").spawn().await;
    emulator.set_faults(Faults { throttle_rate: 1.0, retry_after_ms: 86_400_000, ..Faults::default() });
    let (status, body) = invoke_job(
        &handler,
        &json!({"id": "daily", "task": "summarize", "input": {"text": ARTICLE}}).to_string(),
        1,
        None,
    )
    .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(emulator.stats().throttled, 1, "no waiting out a day-long retry-after");
}

#[tokio::test]
async fn permission_denied_is_retried_by_redelivery_then_recorded() {
    let emulator = emulator().await;
    let handler = HandlerEnv::managed_identity(&emulator)
        .set("AzureFunctionsJobHost__extensions__queues__maxDequeueCount", "2")
        .spawn()
        .await;
    emulator.set_role_assigned(false);
    let message = json!({"id": "rbac", "task": "summarize", "input": {"text": ARTICLE}}).to_string();
    let (status, _) = invoke_job(&handler, &message, 1, None).await;
    assert_eq!(status, 500, "a role may still be propagating: redeliver");
    let (status, body) = invoke_job(&handler, &message, 2, None).await;
    assert_eq!(status, 200);
    let result = written_result(&body);
    assert_eq!(result["error"]["code"], "upstream_permission_denied");
    assert!(result["error"]["message"].as_str().unwrap().contains("Cognitive Services OpenAI User"), "{result}");
}

#[tokio::test]
async fn a_redelivered_job_that_already_succeeded_is_not_run_again() {
    let (emulator, handler) = started().await;
    let message = json!({"id": "once", "task": "summarize", "input": {"text": ARTICLE}}).to_string();
    let (_, first) = invoke_job(&handler, &message, 1, None).await;
    let stored = first["Outputs"]["result_blob"].as_str().unwrap().to_owned();
    assert_eq!(emulator.stats().chat_ok, 1);
    let (status, again) = invoke_job(&handler, &message, 2, Some(&stored)).await;
    assert_eq!(status, 200, "{again}");
    let outputs = again["Outputs"].as_object().unwrap();
    assert!(outputs.get("result_blob").is_none(), "the blob is not written again: {again}");
    assert_eq!(outputs["result_queue"].as_str(), Some(stored.as_str()), "the same Result, re-emitted: {again}");
    assert_eq!(emulator.stats().chat_ok, 1, "Azure OpenAI is not called again");
    assert_eq!(emulator.stats().chat_requests, 2, "the first call and its one reasoning_effort probe");

    // A stored *failed* Result (one written before digests) does not block a retry of the same id.
    let message = message.replace("\"once\"", "\"retry\"");
    let failed = json!({"id": "retry", "status": "failed", "error": {"code": "upstream_throttled", "message": "m"}, "attempts": 5, "completed_at": "2026-11-23T00:00:00Z"}).to_string();
    let (_, body) = invoke_job(&handler, &message, 1, Some(&failed)).await;
    assert_eq!(written_result(&body)["status"], "succeeded");
}
