//! Long documents end to end: the real binary against an emulated deployment with a 16 384-token
//! context window. Texts far beyond the window are summarised (map-reduce) and classified in
//! parts with no setting (the window is learned from the service's `context_length_exceeded`),
//! 1 000 000 characters go through the HTTP API and through `PUT /api/jobs/{id}` (blob output,
//! queue reference, blob input, exactly as the host binds them), and the limits answer 413.

mod common;

use std::path::Path;

use common::*;
use emulator::fixtures::chaptered_document;
use emulator::host::{Function, HandlerProcess, Storage};
use emulator::{Emulator, EmulatorConfig, Faults};
use serde_json::{Value, json};

const WINDOW: u64 = 16_384;

/// An emulated deployment with a 16 384-token window and a small latency.
async fn small_window() -> Emulator {
    let emulator =
        emulator_with(EmulatorConfig { context_tokens: vec![(DEPLOYMENT.into(), WINDOW)], ..Default::default() }).await;
    emulator.set_faults(Faults { latency_ms: 2, ..Default::default() });
    emulator
}

/// The chapter numbers a summary mentions.
fn chapters(summary: &str) -> Vec<usize> {
    summary.split("Chapter ").skip(1).filter_map(|rest| rest.split(' ').next()?.parse().ok()).collect()
}

fn chapter_count(text: &str) -> usize {
    text.matches("Chapter ").count()
}

#[tokio::test]
async fn a_text_far_beyond_the_window_is_summarised_and_classified_in_parts_with_no_setting() {
    let emulator = small_window().await;
    let handler = HandlerEnv::managed_identity(&emulator).unset("AOAI_CONTEXT_TOKENS").spawn().await;
    let text = chaptered_document(200_000);

    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": text, "max_words": 120})).await;
    assert_eq!(status, 200, "{body}");
    let parts = body["parts"].as_u64().unwrap();
    assert!((3..=10).contains(&parts), "several parts: {body}");
    let summary = body["summary"].as_str().unwrap();
    assert!(summary.split_whitespace().count() <= 120, "{summary}");
    // The summary covers the document from its beginning to its end, not just its opening.
    let covered = chapters(summary);
    let last = chapter_count(&text);
    assert_eq!(covered.first(), Some(&1), "{summary}");
    assert!(*covered.iter().max().unwrap() > last * 4 / 5, "chapters {covered:?} of {last}: {summary}");

    // The first call (the whole text) was refused, which taught the window; then one call per
    // part and one to combine. Every call the service answered fits the window, and `usage`
    // sums them all.
    let stats = emulator.stats();
    assert_eq!(stats.context_length_exceeded, 1, "{stats:?}");
    assert_eq!(stats.chat_ok, parts + 1, "{stats:?}");
    assert_eq!(body["usage"]["total_tokens"].as_u64(), Some(stats.tokens_used), "{body}");
    // (The process's first call also probed `reasoning_effort`, which gpt-4o-mini refused before
    // looking at the length: that request carries the effort and is left out.)
    for request in emulator.requests().iter().filter(|r| r.body.get("reasoning_effort").is_none()).skip(1) {
        let tokens = request_tokens(&request.body);
        assert!(tokens <= WINDOW, "a call of {tokens} tokens was sent after the window was learned");
    }
    let reduce = emulator.requests().pop().unwrap();
    assert!(reduce.body["messages"][0]["content"].as_str().unwrap().contains("at most 120 words"));

    // Classification: the window is remembered for the process (no new refusal), every part is
    // classified, and the label is one of the request's.
    let labels = json!(["sales", "billing", "technical support"]);
    let (status, body) = post_json(&handler, "/api/classify", &json!({"text": text, "labels": labels})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["label"], "billing", "{body}");
    assert_eq!(body["labels"], json!(["billing"]));
    assert_eq!(body["parts"].as_u64(), Some(parts), "{body}");
    assert!((0.0..=1.0).contains(&body["confidence"].as_f64().unwrap()));
    assert_eq!(emulator.stats().context_length_exceeded, 1, "the learned window is remembered");
    let (status, body) =
        post_json(&handler, "/api/classify", &json!({"text": text, "labels": labels, "multi_label": true})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["labels"].as_array().unwrap().iter().all(|l| labels.as_array().unwrap().contains(l)), "{body}");
}

