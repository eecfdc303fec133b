//! What a full run measured, as written to results.json and read by the report.

use serde::Serialize;

use crate::stats::Summary;
use crate::{batch, coldstart, fleet, overhead};

/// Everything measured, as written to results.json.
#[derive(Serialize)]
pub struct Results {
    pub date: String,
    pub command: String,
    /// The handler build measured (its target).
    pub handler_build: String,
    pub quick: bool,
    pub machine: Vec<(String, String)>,
    pub handler_binary_bytes: u64,
    pub handler_binary_stripped: bool,
    pub peer_venv_bytes: u64,
    pub peer_versions: String,
    pub cold_handler: coldstart::ColdStart,
    pub cold_peer: coldstart::ColdStart,
    /// Other processes' CPU use during each cold-start phase, in cores.
    pub cold_handler_foreign: f64,
    pub cold_peer_foreign: f64,
    /// Seconds spent waiting for other processes to leave the machine idle before measuring.
    pub quiet_waited_s: f64,
    pub same_upstream_request: bool,
    pub load: LoadPart,
    pub batch: BatchPart,
    pub fleet: fleet::FleetPart,
}

#[derive(Serialize)]
pub struct LoadPart {
    pub levels: Vec<usize>,
    pub reps: usize,
    pub warmup_s: f64,
    pub measure_s: f64,
    pub handler_env: Vec<(String, String)>,
    pub runs: Vec<overhead::Run>,
    pub cells: Vec<overhead::Cell>,
    pub added: Vec<overhead::Added>,
    /// Identity-endpoint calls of the handler from its start to its end (all load runs).
    pub handler_identity_calls: u64,
    pub peer_identity_calls: u64,
    pub handler_lifetime_s: f64,
    pub token_lifetime_s: u64,
    pub handler_rss_after_kib: u64,
    pub handler_hwm_kib: u64,
    pub peer_rss_after_kib: u64,
    pub peer_hwm_kib: u64,
    pub chat_requests: u64,
}

#[derive(Serialize)]
pub struct BatchPart {
    pub jobs: usize,
    pub tokens_per_minute: u64,
    pub job_cost: u64,
    pub in_flight: usize,
    pub visibility_s: f64,
    pub max_dequeue: u32,
    pub token_lifetime_s: u64,
    pub outcome: batch::Outcome,
    pub tally: batch::Tally,
    pub steady_from_s: f64,
    pub steady_to_s: f64,
    /// Emulator-accounted cost (prompt chars / 4 + max_completion_tokens) per minute in the
    /// steady window.
    pub steady_tokens_per_minute: f64,
    pub steady_share: f64,
    /// The same, over the whole run.
    pub overall_share: f64,
    /// Usage tokens (what the answers report) per minute in the steady window.
    pub steady_usage_per_minute: f64,
    pub throttled: u64,
    pub server_errors: u64,
    pub chat_requests: u64,
    pub identity_calls: u64,
    pub identity_calls_expected: (u64, u64),
    pub failed_throttled: usize,
    /// Other processes' CPU use during the batch, in cores.
    pub foreign_cores: f64,
}

/// Medians in KiB as "x.x MB".
pub fn mb(kib: f64) -> String {
    format!("{:.1} MB", kib * 1024.0 / 1e6)
}

pub fn summary_mb(s: &Summary) -> String {
    if s.n == 0 {
        return "n/a".into();
    }
    let f = |k: f64| k * 1024.0 / 1e6;
    if s.n == 1 {
        return format!("{:.1} MB", f(s.median));
    }
    format!("{:.1} MB ({:.1}–{:.1})", f(s.median), f(s.min), f(s.max))
}
