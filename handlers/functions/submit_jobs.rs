//! `submit_jobs` (POST /api/jobs): validates a batch and enqueues it through the `jobs` queue
//! output binding. An HTTP trigger in payload mode (it has other bindings), so the request and
//! response travel inside invocations.
//!
//! With an identity-based storage connection, each job's id is checked against its stored
//! Result (`storage.rs`): an id whose Result answers another input (another digest) refuses the
//! whole batch with 409 `conflict`, naming each such job. The 202 lists each job's digest, so a
//! client can check that a Result answers its input.
//!
//! A batch is up to 1 000 jobs (about 48 MB), so memory is part of the design: the caller's
//! body is decoded once and taken out of the invocation (not copied), the batch is split into
//! its jobs without parsing them all at once (each job is borrowed from the body as raw JSON),
//! and each job is validated, its message built once and written straight into the response
//! body, then dropped. Peak: about twice the invocation body (`bench memory`,
//! docs/reliability.md). The memory budget (`budget.rs`) bounds how many run at once.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::Response;
use serde_json::json;
use serde_json::value::RawValue;

use super::body::RawBody;
use super::state::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::host::{Invocation, InvocationResponse, QueueMessages};
use crate::jobs::{Job, JobResult};

pub const MAX_JOBS_PER_SUBMIT: usize = 1000;
/// A storage queue message holds 64 KiB; base64 encoding (`messageEncoding`) leaves 48 KiB.
pub const MAX_MESSAGE_BYTES: usize = 48 * 1024;
/// Binding name of the queue output in `submit_jobs/function.json`.
const QUEUE: &str = "outjobs";
/// The longest the stored-Result check may take, within the HTTP call's own deadline.
const CHECK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

pub async fn submit_jobs(State(app): State<AppState>, body: Result<RawBody, ApiError>) -> Response {
    let parsed = body.and_then(|RawBody(raw)| {
        let request = Invocation::parse(&raw)?.take_http_trigger("req")?;
        Ok((request, raw))
    });
    let (request, raw) = match parsed {
        Ok(parts) => parts,
        Err(e) => return InvocationResponse::for_http_error(&e),
    };
    let mut response = InvocationResponse::default();
    // The host sends no Body for an empty (or chunked, without Content-Length) request.
    let body = request.body.unwrap_or_default();
    // The answer is about the size of the invocation (each job once more, compact, escaped
    // once), so it is written into the invocation's own buffer, done with once the body is
    // out: the peak is the invocation plus its body, not plus the answer too.
    let mut queue = QueueMessages::new(QUEUE, raw, body.len() + body.len() / 8 + 64 * 1024);
    let checked = match validate_batch(body, &mut queue) {
        Ok(jobs) => check_stored_results(&app, jobs).await,
        Err(errors) => Err(errors),
    };
    match checked {
        Ok(jobs) => {
            let accepted: Vec<_> = jobs
                .iter()
                .map(|job| json!({"id": job.id, "digest": job.digest, "status_url": status_url(&job.id)}))
                .collect();
            let body = json!({"accepted": accepted, "count": jobs.len(), "status_url": status_url(&jobs[0].id)});
            response.logs.push(format!("enqueued {} job(s)", jobs.len()));
            response.http_response(202, body.to_string());
            response.into_response_with(queue)
        }
        Err(errors) => {
            let with_index = |(index, error): &(Option<usize>, ApiError)| ErrorBody { index: *index, ..error.body() };
            let first = with_index(&errors[0]);
            let all: Vec<ErrorBody> = errors.iter().map(with_index).collect();
            let status = errors[0].1.status().as_u16();
            let body = json!({"error": first, "errors": all, "enqueued": 0});
            response.http_response(status, body.to_string());
            axum::response::IntoResponse::into_response(response)
        }
    }
}

/// The invalid jobs of a batch, each with its index (none for a whole-body problem).
type BatchErrors = Vec<(Option<usize>, ApiError)>;

pub(super) fn status_url(id: &str) -> String {
    format!("/api/jobs/{id}")
}

/// A job of the batch, its message already written.
#[derive(Debug)]
struct Accepted {
    id: String,
    digest: String,
    /// The id is a fresh UUID of ours, so no Result can exist under it (nothing to read).
    generated: bool,
}

/// The jobs, unless a stored Result answers another input under one of their ids (each such job
/// is a `conflict` at its index) or the Results cannot be read (the whole batch is refused: nothing
/// is enqueued that might reuse an id). Without a storage connection, the jobs as they are.
async fn check_stored_results(app: &AppState, jobs: Vec<Accepted>) -> Result<Vec<Accepted>, BatchErrors> {
    let Some(store) = &app.results else { return Ok(jobs) };
    let deadline = app.http_deadline().min(std::time::Instant::now() + CHECK_DEADLINE);
    // Only ids the caller chose can have a Result already.
    let chosen: Vec<(usize, &Accepted)> = jobs.iter().enumerate().filter(|(_, j)| !j.generated).collect();
    if chosen.is_empty() {
        return Ok(jobs);
    }
    let ids: Vec<&str> = chosen.iter().map(|(_, j)| j.id.as_str()).collect();
    let stored = store.results(&ids, deadline).await.map_err(|e| vec![(None, e)])?;
    let mut errors = Vec::new();
    for ((index, job), text) in chosen.into_iter().zip(stored) {
        let Some(previous) = text.and_then(|t| serde_json::from_str::<JobResult>(&t).ok()) else { continue };
        if let Some(other) = previous.digest.filter(|other| *other != job.digest) {
            let short = |d: &str| d.chars().take(12).collect::<String>();
            let error = ApiError::Conflict {
                message: format!(
                    "jobs[{index}]: job id `{}` already has a Result for another input (digest {}…, this job's is {}…): use a new id",
                    job.id,
                    short(&other),
                    short(&job.digest)
                ),
            };
            errors.push((Some(index), error));
        }
    }
    if errors.is_empty() { Ok(jobs) } else { Err(errors) }
}

