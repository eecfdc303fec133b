//! Telemetry: `tracing` spans and events, written to stdout for the Functions host (human-readable
//! or JSON), copied into the `Logs` of payload-mode invocations, and exported (traces and GenAI
//! metrics) over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set and to Application Insights
//! when `APPLICATIONINSIGHTS_CONNECTION_STRING` is set ([`appinsights`]), or both.
//!
//! The tracing subscriber is the one global. Its layers:
//! - [`stdout`] and [`capture`] (the lines of one invocation, for its response's `Logs`), under
//!   one filter: `RUST_LOG` (default `info`);
//! - with an export destination only: [`recorder`] (spans, kept or not by [`sampler`], →
//!   [`export`]'s [`batcher`]s) and [`metrics`] (the GenAI metrics, which the chat call records
//!   itself). Without one there is no recorder, provider or task.
//!
//! [`invocation`] opens one span per request from the host and continues the caller's
//! `traceparent`; [`genai`] opens one child span per Azure OpenAI call (none when the trace is
//! not exported); [`propagation`] carries
//! the trace context in and out. Prompts, completions and tokens never enter a span or a log
//! line: [`genai`] records lengths and SHA-256 hashes only (unless `LOG_SENSITIVE_DATA=true`).

mod appinsights;
mod batcher;
mod capture;
mod envelope;
mod export;
mod genai;
mod invocation;
mod metrics;
mod propagation;
mod recorder;
mod sampler;
mod stdout;

use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use std::sync::Arc;

use crate::config::{IdentitySettings, LogSettings};
use crate::http_client::SharedHttpClient;
use crate::identity::TokenProvider;

pub use appinsights::{AppInsights, Ingestion, IngestionAuth, IngestionError};
pub use capture::take_invocation_logs;
pub use genai::{ChatAnswer, ChatCall, ChatSpan};
pub use invocation::invocation_span;
pub use propagation::trace_headers;

/// A layer of the subscriber: boxed, because stdout's text and JSON layers differ in type.
type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A standard `OTEL_*` variable the exporter cannot use.
    #[error("configuration error: {setting}: {message}")]
    Config { setting: &'static str, message: String },
    #[error("could not install the log subscriber: {0}")]
    Subscriber(String),
}

/// What `init` started; [`Telemetry::shutdown`] flushes it.
#[must_use = "call shutdown() after the server stops, or buffered spans and metrics are lost"]
pub struct Telemetry {
    export: Option<export::Pipeline>,
}

/// The Application Insights exporter when `APPLICATIONINSIGHTS_CONNECTION_STRING` is set: over
/// `http`, with tokens from `tokens` (the app's one cache) when the authentication string says
/// AAD. Nothing runs until [`init`] installs it.
pub fn app_insights(
    settings: &LogSettings,
    identity: &IdentitySettings,
    tokens: &Arc<TokenProvider>,
    http: &SharedHttpClient,
) -> Result<Option<AppInsights>, TelemetryError> {
    let Some(ai) = &settings.app_insights else { return Ok(None) };
    let auth = IngestionAuth::for_settings(ai, identity, tokens, http)?;
    let ingestion = Ingestion::new(ai, http.clone(), auth)?;
    AppInsights::new(ai, ingestion).map(Some)
}

/// Installs the global subscriber and, when a destination is configured (an OTLP endpoint,
/// `app_insights`), the exporters. Must run inside the tokio runtime: the exporters' batch
/// tasks are spawned on it.
pub fn init(settings: &LogSettings, app_insights: Option<AppInsights>) -> Result<Telemetry, TelemetryError> {
    let export = export::Pipeline::new(settings, app_insights)?;
    // One filter for both log sinks: each filter is consulted on every span enter and exit.
    let logs_filter = env_filter().and(filter_fn(|meta| !genai::is_chat_span(meta)));
    let logs = stdout::layer(settings.json).and_then(capture::layer()).with_filter(logs_filter);
    let mut layers: Vec<BoxedLayer> = vec![logs.boxed()];
    if let Some(pipeline) = &export {
        layers.extend(pipeline.layers());
    }
    tracing_subscriber::registry().with(layers).try_init().map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    if let Some(pipeline) = &export {
        let (destinations, signals, sampling) = (pipeline.destinations(), pipeline.signals(), settings.sampling);
        tracing::info!(%destinations, %signals, traces_sampled = %sampling, "exporting telemetry");
    }
    Ok(Telemetry { export })
}

impl Telemetry {
    /// Exports what is still buffered and stops the exporters. Call once the server has stopped.
    pub async fn shutdown(self) {
        if let Some(pipeline) = self.export {
            pipeline.shutdown().await;
        }
    }
}

/// `RUST_LOG`, or `info`. Each layer gets its own copy: an `EnvFilter` cannot be shared.
fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}
