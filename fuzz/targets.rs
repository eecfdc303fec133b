// The fuzz targets' bodies, shared by the cargo-fuzz binaries (fuzz/fuzz_targets/*.rs, nightly)
// and the bounded stable run in CI (tests/fuzz_smoke.rs), so both exercise the same code.
// Each takes arbitrary bytes, must never panic, and checks the invariants issue 12 asks for.

use std::time::Duration;

use base64::Engine;
use handler::host::{Invocation, message_json};
use handler::jobs::digest::{document_digest, is_digest};
use handler::jobs::{Job, JobHeader, JobResult};
use handler::openai::retry::{HINT_CEILING, parse_reset, server_hint, wait_before_retry};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// A queue message holds 64 KiB; the host base64-encodes the Result into it.
const QUEUE_MESSAGE_BYTES: usize = 64 * 1024;

/// The invocation payload decoder: every binding and metadata accessor on any body.
pub fn invocation_payload(data: &[u8]) {
    let Ok(mut invocation) = Invocation::parse(data) else { return };
    for name in ["job", "req", "existing_result", "result", "Data", ""] {
        if let Some(text) = invocation.input_text(name) {
            let _ = message_json(&text);
        }
        let _ = invocation.blob_text(name);
        if let Ok(request) = invocation.take_http_trigger(name) {
            let _ = request.param("id");
        }
    }
    let _ = invocation.metadata_u32("DequeueCount");
    let _ = invocation.metadata_text("Id");
}

/// The job parser: a valid job survives its own queue message; an invalid one gets a bounded
/// error whose failed Result fits a queue message.
pub fn job_parser(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(value) = message_json(text) else { return };
    let header = JobHeader::peek(&value);
    match Job::parse(&value, || "generated-id".into()) {
        Ok(job) => {
            let worker = document_digest(&value);
            let message = Job::into_message(value, || "generated-id".into()).expect("a valid job has a message");
            assert_eq!((message.id.as_str(), message.task), (job.id.as_str(), job.task));
            let document = serde_json::from_str(&message.text).expect("a job's message is JSON");
            let again = Job::parse(&document, || unreachable!("the message carries the id"))
                .expect("a job's own message parses");
            assert_eq!(again, job);
            // The digest the 202 returns is the one the worker computes from the message.
            assert_eq!(message.digest, worker, "submit and worker disagree on the digest");
            assert_eq!(document_digest(&document), worker, "the message changed the digest");
            assert!(is_digest(&message.digest));
        }
        Err(error) => {
            let message = error.to_string();
            assert!(message.chars().count() <= 1000, "error message of {} chars", message.chars().count());
            assert!(!message.contains('\n') && !message.contains('\r'), "unescaped line break: {message:.200}");
            let id = header.id.unwrap_or_else(|| "generated-id".into());
            let result =
                JobResult::new(id, header.task, Err(&error), u32::MAX, None).with_digest(document_digest(&value));
            let document = serde_json::to_string(&result).expect("a Result encodes");
            let encoded = base64::engine::general_purpose::STANDARD.encode(document).len();
            assert!(encoded <= QUEUE_MESSAGE_BYTES, "a failed Result of {encoded} bytes in base64");
        }
    }
}

/// The upstream header parsers: `name: value` lines in, a wait within the ceiling and the cap
/// out, never a panic.
pub fn upstream_headers(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
        if let Ok(text) = std::str::from_utf8(value) {
            assert!(parse_reset(text).is_none_or(|wait| wait <= HINT_CEILING));
        }
    }
    let hint = server_hint(&headers);
    assert!(hint.is_none_or(|wait| wait <= HINT_CEILING), "{hint:?}");
    let attempt = u32::from(data.first().copied().unwrap_or(1));
    for cap in [Duration::from_secs(1), Duration::from_secs(600), Duration::MAX] {
        let wait = wait_before_retry(attempt, hint, cap);
        assert!(wait <= cap && wait <= HINT_CEILING, "{wait:?} over {cap:?}");
    }
}
