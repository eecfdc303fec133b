//! The Azure Functions functions, one file each, and the HTTP server the Functions host talks
//! to: the routes, graceful shutdown, listening on 127.0.0.1 only. The functions use the shared
//! state ([`state`]) and the request bodies ([`body`]), leaf modules beside them; only the
//! router here refers to the functions, and nothing refers back to it.

mod body;
mod budget;
mod event_stream;
mod get_job;
mod ledger;
mod process_job;
mod put_job;
mod serve;
mod state;
mod submit_jobs;
mod sync_job;

pub use body::{API_BODY_LIMIT, INVOCATION_BODY_LIMIT, JsonBody, RawBody};
pub use budget::{LARGE_BODY, MemoryBudget};
pub use put_job::MAX_STORED_JOB_BYTES;
pub use serve::{READ_TIMEOUT, serve};
pub use state::AppState;
pub use submit_jobs::{MAX_JOBS_PER_SUBMIT, MAX_MESSAGE_BYTES};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::jobs::{self, JobKind, KindVisitor, Task};
use crate::telemetry;

/// Adds `POST /api/<task>` for each job kind of the registry.
struct JobRoutes(Router<AppState>);

impl KindVisitor for JobRoutes {
    fn visit<K: JobKind>(&mut self) {
        let router = std::mem::take(&mut self.0);
        self.0 = router.route(&format!("/api/{}", K::TASK), post(sync_job::run::<K>));
    }
}

pub fn router(state: AppState) -> Router {
    let within_budget = |state: &AppState| axum::middleware::from_fn_with_state(state.clone(), budget::within_budget);
    let mut routes = JobRoutes(Router::new());
    jobs::for_each_kind(&mut routes);
    routes
        .0
        // The host polls `/` until it answers: readiness.
        .route("/", get(|| async { axum::Json(serde_json::json!({"status": "ready"})) }))
        // Function names: invoked by the host only (no catch-all route exposes them).
        .route("/process_job", post(process_job::process_job))
        // The two that take large bodies run within the memory budget.
        .route("/submit_jobs", post(submit_jobs::submit_jobs).layer(within_budget(&state)))
        .route("/get_job", post(get_job::get_job))
        .route("/put_job", post(put_job::put_job).layer(within_budget(&state)))
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
