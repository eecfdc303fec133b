//! The export pipeline: OTLP/HTTP (protobuf), configured only by the standard `OTEL_*`
//! variables, and/or Application Insights ([`super::appinsights`]); present only when one of
//! them is configured. One span recorder ([`super::recorder`]) and one meter provider feed both,
//! so a span is built once whatever the number of destinations.
//!
//! Spans go through our batch processor ([`super::batcher`]) and metrics through the SDK's tokio
//! periodic readers; both export with the async reqwest 0.13 client (the same reqwest and rustls as the
//! Azure OpenAI client). The SDK's default processors run the export on a plain thread, where
//! an async client has no reactor and a blocking client would be a second HTTP stack.

use std::sync::Arc;

use opentelemetry::InstrumentationScope;
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;
use opentelemetry_sdk::resource::{EnvResourceDetector, Resource, TelemetryResourceDetector};
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::SpanProcessor;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, LevelFilter, filter_fn};

use super::appinsights::{AppInsights, Health};
use super::batcher::{BatchSettings, Batcher};
use super::metrics::GenAiMetrics;
use super::recorder::{Processors, Recorder};
use super::{BoxedLayer, TelemetryError, env_filter};
use crate::config::{LogSettings, TraceSampling};

/// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` name another.
pub const DEFAULT_SERVICE_NAME: &str = "keyless-jobs";
const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// What an exporter build error is about (endpoint, protocol, compression, headers, timeout).
const OTLP_SETTINGS: &str = "OTEL_EXPORTER_OTLP_*";

/// Crates whose own events and spans must not become exported spans: the exporter's HTTP
/// stack and the SDK itself (exporting their spans would export forever).
const NOT_EXPORTED: &[&str] = &["opentelemetry", "hyper", "h2", "reqwest", "tower", "rustls"];

/// The providers behind the OpenTelemetry layers; at least one of them is present.
pub struct Pipeline {
    destinations: Vec<String>,
    signals: &'static str,
    /// The span processors (none: spans are not exported).
    processors: Processors,
    sampling: TraceSampling,
    meter: Option<SdkMeterProvider>,
    app_insights: Option<Arc<Health>>,
    /// Whether spans go to OTLP too: only then do log events inside spans become span events
    /// (Application Insights gets log lines through the host and drops span events).
    otlp_traces: bool,
}

/// One signal's settings: its own endpoint variable, or the common one; `OTEL_<S>_EXPORTER=none`
/// turns it off.
fn signal_enabled(endpoint_var: &str, exporter_var: &str) -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let off = std::env::var(exporter_var).is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"));
    (set(ENDPOINT) || set(endpoint_var)) && !off
}

impl Pipeline {
    /// `None` (nothing started) with neither an OTLP endpoint nor Application Insights, or with
    /// `OTEL_SDK_DISABLED=true`. `WEBSITE_SITE_NAME` is the default `service.name`,
    /// `WEBSITE_INSTANCE_ID` (else the host name) the default `service.instance.id`.
    pub fn new(settings: &LogSettings, app_insights: Option<AppInsights>) -> Result<Option<Self>, TelemetryError> {
        if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let otlp_traces = signal_enabled("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER");
        let otlp_metrics = signal_enabled("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_METRICS_EXPORTER");
        if !otlp_traces && !otlp_metrics && app_insights.is_none() {
            return Ok(None);
        }
        let mut destinations = Vec::new();
        if otlp_traces || otlp_metrics {
            let endpoint = std::env::var(ENDPOINT).unwrap_or_default().trim().to_owned();
            for name in [ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] {
                check_url(name)?;
            }
            destinations.push(format!("OTLP/HTTP {endpoint}"));
        }
        if let Some(app_insights) = &app_insights {
            destinations.push(app_insights.describe());
        }
        let resource = resource(settings.site_name.as_deref(), instance_id(settings).as_deref());
        // One reading of OTEL_BSP_* for both destinations.
        let batching = BatchSettings::from_env();
        let mut processors: Vec<Box<dyn SpanProcessor>> = Vec::new();
        if otlp_traces {
            let mut exporter = SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .build()
                .map_err(|e| config_error(OTLP_SETTINGS, e))?;
            opentelemetry_sdk::trace::SpanExporter::set_resource(&mut exporter, &resource);
            // Batch size, queue and delay come from OTEL_BSP_*.
            processors.push(Box::new(Batcher::start(exporter, batching, "OTLP")));
        }
        if let Some(app_insights) = &app_insights {
            processors.push(Box::new(app_insights.span_processor(&resource, batching)));
        }
        let meter = if otlp_metrics || app_insights.is_some() {
            let mut builder = SdkMeterProvider::builder().with_resource(resource);
            if otlp_metrics {
                let exporter = MetricExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .build()
                    .map_err(|e| config_error(OTLP_SETTINGS, e))?;
                // The interval comes from OTEL_METRIC_EXPORT_INTERVAL (default 60 s).
                builder = builder.with_reader(PeriodicReader::builder(exporter, Tokio).build());
            }
            if let Some(app_insights) = &app_insights {
                builder = builder.with_reader(app_insights.metric_reader());
            }
            Some(builder.build())
        } else {
            None
        };
        let signals = match (!processors.is_empty(), meter.is_some()) {
            (true, true) => "traces, metrics",
            (true, false) => "traces",
            _ => "metrics",
        };
        let app_insights = app_insights.map(|a| a.health());
        let processors = Processors::from(processors);
        Ok(Some(Self {
            destinations,
            signals,
            processors,
            sampling: settings.sampling,
            meter,
            app_insights,
            otlp_traces,
        }))
    }

