//! The running emulator: binds 127.0.0.1, serves the router, and exposes the in-process API
//! tests use (addresses, stats, records, fault and identity settings). Stops when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::Response;
use axum::routing::{get, post, put};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::EmulatorConfig;
use crate::errors::{json_response, resource_not_found};
use crate::faults::Faults;
use crate::ingestion::IngestionFault;
use crate::state::Shared;
use crate::stats::{RecordedIdentityRequest, RecordedRequest, RecordedTrack, Stats};
use crate::{blob, chat, control, identity, ingestion};

/// A running emulator on 127.0.0.1.
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/openai/deployments/{deployment}/chat/completions", post(chat::dated))
        .route("/openai/v1/chat/completions", post(chat::v1))
        .route("/msi/token", get(identity::msi))
        .route("/v2.1/track", post(ingestion::track_v2_1))
        .route("/v2/track", post(ingestion::track_v2))
        .route("/blob/{container}/{*name}", get(blob::get_blob).put(blob::put_blob))
        .route("/_emulator/az-token", get(identity::az_token))
        .route("/_emulator/stats", get(control::stats))
        .route("/_emulator/requests", get(control::requests))
        .route("/_emulator/reset", post(control::reset))
        .route("/_emulator/faults", put(control::faults))
        .route("/_emulator/release-streams", post(control::release_streams))
        .route("/_emulator/token-lifetime", put(control::token_lifetime))
        .route("/_emulator/role", put(control::role))
        .route("/_emulator/identity-failure", put(control::identity_failure))
        .route("/_emulator/ingestion-fault", put(control::ingestion_fault))
        .route("/_emulator/monitoring-role", put(control::monitoring_role))
        .route("/_emulator/telemetry", get(control::telemetry))
        .route("/_emulator/identity-hang", put(control::identity_hang))
        .route("/_emulator/forget-tokens", post(control::forget_tokens))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(32 * 1024 * 1024))
        .with_state(shared)
}

async fn not_found() -> Response {
    let (status, body) = resource_not_found();
    json_response(status, body, &[])
}

impl Emulator {
    /// Binds 127.0.0.1:`config.port` and starts serving on the current tokio runtime.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Emulator> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(shared.clone());
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!("the emulator stopped: {e}");
            }
        });
        Ok(Emulator { shared, addr, stop: Some(stop), task: Some(task) })
    }

    /// `http://127.0.0.1:PORT` (AZURE_OPENAI_ENDPOINT).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/msi/token` (IDENTITY_ENDPOINT).
    pub fn identity_endpoint(&self) -> String {
        format!("{}/msi/token", self.endpoint())
    }

    /// The value for IDENTITY_HEADER.
    pub fn identity_header(&self) -> String {
        self.shared.config.identity_header.clone()
    }

    /// `http://127.0.0.1:PORT/_emulator/az-token` (FAKE_AZ_TOKEN_URL).
    pub fn az_token_url(&self) -> String {
        format!("{}/_emulator/az-token", self.endpoint())
    }

    /// `http://127.0.0.1:PORT/blob/` (`AzureWebJobsStorage__blobServiceUri`): the Blob service of
    /// a storage account with containers `results` and `inputs`.
    pub fn blob_service_uri(&self) -> String {
        format!("{}/blob/", self.endpoint())
    }

    /// Stores blob `path` (`results/{id}.json`), as a Put Blob would.
    pub fn put_blob(&self, path: &str, content: impl Into<Vec<u8>>) {
        self.shared.lock().blobs.insert(path.to_owned(), content.into());
    }

    /// Blob `path`'s content, if it exists.
    pub fn blob(&self, path: &str) -> Option<Vec<u8>> {
        self.shared.lock().blobs.get(path).cloned()
    }

    /// `false`: every Blob request gets 403 `AuthorizationPermissionMismatch` (no data role).
    pub fn set_storage_role_assigned(&self, assigned: bool) {
        self.shared.lock().storage_role_assigned = assigned;
    }

    /// `APPLICATIONINSIGHTS_CONNECTION_STRING` for this emulator's Application Insights resource.
    pub fn connection_string(&self) -> String {
        format!(
            "InstrumentationKey={};IngestionEndpoint={}/;LiveEndpoint={}/;ApplicationId=00000000-0000-4000-8000-0000000a99d0",
            self.shared.config.instrumentation_key,
            self.endpoint(),
            self.endpoint()
        )
    }

    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// Zeroes the counters and forgets the recorded requests.
    pub fn reset_stats(&self) {
        self.shared.reset_stats();
    }

    /// Replaces the fault settings (and restarts the script).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    /// Lets every stream paused at the hold point (`Faults::stream_hold_after`), and every
    /// stream begun before now that has yet to reach it, go on.
    pub fn release_streams(&self) {
        self.shared.release_streams();
    }

    /// Lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().token_lifetime = lifetime;
    }

    /// `false`: every authenticated chat call gets 401 `PermissionDenied`.
    pub fn set_role_assigned(&self, assigned: bool) {
        self.shared.lock().role_assigned = assigned;
    }

    /// `Some(status)`: the identity endpoint answers that status with a JSON error body.
    pub fn set_identity_failure(&self, status: Option<u16>) {
        self.shared.lock().identity_failure = status;
    }

    /// `false`: every track request gets 403 (no Monitoring Metrics Publisher role).
    pub fn set_monitoring_role_assigned(&self, assigned: bool) {
        self.shared.lock().monitoring_role_assigned = assigned;
    }

    /// `Some(fault)`: every authenticated track request is answered with it, until `None`.
    pub fn set_ingestion_fault(&self, fault: Option<IngestionFault>) {
        self.shared.lock().ingestion_fault = fault;
    }

    /// Every Application Insights track request seen, oldest first.
    pub fn track_requests(&self) -> Vec<RecordedTrack> {
        self.shared.lock().tracks.clone()
    }

    /// Every telemetry item (envelope) the ingestion endpoint accepted, oldest first.
    pub fn telemetry(&self) -> Vec<serde_json::Value> {
        self.shared.lock().telemetry.clone()
    }

    /// `true`: the identity endpoint accepts each request and never answers (a hung endpoint).
    pub fn set_identity_hang(&self, hang: bool) {
        self.shared.lock().identity_hang = hang;
    }

    /// Forgets every token issued so far, as a restarted or re-keyed service would: Azure OpenAI
    /// answers 401 to each of them from now on.
    pub fn forget_tokens(&self) {
        self.shared.lock().tokens.clear();
    }

    /// Every chat request seen, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Every managed-identity token request seen, oldest first.
    pub fn identity_requests(&self) -> Vec<RecordedIdentityRequest> {
        self.shared.lock().identity_requests.clone()
    }

    /// Every token issued so far (managed identity and `az`), for tests that assert a token never leaks.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.lock().tokens.keys().cloned().collect()
    }

    /// Stops serving, waiting up to 5 s for requests in flight.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err()
        {
            task.abort();
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
