//! Streamed summaries end to end: the real binary behind the host's proxying front door (as
//! YARP streams it), the emulator streaming like Azure OpenAI. Order is asserted through the
//! emulator's state (a stream held at a point until the test releases it), never by timing.

mod common;

use std::time::Duration;

use common::*;
use emulator::host::{FrontDoor, HandlerProcess, HttpMode};
use emulator::{Emulator, Fault, Faults, Stats};
use serde_json::{Value, json};

/// The events of an SSE body: (event name, data), comments as ("comment", text).
fn parse_events(text: &str) -> Vec<(String, String)> {
    text.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            if let Some(comment) = block.strip_prefix(':') {
                return ("comment".to_owned(), comment.trim().to_owned());
            }
            let mut name = "message".to_owned();
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    name = value.to_owned();
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push(value);
                }
            }
            (name, data.join("\n"))
        })
        .collect()
}

/// Reads a streaming answer until `until` holds for what arrived so far; returns the text.
async fn read_until(response: &mut reqwest::Response, seen: &mut String, until: impl Fn(&str) -> bool) {
    while !until(seen) {
        match response.chunk().await.expect("the stream reads") {
            Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            None => panic!("the stream ended before the expected event; got:\n{seen}"),
        }
    }
}

async fn read_all(response: &mut reqwest::Response, seen: &mut String) {
    while let Some(chunk) = response.chunk().await.expect("the stream reads") {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

async fn wait_for(emulator: &Emulator, what: &str, done: impl Fn(&Stats) -> bool) {
    for _ in 0..1000 {
        if done(&emulator.stats()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the emulator never saw {what}: {:?}", emulator.stats());
}

async fn post(door: &FrontDoor, body: &Value, accept: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/api/summarize", door.url()))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    request.send().await.expect("the front door answers")
}

#[tokio::test]
async fn the_first_words_arrive_while_the_model_is_still_writing_and_done_is_the_plain_answer() {
    let (emulator, handler) = started().await;
    let door = FrontDoor::start(&handler.base_url(), HttpMode::Proxy).await.unwrap();
    let input = json!({"text": ARTICLE, "max_words": 40});
    let (status, plain) = post_json(&handler, "/api/summarize", &input).await;
    assert_eq!(status, 200, "{plain}");

    emulator.set_faults(Faults { stream_hold_after: Some(2), ..Faults::default() });
    let mut streamed = input.clone();
    streamed["stream"] = json!(true);
    let mut response = post(&door, &streamed, None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    assert!(response.headers().get("content-length").is_none());
    let mut seen = String::new();
    read_until(&mut response, &mut seen, |s| s.contains("event: delta")).await;
    // The emulator holds the rest of the answer until released: the caller has text first.
    wait_for(&emulator, "the held stream", |s| s.streams_holding == 1).await;
    assert_eq!(emulator.stats().streams_completed, 0);
    emulator.release_streams();
    read_all(&mut response, &mut seen).await;
    assert_eq!(emulator.stats().streams_completed, 1);

    let events = parse_events(&seen);
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "done", "{seen}");
    let done: Value = serde_json::from_str(data).unwrap();
    assert_eq!(done, plain, "the done event must be the plain answer");
    let text: String = events
        .iter()
        .filter(|(name, _)| name == "delta")
        .map(|(_, data)| serde_json::from_str::<Value>(data).unwrap()["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text.trim(), plain["summary"].as_str().unwrap());
    assert!(events.iter().filter(|(name, _)| name == "delta").count() > 2, "{seen}");

    // Upstream it was a streamed call with usage asked for.
    let request = emulator.requests().pop().unwrap();
    assert_eq!(request.body["stream"], true);
    assert_eq!(request.body["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn an_answer_cut_off_by_its_budget_is_asked_again_and_done_is_still_the_plain_answer() {
    let (emulator, handler) = started().await;
    let door = FrontDoor::start(&handler.base_url(), HttpMode::Proxy).await.unwrap();
    let input = json!({"text": ARTICLE, "max_words": 40});
    // The first answer stops at `finish_reason: "length"` (half the text), the retry with twice
    // the budget completes: the same for the plain call and the streamed one.
    emulator.set_faults(Faults { script: vec![Fault::Length], ..Faults::default() });
    let (status, plain) = post_json(&handler, "/api/summarize", &input).await;
    assert_eq!(status, 200, "{plain}");
    assert_eq!(plain.get("truncated"), None, "{plain}");
    let before = emulator.stats().chat_requests;
    emulator.set_faults(Faults { script: vec![Fault::Length], ..Faults::default() });
    let mut streamed = input.clone();
    streamed["stream"] = json!(true);
    let response = post(&door, &streamed, None).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let events = parse_events(&text);
    let deltas: String = events
        .iter()
        .filter(|(name, _)| name == "delta")
        .map(|(_, data)| serde_json::from_str::<Value>(data).unwrap()["text"].as_str().unwrap().to_owned())
        .collect();
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "done", "{text}");
    let done: Value = serde_json::from_str(data).unwrap();
    assert_eq!(done, plain, "done is the plain answer, retry included");
    // The cut-off first answer had already streamed (docs/streaming.md: treat `done` as the result).
    assert!(!deltas.is_empty() && deltas.trim() != done["summary"].as_str().unwrap(), "{text}");
    assert_eq!(emulator.stats().chat_requests, before + 2);
}

#[tokio::test]
async fn accept_event_stream_asks_for_a_stream_and_stream_false_wins() {
    let (_emulator, handler) = started().await;
    let door = FrontDoor::start(&handler.base_url(), HttpMode::Proxy).await.unwrap();
    let input = json!({"text": ARTICLE});
    let response = post(&door, &input, Some("application/json, text/event-stream;q=0.9")).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = parse_events(&response.text().await.unwrap());
    assert_eq!(events.last().unwrap().0, "done");

    let response = post(&door, &json!({"text": ARTICLE, "stream": false}), Some("text/event-stream")).await;
    let (status, body) = read(response).await;
    assert_eq!(status, 200);
    assert!(body["summary"].is_string());

    let response = post(&door, &json!({"text": ARTICLE, "stream": "yes"}), None).await;
    let (status, body) = read(response).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "stream");
}

#[tokio::test]
async fn errors_before_the_first_byte_are_plain_json_errors_and_are_retried() {
    let (emulator, handler) = started().await;
    let door = FrontDoor::start(&handler.base_url(), HttpMode::Proxy).await.unwrap();
    // A prompt the filter blocks: 422 JSON, as without streaming.
    let text = format!("{ARTICLE} [[emulator:content_filter]]");
    let (status, body) = read(post(&door, &json!({"text": text, "stream": true}), None).await).await;
    assert_eq!(status, 422);
    assert_error(&body, "content_filtered");
    // Bad input: 400 JSON naming the field, no upstream call.
    let before = emulator.stats().chat_requests;
    let (status, body) = read(post(&door, &json!({"text": "", "stream": true}), None).await).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "text");
    assert_eq!(emulator.stats().chat_requests, before);
    // A 429, then a 500, then a good stream: nothing had reached the caller, so both are
    // retried and the caller sees only the good stream.
    emulator.set_faults(Faults {
        script: vec![Fault::Throttle { retry_after_ms: 50 }, Fault::ServerError, Fault::Ok],
        ..Faults::default()
    });
    let response = post(&door, &json!({"text": ARTICLE, "stream": true}), None).await;
    assert_eq!(response.status(), 200);
    let events = parse_events(&response.text().await.unwrap());
    assert_eq!(events.last().unwrap().0, "done");
    assert!(events.iter().all(|(name, _)| name != "error"));
    assert_eq!(emulator.stats().streams_started, 1);
}

#[tokio::test]
async fn errors_after_the_first_byte_are_an_error_event_and_never_retried() {
    let (emulator, handler) = started().await;
    let door = FrontDoor::start(&handler.base_url(), HttpMode::Proxy).await.unwrap();
    // Mid-stream content filter: text, then `event: error` with content_filtered.
    let text = format!("{ARTICLE} [[emulator:content_filter_stream]]");
    let response = post(&door, &json!({"text": text, "stream": true}), None).await;
    assert_eq!(response.status(), 200);
    let events = parse_events(&response.text().await.unwrap());
    assert!(events.iter().any(|(name, _)| name == "delta"));
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_error(&serde_json::from_str(data).unwrap(), "content_filtered");
    assert!(events.iter().all(|(name, _)| name != "done"));

    // The connection cut mid-answer: an error event, and no second upstream call.
    let requests_before = emulator.stats().chat_requests;
    let text = format!("{ARTICLE} [[emulator:stream_drop]]");
    let response = post(&door, &json!({"text": text, "stream": true}), None).await;
    let events = parse_events(&response.text().await.unwrap());
    assert!(events.iter().any(|(name, _)| name == "delta"));
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_error(&serde_json::from_str(data).unwrap(), "upstream_unavailable");
    assert_eq!(emulator.stats().chat_requests, requests_before + 1, "a stream that reached the caller is not retried");
}

#[tokio::test]
async fn a_caller_that_disconnects_releases_the_upstream_request() {
    let (emulator, handler) = started().await;
    let door = FrontDoor::start(&handler.base_url(), HttpMode::Proxy).await.unwrap();
    emulator.set_faults(Faults { stream_hold_after: Some(1), ..Faults::default() });
    let mut response = post(&door, &json!({"text": ARTICLE, "stream": true}), None).await;
    let mut seen = String::new();
    read_until(&mut response, &mut seen, |s| s.contains("event: delta")).await;
    wait_for(&emulator, "the held stream", |s| s.streams_holding == 1).await;
    drop(response);
    // Caller → front door → handler → emulator: each closed connection closes the next.
    wait_for(&emulator, "the upstream connection closed", |s| s.streams_abandoned == 1).await;
    assert_eq!(emulator.stats().streams_completed, 0);
    // The handler is fine afterwards.
    emulator.set_faults(Faults::default());
    let (status, _) = post_json(&handler, "/api/summarize", &json!({"text": ARTICLE})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_caller_that_disconnects_before_the_first_byte_releases_the_upstream_request() {
    let (emulator, handler) = started().await;
    let door = FrontDoor::start(&handler.base_url(), HttpMode::Proxy).await.unwrap();
    // Held before the first text, with the default 15 s keep-alive: the caller has no answer
    // yet (not even the status) when it gives up.
    emulator.set_faults(Faults { stream_hold_after: Some(0), ..Faults::default() });
    let request = tokio::spawn({
        let url = door.url();
        async move {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let body = json!({"text": ARTICLE, "stream": true}).to_string();
            client
                .post(format!("{url}/api/summarize"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
        }
    });
    wait_for(&emulator, "the held stream", |s| s.streams_holding == 1).await;
    assert!(!request.is_finished(), "no status before the first byte");
    request.abort();
    wait_for(&emulator, "the upstream connection closed", |s| s.streams_abandoned == 1).await;
    assert_eq!(emulator.stats().streams_completed, 0);
}

#[tokio::test]
async fn forwarding_mode_delivers_the_same_events_only_at_the_end() {
    let (emulator, handler) = started().await;
    let door = FrontDoor::start(&handler.base_url(), HttpMode::Forward).await.unwrap();
    emulator.set_faults(Faults { stream_hold_after: Some(1), ..Faults::default() });
    let request = tokio::spawn({
        let url = door.url();
        async move {
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .post(format!("{url}/api/summarize"))
                .header("content-type", "application/json")
                .body(json!({"text": ARTICLE, "stream": true}).to_string())
                .send()
                .await
                .unwrap()
        }
    });
    wait_for(&emulator, "the held stream", |s| s.streams_holding == 1).await;
    // The handler has sent its first delta, but the forwarding host buffers: no answer yet.
    assert!(!request.is_finished());
    emulator.release_streams();
    let response = request.await.unwrap();
    assert_eq!(response.status(), 200);
    let events = parse_events(&response.text().await.unwrap());
    assert_eq!(events.last().unwrap().0, "done");
}

#[tokio::test]
async fn a_long_document_streams_its_final_combine_and_done_is_the_plain_answer() {
    const WINDOW: u64 = 16_384;
    let emulator = emulator_with(emulator::EmulatorConfig {
        context_tokens: vec![(DEPLOYMENT.into(), WINDOW)],
        ..Default::default()
    })
    .await;
    let handler = HandlerEnv::managed_identity(&emulator).set("AOAI_CONTEXT_TOKENS", WINDOW.to_string()).spawn().await;
    let door = FrontDoor::start(&handler.base_url(), HttpMode::Proxy).await.unwrap();
    let mut text = String::new();
    for chapter in 1.. {
        if text.len() > 100_000 {
            break;
        }
        text.push_str(&format!(
            "Chapter {chapter} reports that invoice {chapter} was charged twice. The team refunded it.\n\n"
        ));
    }
    let input = json!({"text": text, "max_words": 60});
    let (status, plain) = post_json(&handler, "/api/summarize", &input).await;
    assert_eq!(status, 200, "{plain}");
    assert!(plain["parts"].as_u64().unwrap() >= 2, "{plain}");
    // Answered calls (the first call to a deployment may also meet a refused effort probe).
    let answered_per_summary = emulator.stats().chat_ok;

    let mut streamed = input.clone();
    streamed["stream"] = json!(true);
    let response = post(&door, &streamed, None).await;
    assert_eq!(response.status(), 200);
    let events = parse_events(&response.text().await.unwrap());
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "done");
    assert_eq!(serde_json::from_str::<Value>(data).unwrap(), plain);
    assert!(events.iter().any(|(name, _)| name == "delta"));
    // The parts are summarised as before; only the final combine streams.
    assert_eq!(emulator.stats().chat_ok, 2 * answered_per_summary);
    assert_eq!(emulator.stats().streams_started, 1);
    let streamed_call = emulator.requests().pop().unwrap();
    assert_eq!(streamed_call.body["stream"], true);
    assert!(streamed_call.body["messages"][0]["content"].as_str().unwrap().contains("Combine them"));
}

/// A handler whose keep-alive interval is one second (`STREAM_KEEP_ALIVE_SECONDS`), behind the
/// proxying front door.
async fn with_one_second_keep_alive() -> (Emulator, HandlerProcess, FrontDoor) {
    let emulator = emulator().await;
    let handler = HandlerEnv::managed_identity(&emulator).set("STREAM_KEEP_ALIVE_SECONDS", "1").spawn().await;
    let door = FrontDoor::start(&handler.base_url(), HttpMode::Proxy).await.unwrap();
    (emulator, handler, door)
}

#[tokio::test]
async fn a_model_silent_for_the_keep_alive_interval_gets_a_comment_before_the_first_text() {
    let (emulator, handler, door) = with_one_second_keep_alive().await;
    let input = json!({"text": ARTICLE, "max_words": 40});
    let (status, plain) = post_json(&handler, "/api/summarize", &input).await;
    assert_eq!(status, 200, "{plain}");

    // The emulator holds the stream before its first content chunk until released: whatever
    // reaches the caller meanwhile can only be keep-alive comments.
    emulator.set_faults(Faults { stream_hold_after: Some(0), ..Faults::default() });
    let mut streamed = input.clone();
    streamed["stream"] = json!(true);
    let mut response = post(&door, &streamed, None).await;
    assert_eq!(response.status(), 200, "the comment commits the 200");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    // Bounded only so that a handler without the comment fails instead of waiting forever.
    tokio::time::timeout(
        Duration::from_secs(60),
        read_until(&mut response, &mut seen, |s| s.contains(": keep-alive\n\n")),
    )
    .await
    .expect("a keep-alive comment while the model is silent");
    assert!(!seen.contains("event:"), "only comments before the first text: {seen}");
    assert_eq!(emulator.stats().streams_holding, 1);
    emulator.release_streams();
    read_all(&mut response, &mut seen).await;

    let events = parse_events(&seen);
    assert_eq!(events[0], ("comment".to_owned(), "keep-alive".to_owned()), "{seen}");
    let first_delta = events.iter().position(|(name, _)| name == "delta").expect("deltas after the comment");
    assert!(events[..first_delta].iter().all(|(name, _)| name == "comment"), "{seen}");
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "done", "{seen}");
    assert_eq!(serde_json::from_str::<Value>(data).unwrap(), plain, "done is still the plain answer");
}

#[tokio::test]
async fn a_failure_after_a_keep_alive_comment_is_an_error_event() {
    let (emulator, handler, door) = with_one_second_keep_alive().await;
    // A first call settles what the deployment accepts (the effort probe of a reasoning model).
    let (status, _) = post_json(&handler, "/api/summarize", &json!({"text": ARTICLE})).await;
    assert_eq!(status, 200);
    let before = emulator.stats().chat_requests;
    // The model thinks for twice the keep-alive interval (the handler's timer starts before the
    // emulator's), then its filter stops the answer before any text: without the comment this
    // is a plain 422 (errors_before_the_first_byte_...); after it the status is on the wire.
    emulator.set_faults(Faults {
        latency_ms: 2_000,
        script: vec![Fault::ContentFilterCompletion],
        ..Faults::default()
    });
    let response = post(&door, &json!({"text": ARTICLE, "stream": true}), None).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let events = parse_events(&text);
    assert_eq!(events[0].0, "comment", "{text}");
    assert!(events.iter().all(|(name, _)| name != "delta" && name != "done"), "{text}");
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error", "{text}");
    assert_error(&serde_json::from_str(data).unwrap(), "content_filtered");
    assert_eq!(emulator.stats().chat_requests, before + 1, "a filtered answer is not retried");
}

#[tokio::test]
async fn classify_and_extract_do_not_stream() {
    let (_emulator, handler) = started().await;
    let door = FrontDoor::start(&handler.base_url(), HttpMode::Proxy).await.unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let classify = json!({"text": ARTICLE, "labels": ["budget", "sports"]});
    let extract = json!({"text": ARTICLE, "schema": {
        "type": "object",
        "properties": {"topic": {"type": "string"}},
        "required": ["topic"],
        "additionalProperties": false
    }});
    for (path, input) in [("/api/classify", classify), ("/api/extract", extract)] {
        // `stream` is no field of theirs: named in a 400, like any unknown field.
        let mut streamed = input.clone();
        streamed["stream"] = json!(true);
        let response = client
            .post(format!("{}{path}", door.url()))
            .header("content-type", "application/json")
            .body(streamed.to_string())
            .send()
            .await
            .unwrap();
        let (status, body) = read(response).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["field"], "stream", "{path}: {body}");
        // Asked for events by the Accept header: the plain JSON answer.
        let response = client
            .post(format!("{}{path}", door.url()))
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .body(input.to_string())
            .send()
            .await
            .unwrap();
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/json"), "{path}");
        let (status, body) = read(response).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
}

/// host.json asks for proxying (the host that knows it streams) and keeps forwarding (an older
/// host still serves), and the streamed function has exactly the bindings the host proxies
/// (`IsHttpInAndOutFunction`: one `httpTrigger` in, one `http` out).
#[test]
fn host_json_proxies_where_it_can_and_forwards_elsewhere() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let host: Value = serde_json::from_str(&std::fs::read_to_string(root.join("host.json")).unwrap()).unwrap();
    assert_eq!(host["customHandler"]["enableProxyingHttpRequest"], true);
    assert_eq!(host["customHandler"]["enableForwardingHttpRequest"], true);
    let function: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("summarize/function.json")).unwrap()).unwrap();
    let bindings: Vec<(&str, &str)> = function["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["type"].as_str().unwrap(), b["direction"].as_str().unwrap()))
        .collect();
    assert_eq!(bindings, [("httpTrigger", "in"), ("http", "out")]);
}