    /// e.g. "OTLP/HTTP http://localhost:4318; Application Insights https://…/v2.1/track (…)".
    pub fn destinations(&self) -> String {
        self.destinations.join("; ")
    }

    pub fn signals(&self) -> &'static str {
        self.signals
    }

    /// The subscriber layers that feed the providers.
    pub fn layers(&self) -> Vec<BoxedLayer> {
        let mut layers = Vec::new();
        if !self.processors.is_empty() {
            let recorder = Recorder::new(self.processors.clone(), self.sampling, scope(), self.otlp_traces);
            // `RUST_LOG` decides which spans and events are exported, as it does for stdout.
            let filter = NOT_EXPORTED
                .iter()
                .fold(env_filter(), |f, target| f.add_directive(format!("{target}=off").parse().expect("a directive")));
            layers.push(if self.otlp_traces {
                recorder.with_filter(filter).boxed()
            } else {
                // Application Insights alone: log events would become span events it drops.
                recorder.with_filter(filter.and(filter_fn(|meta| meta.is_span()))).boxed()
            });
        }
        if let Some(provider) = &self.meter {
            let metrics = GenAiMetrics::new(&provider.meter_with_scope(scope()));
            // Found by the chat span, never called by the subscriber (see metrics.rs).
            layers.push(metrics.with_filter(LevelFilter::OFF).boxed());
        }
        layers
    }

    /// Flushes and stops both providers. Their `shutdown` blocks until the batch tasks (on the
    /// tokio workers) have exported, so it runs on a blocking thread.
    pub async fn shutdown(self) {
        let Self { processors, meter, app_insights, .. } = self;
        if let Some(health) = app_insights {
            // A failing ingestion endpoint must not hold the exit up for a whole retry budget.
            health.stop();
        }
        let outcome = tokio::task::spawn_blocking(move || {
            let traces = (!processors.is_empty()).then(|| {
                let errors: Vec<String> =
                    processors.iter().filter_map(|p| p.shutdown().err()).map(|e| e.to_string()).collect();
                if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
            });
            let metrics = meter.map(|p| p.shutdown().map_err(|e| e.to_string()));
            [("traces", traces), ("metrics", metrics)]
        })
        .await;
        match outcome {
            Ok(results) => {
                for (signal, result) in results {
                    if let Some(Err(error)) = result {
                        tracing::warn!(signal, %error, "could not flush telemetry at shutdown");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "could not flush telemetry at shutdown"),
        }
    }
}

/// The exporter accepts any URI and fails on every export; say what is wrong at start-up.
fn check_url(name: &'static str) -> Result<(), TelemetryError> {
    let Some(value) = std::env::var(name).ok().filter(|v| !v.trim().is_empty()) else {
        return Ok(());
    };
    let url = reqwest::Url::parse(value.trim())
        .map_err(|e| TelemetryError::Config { setting: name, message: format!("`{value}` is not a URL ({e})") })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TelemetryError::Config {
            setting: name,
            message: format!("`{value}` must be an http:// or https:// URL (OTLP/HTTP, e.g. http://localhost:4318)"),
        });
    }
    Ok(())
}

fn config_error(setting: &'static str, error: impl std::fmt::Display) -> TelemetryError {
    TelemetryError::Config { setting, message: error.to_string() }
}

/// `WEBSITE_INSTANCE_ID`, else the host name (Linux), else none.
fn instance_id(settings: &LogSettings) -> Option<String> {
    settings.instance_id.clone().or_else(|| {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
        Some(name.trim().to_owned()).filter(|n| !n.is_empty())
    })
}

/// Our defaults first (the Function App's name, else [`DEFAULT_SERVICE_NAME`]; the instance),
/// then what the standard variables say (later entries win). `service.name` is Application
/// Insights' cloud role, `service.instance.id` its role instance.
fn resource(site_name: Option<&str>, instance_id: Option<&str>) -> Resource {
    let mut builder = Resource::builder_empty()
        .with_service_name(site_name.unwrap_or(DEFAULT_SERVICE_NAME).to_owned())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if let Some(instance) = instance_id {
        builder = builder.with_attribute(KeyValue::new("service.instance.id", instance.to_owned()));
    }
    let builder = builder.with_detectors(&[Box::new(TelemetryResourceDetector), Box::new(EnvResourceDetector::new())]);
    match std::env::var("OTEL_SERVICE_NAME").ok().filter(|v| !v.trim().is_empty()) {
        Some(name) => builder.with_service_name(name),
        None => builder,
    }
    .build()
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("keyless-jobs").with_version(env!("CARGO_PKG_VERSION")).build()
}