#[tokio::test]
async fn aoai_context_tokens_sets_the_window_up_front_and_short_texts_stay_one_call() {
    let emulator = small_window().await;
    let handler = HandlerEnv::managed_identity(&emulator).set("AOAI_CONTEXT_TOKENS", WINDOW.to_string()).spawn().await;
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": ARTICLE, "max_words": 20})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["parts"], 1, "{body}");
    let (status, body) =
        post_json(&handler, "/api/summarize", &json!({"text": chaptered_document(100_000), "style": "bullets"})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["parts"].as_u64().unwrap() >= 2, "{body}");
    assert!(body["summary"].as_str().unwrap().lines().all(|l| l.starts_with("- ")), "{body}");
    assert_eq!(emulator.stats().context_length_exceeded, 0, "nothing had to be learned");
}

#[tokio::test]
async fn a_million_characters_through_the_http_api_and_one_more_is_413() {
    let emulator = small_window().await;
    let handler = HandlerEnv::managed_identity(&emulator).spawn().await;
    let text = chaptered_document(1_000_000);
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": text})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["parts"].as_u64().unwrap() >= 20, "{body}");
    assert!(*chapters(body["summary"].as_str().unwrap()).iter().max().unwrap() > chapter_count(&text) * 4 / 5);

    let too_long = text + "x";
    for (path, body) in [
        ("/api/summarize", json!({"text": too_long})),
        ("/api/classify", json!({"text": too_long, "labels": ["a", "b"]})),
    ] {
        let (status, body) = post_json(&handler, path, &body).await;
        assert_eq!(status, 413, "{path}: {body}");
        assert_error(&body, "payload_too_large");
        assert_eq!(body["error"]["field"], "text");
        assert!(body["error"]["message"].as_str().unwrap().contains("1000000"), "{body}");
    }
}

fn function(name: &str) -> Function {
    Function::load(Path::new(env!("CARGO_MANIFEST_DIR")), name).unwrap()
}

async fn put(storage: &Storage, handler: &HandlerProcess, id: &str, body: &str) -> (u16, Value) {
    let url = format!("http://localhost:7071/api/jobs/{id}");
    let outcome =
        storage.invoke_http(handler, &function("put_job"), "PUT", &url, &[("id", id)], Some(body)).await.unwrap();
    assert_eq!(outcome.invocation_status, 200, "{}", outcome.invocation);
    (outcome.status, outcome.body)
}

#[tokio::test]
async fn a_million_characters_through_put_jobs_stored_as_a_blob() {
    let emulator = small_window().await;
    let handler = HandlerEnv::managed_identity(&emulator).spawn().await;
    let storage = Storage::default();
    let text = chaptered_document(1_000_000);
    let job = json!({"task": "summarize", "input": {"text": text, "max_words": 80}}).to_string();

    let (status, body) = put(&storage, &handler, "big-1", &job).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"][0]["status_url"], "/api/jobs/big-1");
    // The job is in blob inputs/big-1.json; the queue holds a small reference to it.
    let stored: Value = serde_json::from_str(&storage.blob("inputs/big-1.json").expect("the stored job")).unwrap();
    assert_eq!(
        (stored["id"].as_str(), stored["input"]["text"].as_str().map(str::len)),
        (Some("big-1"), Some(1_000_000))
    );
    let messages = storage.messages("jobs");
    assert_eq!(messages.len(), 1);
    assert!(messages[0].len() < 1024, "{}", messages[0]);
    let reference: Value = serde_json::from_str(&messages[0]).unwrap();
    assert_eq!(reference, json!({"id": "big-1", "task": "summarize", "input_blob": "inputs/big-1.json"}));

    // The worker reads it through its blob input and runs it like an inline job.
    let message = storage.pop("jobs").unwrap();
    let (status, invocation) = storage.invoke_queue(&handler, &function("process_job"), &message, 1).await.unwrap();
    assert_eq!(status, 200, "{invocation}");
    let result: Value = serde_json::from_str(&storage.blob("results/big-1.json").expect("a Result")).unwrap();
    assert_eq!(result["status"], "succeeded", "{result}");
    assert!(result["output"]["parts"].as_u64().unwrap() >= 20, "{result}");
    assert!(result["output"]["summary"].as_str().unwrap().split_whitespace().count() <= 80);
    assert_eq!(storage.messages("results").len(), 1);

    // GET /api/jobs/big-1 reads that Result.
    let get = storage
        .invoke_http(
            &handler,
            &function("get_job"),
            "GET",
            "http://localhost:7071/api/jobs/big-1",
            &[("id", "big-1")],
            None,
        )
        .await
        .unwrap();
    assert_eq!((get.status, get.body["status"].as_str()), (200, Some("succeeded")));

    // Repeating the PUT: 200 with the Result, nothing stored, enqueued or run again.
    let calls = emulator.stats().chat_requests;
    let (status, body) = put(&storage, &handler, "big-1", &job).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, result);
    assert!(storage.messages("jobs").is_empty());
    assert_eq!(emulator.stats().chat_requests, calls);
}

