//! Export to Application Insights (`APPLICATIONINSIGHTS_CONNECTION_STRING`), with no collector:
//! spans become request, dependency and trace items written by [`super::envelope`]; metrics
//! become metric items through the `opentelemetry-application-insights` exporter. This module
//! gives both their transport, retries and failure reports.
//!
//! - **Transport.** [`Ingestion`] posts to `{IngestionEndpoint}/v2.1/track` through the
//!   process's one HTTP client, with a bearer token from the shared token cache when the
//!   authentication string says `Authorization=AAD` (never the instrumentation key alone then).
//!   It is also the metrics exporter's `opentelemetry_http::HttpClient`, posting to our URL, not
//!   the crate's: the crate targets `/v2/track`, which refuses Entra tokens ("v2 API does not
//!   support authentication"), and rewrites `http://` to `https://`, which no local emulator
//!   serves.
//! - **Off the request path.** A request only ends its spans into a bounded batch queue
//!   ([`super::batcher`]; spans dropped when full); items are written, compressed and sent on the
//!   batch task.
//! - **Failures never reach the job.** 408/429/439/5xx, 401 and 403 (a role may just have been
//!   granted, a refused token was dropped), connection errors and the retryable items of a
//!   partial success are retried with backoff, each batch within a budget. Each kind of problem
//!   is logged once, with its fix ([`Health`]), on stdout only: the export tasks are no
//!   invocation's, so nothing lands in any invocation's `Logs`, and the SDK never sees a
//!   failure to log per batch.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use opentelemetry_application_insights::Exporter;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};

use super::TelemetryError;
use super::batcher::{BatchSettings, Batcher};
use super::envelope::{Batch, Items};
use crate::config::{AppInsightsSettings, CredentialKind, IdentitySettings};
use crate::http_client::SharedHttpClient;
use crate::identity::{BearerToken, MONITOR_SCOPE, TokenProvider};

/// One ingestion request, connection to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a token fetch may take inside an export.
const TOKEN_WAIT: Duration = Duration::from_secs(20);
/// One batch, retries included; under the SDK's own 30 s export timeout, so the SDK never times
/// an export out (and logs it) itself.
const EXPORT_BUDGET: Duration = Duration::from_secs(25);
/// At shutdown, a failing batch gets this long before it is given up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Answers beyond this are not read further (a track response is a few hundred bytes).
const MAX_ANSWER: usize = 64 * 1024;
/// Backoff between deliveries of a batch, jittered.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Where ingestion's tokens come from: the shared cache and the scope to ask it for.
#[derive(Clone)]
pub struct IngestionAuth {
    tokens: Arc<TokenProvider>,
    scope: String,
}

impl IngestionAuth {
    /// The provider for the identity the authentication string names: `shared` when it is the
    /// same identity (the usual case), else one of its own for `ClientId=` (same credential
    /// code, same HTTP client). Off Azure, the CLI login is the identity and `ClientId` is moot.
    pub fn for_settings(
        settings: &AppInsightsSettings,
        identity: &IdentitySettings,
        shared: &Arc<TokenProvider>,
        http: &SharedHttpClient,
    ) -> Result<Option<Self>, TelemetryError> {
        let Some(aad) = &settings.aad else { return Ok(None) };
        let scope = match &aad.audience {
            Some(audience) => format!("{}/.default", audience.trim_end_matches('/')),
            None => MONITOR_SCOPE.to_owned(),
        };
        let same = identity.credential != CredentialKind::ManagedIdentity || aad.client_id == identity.client_id;
        let tokens = if same {
            shared.clone()
        } else {
            let own = IdentitySettings { client_id: aad.client_id.clone(), ..identity.clone() };
            Arc::new(TokenProvider::from_settings(&own, http.clone()).map_err(|e| TelemetryError::Config {
                setting: "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
                message: e.to_string(),
            })?)
        };
        Ok(Some(Self { tokens, scope }))
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }

    pub fn credential(&self) -> &str {
        self.tokens.description()
    }

    pub async fn token(&self) -> Result<BearerToken, String> {
        self.tokens.token_for(&self.scope, Instant::now() + TOKEN_WAIT).await.map_err(|e| e.to_string())
    }
}

/// What an ingestion request came back with.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    /// The token sent, if any (its claims name the principal for a 403's fix).
    pub token: Option<BearerToken>,
}

/// Why nothing came back.
#[derive(Debug, thiserror::Error)]
pub enum IngestionError {
    #[error("could not get a token for {scope}: {message}")]
    Token { scope: String, message: String },
    #[error("could not reach {url}: {message}")]
    Unreachable { url: String, message: String },
}

