//! `put_job` (PUT /api/jobs/{id}): one job too large for a queue message (up to 8 MiB). The
//! job is stored as blob `inputs/{id}.json` through a blob output binding, and a small message
//! referencing it goes on queue `jobs`; `process_job` reads the blob through its blob input
//! binding and runs the job like any other. A job whose Result already says `succeeded`
//! (blob input `results/{id}.json`) for the same input digest is not stored or run again: 200
//! with that Result. An id whose Result or stored input (blob input `inputs/{id}.json`) belongs
//! to another input is refused with 409 `conflict`: the other job's input and Result are kept.
//! An HTTP trigger in payload mode (it has other bindings).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::body::RawBody;
use super::state::AppState;
use super::submit_jobs::status_url;
use crate::error::{ApiError, envelope_json};
use crate::host::{Invocation, InvocationResponse};
use crate::jobs::digest::document_digest;
use crate::jobs::{Job, JobMessage, JobResult, JobStatus, is_job_id};

/// The largest job body: 8 MiB (1 000 000 characters fit even as 4-byte UTF-8).
pub const MAX_STORED_JOB_BYTES: usize = 8 * 1024 * 1024;

/// Binding names in `put_job/function.json`.
const EXISTING_RESULT: &str = "existing_result";
const EXISTING_INPUT: &str = "existing_input";
const INPUT_BLOB: &str = "input_blob";
const QUEUE: &str = "outjobs";

pub async fn put_job(State(_app): State<AppState>, body: Result<RawBody, ApiError>) -> Response {
    let parsed = body.and_then(|RawBody(body)| {
        let mut invocation = Invocation::parse(&body)?;
        invocation.take_http_trigger("req").map(|request| (invocation, request))
    });
    let (invocation, request) = match parsed {
        Ok(parts) => parts,
        Err(e) => return InvocationResponse::for_http_error(&e),
    };
    let mut response = InvocationResponse::default();
    let id = request.param("id").unwrap_or_default();
    let body = request.body.as_deref().unwrap_or_default();
    let existing =
        Existing { result: invocation.blob_text(EXISTING_RESULT), input: invocation.blob_text(EXISTING_INPUT) };
    match accept(&id, body, existing) {
        Ok(Accepted::Done(result)) => {
            response.logs.push(format!("job {id} already succeeded; not stored or run again"));
            response.http_response(200, result);
        }
        Ok(Accepted::Stored(job)) => {
            let reference = job.to_reference();
            let accepted = json!({"accepted": [{"id": job.id, "digest": job.digest, "status_url": status_url(&job.id)}], "count": 1, "status_url": status_url(&job.id)});
            response.logs.push(format!("stored job {id} ({} bytes) as {}", job.text.len(), Job::stored_path(&job.id)));
            response
                .output(INPUT_BLOB, Value::String(job.text))
                .output(QUEUE, Value::String(reference))
                .http_response(202, accepted.to_string());
        }
        Err(error) => {
            response.http_response(error.status().as_u16(), envelope_json(&error.body()));
        }
    }
    response.into_response()
}

enum Accepted {
    /// The stored Result of a job that already succeeded.
    Done(String),
    Stored(JobMessage),
}

/// What the blob input bindings found under the id.
#[derive(Default)]
struct Existing {
    /// `results/{id}.json`.
    result: Option<String>,
    /// `inputs/{id}.json`: a stored job, perhaps not yet run.
    input: Option<String>,
}