/// All jobs valid, their messages written to `queue` and their ids and digests returned, or
/// every invalid one with its index (none for a whole-body problem): then `queue` is to be
/// dropped, nothing partial is enqueued. The body is freed before it returns.
fn validate_batch(body: String, queue: &mut QueueMessages) -> Result<Vec<Accepted>, BatchErrors> {
    let one = |e: ApiError| vec![(None, e)];
    if body.trim().is_empty() {
        return Err(one(ApiError::invalid(
            "",
            "the request has no body: send one job or {\"jobs\": [...]} as JSON, with a Content-Length",
        )));
    }
    let not_json = |e: serde_json::Error| one(ApiError::invalid("", format!("the body is not valid JSON: {e}")));
    // Checks the whole body's syntax without building it.
    let whole: &RawValue = serde_json::from_str(&body).map_err(not_json)?;
    let batch: Option<Vec<&RawValue>> = if whole.get().starts_with('{') {
        // Only the top-level members, each kept as raw JSON borrowed from the body.
        let top: HashMap<String, &RawValue> = serde_json::from_str(whole.get()).map_err(not_json)?;
        match top.get("jobs") {
            Some(jobs) if jobs.get().starts_with('[') => Some(serde_json::from_str(jobs.get()).map_err(not_json)?),
            Some(_) => return Err(one(ApiError::invalid("jobs", "jobs must be an array of 1..=1000 jobs"))),
            None => None,
        }
    } else {
        None
    };
    let items = batch.unwrap_or_else(|| vec![whole]);
    if items.is_empty() || items.len() > MAX_JOBS_PER_SUBMIT {
        return Err(one(ApiError::invalid(
            "jobs",
            format!("jobs must hold 1..={MAX_JOBS_PER_SUBMIT} jobs (got {})", items.len()),
        )));
    }
    let mut jobs: Vec<Accepted> = Vec::with_capacity(items.len());
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let mut generated = false;
        let message = serde_json::from_str(item.get())
            .map_err(|e| ApiError::invalid("", format!("the job is not valid JSON: {e}")))
            .and_then(|value| {
                Job::into_message(value, || {
                    generated = true;
                    uuid::Uuid::new_v4().to_string()
                })
            })
            .and_then(|message| {
                if let Some(first) = seen.get(&message.id) {
                    return Err(ApiError::invalid("id", format!("id `{}` duplicates jobs[{first}]", message.id)));
                }
                let size = message.text.len();
                if size > MAX_MESSAGE_BYTES {
                    return Err(ApiError::PayloadTooLarge {
                        field: Some("input".into()),
                        message: format!("the job is {size} bytes as a queue message; a message holds at most {MAX_MESSAGE_BYTES} bytes. Send a long job with PUT /api/jobs/{{id}} (up to 8 MiB)"),
                    });
                }
                Ok(message)
            });
        match message {
            Ok(message) => {
                seen.insert(message.id.clone(), index);
                // After the first error only the errors matter.
                if errors.is_empty() {
                    queue.push(&message.text);
                    jobs.push(Accepted { id: message.id, digest: message.digest, generated });
                }
            }
            Err(e) => {
                let (index, error) = e.at_index(index);
                errors.push((Some(index), error));
            }
        }
    }
    if errors.is_empty() { Ok(jobs) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn job(id: &str) -> Value {
        json!({"id": id, "task": "summarize", "input": {"text": "t \"quoted\"\n", "max_words": 20}, "reply_to": "replies"})
    }

    /// The messages written for `body`, as JSON, and the ids.
    fn messages(body: String) -> Result<(Vec<String>, Vec<Value>), BatchErrors> {
        let mut queue = QueueMessages::new(QUEUE, Vec::new(), 0);
        let ids = validate_batch(body, &mut queue)?.into_iter().map(|job| job.id).collect();
        let written = InvocationResponse::default().into_response_with(queue).into_body();
        let written = futures_util::FutureExt::now_or_never(axum::body::to_bytes(written, usize::MAX));
        let written: Value = serde_json::from_slice(&written.unwrap().unwrap()).unwrap();
        let texts = written["Outputs"][QUEUE].as_array().unwrap().iter();
        Ok((ids, texts.map(|t| serde_json::from_str(t.as_str().unwrap()).unwrap()).collect()))
    }

    #[test]
    fn each_message_is_the_job_as_sent() {
        let body = json!({"jobs": [job("a"), job("b")], "ignored": true}).to_string();
        let (ids, written) = messages(body).unwrap();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(written, [job("a"), job("b")]);
        let (ids, written) = messages(job("c").to_string()).unwrap();
        assert_eq!((ids, written), (vec!["c".to_owned()], vec![job("c")]));
    }

    #[test]
    fn whole_body_problems_have_no_index() {
        for (body, field) in [
            ("", ""),
            ("{\"jobs\": [", ""),
            ("{\"jobs\": null}", "jobs"),
            ("{\"jobs\": {}}", "jobs"),
            ("{\"jobs\": []}", "jobs"),
            ("[1, 2]", "jobs[0]"),
        ] {
            let errors = messages(body.to_owned()).unwrap_err();
            assert_eq!(errors[0].1.field(), Some(field), "{body}: {:?}", errors[0]);
        }
    }
}