#[tokio::test]
async fn put_jobs_limits_and_a_stored_job_that_is_not_there_yet() {
    let emulator = small_window().await;
    let handler = HandlerEnv::managed_identity(&emulator).spawn().await;
    let storage = Storage::default();

    // Over 8 MiB: 413, nothing stored or enqueued.
    let huge = json!({"task": "summarize", "input": {"text": "y".repeat(8 * 1024 * 1024)}}).to_string();
    let (status, body) = put(&storage, &handler, "huge", &huge).await;
    assert_eq!(status, 413, "{body}");
    assert_error(&body, "payload_too_large");
    // 1 000 001 characters (under 8 MiB): 413 naming input.text.
    let long = json!({"task": "summarize", "input": {"text": "z".repeat(1_000_001)}}).to_string();
    let (status, body) = put(&storage, &handler, "long", &long).await;
    assert_eq!((status, body["error"]["field"].as_str()), (413, Some("input.text")), "{body}");
    // An id in the body that differs from the path's: 400.
    let (status, body) =
        put(&storage, &handler, "a", &json!({"id": "b", "task": "summarize", "input": {"text": "t"}}).to_string())
            .await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("id")), "{body}");
    assert!(storage.blob_paths().is_empty() && storage.messages("jobs").is_empty());

    // A reference whose blob is missing: redelivered while deliveries remain, then a failed Result.
    let reference = json!({"id": "gone", "task": "summarize", "input_blob": "inputs/gone.json"}).to_string();
    let (status, body) = storage.invoke_queue(&handler, &function("process_job"), &reference, 1).await.unwrap();
    assert_eq!(status, 500, "{body}");
    let (status, _) = storage.invoke_queue(&handler, &function("process_job"), &reference, 5).await.unwrap();
    assert_eq!(status, 200);
    let result: Value = serde_json::from_str(&storage.blob("results/gone.json").unwrap()).unwrap();
    assert_eq!(result["status"], "failed", "{result}");
    assert!(result["error"]["message"].as_str().unwrap().contains("inputs/gone.json"), "{result}");
    assert_eq!(emulator.stats().chat_requests, 0);
}

#[tokio::test]
async fn a_long_text_that_cannot_finish_in_time_fails_inside_the_deadline() {
    // functionTimeout 5 s leaves a 3 s budget; every part takes 4 s at the emulated deployment.
    let emulator = small_window().await;
    emulator.set_faults(Faults { latency_ms: 4_000, ..Default::default() });
    let handler = HandlerEnv::managed_identity(&emulator)
        .set("AOAI_CONTEXT_TOKENS", WINDOW.to_string())
        .set("AzureFunctionsJobHost__functionTimeout", "00:00:05")
        .spawn()
        .await;
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": chaptered_document(100_000)})).await;
    // Either a call timed out at the deadline (503), or the pacer, which sends one call at a time
    // until the deployment first answers, kept the other parts back until it (429): an error
    // within the budget, not a hang.
    let (code, says) = match status {
        503 => ("upstream_unavailable", "timed out"),
        429 => ("upstream_throttled", "deadline"),
        other => panic!("{other}: {body}"),
    };
    assert_error(&body, code);
    assert!(body["error"]["message"].as_str().unwrap().contains(says), "{body}");
}
