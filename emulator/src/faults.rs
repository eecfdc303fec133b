//! Fault injection settings: rates, a script consumed one fault per chat request, and the
//! in-text markers that trigger a fault deterministically.

use serde::{Deserialize, Serialize};

/// What the chat endpoint injects. Replaced as a whole by `Emulator::set_faults`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Share (0..=1) of chat requests answered 429.
    pub throttle_rate: f64,
    /// Share (0..=1) of chat requests answered 500.
    pub server_error_rate: f64,
    /// `retry-after-ms` sent on injected 429s (and `retry-after` in whole seconds, rounded up); 0 means 1000.
    pub retry_after_ms: u64,
    /// Delay added before every answered chat request.
    pub latency_ms: u64,
    /// Streamed answers: delay between two chunks.
    pub stream_chunk_delay_ms: u64,
    /// Streamed answers: pause after this many content chunks until `Emulator::release_streams`
    /// (or `POST /_emulator/release-streams`) is called after the stream began.
    pub stream_hold_after: Option<u32>,
    /// Streamed answers: the asynchronous filter (content chunks without filter results,
    /// annotation chunks with `content_filter_offsets` every few chunks) instead of the default.
    pub stream_async_filter: bool,
    /// Consumed first, one entry per chat request that gets past authentication, in order.
    pub script: Vec<Fault>,
}

/// One scripted outcome of a chat request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// 429 with this `retry-after-ms`.
    Throttle { retry_after_ms: u64 },
    /// 500 `InternalServerError`.
    ServerError,
    /// 400 `content_filter` (the prompt was filtered).
    ContentFilterPrompt,
    /// 200 with `finish_reason: "content_filter"` and empty content.
    ContentFilterCompletion,
    /// A streamed answer filtered mid-stream: about half the content, then a
    /// `finish_reason: "content_filter"` chunk. Not streamed: as `ContentFilterCompletion`.
    ContentFilterMidStream,
    /// A streamed answer whose connection is cut after about half the content (no `[DONE]`).
    /// Not streamed: as `ServerError`.
    StreamDrop,
    /// A structured answer whose enum value is outside the schema's enum.
    BadLabel,
    /// A structured answer that does not match the request's JSON schema (as a model may
    /// answer without strict mode; strict mode makes it rare, not impossible).
    InvalidOutput,
    /// 401 `PermissionDenied` (no role assignment).
    PermissionDenied,
    /// 400 "Tenant provided in token does not match resource token".
    TenantMismatch,
    /// 403 `AuthenticationTypeDisabled`, as if an API key had been sent.
    AuthenticationTypeDisabled,
    /// 200 with `finish_reason: "length"` and the content cut to half, as when the answer
    /// outgrows `max_completion_tokens`.
    Length,
    /// 200 with `finish_reason: "length"`, empty content and the whole budget spent on hidden
    /// reasoning tokens (a reasoning model starved of output tokens).
    ReasoningStarved,
    /// 200 whose body is not a chat completion (`choices` is not a list), as a misbehaving
    /// proxy might answer. It is counted as a 200.
    UnreadableAnswer,
    /// A normal answer (markers in the text still apply; rates do not).
    Ok,
}

impl Faults {
    /// The `retry-after-ms` for rate-injected 429s.
    pub(crate) fn throttle_ms(&self) -> u64 {
        if self.retry_after_ms == 0 { 1000 } else { self.retry_after_ms }
    }
}

/// Markers in the user message text and the fault each one triggers.
pub(crate) const MARKERS: [(&str, Fault); 10] = [
    ("[[emulator:content_filter]]", Fault::ContentFilterPrompt),
    ("[[emulator:content_filter_completion]]", Fault::ContentFilterCompletion),
    ("[[emulator:content_filter_stream]]", Fault::ContentFilterMidStream),
    ("[[emulator:stream_drop]]", Fault::StreamDrop),
    ("[[emulator:bad_label]]", Fault::BadLabel),
    ("[[emulator:invalid_output]]", Fault::InvalidOutput),
    ("[[emulator:throttle]]", Fault::Throttle { retry_after_ms: 0 }),
    ("[[emulator:error500]]", Fault::ServerError),
    ("[[emulator:length]]", Fault::Length),
    ("[[emulator:starved]]", Fault::ReasoningStarved),
];

/// The first marker found in `text`, if any.
pub(crate) fn marker_fault(text: &str) -> Option<Fault> {
    MARKERS.iter().find(|(marker, _)| text.contains(marker)).map(|(_, fault)| fault.clone())
}

/// `text` without any marker, for content generation.
pub(crate) fn strip_markers(text: &str) -> String {
    MARKERS.iter().fold(text.to_owned(), |t, (marker, _)| t.replace(marker, "")).trim().to_owned()
}
