//! Telemetry: `tracing` to stdout (the host collects it into its logs and Application
//! Insights), human-readable or JSON, and one span per invocation.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

use crate::config::LogSettings;

/// Installs the global subscriber. `RUST_LOG` overrides the default level (info).
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout).with_target(false);
    if settings.json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    } else {
        builder.compact().init();
    }
}

/// One span per request from the host: the function, the trigger kind and the host's
/// invocation id.
pub async fn invocation_span(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if path == "/" {
        return next.run(request).await;
    }
    let invocation_id = request
        .headers()
        .get("x-azure-functions-invocationid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (function, trigger) = match path.strip_prefix("/api/") {
        Some(route) => (route.to_owned(), "http"),
        None => {
            let name = path.trim_start_matches('/').to_owned();
            let trigger = if name == "process_job" { "queue" } else { "http" };
            (name, trigger)
        }
    };
    let span = tracing::info_span!("invocation", faas.name = %function, faas.trigger = trigger, faas.invocation_id = %invocation_id, job.id = tracing::field::Empty, http.response.status_code = tracing::field::Empty);
    let started = std::time::Instant::now();
    async move {
        let response = next.run(request).await;
        let status = response.status().as_u16();
        tracing::Span::current().record("http.response.status_code", status);
        tracing::info!(status, elapsed_ms = started.elapsed().as_millis() as u64, "invocation finished");
        response
    }
    .instrument(span)
    .await
}