/// The exporter's transport (see the module documentation). Clones share the health record.
#[derive(Clone)]
pub struct Ingestion {
    http: SharedHttpClient,
    track_url: reqwest::Url,
    auth: Option<IngestionAuth>,
    health: Arc<Health>,
}

impl fmt::Debug for Ingestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ingestion")
            .field("track_url", &self.track_url.as_str())
            .field("aad", &self.auth.is_some())
            .finish()
    }
}

impl Ingestion {
    pub fn new(
        settings: &AppInsightsSettings,
        http: SharedHttpClient,
        auth: Option<IngestionAuth>,
    ) -> Result<Self, TelemetryError> {
        let track_url = reqwest::Url::parse(&settings.track_url).map_err(|e| TelemetryError::Config {
            setting: "APPLICATIONINSIGHTS_CONNECTION_STRING",
            message: format!("`{}` is not a URL ({e})", settings.track_url),
        })?;
        Ok(Self { http, track_url, auth, health: Arc::new(Health::default()) })
    }

    pub fn track_url(&self) -> &str {
        self.track_url.as_str()
    }

    /// Posts one body (JSON, gzip when `gzip`) with a bearer token when AAD is configured.
    pub async fn post(&self, body: Bytes, gzip: bool) -> Result<Answer, IngestionError> {
        let token = match &self.auth {
            Some(auth) => Some(
                auth.token().await.map_err(|message| IngestionError::Token { scope: auth.scope.clone(), message })?,
            ),
            None => None,
        };
        let unreachable = |message: String| IngestionError::Unreachable { url: self.track_url.to_string(), message };
        let client = self.http.get().map_err(|e| unreachable(e.to_owned()))?;
        let mut request = client
            .post(self.track_url.clone())
            .timeout(REQUEST_TIMEOUT)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        if let Some(token) = &token {
            request = request.header(AUTHORIZATION, format!("Bearer {}", token.secret()));
        }
        let mut response = request.send().await.map_err(|e| unreachable(error_chain(&e)))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(error_chain(&e)))? {
            body.extend_from_slice(&chunk[..chunk.len().min(MAX_ANSWER - body.len())]);
            if body.len() >= MAX_ANSWER {
                break;
            }
        }
        Ok(Answer { status, body: Bytes::from(body), token })
    }
}

/// What to do with a batch after an answer (or none).
#[derive(Debug, PartialEq)]
enum Next {
    Done,
    /// Send the whole batch again after a backoff.
    RetryAll,
    /// Send again only these items (indices into the batch sent): a partial success whose
    /// refused items may succeed later.
    RetrySome(Vec<usize>),
    /// Give up on the batch (reported already).
    Drop(String),
}

impl Ingestion {
    /// Reports what an answer says (each kind of problem once, with its fix) and decides
    /// what becomes of the batch, as Application Insights' SDKs do: 408, 429, 439, 5xx, 401 and
    /// 403 (a role may just have been granted, a refused token was dropped) are retried;
    /// refused items of a partial success are retried when their own status is retryable.
    fn note(&self, answer: &Answer) -> Next {
        let status = answer.status;
        match status {
            200 => {
                self.health.delivered();
                Next::Done
            }
            206 | 400 => {
                self.health.report(Problem::Rejected, &rejected(&answer.body));
                let retry = retryable_items(&answer.body);
                if status == 206 && !retry.is_empty() {
                    Next::RetrySome(retry)
                } else {
                    Next::Drop(format!("Application Insights answered {status}"))
                }
            }
            401 => {
                if let (Some(auth), Some(token)) = (&self.auth, &answer.token) {
                    auth.tokens.invalidate(token);
                }
                let detail = match &self.auth {
                    Some(auth) => format!(
                        "Application Insights refused the token of {} (401). Check that the token's tenant is the resource's and that APPLICATIONINSIGHTS_AUTHENTICATION_STRING names the identity you granted access",
                        auth.credential()
                    ),
                    None => "Application Insights refused the instrumentation key (401): local authentication is disabled on the resource. Set APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD and grant the app's identity the role Monitoring Metrics Publisher on the resource".to_owned(),
                };
                self.health.report(Problem::Unauthorized, &detail);
                Next::RetryAll
            }
            403 => {
                let who = answer
                    .token
                    .as_ref()
                    .and_then(BearerToken::claims)
                    .and_then(|c| c.oid)
                    .unwrap_or_else(|| "<principal-object-id>".to_owned());
                let detail = format!(
                    "Application Insights refused the export (403): the identity (object id {who}) lacks the role Monitoring Metrics Publisher on the Application Insights resource. Fix: az role assignment create --assignee-object-id {who} --assignee-principal-type ServicePrincipal --role \"Monitoring Metrics Publisher\" --scope <Application Insights resource id> (the Bicep in infra/ assigns it); it takes effect within about 30 minutes, exports retry until then"
                );
                self.health.report(Problem::Forbidden, &detail);
                Next::RetryAll
            }
            408 | 429 | 439 => {
                self.health.report(
                    Problem::Throttled,
                    &format!("Application Insights is throttling ingestion ({status}); batches are retried with backoff, and dropped when retries run out"),
                );
                Next::RetryAll
            }
            _ => {
                self.health.report(
                    Problem::Unavailable,
                    &format!("Application Insights answered {status}; batches are retried with backoff, and dropped when retries run out"),
                );
                if status >= 500 {
                    Next::RetryAll
                } else {
                    Next::Drop(format!("Application Insights answered {status}"))
                }
            }
        }
    }

