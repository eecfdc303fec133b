//! What a job kind is ([`JobKind`]), and the registry macro that turns the one list of kinds in
//! `jobs/mod.rs` into the [`Task`](super::Task) enum, the validated [`JobInput`](super::JobInput)
//! and the walk over all kinds that the HTTP routes are built from. A kind missing from the
//! list has no task name, no queue dispatch and no route; a kind in the list that does not
//! implement every part does not compile.

use std::future::Future;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::openai::OpenAiClient;

/// One job kind: its name, its request (the body of `POST /api/<TASK>`, and a queued job's
/// `input`), how the request is validated, and how it runs.
pub trait JobKind: std::fmt::Debug + Clone + PartialEq + Send + Sync + Sized + 'static {
    /// The task name: `task` in queue messages, and the route `POST /api/<TASK>`.
    const TASK: &'static str;
    /// The 200 body of `POST /api/<TASK>`, and a succeeded Result's `output`.
    type Output: Serialize + Send;

    /// Validates a request; errors name the field and the limit.
    fn parse(input: &Value) -> Result<Self, ApiError>;

    /// Runs the job against Azure OpenAI within `deadline`.
    fn run(
        &self,
        client: &OpenAiClient,
        deadline: Instant,
    ) -> impl Future<Output = Result<Self::Output, ApiError>> + Send;

    /// Whether `POST /api/<TASK>` can answer as a stream of the model's text (`"stream": true`).
    const STREAMS: bool = false;

    /// As [`JobKind::run`], with the answer's text passed to `deltas` as the model writes it;
    /// the result is what `run` returns. Kinds with [`JobKind::STREAMS`] override it.
    fn run_streaming(
        &self,
        client: &OpenAiClient,
        deadline: Instant,
        deltas: &mpsc::Sender<String>,
    ) -> impl Future<Output = Result<Self::Output, ApiError>> + Send {
        let _ = deltas;
        self.run(client, deadline)
    }
}

/// Something done once per job kind (e.g. adding its route): see `jobs::for_each_kind`.
pub trait KindVisitor {
    fn visit<K: JobKind>(&mut self);
}

/// Declares the job kinds: `Variant => module::RequestType` per line, which also declares the
/// module. See `jobs/mod.rs`.
macro_rules! job_kinds {
    ($($variant:ident => $module:ident :: $request:ident),+ $(,)?) => {
        $(pub mod $module;)+
        $crate::jobs::kind::job_kinds!(@kinds $($variant => $module::$request),+);
    };
    (@kinds $($variant:ident => $kind:ty),+) => {
        /// A job kind, by its task name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Task {
            $($variant),+
        }

        impl Task {
            /// Every kind, in registry order.
            pub const ALL: &'static [Task] = &[$(Task::$variant),+];

            /// The task name (`summarize`, ...).
            pub fn name(self) -> &'static str {
                match self {
                    $(Task::$variant => <$kind as $crate::jobs::kind::JobKind>::TASK),+
                }
            }
        }

        /// A validated job input of one kind.
        #[derive(Debug, Clone, PartialEq)]
        pub enum JobInput {
            $($variant($kind)),+
        }

        impl JobInput {
            pub fn parse(task: Task, input: &serde_json::Value) -> Result<Self, $crate::error::ApiError> {
                match task {
                    $(Task::$variant => <$kind as $crate::jobs::kind::JobKind>::parse(input).map(Self::$variant)),+
                }
            }

            /// Runs the job; the output is the 200 body of the matching HTTP call.
            pub async fn run(
                &self,
                client: &$crate::openai::OpenAiClient,
                deadline: std::time::Instant,
            ) -> Result<serde_json::Value, $crate::error::ApiError> {
                match self {
                    $(Self::$variant(request) => $crate::jobs::kind::encode($crate::jobs::kind::JobKind::run(request, client, deadline).await?)),+
                }
            }
        }

        /// Calls `visitor` once per kind, in registry order.
        pub fn for_each_kind(visitor: &mut impl $crate::jobs::kind::KindVisitor) {
            $(visitor.visit::<$kind>();)+
        }
    };
}
pub(crate) use job_kinds;

/// An output as the JSON of a Result's `output`.
pub fn encode(output: impl Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(output).map_err(|e| ApiError::internal(format!("could not encode the output: {e}")))
}