fn accept(id: &str, body: &str, existing: Existing) -> Result<Accepted, ApiError> {
    if !is_job_id(id) {
        return Err(ApiError::invalid(
            "id",
            format!(
                "`{}` is not a job id (1..=128 of letters, digits, `-`, `_`, `.`)",
                id.chars().take(130).collect::<String>()
            ),
        ));
    }
    if body.len() > MAX_STORED_JOB_BYTES {
        return Err(ApiError::PayloadTooLarge {
            field: None,
            message: format!(
                "the job is {} bytes; PUT /api/jobs/{{id}} takes at most {MAX_STORED_JOB_BYTES} bytes (8 MiB)",
                body.len()
            ),
        });
    }
    if body.trim().is_empty() {
        return Err(ApiError::invalid("", "the request has no body: send one job as JSON, with a Content-Length"));
    }
    let value: Value =
        serde_json::from_str(body).map_err(|e| ApiError::invalid("", format!("the body is not valid JSON: {e}")))?;
    let job = Job::into_message(value, || id.to_owned())?;
    if job.id != id {
        return Err(ApiError::invalid(
            "id",
            format!("the job's id `{}` differs from the path's `{id}`: leave it out or make them equal", job.id),
        ));
    }
    let digest = job.digest.clone();
    if let Some(text) = existing.result
        && let Ok(previous) = serde_json::from_str::<JobResult>(&text)
        && previous.id == id
    {
        match &previous.digest {
            Some(other) if *other != digest => return Err(conflict(id, "a Result", other, &digest)),
            // Results from before digests were recorded: a succeeded one is taken as this job's.
            _ if previous.status == JobStatus::Succeeded => return Ok(Accepted::Done(text)),
            _ => {}
        }
    }
    if let Some(text) = existing.input
        && let Ok(stored) = serde_json::from_str::<Value>(&text)
    {
        let other = document_digest(&stored);
        if other != digest {
            return Err(conflict(id, "a stored job", &other, &digest));
        }
    }
    Ok(Accepted::Stored(job))
}

fn conflict(id: &str, what: &str, other: &str, digest: &str) -> ApiError {
    let short = |d: &str| d.chars().take(12).collect::<String>();
    ApiError::Conflict {
        message: format!(
            "job id `{id}` already has {what} for another input (digest {}…, this job's is {}…): use a new id",
            short(other),
            short(digest)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_puts_are_refused_with_the_field() {
        let none = Existing::default;
        let job = r#"{"task": "summarize", "input": {"text": "t"}}"#;
        assert_eq!(accept("../x", job, none()).err().unwrap().field(), Some("id"));
        let other = r#"{"id": "b", "task": "summarize", "input": {"text": "t"}}"#;
        assert_eq!(accept("a", other, none()).err().unwrap().field(), Some("id"));
        let big = format!(r#"{{"task": "summarize", "input": {{"text": "{}"}}}}"#, "x".repeat(MAX_STORED_JOB_BYTES));
        assert_eq!(accept("a", &big, none()).err().unwrap().code(), "payload_too_large");
        assert_eq!(accept("a", "", none()).err().unwrap().code(), "invalid_input");
        assert!(matches!(accept("a", job, none()), Ok(Accepted::Stored(j)) if j.id == "a"));
    }

    #[test]
    fn a_used_id_is_done_for_the_same_input_and_a_conflict_for_another() {
        let job = r#"{"task": "summarize", "input": {"text": "t"}}"#;
        let digest = crate::jobs::digest::input_digest("summarize", &json!({"text": "t"}));
        let result = |status: &str, digest: Option<&str>| {
            let mut r = json!({"id": "a", "task": "summarize", "status": status, "attempts": 1, "completed_at": "2026-01-01T00:00:00Z"});
            if let Some(d) = digest {
                r["digest"] = json!(d);
            }
            Existing { result: Some(r.to_string()), input: None }
        };
        assert!(matches!(accept("a", job, result("succeeded", Some(&digest))), Ok(Accepted::Done(_))));
        assert!(matches!(accept("a", job, result("succeeded", None)), Ok(Accepted::Done(_))), "a Result from before");
        assert!(matches!(accept("a", job, result("failed", Some(&digest))), Ok(Accepted::Stored(_))));
        let other = "0".repeat(64);
        for status in ["succeeded", "failed"] {
            let error = accept("a", job, result(status, Some(&other))).err().unwrap();
            assert_eq!((error.code(), error.status().as_u16()), ("conflict", 409), "{error}");
        }
        let stored = |input: Value| Existing {
            result: None,
            input: Some(json!({"id": "a", "task": "summarize", "input": input}).to_string()),
        };
        assert!(matches!(accept("a", job, stored(json!({"text": "t"}))), Ok(Accepted::Stored(_))), "a retried PUT");
        assert_eq!(accept("a", job, stored(json!({"text": "u"}))).err().unwrap().code(), "conflict");
    }
}
