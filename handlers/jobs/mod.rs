//! The jobs: summarise and classify (one module each), and the queue's `Job` and `Result`
//! documents of `api.md`. A job's input is exactly the body of the matching HTTP call, so both
//! paths share one validation and one run.

pub mod classify;
pub mod input;
pub mod summarize;

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::echo::echo;
use crate::error::{ApiError, ErrorBody};
use crate::openai::OpenAiClient;
use classify::ClassifyRequest;
use input::Fields;
use summarize::SummarizeRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Summarize,
    Classify,
}

/// A validated job input.
#[derive(Debug, Clone, PartialEq)]
pub enum JobInput {
    Summarize(SummarizeRequest),
    Classify(ClassifyRequest),
}

impl JobInput {
    pub fn parse(task: Task, input: &Value) -> Result<Self, ApiError> {
        match task {
            Task::Summarize => SummarizeRequest::parse(input).map(Self::Summarize),
            Task::Classify => ClassifyRequest::parse(input).map(Self::Classify),
        }
    }

    /// Runs the job; the output is the 200 body of the matching HTTP call.
    pub async fn run(&self, client: &OpenAiClient, deadline: Instant) -> Result<Value, ApiError> {
        let output = match self {
            Self::Summarize(r) => serde_json::to_value(r.run(client, deadline).await?),
            Self::Classify(r) => serde_json::to_value(r.run(client, deadline).await?),
        };
        output.map_err(|e| ApiError::internal(format!("could not encode the output: {e}")))
    }
}

/// One queue message of `api.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub task: Task,
    pub input: JobInput,
    /// The raw input, re-encoded as-is when the job is enqueued.
    pub raw_input: Value,
    pub reply_to: Option<String>,
}

/// The parts of a message that are known even when the rest is invalid, so that a `failed`
/// Result can still carry the right id and task.
#[derive(Debug, Clone, Default)]
pub struct JobHeader {
    pub id: Option<String>,
    pub task: Option<Task>,
}

impl Job {
    /// Validates a job; `default_id` is used when the message has no `id`.
    pub fn parse(value: &Value, default_id: impl FnOnce() -> String) -> Result<Self, ApiError> {
        let fields = Fields::new(value, "a job", &["id", "task", "input", "reply_to"])?;
        let id = match fields.text("id", 1, 128)? {
            Some(id) if is_job_id(id) => id.to_owned(),
            Some(id) => {
                return Err(ApiError::invalid(
                    "id",
                    format!("id must be 1..=128 of letters, digits, `-`, `_`, `.` (got `{}`)", echo(id)),
                ));
            }
            None => default_id(),
        };
        let task = match fields.text("task", 1, 20)? {
            Some("summarize") => Task::Summarize,
            Some("classify") => Task::Classify,
            Some(other) => {
                return Err(ApiError::invalid(
                    "task",
                    format!("task must be `summarize` or `classify` (got `{}`)", echo(other)),
                ));
            }
            None => return Err(ApiError::invalid("task", "task is required (`summarize` or `classify`)")),
        };
        let raw_input = value.get("input").cloned().ok_or_else(|| {
            ApiError::invalid("input", "input is required (the body of POST /api/summarize or /api/classify)")
        })?;
        let input = JobInput::parse(task, &raw_input).map_err(|e| prefix_field(e, "input"))?;
        let reply_to = fields.text("reply_to", 3, 63)?.map(str::to_owned);
        if let Some(queue) = &reply_to
            && !is_queue_name(queue)
        {
            return Err(ApiError::invalid(
                "reply_to",
                format!(
                    "reply_to must be a storage queue name: 3..=63 lower-case letters, digits and single hyphens (got `{}`)",
                    echo(queue)
                ),
            ));
        }
        Ok(Self { id, task, input, raw_input, reply_to })
    }

    /// The queue message text for this job.
    pub fn to_message(&self) -> String {
        let mut message = serde_json::json!({"id": self.id, "task": self.task, "input": self.raw_input});
        if let Some(reply_to) = &self.reply_to {
            message["reply_to"] = Value::String(reply_to.clone());
        }
        message.to_string()
    }
}

impl JobHeader {
    /// Whatever can be read of `id` and `task` from a message that may be invalid.
    pub fn peek(value: &Value) -> Self {
        let id = value.get("id").and_then(Value::as_str).filter(|id| is_job_id(id)).map(str::to_owned);
        let task = value.get("task").cloned().and_then(|t| serde_json::from_value(t).ok());
        Self { id, task }
    }
}

/// The `Result` document of `api.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    pub status: JobStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    pub attempts: u32,
    pub completed_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Succeeded,
    Failed,
}

impl JobResult {
    pub fn new(
        id: String,
        task: Option<Task>,
        outcome: Result<Value, &ApiError>,
        attempts: u32,
        reply_to: Option<String>,
    ) -> Self {
        let (status, output, error) = match outcome {
            Ok(output) => (JobStatus::Succeeded, Some(output), None),
            Err(e) => (JobStatus::Failed, None, Some(bounded(e.body()))),
        };
        let completed_at =
            time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        Self { id, task, status, output, error, attempts, completed_at, reply_to }
    }
}

/// Every message is built from bounded pieces already; this is the last line of defence that
/// keeps a failed Result within a queue message whatever a future message quotes.
fn bounded(mut body: ErrorBody) -> ErrorBody {
    const MAX_MESSAGE_CHARS: usize = 2000;
    if body.message.chars().count() > MAX_MESSAGE_CHARS {
        body.message = crate::echo::echo_n(&body.message, MAX_MESSAGE_CHARS);
    }
    body.field = body.field.map(|field| crate::echo::echo_n(&field, 2 * crate::echo::ECHO_CHARS));
    body
}

fn prefix_field(error: ApiError, prefix: &str) -> ApiError {
    match error {
        ApiError::InvalidInput { field, message } => ApiError::InvalidInput { field: join(prefix, &field), message },
        ApiError::PayloadTooLarge { field, message } => {
            ApiError::PayloadTooLarge { field: Some(join(prefix, field.as_deref().unwrap_or(""))), message }
        }
        other => other,
    }
}

fn join(prefix: &str, field: &str) -> String {
    if field.is_empty() { prefix.to_owned() } else { format!("{prefix}.{field}") }
}

/// Ids become blob names (`results/{id}.json`): keep them to a safe alphabet.
pub fn is_job_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.')
}

fn is_queue_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_job_without_id_gets_the_default() {
        let job = Job::parse(&json!({"task": "summarize", "input": {"text": "t"}}), || "generated".into()).unwrap();
        assert_eq!(job.id, "generated");
        let message: Value = serde_json::from_str(&job.to_message()).unwrap();
        assert_eq!(message, json!({"id": "generated", "task": "summarize", "input": {"text": "t"}}));
    }

    #[test]
    fn invalid_jobs_name_the_field() {
        let cases = [
            (json!({"task": "translate", "input": {}}), "task"),
            (json!({"input": {}}), "task"),
            (json!({"task": "summarize"}), "input"),
            (json!({"task": "summarize", "input": {"text": ""}}), "input.text"),
            (json!({"task": "classify", "input": {"text": "t", "labels": ["a"]}}), "input.labels"),
            (json!({"id": "../etc", "task": "summarize", "input": {"text": "t"}}), "id"),
            (json!({"task": "summarize", "input": {"text": "t"}, "reply_to": "Results!"}), "reply_to"),
        ];
        for (body, field) in cases {
            let err = Job::parse(&body, || "x".into()).unwrap_err();
            assert_eq!(err.field(), Some(field), "{body}: {err}");
        }
    }
}
