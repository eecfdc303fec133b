//! The queue-triggered `process_job` function: one message in, exactly one `Result` out (blob
//! `results/{id}.json` and queue `results`), at least once and never lost.
//!
//! Permanent failures write a `failed` Result at once. Transient ones fail the invocation so the
//! host redelivers the message, until the last allowed delivery (`maxDequeueCount`), which
//! writes a `failed` Result instead of letting the message vanish into the poison queue.
//! A redelivered message whose job already succeeded is not run again.
//!
//! A message may reference a stored job (`{"id", "task", "input_blob": "inputs/{id}.json"}`,
//! from `PUT /api/jobs/{id}`) instead of carrying it: the job is then read through the
//! `stored_input` blob input binding and runs exactly like an inline one. A stored job not yet
//! visible is a transient failure (redelivered), recorded as failed on the last delivery.
//!
//! Across instances, with an identity-based storage connection, the worker claims the id before
//! calling Azure OpenAI (`claims/{id}`, a create-only Put Blob holding the input digest; see
//! `storage.rs`): the first digest to create it owns the id, another input under it is a
//! `conflict`, and the same input runs (a redelivery or a twin: equivalent Results). A claim that
//! cannot be made is a transient failure, never a skipped check.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::body::RawBody;
use super::ledger::Claim;
use super::state::AppState;
use crate::error::{ApiError, Disposition};
use crate::host::{Invocation, InvocationResponse, message_json};
use crate::jobs::digest::document_digest;
use crate::jobs::{Job, JobHeader, JobResult, JobStatus, STORED_INPUT_FIELD, is_job_id};
use crate::storage::IdClaim;
use crate::telemetry;

/// Binding names in `process_job/function.json`.
const TRIGGER: &str = "job";
const EXISTING_RESULT: &str = "existing_result";
const STORED_INPUT: &str = "stored_input";
const RESULT_BLOB: &str = "result_blob";
const RESULT_QUEUE: &str = "result_queue";