    /// Sends `items` (envelope JSON texts) until accepted, retrying with backoff (0.5 s doubling
    /// to 5 s, jittered); the caller bounds the whole ([`Health::bounded`]).
    async fn deliver(&self, mut items: Batch) -> OTelSdkResult {
        let mut backoff = RETRY_MIN;
        loop {
            let next = match self.post(Bytes::from(items.body()), true).await {
                Ok(answer) => self.note(&answer),
                Err(error) => {
                    self.report_unsent(&error);
                    Next::RetryAll
                }
            };
            match next {
                Next::Done => return Ok(()),
                Next::Drop(reason) => return Err(OTelSdkError::InternalFailure(reason)),
                Next::RetryAll => {}
                Next::RetrySome(keep) => items.retain(&keep),
            }
            tokio::time::sleep(backoff.mul_f64(rand::random_range(0.5..1.5))).await;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }

    fn report_unsent(&self, error: &IngestionError) {
        let problem = if matches!(error, IngestionError::Token { .. }) { Problem::Token } else { Problem::Unreachable };
        self.health.report(problem, &error.to_string());
    }
}

/// The metrics exporter's transport (the crate's exporter posts through it and retries).
#[async_trait]
impl HttpClient for Ingestion {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let gzip = request.headers().get(CONTENT_ENCODING).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        let answer = match self.post(request.into_body(), gzip).await {
            Ok(answer) => answer,
            Err(error) => {
                self.report_unsent(&error);
                return Err(error.into());
            }
        };
        let status = answer.status;
        if self.note(&answer) == Next::RetryAll && matches!(status, 401 | 403) {
            // The crate does not retry these itself; as a connection error they are.
            return Err(format!("Application Insights answered {status}").into());
        }
        Response::builder().status(status).body(answer.body).map_err(Into::into)
    }
}

/// Indices of a track response's refused items whose own status may succeed later.
fn retryable_items(body: &[u8]) -> Vec<usize> {
    let answer: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    answer["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter(|e| matches!(e["statusCode"].as_u64(), Some(408 | 429 | 439 | 500 | 503)))
                .filter_map(|e| e["index"].as_u64().and_then(|i| usize::try_from(i).ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// The first per-item error of a track response, for the log line.
fn rejected(body: &[u8]) -> String {
    let answer: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let first = &answer["errors"][0];
    format!(
        "Application Insights accepted {} of {} items; item {} was refused with {}: {}",
        answer["itemsAccepted"],
        answer["itemsReceived"],
        first["index"],
        first["statusCode"],
        first["message"].as_str().unwrap_or("(no message)")
    )
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Kinds of export problem; each is logged at most once per process.
#[derive(Debug, Clone, Copy)]
enum Problem {
    Token = 1,
    Unauthorized = 2,
    Forbidden = 4,
    Throttled = 8,
    Unavailable = 16,
    Unreachable = 32,
    Rejected = 64,
    Dropped = 128,
}

/// Export problems, each reported once with its fix; one line when export recovers.
#[derive(Debug, Default)]
pub struct Health {
    reported: AtomicU32,
    failing: AtomicBool,
    recovery_reported: AtomicBool,
    stopping: Mutex<Option<tokio::sync::watch::Sender<bool>>>,
}

impl Health {
    fn report(&self, problem: Problem, detail: &str) {
        self.failing.store(true, Ordering::Relaxed);
        let bit = problem as u32;
        if self.reported.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            tracing::warn!(problem = ?problem, "Application Insights export: {detail} (reported once; jobs are not affected)");
        }
    }

    fn delivered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) && !self.recovery_reported.swap(true, Ordering::Relaxed) {
            tracing::info!("Application Insights export recovered: batches are being accepted");
        }
    }

    fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        let mut sender = self.stopping.lock().unwrap_or_else(|e| e.into_inner());
        sender.get_or_insert_with(|| tokio::sync::watch::channel(false).0).subscribe()
    }

    /// From now on a failing batch gets [`SHUTDOWN_GRACE`], not [`EXPORT_BUDGET`].
    pub fn stop(&self) {
        let mut sender = self.stopping.lock().unwrap_or_else(|e| e.into_inner());
        sender.get_or_insert_with(|| tokio::sync::watch::channel(false).0).send_replace(true);
    }

    /// Runs one export within its budget; a failure or an overrun is reported (once) and
    /// swallowed: the batch is dropped, and the SDK has nothing to log per batch.
    async fn bounded(&self, signal: &str, export: impl Future<Output = OTelSdkResult>) -> OTelSdkResult {
        let mut stopping = self.stopping();
        let after_stop = async move {
            // The guard `wait_for` returns is dropped at once: it must not live across an await.
            let _ = stopping.wait_for(|stop| *stop).await.map(|_| ());
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let deadline = async {
            tokio::select! {
                _ = tokio::time::sleep(EXPORT_BUDGET) => {}
                _ = after_stop => {}
            }
        };
        let outcome = tokio::select! {
            result = export => result,
            _ = deadline => Err(OTelSdkError::Timeout(EXPORT_BUDGET)),
        };
        if let Err(error) = outcome {
            self.report(
                Problem::Dropped,
                &format!("a batch of {signal} was dropped after retries ({error}); later drops are not logged"),
            );
        }
        Ok(())
    }
}

/// The span exporter: items written by [`envelope`] (not the crate), delivered with retries
/// within the budget, failures reported not returned.
#[derive(Debug)]
pub struct Spans {
    items: Items,
    ingestion: Ingestion,
}

impl SpanExporter for Spans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut items = Batch::for_spans(batch.len());
        for span in &batch {
            self.items.add(span, &mut items);
        }
        if items.is_empty() {
            return Ok(());
        }
        self.ingestion.health.bounded("spans", self.ingestion.deliver(items)).await
    }

    /// Only what becomes the cloud role, its instance and the application version.
    fn set_resource(&mut self, resource: &Resource) {
        self.items.set_resource(resource);
    }
}

