//! Application Insights ingestion over real HTTP: only a monitor-audience bearer token on
//! `/v2.1/track`, the role check, the track response with per-item errors, gzip bodies, and the
//! injected faults.

use std::io::Write;

use emulator::{Emulator, EmulatorConfig, IngestionFault};
use serde_json::{Value, json};

mod common;
use common::{client, token};

fn envelope(ikey: &str) -> Value {
    json!({
        "name": "Microsoft.ApplicationInsights.Request",
        "time": "2026-12-01T12:00:00.000Z",
        "iKey": ikey,
        "tags": {"ai.operation.id": "4bf92f3577b34da6a3ce929d0e0e4736"},
        "data": {"baseType": "RequestData", "baseData": {"ver": 2, "id": "00f067aa0ba902b7", "name": "summarize", "duration": "0.00:00:00.010000", "responseCode": "200", "success": true}}
    })
}

fn ikey() -> String {
    EmulatorConfig::default().instrumentation_key
}

async fn track(emulator: &Emulator, path: &str, bearer: Option<&str>, items: &Value, gzip: bool) -> (u16, Value) {
    let mut request =
        client().post(format!("{}{path}", emulator.endpoint())).header("content-type", "application/json");
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let body = serde_json::to_vec(items).unwrap();
    request = if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&body).unwrap();
        request.header("content-encoding", "gzip").body(encoder.finish().unwrap())
    } else {
        request.body(body)
    };
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn a_monitor_token_on_v2_1_is_the_only_way_in() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let items = json!([envelope(&ikey())]);
    let (status, body) = track(&emulator, "/v2.1/track", None, &items, true).await;
    assert_eq!(status, 401, "instrumentation key alone: local auth is disabled");
    assert_eq!(body["itemsAccepted"], 0);
    assert_eq!(body["errors"][0]["statusCode"], 401);
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("authorization token"), "{body}");

    let openai = token(&emulator, "https://cognitiveservices.azure.com").await;
    let (status, _) = track(&emulator, "/v2.1/track", Some(&openai), &items, true).await;
    assert_eq!(status, 401, "a token for another audience");

    let monitor = token(&emulator, "https://monitor.azure.com").await;
    let (status, body) = track(&emulator, "/v2/track", Some(&monitor), &items, true).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("v2 API does not support authentication"));

    let (status, body) = track(&emulator, "/v2.1/track", Some(&monitor), &items, true).await;
    assert_eq!((status, &body), (200, &json!({"itemsReceived": 1, "itemsAccepted": 1, "errors": []})));
    let (status, _) = track(&emulator, "/v2.1/track", Some(&monitor), &items, false).await;
    assert_eq!(status, 200, "uncompressed bodies are accepted too");
    assert_eq!(emulator.telemetry().len(), 2);

    let tracks = emulator.track_requests();
    assert_eq!(tracks.len(), 5);
    let last = &tracks[3];
    assert_eq!(last.bearer.as_deref(), Some(monitor.as_str()));
    assert_eq!(last.audience.as_deref(), Some("https://monitor.azure.com"));
    assert_eq!(last.content_encoding.as_deref(), Some("gzip"));
    assert_eq!(last.items, vec![envelope(&ikey())]);

    // The chat endpoint refuses the monitor token in turn.
    let chat = client()
        .post(format!("{}/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21", emulator.endpoint()))
        .bearer_auth(&monitor)
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status().as_u16(), 401);
}

#[tokio::test]
async fn bad_items_are_refused_one_by_one_with_the_partial_success_body() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let monitor = token(&emulator, "https://monitor.azure.com").await;
    let mut no_time = envelope(&ikey());
    no_time.as_object_mut().unwrap().remove("time");
    let items = json!([envelope(&ikey()), envelope("11111111-2222-3333-4444-555555555555"), no_time]);
    let (status, body) = track(&emulator, "/v2.1/track", Some(&monitor), &items, true).await;
    assert_eq!(status, 206, "{body}");
    assert_eq!(body["itemsReceived"], 3);
    assert_eq!(body["itemsAccepted"], 1);
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!((errors[0]["index"].as_u64(), errors[0]["statusCode"].as_u64()), (Some(1), Some(400)));
    assert_eq!(errors[0]["message"], "Invalid instrumentation key");
    assert_eq!(errors[1]["index"], 2);
    assert!(errors[1]["message"].as_str().unwrap().contains("'time'"));
    assert_eq!(emulator.telemetry().len(), 1);

    let (status, body) = track(&emulator, "/v2.1/track", Some(&monitor), &json!("not envelopes"), false).await;
    assert_eq!((status, body["itemsAccepted"].as_u64()), (400, Some(0)));
}

#[tokio::test]
async fn the_role_and_injected_faults_answer_every_batch() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let monitor = token(&emulator, "https://monitor.azure.com").await;
    let items = json!([envelope(&ikey()), envelope(&ikey())]);

    emulator.set_monitoring_role_assigned(false);
    let (status, body) = track(&emulator, "/v2.1/track", Some(&monitor), &items, true).await;
    assert_eq!((status, body["itemsReceived"].as_u64()), (403, Some(2)));
    assert_eq!(body["errors"].as_array().unwrap().len(), 2);
    assert!(body["errors"][1]["message"].as_str().unwrap().contains("do not grant the access to ingest"));
    emulator.set_monitoring_role_assigned(true);

    for (fault, expected) in [
        (IngestionFault::Unauthorized, 401),
        (IngestionFault::Forbidden, 403),
        (IngestionFault::Throttled { retry_after_secs: 3 }, 429),
        (IngestionFault::ServerError, 500),
        (IngestionFault::Unavailable, 503),
    ] {
        emulator.set_ingestion_fault(Some(fault.clone()));
        let (status, _) = track(&emulator, "/v2.1/track", Some(&monitor), &items, true).await;
        assert_eq!(status, expected, "{fault:?}");
    }
    emulator.set_ingestion_fault(Some(IngestionFault::Slow { delay_ms: 2_000 }));
    let slow = client()
        .post(format!("{}/v2.1/track", emulator.endpoint()))
        .bearer_auth(&monitor)
        .json(&items)
        .timeout(std::time::Duration::from_millis(200))
        .send()
        .await;
    assert!(slow.unwrap_err().is_timeout());
    emulator.set_ingestion_fault(None);
    let (status, _) = track(&emulator, "/v2.1/track", Some(&monitor), &items, true).await;
    assert_eq!(status, 200);
    // The slow batch was accepted although its sender gave up (as a real service would), then the last.
    assert_eq!(emulator.telemetry().len(), 4);
}

#[tokio::test]
async fn the_connection_string_points_at_the_emulator() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let connection = emulator.connection_string();
    assert!(connection.contains(&format!("InstrumentationKey={}", ikey())), "{connection}");
    assert!(connection.contains(&format!("IngestionEndpoint={}/", emulator.endpoint())), "{connection}");
}