pub async fn process_job(State(app): State<AppState>, RawBody(body): RawBody) -> Response {
    let invocation = match Invocation::parse(&body) {
        Ok(invocation) => invocation,
        Err(e) => return e.into_response(),
    };
    let Some(text) = invocation.input_text(TRIGGER) else {
        return ApiError::invalid("", format!("malformed invocation payload: no queue message in `Data.{TRIGGER}`"))
            .into_response();
    };
    let delivery = invocation.metadata_u32("DequeueCount").unwrap_or(1).max(1);
    let max_deliveries = app.settings.host.max_dequeue_count;
    let message = message_json(&text);
    let header = message.as_ref().map(JobHeader::peek).unwrap_or_default();
    // `{Id}` in the blob paths resolves to the message's `id`, else to the queue message id.
    let id = header
        .id
        .clone()
        .or_else(|| invocation.metadata_text("Id").filter(|id| is_job_id(id)))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    tracing::Span::current().record("job.id", id.as_str());
    let mut response = InvocationResponse::default();

    // The job document (the message, or the stored job it references) and its input digest.
    let message_digest = message.as_ref().map_or_else(|_| document_digest(&Value::Null), document_digest);
    let document = message.and_then(|value| stored_job(&invocation, value, &id));
    let digest = document.as_ref().map_or(message_digest, document_digest);
    // Without the job document (a stored job not found), the digest is the message's: recorded,
    // but not compared with another Result's.
    let comparable = document.is_ok();
    let job = document.and_then(|value| Job::parse(&value, || id.clone())).and_then(|job| {
        if job.id == id {
            Ok(job)
        } else {
            Err(ApiError::invalid("id", format!("the stored job's id `{}` differs from the message's `{id}`", job.id)))
        }
    });
    let reply_to = job.as_ref().ok().and_then(|j| j.reply_to.clone());

    // A Result written before this invocation started (the blob input binding).
    if let Some(text) = invocation.blob_text(EXISTING_RESULT)
        && let Ok(previous) = serde_json::from_str::<JobResult>(&text)
        && previous.id == id
    {
        match previous.digest {
            Some(other) if comparable && other != digest => {
                return conflict(response, &id, header.task, &digest, &other, delivery, reply_to);
            }
            // Results from before digests were recorded: a succeeded one is taken as this job's.
            _ if previous.status == JobStatus::Succeeded => {
                response.logs.push(format!("job {id} already succeeded (delivery {delivery}); not run again"));
                return re_emit(response, text);
            }
            // A failed Result of the same input: run again.
            _ => {}
        }
    }

    // The same id running (or just finished) on this instance.
    let claim = match &job {
        Err(e) if !comparable => Err(e.clone()),
        _ => app.ledger.claim(&id, &digest, app.invocation_deadline()).await,
    };
    // Whether this invocation may write `results/{id}.json`: only once its digest owns the id
    // across instances (or when there is no storage connection to claim it in). Otherwise a
    // Result goes to the queue only, since the blob may belong to another input.
    let mut owns_id = app.results.is_none();
    let (running, outcome) = match claim {
        Ok(Claim::Run(running)) => {
            // An invalid job claims its id too: its failed Result is the id's answer, as on one
            // instance (the ledger above records it the same way).
            let outcome = match claim_across_instances(&app, &id, &digest).await {
                Ok(IdClaim::Owned) => {
                    owns_id = true;
                    match &job {
                        Ok(job) => job.input.run(&app.client, app.invocation_deadline()).await,
                        Err(e) => Err(e.clone()),
                    }
                }
                Ok(IdClaim::OwnedByOther(other)) => {
                    drop(running);
                    return conflict(response, &id, header.task, &digest, &other, delivery, reply_to);
                }
                Err(e) => Err(e),
            };
            (Some(running), outcome)
        }
        Ok(Claim::Done(text)) => {
            response
                .logs
                .push(format!("job {id} just succeeded on this instance (delivery {delivery}); not run again"));
            return re_emit(response, text.to_string());
        }
        Ok(Claim::Conflict(other)) => return conflict(response, &id, header.task, &digest, &other, delivery, reply_to),
        Err(waited) => (None, Err(waited)),
    };
    let result = match outcome {
        Ok(output) => {
            response.logs.push(format!("job {id} succeeded on delivery {delivery}"));
            JobResult::new(id, header.task, Ok(output), delivery, reply_to)
        }
        Err(error) if error.disposition() == Disposition::Transient && delivery < max_deliveries => {
            tracing::warn!(job.id = %id, delivery, max_deliveries, code = error.code(), "transient failure; the host will redeliver the message");
            drop(running);
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(
                    serde_json::json!({"error": error.body(), "delivery": delivery, "max_deliveries": max_deliveries}),
                ),
            )
                .into_response();
        }
        Err(error) => {
            let error = if error.disposition() == Disposition::Transient { gave_up(error, delivery) } else { error };
            tracing::warn!(job.id = %id, delivery, code = error.code(), "job failed: {error}");
            response.logs.push(format!("job {id} failed on delivery {delivery}: {}", error.code()));
            JobResult::new(id, header.task, Err(&error), delivery, reply_to)
        }
    }
    .with_digest(digest);
    let document = match serde_json::to_string(&result) {
        Ok(document) => Value::String(document),
        Err(e) => return ApiError::internal(format!("could not encode the Result: {e}")).into_response(),
    };
    if let Some(running) = running {
        let succeeded = (result.status == JobStatus::Succeeded).then(|| document.as_str()).flatten();
        running.finish(succeeded);
    }
    if owns_id {
        response.output(RESULT_BLOB, document.clone());
    }
    response.output(RESULT_QUEUE, document);
    with_invocation_logs(response).into_response()
}

