//! Counters and request records the emulator exposes to tests and the control API.

use serde::{Deserialize, Serialize};

/// A snapshot of the emulator's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Calls to the managed-identity endpoint (`/msi/token`), whatever their outcome.
    pub identity_requests: u64,
    /// Tokens handed to the fake `az` (`/_emulator/az-token`).
    pub az_token_requests: u64,
    /// Every request to a chat-completions route.
    pub chat_requests: u64,
    /// Chat requests answered 200 (a filtered completion included).
    pub chat_ok: u64,
    /// 429s: injected (script, marker, rate) and quota refusals.
    pub throttled: u64,
    /// Of `throttled`: refused by the deployment's tokens-per-minute limit.
    pub throttled_tokens: u64,
    /// Of `throttled`: refused by the deployment's requests-per-minute limit.
    pub throttled_requests: u64,
    /// The limiter's estimate (prompt characters / 4 + max completion tokens) summed over the
    /// requests the quota admitted (only counted when a quota is set).
    pub admitted_tokens: u64,
    /// 500s injected.
    pub server_errors: u64,
    /// 401s for a missing, unknown or expired token (not `PermissionDenied`).
    pub unauthorized: u64,
    /// Of `unauthorized`: the token had expired.
    pub expired_tokens: u64,
    /// Requests carrying an `api-key` header (answered 403).
    pub api_key_requests: u64,
    /// 401 `PermissionDenied` answers.
    pub permission_denied: u64,
    /// 404s: unknown deployment, missing api-version.
    pub not_found: u64,
    /// Prompt (400) and completion (200) content-filter answers.
    pub content_filtered: u64,
    /// 400 `context_length_exceeded` answers (prompt plus completion allowance over the window).
    pub context_length_exceeded: u64,
    /// Prompt + completion tokens of the 200 answers.
    pub tokens_used: u64,
    /// 400s for a request the deployment's model refuses: an api-version too old for it,
    /// a parameter reasoning models refuse, an unsupported `reasoning_effort`.
    pub model_refusals: u64,
    /// Hidden reasoning tokens spent by the 200 answers (inside their completion tokens).
    pub reasoning_tokens: u64,
    /// 200 answers with `finish_reason: "length"`.
    pub length_finishes: u64,
    /// Peak number of chat requests in flight at once.
    pub max_concurrent_chat: u64,
    /// Streamed answers (`"stream": true`) begun.
    pub streams_started: u64,
    /// Streamed answers sent to the end (`data: [DONE]`).
    pub streams_completed: u64,
    /// Streamed answers whose client closed the connection before the end.
    pub streams_abandoned: u64,
    /// Streamed answers the emulator cut on purpose (`stream_drop`).
    pub streams_cut: u64,
    /// Streams paused at the hold point right now (`Faults::stream_hold_after`).
    pub streams_holding: u64,
    /// Every request to an Application Insights track route, whatever its outcome.
    pub track_requests: u64,
    /// Telemetry items accepted by the track routes.
    pub telemetry_items: u64,
    /// Every request to the Blob service (`/blob/...`), whatever its outcome.
    pub blob_requests: u64,
}

/// One chat request as received.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    /// The route: `/openai/deployments/{d}/chat/completions` or `/openai/v1/chat/completions`.
    pub path: String,
    /// The raw query string (without `?`), empty when none.
    pub query: String,
    /// Lower-case names; an `Authorization` value becomes `<scheme> <redacted>`.
    pub headers: Vec<(String, String)>,
    /// The JSON body (`Null` when it was not JSON).
    pub body: serde_json::Value,
}

/// One managed-identity token request as received.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordedIdentityRequest {
    /// Decoded query parameters in order.
    pub query: Vec<(String, String)>,
    /// Lower-case header names.
    pub headers: Vec<String>,
}

/// One Application Insights track request as received, and how it was answered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordedTrack {
    /// `/v2.1/track` or `/v2/track`.
    pub path: String,
    /// The bearer token sent, if any (tests compare it with the tokens issued).
    pub bearer: Option<String>,
    /// The `aud` of that token when the emulator issued it.
    pub audience: Option<String>,
    /// `Content-Encoding`, lower case.
    pub content_encoding: Option<String>,
    /// The status answered.
    pub status: u16,
    /// The items (envelopes) of the body, decoded, accepted or not.
    pub items: Vec<serde_json::Value>,
}
