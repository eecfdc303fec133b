//! Streamed chat completions over real HTTP: the event sequence Azure OpenAI sends, the
//! asynchronous-filter annotations, a mid-stream content filter, a cut connection, the hold
//! that orders tests without timing, and a client that goes away.

use std::time::Duration;

use emulator::{Emulator, EmulatorConfig, Faults};
use serde_json::{Value, json};

mod common;
use common::{client, openai_bearer};

const DATED: &str = "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21";
const ARTICLE: &str = "The city council approved a new budget on Tuesday. It funds three new libraries and repairs to the old bridge. Opponents said the plan raises property taxes too quickly.";

fn request(text: &str, stream: bool) -> Value {
    let mut body = json!({"messages": [{"role": "system", "content": "Summarise in at most 40 words."}, {"role": "user", "content": text}], "max_completion_tokens": 200});
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

async fn send(emulator: &Emulator, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{DATED}", emulator.endpoint()))
        .header("authorization", openai_bearer(emulator).await)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The `data:` payloads of a whole SSE body.
fn events(text: &str) -> Vec<String> {
    text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_owned).collect()
}

fn content_of(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_stream_has_the_service_sequence_and_the_same_answer() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let plain: Value = send(&emulator, &request(ARTICLE, false)).await.json().await.unwrap();
    let response = send(&emulator, &request(ARTICLE, true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream; charset=utf-8");
    assert!(response.headers().get("content-length").is_none());
    assert!(response.headers().contains_key("apim-request-id"));
    let events = events(&response.text().await.unwrap());
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"], json!([]));
    assert_eq!(first["id"], "");
    assert_eq!(first["prompt_filter_results"][0]["content_filter_results"]["hate"]["severity"], "safe");
    let role: Value = serde_json::from_str(&events[1]).unwrap();
    assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(role["usage"], Value::Null);
    let third: Value = serde_json::from_str(&events[2]).unwrap();
    assert_eq!(third["choices"][0]["content_filter_results"]["violence"]["filtered"], false);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], plain["usage"]);
    let finish: Value = serde_json::from_str(&events[events.len() - 3]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(content_of(&events), plain["choices"][0]["message"]["content"].as_str().unwrap());
    let stats = emulator.stats();
    assert_eq!((stats.streams_started, stats.streams_completed, stats.streams_abandoned), (1, 1, 0));
}

#[tokio::test]
async fn stream_options_without_stream_is_rejected_and_usage_is_optional() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let mut body = request(ARTICLE, false);
    body["stream_options"] = json!({"include_usage": true});
    assert_eq!(send(&emulator, &body).await.status(), 400);
    let mut body = request(ARTICLE, true);
    body.as_object_mut().unwrap().remove("stream_options");
    let events = events(&send(&emulator, &body).await.text().await.unwrap());
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(last.get("usage").is_none());
}

#[tokio::test]
async fn the_asynchronous_filter_annotates_after_the_tokens() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    emulator.set_faults(Faults { stream_async_filter: true, ..Faults::default() });
    let events = events(&send(&emulator, &request(ARTICLE, true)).await.text().await.unwrap());
    let chunks: Vec<Value> =
        events.iter().filter(|e| *e != "[DONE]").map(|e| serde_json::from_str(e).unwrap()).collect();
    let content =
        chunks.iter().find(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty())).unwrap();
    assert!(content["choices"][0].get("content_filter_results").is_none());
    let annotations: Vec<&Value> =
        chunks.iter().filter(|c| c["id"] == "" && c["choices"][0]["content_filter_offsets"].is_object()).collect();
    assert!(annotations.len() >= 2, "{annotations:?}");
    let offsets = &annotations.last().unwrap()["choices"][0]["content_filter_offsets"];
    assert_eq!(offsets["check_offset"].as_u64().unwrap() as usize, content_of(&events).chars().count());
}

#[tokio::test]
async fn a_mid_stream_filter_ends_with_content_filter_and_a_cut_ends_without_done() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let text = format!("{ARTICLE} [[emulator:content_filter_stream]]");
    let events = events(&send(&emulator, &request(&text, true)).await.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let filtered: Value = serde_json::from_str(&events[events.len() - 3]).unwrap();
    assert_eq!(filtered["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(filtered["choices"][0]["content_filter_results"]["violence"]["filtered"], true);
    assert!(!content_of(&events).is_empty());

    let text = format!("{ARTICLE} [[emulator:stream_drop]]");
    let response = send(&emulator, &request(&text, true)).await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.is_err(), "a cut stream must not read as a complete body");
    assert_eq!(emulator.stats().streams_cut, 1);
}

#[tokio::test]
async fn a_held_stream_waits_for_release_and_a_client_that_leaves_is_noticed() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    emulator.set_faults(Faults { stream_hold_after: Some(1), ..Faults::default() });
    let mut response = send(&emulator, &request(ARTICLE, true)).await;
    let mut seen = String::new();
    while !seen.contains("\"content\":\"The\"") {
        seen.push_str(&String::from_utf8_lossy(&response.chunk().await.unwrap().unwrap()));
    }
    wait_for(&emulator, |s| s.streams_holding == 1).await;
    assert_eq!(emulator.stats().streams_completed, 0);
    emulator.release_streams();
    while let Some(chunk) = response.chunk().await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.ends_with("data: [DONE]\n\n"));
    assert_eq!(emulator.stats().streams_completed, 1);

    // A client that reads the first content and closes the connection while the stream is held.
    let mut response = send(&emulator, &request(ARTICLE, true)).await;
    response.chunk().await.unwrap();
    wait_for(&emulator, |s| s.streams_holding == 1).await;
    drop(response);
    wait_for(&emulator, |s| s.streams_abandoned == 1).await;
    assert_eq!(emulator.stats().streams_completed, 1);
}

/// Polls the emulator's counters until `done` holds (10 s at most: an event, not a timing).
async fn wait_for(emulator: &Emulator, done: impl Fn(&emulator::Stats) -> bool) {
    for _ in 0..1000 {
        if done(&emulator.stats()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the emulator never got there: {:?}", emulator.stats());
}
