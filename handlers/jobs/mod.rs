//! The jobs: one module per kind, listed once in [`job_kinds!`] below (the task enum, queue
//! dispatch, HTTP routes and the error messages that list the kinds all follow from that
//! list), and the queue's `Job` and `Result` documents of `api.md`. A job's input is exactly the
//! body of the matching HTTP call, so both paths share one validation and one run.

pub mod digest;
pub mod input;
pub mod kind;
pub mod long;
pub mod split;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::echo::echo;
use crate::error::{ApiError, ErrorBody};
use input::Fields;
pub use kind::{JobKind, KindVisitor};

// The registry: one line per job kind (it also declares the kind's module).
kind::job_kinds! {
    Summarize => summarize::SummarizeRequest,
    Classify => classify::ClassifyRequest,
    Extract => extract::ExtractRequest,
}

impl Task {
    /// The task name as the value `task` carries.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.name() == name)
    }

    /// "`summarize` or `classify`" (", " between more).
    pub fn names_listed() -> String {
        let names: Vec<String> = Self::ALL.iter().map(|t| format!("`{}`", t.name())).collect();
        match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }

    /// "POST /api/summarize, POST /api/classify": the synchronous routes.
    pub fn routes_listed() -> String {
        Self::ALL.iter().map(|t| format!("POST /api/{}", t.name())).collect::<Vec<_>>().join(", ")
    }
}

impl Serialize for Task {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Task {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Self::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("task must be {} (got `{name}`)", Self::names_listed())))
    }
}

/// One queue message of `api.md`, validated, to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub task: Task,
    pub input: JobInput,
    pub reply_to: Option<String>,
}

/// A validated job as its queue message text, to enqueue or store: built once, from the
/// client's input moved in (not copied), and nothing else kept.
#[derive(Debug, Clone, PartialEq)]
pub struct JobMessage {
    pub id: String,
    pub task: Task,
    /// `{"id", "input", "reply_to"?, "task"}` as compact JSON.
    pub text: String,
    /// The digest of its task and input (`digest.rs`): what its Result answers.
    pub digest: String,
}

/// The field of a queue message that references a stored job instead of carrying `input`.
pub const STORED_INPUT_FIELD: &str = "input_blob";

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
            Some(name) => Task::from_name(name).ok_or_else(|| {
                ApiError::invalid("task", format!("task must be {} (got `{}`)", Task::names_listed(), echo(name)))
            })?,
            None => return Err(ApiError::invalid("task", format!("task is required ({})", Task::names_listed()))),
        };
        let raw_input = value.get("input").ok_or_else(|| {
            ApiError::invalid("input", format!("input is required (the body of {})", Task::routes_listed()))
        })?;
        let input = JobInput::parse(task, raw_input).map_err(|e| prefix_field(e, "input"))?;
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
        Ok(Self { id, task, input, reply_to })
    }

    /// Validates a job (as [`Job::parse`]) and builds its queue message from it: the input is
    /// moved from `value` into the message, which is encoded once; the validated copy is dropped.
    pub fn into_message(value: Value, default_id: impl FnOnce() -> String) -> Result<JobMessage, ApiError> {
        let Self { id, task, reply_to, .. } = Self::parse(&value, default_id)?;
        let Value::Object(mut fields) = value else { unreachable!("a parsed job is an object") };
        let digest = digest::input_digest(task.name(), fields.get("input").unwrap_or(&Value::Null));
        let mut message = serde_json::Map::new();
        message.insert("id".into(), Value::String(id.clone()));
        message.insert("task".into(), Value::String(task.name().to_owned()));
        message.insert("input".into(), fields.remove("input").unwrap_or_default());
        if let Some(reply_to) = reply_to {
            message.insert("reply_to".into(), Value::String(reply_to));
        }
        Ok(JobMessage { id, task, text: Value::Object(message).to_string(), digest })
    }

    /// Where a job too large for a queue message is stored (`PUT /api/jobs/{id}`).
    pub fn stored_path(id: &str) -> String {
        format!("inputs/{id}.json")
    }
}

impl JobMessage {
    /// The small queue message for a stored job: its id, its task, and where it is.
    pub fn to_reference(&self) -> String {
        serde_json::json!({"id": self.id, "task": self.task, STORED_INPUT_FIELD: Job::stored_path(&self.id)})
            .to_string()
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
    /// The digest of the input this Result answers (`digest.rs`); absent in Results written
    /// before digests were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
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
        Self { id, task, digest: None, status, output, error, attempts, completed_at, reply_to }
    }

    /// Records the digest of the input this Result answers.
    pub fn with_digest(mut self, digest: String) -> Self {
        self.digest = Some(digest);
        self
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
        let message = Job::into_message(json!({"task": "summarize", "input": {"text": "t"}}), || "generated".into());
        let message: Value = serde_json::from_str(&message.unwrap().text).unwrap();
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
            (json!({"task": "Summarize", "input": {"text": "t"}}), "task"),
            (json!({"id": "../etc", "task": "summarize", "input": {"text": "t"}}), "id"),
            (json!({"task": "summarize", "input": {"text": "t"}, "reply_to": "Results!"}), "reply_to"),
        ];
        for (body, field) in cases {
            let err = Job::parse(&body, || "x".into()).unwrap_err();
            assert_eq!(err.field(), Some(field), "{body}: {err}");
        }
    }

    #[test]
    fn the_registry_names_each_kind_once() {
        let names: std::collections::BTreeSet<&str> = Task::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names.len(), Task::ALL.len());
        for task in Task::ALL {
            assert_eq!(Task::from_name(task.name()), Some(*task));
            assert_eq!(serde_json::to_value(task).unwrap(), json!(task.name()));
            assert_eq!(serde_json::from_value::<Task>(json!(task.name())).unwrap(), *task);
        }
        assert!(serde_json::from_value::<Task>(json!("translate")).is_err());
        let listed = Task::names_listed();
        assert!(Task::ALL.iter().all(|t| listed.contains(&format!("`{}`", t.name()))), "{listed}");
    }
}
