//! `submit_jobs` (POST /api/jobs): validates a batch and enqueues it through the `jobs` queue
//! output binding. An HTTP trigger in payload mode (it has other bindings), so the request and
//! response travel inside invocations.
//!
//! A batch is up to 1 000 jobs (about 48 MB), so memory is part of the design: the caller's
//! body is taken out of the invocation (not copied), the batch is split into its jobs without
//! parsing them all at once (each job is borrowed from the body as raw JSON), each job is
//! validated and its message built once, and the messages are written into the response body
//! one by one, each freed once written. Peak: about twice the invocation body
//! (`bench memory`, docs/reliability.md). The memory budget (`budget.rs`) bounds how many
//! such submits run at once.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::Response;
use serde_json::json;
use serde_json::value::RawValue;

use super::body::RawBody;
use super::state::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::host::{Invocation, InvocationResponse};
use crate::jobs::{Job, JobMessage};

pub const MAX_JOBS_PER_SUBMIT: usize = 1000;
/// A storage queue message holds 64 KiB; base64 encoding (`messageEncoding`) leaves 48 KiB.
pub const MAX_MESSAGE_BYTES: usize = 48 * 1024;
/// Binding name of the queue output in `submit_jobs/function.json`.
const QUEUE: &str = "outjobs";

pub async fn submit_jobs(State(_app): State<AppState>, body: Result<RawBody, ApiError>) -> Response {
    let request = match body.and_then(|RawBody(body)| {
        // The raw invocation is dropped as soon as its `Data.req.Body` is out.
        Invocation::parse(&body)?.take_http_trigger("req")
    }) {
        Ok(request) => request,
        Err(e) => return InvocationResponse::for_http_error(&e),
    };
    let mut response = InvocationResponse::default();
    // The host sends no Body for an empty (or chunked, without Content-Length) request.
    match validate_batch(request.body.unwrap_or_default()) {
        Ok(messages) => {
            let accepted: Vec<_> =
                messages.iter().map(|m| json!({"id": m.id, "status_url": status_url(&m.id)})).collect();
            let body =
                json!({"accepted": accepted, "count": messages.len(), "status_url": status_url(&messages[0].id)});
            response.logs.push(format!("enqueued {} job(s)", messages.len()));
            response.http_response(202, body.to_string());
            response.into_response_with_messages(QUEUE, messages.into_iter().map(|m| m.text).collect())
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

pub(super) fn status_url(id: &str) -> String {
    format!("/api/jobs/{id}")
}

/// All jobs valid, as their queue messages, or every invalid one with its index (none for a
/// whole-body problem): nothing partial is enqueued. The body is freed before it returns.
fn validate_batch(body: String) -> Result<Vec<JobMessage>, Vec<(Option<usize>, ApiError)>> {
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
    let mut messages: Vec<JobMessage> = Vec::with_capacity(items.len());
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let message = serde_json::from_str(item.get())
            .map_err(|e| ApiError::invalid("", format!("the job is not valid JSON: {e}")))
            .and_then(|value| Job::into_message(value, || uuid::Uuid::new_v4().to_string()))
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
                // After the first error only the errors are kept.
                if errors.is_empty() {
                    messages.push(message);
                }
            }
            Err(e) => {
                messages.clear();
                let (index, error) = e.at_index(index);
                errors.push((Some(index), error));
            }
        }
    }
    if errors.is_empty() { Ok(messages) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn job(id: &str) -> Value {
        json!({"id": id, "task": "summarize", "input": {"text": "t \"quoted\"\n", "max_words": 20}, "reply_to": "replies"})
    }

    #[test]
    fn each_message_is_the_job_as_sent() {
        let body = json!({"jobs": [job("a"), job("b")], "ignored": true}).to_string();
        let messages = validate_batch(body).unwrap();
        assert_eq!(messages.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        for message in &messages {
            assert_eq!(serde_json::from_str::<Value>(&message.text).unwrap(), job(&message.id));
        }
        let single = validate_batch(job("c").to_string()).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&single[0].text).unwrap(), job("c"));
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
            let errors = validate_batch(body.to_owned()).unwrap_err();
            assert_eq!(errors[0].1.field(), Some(field), "{body}: {:?}", errors[0]);
        }
    }
}
