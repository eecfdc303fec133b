//! `put_job` (PUT /api/jobs/{id}): one job too large for a queue message (up to 8 MiB). The
//! job is stored as blob `inputs/{id}.json` through a blob output binding, and a small message
//! referencing it goes on queue `jobs`; `process_job` reads the blob through its blob input
//! binding and runs the job like any other. A job whose Result already says `succeeded`
//! (blob input `results/{id}.json`) is not stored or run again: 200 with that Result.
//! An HTTP trigger in payload mode (it has other bindings).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::body::RawBody;
use super::state::AppState;
use super::submit_jobs::status_url;
use crate::error::{ApiError, envelope_json};
use crate::host::{Invocation, InvocationResponse};
use crate::jobs::{Job, JobMessage, JobResult, JobStatus, is_job_id};

/// The largest job body: 8 MiB (1 000 000 characters fit even as 4-byte UTF-8).
pub const MAX_STORED_JOB_BYTES: usize = 8 * 1024 * 1024;

/// Binding names in `put_job/function.json`.
const EXISTING_RESULT: &str = "existing_result";
const INPUT_BLOB: &str = "input_blob";
const QUEUE: &str = "outjobs";

pub async fn put_job(State(_app): State<AppState>, body: Result<RawBody, ApiError>) -> Response {
    let parsed = body.and_then(|RawBody(body)| {
        let mut invocation = Invocation::parse(&body)?;
        invocation.take_http_trigger("req").map(|request| (invocation, request))
    });
    let (invocation, mut request) = match parsed {
        Ok(parts) => parts,
        Err(e) => return InvocationResponse::for_http_error(&e),
    };
    let mut response = InvocationResponse::default();
    let id = request.param("id").unwrap_or_default();
    let body = request.body.take().unwrap_or_default();
    match accept(&id, body, invocation.blob_text(EXISTING_RESULT)) {
        Ok(Accepted::Done(result)) => {
            response.logs.push(format!("job {id} already succeeded; not stored or run again"));
            response.http_response(200, result);
        }
        Ok(Accepted::Stored(job)) => {
            let reference = job.to_reference();
            let accepted = json!({"accepted": [{"id": job.id, "status_url": status_url(&job.id)}], "count": 1, "status_url": status_url(&job.id)});
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

fn accept(id: &str, body: String, existing: Option<String>) -> Result<Accepted, ApiError> {
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
    if let Some(text) = existing
        && let Ok(previous) = serde_json::from_str::<JobResult>(&text)
        && previous.status == JobStatus::Succeeded
        && previous.id == id
    {
        return Ok(Accepted::Done(text));
    }
    if body.trim().is_empty() {
        return Err(ApiError::invalid("", "the request has no body: send one job as JSON, with a Content-Length"));
    }
    let value: Value =
        serde_json::from_str(&body).map_err(|e| ApiError::invalid("", format!("the body is not valid JSON: {e}")))?;
    drop(body);
    let job = Job::into_message(value, || id.to_owned())?;
    if job.id != id {
        return Err(ApiError::invalid(
            "id",
            format!("the job's id `{}` differs from the path's `{id}`: leave it out or make them equal", job.id),
        ));
    }
    Ok(Accepted::Stored(job))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_puts_are_refused_with_the_field() {
        let job = r#"{"task": "summarize", "input": {"text": "t"}}"#;
        let accept = |id: &str, body: &str, existing: Option<String>| accept(id, body.to_owned(), existing);
        assert_eq!(accept("../x", job, None).err().unwrap().field(), Some("id"));
        let other = r#"{"id": "b", "task": "summarize", "input": {"text": "t"}}"#;
        assert_eq!(accept("a", other, None).err().unwrap().field(), Some("id"));
        let big = format!(r#"{{"task": "summarize", "input": {{"text": "{}"}}}}"#, "x".repeat(MAX_STORED_JOB_BYTES));
        assert_eq!(accept("a", &big, None).err().unwrap().code(), "payload_too_large");
        assert_eq!(accept("a", "", None).err().unwrap().code(), "invalid_input");
        assert!(matches!(accept("a", job, None), Ok(Accepted::Stored(j)) if j.id == "a"));
        let done = r#"{"id": "a", "task": "summarize", "status": "succeeded", "attempts": 1, "completed_at": "2026-01-01T00:00:00Z"}"#;
        assert!(matches!(accept("a", job, Some(done.to_owned())), Ok(Accepted::Done(_))));
        let failed = done.replace("succeeded", "failed");
        assert!(matches!(accept("a", job, Some(failed)), Ok(Accepted::Stored(_))));
    }
}