/// The metric exporter (delta temporality, as Application Insights wants), failures reported.
pub struct Metrics {
    inner: Exporter<Ingestion>,
    health: Arc<Health>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl PushMetricExporter for Metrics {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        self.health.bounded("metrics", PushMetricExporter::export(&self.inner, metrics)).await
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// The Application Insights half of the export pipeline.
pub struct AppInsights {
    /// The metrics exporter (the crate's).
    exporter: Exporter<Ingestion>,
    ingestion: Ingestion,
    items: Items,
    health: Arc<Health>,
    track_url: String,
    aad: Option<String>,
}

impl AppInsights {
    /// `ingestion` carries the token source; nothing is started until the processors run.
    pub fn new(settings: &AppInsightsSettings, ingestion: Ingestion) -> Result<Self, TelemetryError> {
        let health = ingestion.health.clone();
        let track_url = ingestion.track_url.to_string();
        let aad = ingestion.auth.as_ref().map(|a| format!("{} for {}", a.credential(), a.scope()));
        // The endpoint here only names the crate's request; `Ingestion` posts to `track_url`.
        let connection = format!("InstrumentationKey={}", settings.instrumentation_key);
        let exporter = Exporter::new_from_connection_string(connection, ingestion.clone()).map_err(|e| {
            TelemetryError::Config { setting: "APPLICATIONINSIGHTS_CONNECTION_STRING", message: e.to_string() }
        })?;
        let items = Items::new(&settings.instrumentation_key);
        Ok(Self { exporter, ingestion, items, health, track_url, aad })
    }

    /// e.g. "Application Insights https://…/v2.1/track (Entra: ManagedIdentityCredential … for https://monitor.azure.com/.default)".
    pub fn describe(&self) -> String {
        match &self.aad {
            Some(aad) => format!("Application Insights {} (Entra token: {aad})", self.track_url),
            None => format!("Application Insights {} (instrumentation key only)", self.track_url),
        }
    }

    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Spans batched on a tokio task ([`Batcher`]: `OTEL_BSP_*` apply); items carry `resource`'s
    /// cloud role, instance and version.
    pub fn span_processor(&self, resource: &Resource, batching: BatchSettings) -> Batcher {
        let mut spans = Spans { items: self.items.clone(), ingestion: self.ingestion.clone() };
        spans.set_resource(resource);
        Batcher::start(spans, batching, "Application Insights")
    }

    /// Metrics read every `OTEL_METRIC_EXPORT_INTERVAL` (60 s) on a tokio task.
    pub fn metric_reader(&self) -> PeriodicReader<Metrics> {
        let metrics = Metrics { inner: self.exporter.clone(), health: self.health.clone() };
        PeriodicReader::builder(metrics, Tokio).build()
    }
}
