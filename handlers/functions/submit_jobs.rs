//! `submit_jobs` (POST /api/jobs): validates a batch and enqueues it through the `jobs` queue
//! output binding. An HTTP trigger in payload mode (it has other bindings), so the request and
//! response travel inside invocations.
//!
//! With an identity-based storage connection, each job's id is checked against its stored
//! Result (`storage.rs`): an id whose Result answers another input (another digest) refuses the
//! whole batch with 409 `conflict`, naming each such job. The 202 lists each job's digest, so a
//! client can check that a Result answers its input.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::body::RawBody;
use super::state::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::host::{Invocation, InvocationResponse};
use crate::jobs::{Job, JobResult};

pub const MAX_JOBS_PER_SUBMIT: usize = 1000;
/// A storage queue message holds 64 KiB; base64 encoding (`messageEncoding`) leaves 48 KiB.
pub const MAX_MESSAGE_BYTES: usize = 48 * 1024;
/// The longest the stored-Result check may take, within the HTTP call's own deadline.
const CHECK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

pub async fn submit_jobs(State(app): State<AppState>, RawBody(body): RawBody) -> Response {
    let request = match Invocation::parse(&body).and_then(|inv| inv.http_trigger("req")) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    let mut response = InvocationResponse::default();
    // The host sends no Body for an empty (or chunked, without Content-Length) request.
    let body = request.body.as_deref().unwrap_or_default();
    let checked = match validate_batch(body) {
        Ok(jobs) => check_stored_results(&app, jobs).await,
        Err(errors) => Err(errors),
    };
    match checked {
        Ok(jobs) => {
            let messages: Vec<Value> = jobs.iter().map(|j| Value::String(j.to_message())).collect();
            let accepted: Vec<Value> = jobs
                .iter()
                .map(|j| json!({"id": j.id, "digest": j.digest(), "status_url": status_url(&j.id)}))
                .collect();
            let body = json!({"accepted": accepted, "count": jobs.len(), "status_url": status_url(&jobs[0].id)});
            response.logs.push(format!("enqueued {} job(s)", jobs.len()));
            response.output("outjobs", messages).http_response(202, body.to_string());
        }
        Err(errors) => {
            let with_index = |(index, error): &(Option<usize>, ApiError)| ErrorBody { index: *index, ..error.body() };
            let first = with_index(&errors[0]);
            let all: Vec<ErrorBody> = errors.iter().map(with_index).collect();
            let status = errors[0].1.status().as_u16();
            let body = json!({"error": first, "errors": all, "enqueued": 0});
            response.http_response(status, body.to_string());
        }
    }
    response.into_response()
}

pub(super) fn status_url(id: &str) -> String {
    format!("/api/jobs/{id}")
}

/// The jobs, unless a stored Result answers another input under one of their ids (each such job
/// is a `conflict` at its index) or the Results cannot be read (the whole batch is refused: nothing
/// is enqueued that might reuse an id). Without a storage connection, the jobs as they are.
async fn check_stored_results(app: &AppState, jobs: Vec<Job>) -> Result<Vec<Job>, Vec<(Option<usize>, ApiError)>> {
    let Some(store) = &app.results else { return Ok(jobs) };
    let deadline = app.http_deadline().min(std::time::Instant::now() + CHECK_DEADLINE);
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    let stored = store.results(&ids, deadline).await.map_err(|e| vec![(None, e)])?;
    let mut errors = Vec::new();
    for (index, (job, text)) in jobs.iter().zip(stored).enumerate() {
        let Some(previous) = text.and_then(|t| serde_json::from_str::<JobResult>(&t).ok()) else { continue };
        let digest = job.digest();
        if let Some(other) = previous.digest.filter(|other| *other != digest) {
            let short = |d: &str| d.chars().take(12).collect::<String>();
            let error = ApiError::Conflict {
                message: format!(
                    "jobs[{index}]: job id `{}` already has a Result for another input (digest {}…, this job's is {}…): use a new id",
                    job.id,
                    short(&other),
                    short(&digest)
                ),
            };
            errors.push((Some(index), error));
        }
    }
    if errors.is_empty() { Ok(jobs) } else { Err(errors) }
}

/// All jobs valid, or every invalid one with its index (none for a whole-body problem):
/// nothing partial is enqueued.
fn validate_batch(body: &str) -> Result<Vec<Job>, Vec<(Option<usize>, ApiError)>> {
    let one = |e: ApiError| vec![(None, e)];
    if body.trim().is_empty() {
        return Err(one(ApiError::invalid(
            "",
            "the request has no body: send one job or {\"jobs\": [...]} as JSON, with a Content-Length",
        )));
    }
    let value: Value = serde_json::from_str(body)
        .map_err(|e| one(ApiError::invalid("", format!("the body is not valid JSON: {e}"))))?;
    let items: Vec<Value> = match value.get("jobs") {
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Err(one(ApiError::invalid("jobs", "jobs must be an array of 1..=1000 jobs"))),
        None => vec![value],
    };
    if items.is_empty() || items.len() > MAX_JOBS_PER_SUBMIT {
        return Err(one(ApiError::invalid(
            "jobs",
            format!("jobs must hold 1..={MAX_JOBS_PER_SUBMIT} jobs (got {})", items.len()),
        )));
    }
    let mut jobs: Vec<Job> = Vec::with_capacity(items.len());
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut errors = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let job = Job::parse(item, || uuid::Uuid::new_v4().to_string()).and_then(|job| {
            if let Some(first) = seen.get(&job.id) {
                return Err(ApiError::invalid("id", format!("id `{}` duplicates jobs[{first}]", job.id)));
            }
            let size = job.to_message().len();
            if size > MAX_MESSAGE_BYTES {
                return Err(ApiError::PayloadTooLarge {
                    field: Some("input".into()),
                    message: format!("the job is {size} bytes as a queue message; a message holds at most {MAX_MESSAGE_BYTES} bytes. Send a long job with PUT /api/jobs/{{id}} (up to 8 MiB)"),
                });
            }
            Ok(job)
        });
        match job {
            Ok(job) => {
                seen.insert(job.id.clone(), index);
                jobs.push(job);
            }
            Err(e) => {
                let (index, error) = e.at_index(index);
                errors.push((Some(index), error));
            }
        }
    }
    if errors.is_empty() { Ok(jobs) } else { Err(errors) }
}
