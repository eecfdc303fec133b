//! The Azure Functions functions, one file each, and the HTTP server the Functions host talks
//! to: routes, shared state, the JSON body extractor with its limits, and graceful shutdown.
//! Listens on 127.0.0.1 only. The functions import from here; nothing here imports back from
//! them except the routes.

mod event_stream;
mod get_job;
mod process_job;
mod put_job;
mod serve;
mod submit_jobs;
mod sync_job;

pub use put_job::MAX_STORED_JOB_BYTES;
pub use serve::{READ_TIMEOUT, serve};
pub use submit_jobs::{MAX_JOBS_PER_SUBMIT, MAX_MESSAGE_BYTES};

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use crate::config::Settings;
use crate::error::ApiError;
use crate::jobs::{self, JobKind, KindVisitor, Task};
use crate::openai::OpenAiClient;
use crate::telemetry;

/// Longest a synchronous HTTP call may take: Azure's front end closes requests at 230 s.
const HTTP_DEADLINE: Duration = Duration::from_secs(200);
/// Bodies of the forwarded HTTP API: 1 000 000 characters fit even when every one is a
/// \u-escaped character outside ASCII (6 bytes; 12 for a surrogate pair is beyond this).
pub const API_BODY_LIMIT: usize = 8 * 1024 * 1024;
/// Invocation payloads from the host (a 1000-job batch arrives inside one).
pub const INVOCATION_BODY_LIMIT: usize = 128 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub client: Arc<OpenAiClient>,
}

impl AppState {
    /// Deadline of a synchronous HTTP call started now.
    pub fn http_deadline(&self) -> Instant {
        Instant::now() + self.settings.host.invocation_budget().min(HTTP_DEADLINE)
    }

    /// Deadline of a queue invocation started now.
    pub fn invocation_deadline(&self) -> Instant {
        Instant::now() + self.settings.host.invocation_budget()
    }
}

/// Adds `POST /api/<task>` for each job kind of the registry.
struct JobRoutes(Router<AppState>);

impl KindVisitor for JobRoutes {
    fn visit<K: JobKind>(&mut self) {
        let router = std::mem::take(&mut self.0);
        self.0 = router.route(&format!("/api/{}", K::TASK), post(sync_job::run::<K>));
    }
}

pub fn router(state: AppState) -> Router {
    let mut routes = JobRoutes(Router::new());
    jobs::for_each_kind(&mut routes);
    routes
        .0
        // The host polls `/` until it answers: readiness.
        .route("/", get(|| async { axum::Json(serde_json::json!({"status": "ready"})) }))
        // Function names: invoked by the host only (no catch-all route exposes them).
        .route("/process_job", post(process_job::process_job))
        .route("/submit_jobs", post(submit_jobs::submit_jobs))
        .route("/get_job", post(get_job::get_job))
        .route("/put_job", post(put_job::put_job))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Inside the invocation span, so the span records the 500 a panic becomes.
        .layer(axum::middleware::from_fn(crate::panic_guard::catch_panics))
        .layer(axum::middleware::from_fn(telemetry::invocation_span))
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound {
        message: format!(
            "no function or route at {} {} (the API is {}, POST /api/jobs, PUT /api/jobs/{{id}}, GET /api/jobs/{{id}})",
            crate::echo::echo(request.method().as_str()),
            crate::echo::echo(request.uri().path()),
            Task::routes_listed()
        ),
    }
}

async fn method_not_allowed(request: Request) -> Response {
    let (method, path) = (crate::echo::echo(request.method().as_str()), crate::echo::echo(request.uri().path()));
    let body = ApiError::invalid("", format!("{method} is not allowed on {path}")).body();
    (StatusCode::METHOD_NOT_ALLOWED, [(header::CONTENT_TYPE, "application/json")], crate::error::envelope_json(&body))
        .into_response()
}

/// A JSON request body: `Content-Type` must be JSON (or absent), size bounded by `LIMIT`.
pub struct JsonBody<const LIMIT: usize>(pub Value);

/// The raw body of an invocation from the host, size bounded.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync, const LIMIT: usize> FromRequest<S> for JsonBody<LIMIT> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
            let content_type = content_type.to_str().unwrap_or_default().to_ascii_lowercase();
            if !content_type.starts_with("application/json") && !content_type.contains("+json") {
                return Err(ApiError::UnsupportedMediaType {
                    message: format!(
                        "Content-Type must be application/json (got `{}`); with curl, add -H 'Content-Type: application/json'",
                        crate::echo::echo(&content_type)
                    ),
                });
            }
        }
        let bytes = read_limited(request, LIMIT).await?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid("", format!("the body is not valid JSON: {e}")))?;
        Ok(Self(value))
    }
}

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        read_limited(request, INVOCATION_BODY_LIMIT).await.map(Self)
    }
}

async fn read_limited(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    read_body(request.into_body(), limit, serve::READ_TIMEOUT).await
}

/// The whole body, at most `limit` bytes, arriving within `timeout` (a peer that stalls half
/// way, slowloris, gets 408 instead of holding the request open).
async fn read_body(body: axum::body::Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(read) => read.map_err(|_| ApiError::PayloadTooLarge {
            field: None,
            message: format!("the body is larger than {limit} bytes (or could not be read)"),
        }),
        Err(_) => Err(ApiError::RequestTimeout {
            message: format!("the request body did not arrive within {} s", timeout.as_secs_f64()),
        }),
    }
}

/// Resolves on SIGTERM (the host stopping us) or Ctrl-C; in-flight requests then finish.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight invocations");
}