/// Claims `id` for `digest` in `claims/{id}` with the app's identity, within the invocation's
/// deadline. Without an identity-based storage connection there is nothing to claim in: the id
/// is this job's as far as this instance knows (the ledger and the Result binding still apply).
async fn claim_across_instances(app: &AppState, id: &str, digest: &str) -> Result<IdClaim, ApiError> {
    match &app.results {
        Some(store) => store.claim(id, digest, app.invocation_deadline()).await,
        None => Ok(IdClaim::Owned),
    }
}

/// The Result of the same input, already written: sent to queue `results` once more (the blob
/// already holds it), so a consumer that missed it still gets one. Azure OpenAI is not called.
fn re_emit(mut response: InvocationResponse, result: String) -> Response {
    response.output(RESULT_QUEUE, Value::String(result));
    with_invocation_logs(response).into_response()
}

/// The id already answers another input: a permanent `conflict` Result, to queue `results`
/// only. The blob keeps the other input's Result.
fn conflict(
    mut response: InvocationResponse,
    id: &str,
    task: Option<crate::jobs::Task>,
    digest: &str,
    other: &str,
    delivery: u32,
    reply_to: Option<String>,
) -> Response {
    let short = |d: &str| d.chars().take(12).collect::<String>();
    let error = ApiError::Conflict {
        message: format!(
            "job id `{id}` already answers another input (its Result has digest {}…, this job's is {}…); its Result is kept. Submit this job with a new id",
            short(other),
            short(digest)
        ),
    };
    tracing::warn!(job.id = %id, delivery, code = error.code(), "job failed: {error}");
    response.logs.push(format!("job {id} failed on delivery {delivery}: conflict (the id answers another input)"));
    let result = JobResult::new(id.to_owned(), task, Err(&error), delivery, reply_to).with_digest(digest.to_owned());
    match serde_json::to_string(&result) {
        Ok(document) => {
            response.output(RESULT_QUEUE, Value::String(document));
            with_invocation_logs(response).into_response()
        }
        Err(e) => ApiError::internal(format!("could not encode the Result: {e}")).into_response(),
    }
}

/// The job document: the message itself, or the stored job it references.
fn stored_job(invocation: &Invocation, message: Value, id: &str) -> Result<Value, ApiError> {
    let Some(reference) = message.get(STORED_INPUT_FIELD) else { return Ok(message) };
    let expected = Job::stored_path(id);
    if reference.as_str() != Some(expected.as_str()) {
        return Err(ApiError::invalid(
            STORED_INPUT_FIELD,
            format!(
                "{STORED_INPUT_FIELD} must be `{expected}` for job `{id}` (the blob the stored_input binding reads)"
            ),
        ));
    }
    let text = invocation.blob_text(STORED_INPUT).ok_or_else(|| ApiError::UpstreamUnavailable {
        message: format!("the stored job {expected} was not found (not yet written, or deleted)"),
    })?;
    serde_json::from_str(&text)
        .map_err(|e| ApiError::invalid(STORED_INPUT_FIELD, format!("the stored job {expected} is not JSON ({e})")))
}

/// The log lines this invocation emitted, then its summary lines: the host logs `Logs` against
/// the invocation (on a 2xx answer only, so the redelivery path has none).
fn with_invocation_logs(mut response: InvocationResponse) -> InvocationResponse {
    let mut logs = telemetry::take_invocation_logs();
    logs.append(&mut response.logs);
    response.logs = logs;
    response
}

/// The last allowed delivery failed transiently: say so in the recorded error.
fn gave_up(error: ApiError, delivery: u32) -> ApiError {
    let message = format!("gave up after {delivery} deliveries (maxDequeueCount): {error}");
    match error {
        ApiError::UpstreamThrottled { retry_after, .. } => ApiError::UpstreamThrottled { message, retry_after },
        ApiError::UpstreamUnavailable { .. } => ApiError::UpstreamUnavailable { message },
        ApiError::UpstreamPermissionDenied { .. } => ApiError::UpstreamPermissionDenied { message },
        ApiError::UpstreamAuthFailed { transient, .. } => ApiError::UpstreamAuthFailed { message, transient },
        other => other,
    }
}
