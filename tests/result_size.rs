//! Issue 12, item 7: every Result fits its outputs. A failed Result echoed an unknown field's
//! name twice and reached 65 908 bytes in base64, over a queue message's 64 KiB; this builds
//! the largest Results the handler can write and checks them against that limit.

use base64::Engine;
use handler::echo::echo;
use handler::jobs::classify::{ClassifyRequest, ClassifyResponse};
use handler::jobs::summarize::{MAX_SUMMARY_JSON_BYTES, SummarizeResponse, json_len};
use handler::jobs::{Job, JobHeader, JobKind, JobResult, Task};
use handler::openai::Usage;
use serde_json::{Value, json};

const QUEUE_MESSAGE_BYTES: usize = 64 * 1024;
const MAX_USAGE: Usage = Usage {
    prompt_tokens: u64::MAX,
    completion_tokens: u64::MAX,
    total_tokens: u64::MAX,
    reasoning_tokens: Some(u64::MAX),
};

/// The size of `result` as the host puts it on the results queue (base64 of its JSON).
fn queue_bytes(result: &JobResult) -> usize {
    base64::engine::general_purpose::STANDARD.encode(serde_json::to_string(result).unwrap()).len()
}

fn longest_id() -> String {
    "i".repeat(128)
}

fn longest_reply_to() -> Option<String> {
    Some("r".repeat(63))
}

/// A model name that JSON-escapes to the most bytes per character, far past the echo cap.
fn hostile_model() -> String {
    echo(&"\u{1}".repeat(1_000_000))
}

/// A succeeded Result carrying `output`, with the longest id and reply-to, fits a queue message.
fn assert_succeeded_result_fits(task: Task, output: impl serde::Serialize) {
    let output = serde_json::to_value(output).unwrap();
    let result = JobResult::new(longest_id(), Some(task), Ok(output), u32::MAX, longest_reply_to());
    let size = queue_bytes(&result);
    assert!(size <= QUEUE_MESSAGE_BYTES, "{size} bytes");
}

#[test]
fn the_largest_succeeded_classify_result_fits() {
    // 50 labels of 100 control characters each (7 bytes apiece once escaped), all chosen.
    let controls = (0x01..=0x08).chain(0x0e..=0x1f).chain(0x7f..=0x84).chain(0x86..=0x9f);
    let labels: Vec<String> =
        controls.take(50).map(|c: u32| char::from_u32(c).unwrap().to_string().repeat(100)).collect();
    let request = ClassifyRequest::parse(&json!({"text": "t", "labels": labels, "multi_label": true})).unwrap();
    let answer = json!({"labels": request.labels, "confidence": 0.123_456_789_012_345_67}).to_string();
    let (chosen, confidence) = request.validate_answer(&answer).unwrap();
    assert_eq!(chosen.len(), 50);
    let output = ClassifyResponse {
        label: chosen[0].clone(),
        labels: chosen,
        confidence,
        model: hostile_model(),
        usage: MAX_USAGE,
        parts: u32::MAX,
    };
    assert_succeeded_result_fits(Task::Classify, output);
}

#[test]
fn the_largest_succeeded_summarize_result_fits() {
    // The summary bound, filled with the costliest characters: control characters (6 bytes as
    // JSON) and 4-byte ones.
    let control = "\u{1}".repeat((MAX_SUMMARY_JSON_BYTES - 2) / 6);
    let emoji = "🦀".repeat((MAX_SUMMARY_JSON_BYTES - 2) / 4);
    for summary in [control, emoji] {
        assert!(json_len(&summary) <= MAX_SUMMARY_JSON_BYTES);
        let output =
            SummarizeResponse { summary, model: hostile_model(), usage: MAX_USAGE, parts: u32::MAX, truncated: true };
        assert_succeeded_result_fits(Task::Summarize, output);
    }
}

#[test]
fn the_largest_failed_results_fit() {
    let huge = "\u{1}".repeat(1_000_000);
    let messages = [
        // The reviewer's case: an unknown field's name, echoed as field and in the message.
        json!({"task": "summarize", "input": {"text": "t", huge.clone(): 1}}),
        json!({huge.clone(): 1, "task": "summarize", "input": {"text": "t"}}),
        json!({"id": huge, "task": "summarize", "input": {"text": "t"}}),
        json!({"task": huge, "input": {"text": "t"}}),
        json!({"task": "summarize", "input": {"text": "t"}, "reply_to": huge}),
        json!({"task": "summarize", "input": {"text": "t", "language": huge}}),
        json!({"task": "summarize", "input": {"text": "t", "style": huge}}),
        json!({"task": "classify", "input": {"text": "t", "labels": [huge, huge]}}),
        json!({"task": "classify", "input": {"text": "t", "labels": ["\u{1}".repeat(100), "\u{1}".repeat(100)]}}),
        json!({"task": "summarize", "input": {"text": "x".repeat(2_000_000)}}),
    ];
    for message in messages {
        let error = Job::parse(&message, longest_id).unwrap_err();
        let header = JobHeader::peek(&message);
        let result = JobResult::new(longest_id(), header.task, Err(&error), u32::MAX, None);
        let size = queue_bytes(&result);
        // Far below the limit: echoed input is capped at about 100 characters.
        assert!(size <= 4 * 1024, "{size} bytes for {}", error.code());
        let field = result.error.as_ref().and_then(|e| e.field.clone()).unwrap_or_default();
        assert!(field.chars().count() <= 300, "{field:.80}");
    }
    // Any message, even one a future change builds carelessly, is capped in the Result.
    let error = handler::error::ApiError::internal("\u{1}".repeat(1_000_000));
    let result = JobResult::new(longest_id(), Some(Task::Summarize), Err(&error), u32::MAX, longest_reply_to());
    assert!(queue_bytes(&result) <= 32 * 1024, "{}", queue_bytes(&result));
    let value: Value = serde_json::from_str(&serde_json::to_string(&result).unwrap()).unwrap();
    assert!(value["error"]["message"].as_str().unwrap().contains("characters)"));
}
