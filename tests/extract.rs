//! The extract job end to end (`POST /api/extract`, queue task `extract`): the real binary and
//! the emulator. A strict-subset schema is sent as a strict `json_schema` response format and
//! the answer matches it; a keyword outside the subset is a 400 before any call; an answer that
//! does not match is asked for once more, then fails as `upstream_invalid_output`.

mod common;

use common::*;
use emulator::{Fault, Faults};
use serde_json::{Value, json};

fn invoice_schema() -> Value {
    json!({
        "type": "object", "additionalProperties": false, "required": ["customer", "total", "lines", "paid"],
        "properties": {
            "customer": {"type": "string", "description": "who is billed"},
            "total": {"type": ["number", "null"]},
            "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}},
            "paid": {"type": "boolean"}
        },
        "$defs": {"line": {"type": "object", "additionalProperties": false, "required": ["item", "unit"],
                           "properties": {"item": {"type": "string"}, "unit": {"type": "string", "enum": ["each", "hour"]}}}}
    })
}

const INVOICE: &str = "Invoice for Contoso Ltd. Two hours of support and one cable. Total 130 euros, paid on delivery.";

#[tokio::test]
async fn extract_returns_an_object_matching_the_schema() {
    let (emulator, handler) = started().await;
    let body = json!({"text": INVOICE, "schema": invoice_schema(), "instructions": "Amounts in euros."});
    let (status, answer) = post_json(&handler, "/api/extract", &body).await;
    assert_eq!(status, 200, "{answer}");
    let validator = jsonschema::draft202012::new(&invoice_schema()).unwrap();
    assert!(validator.is_valid(&answer["data"]), "{answer}");
    assert_eq!(answer["model"], "gpt-4o-mini-2024-07-18");
    assert!(answer["usage"]["total_tokens"].as_u64().unwrap() > 0);

    // Answered calls only: the first call of a process may be a refused reasoning_effort probe.
    assert_eq!(emulator.stats().chat_ok, 1);
    let requests = emulator.requests();
    let format = &requests.last().unwrap().body["response_format"];
    assert_eq!(format["type"], "json_schema");
    assert_eq!(format["json_schema"]["strict"], true);
    assert_eq!(format["json_schema"]["schema"], invoice_schema());
    let system = &requests.last().unwrap().body["messages"][0]["content"];
    assert!(system.as_str().unwrap().contains("Amounts in euros."), "{system}");
}

#[tokio::test]
async fn a_schema_outside_the_strict_subset_is_refused_before_any_call() {
    let (emulator, handler) = started().await;
    let mut schema = invoice_schema();
    schema["properties"]["customer"]["minLength"] = json!(3);
    let (status, body) = post_json(&handler, "/api/extract", &json!({"text": INVOICE, "schema": schema})).await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "invalid_input");
    assert_eq!(body["error"]["field"], "schema.properties.customer.minLength");
    assert!(body["error"]["message"].as_str().unwrap().contains("`minLength`"), "{body}");

    let (status, body) = post_json(&handler, "/api/extract", &json!({"text": INVOICE})).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("schema")), "{body}");
    assert_eq!(emulator.stats().chat_requests, 0, "no call for an invalid request");
}

#[tokio::test]
async fn an_answer_that_does_not_match_is_retried_once_then_fails() {
    let (emulator, handler) = started().await;
    // Once wrong, then right: one retry, and the 200 counts both calls' usage.
    emulator.set_faults(Faults { script: vec![Fault::InvalidOutput], ..Faults::default() });
    let (status, body) =
        post_json(&handler, "/api/extract", &json!({"text": INVOICE, "schema": invoice_schema()})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(emulator.stats().chat_ok, 2);

    // Always wrong: two calls, then upstream_invalid_output (never a 200 with a bad object).
    let text = format!("{INVOICE} [[emulator:invalid_output]]");
    let (status, body) = post_json(&handler, "/api/extract", &json!({"text": text, "schema": invoice_schema()})).await;
    assert_eq!(status, 502, "{body}");
    assert_error(&body, "upstream_invalid_output");
    assert_eq!(emulator.stats().chat_ok, 4);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(!message.contains("emulator_unexpected_property\":true"), "no answer values in errors: {message}");
}

#[tokio::test]
async fn the_queue_task_extract_writes_the_same_output() {
    let (_emulator, handler) = started().await;
    let message =
        json!({"id": "x-1", "task": "extract", "input": {"text": INVOICE, "schema": invoice_schema()}}).to_string();
    let (status, body) = invoke_job(&handler, &message, 1, None).await;
    assert_eq!(status, 200, "{body}");
    let result = written_result(&body);
    assert_eq!((result["status"].as_str(), result["task"].as_str()), (Some("succeeded"), Some("extract")), "{result}");
    let validator = jsonschema::draft202012::new(&invoice_schema()).unwrap();
    assert!(validator.is_valid(&result["output"]["data"]), "{result}");

    // An invalid schema is a permanent failure: a failed Result at once, naming the keyword.
    let mut schema = invoice_schema();
    schema["properties"]["lines"]["maxItems"] = json!(3);
    let message = json!({"id": "x-2", "task": "extract", "input": {"text": INVOICE, "schema": schema}}).to_string();
    let (status, body) = invoke_job(&handler, &message, 1, None).await;
    assert_eq!(status, 200, "{body}");
    let result = written_result(&body);
    assert_eq!(result["status"], "failed");
    assert_eq!(result["error"]["field"], "input.schema.properties.lines.maxItems");
}
