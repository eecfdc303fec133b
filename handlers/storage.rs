//! Blob Storage reads with the app's identity: the Results that `POST /api/jobs` checks before it
//! enqueues a batch (a batch cannot have a blob input binding per job).
//!
//! One read is a Get Blob of `{blob endpoint}results/{id}.json` (REST, `x-ms-version`, and a
//! Microsoft Entra bearer token for `https://storage.azure.com/.default` from the same credential
//! and token cache as Azure OpenAI). 404 means no Result. A 401 drops the token and tries once
//! more with a new one. Every read ends by the caller's deadline, reads at most
//! [`MAX_BLOB_BYTES`], and a batch reads at most [`READ_CONCURRENCY`] blobs at once. Storage's
//! answers are untrusted: only its status, its `x-ms-error-code` (escaped, bounded) and a bounded
//! body are used.

use std::sync::Arc;
use std::time::Instant;

use reqwest::StatusCode;
use tokio::sync::Semaphore;

use crate::echo::echo;
use crate::error::ApiError;
use crate::http_client::SharedHttpClient;
use crate::identity::TokenProvider;

/// Azure Storage's scope.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// The Blob service REST version sent (Microsoft Entra authorization needs 2017-11-09 or later).
pub const STORAGE_API_VERSION: &str = "2023-11-03";
/// Blobs read at once for one batch.
pub const READ_CONCURRENCY: usize = 16;
/// A Result is at most 64 KiB; anything much larger is not one.
pub const MAX_BLOB_BYTES: usize = 1024 * 1024;
/// The container the worker writes Results to.
const RESULTS_CONTAINER: &str = "results";

/// Reads Results from the host's storage account.
pub struct ResultStore {
    /// The Blob service endpoint, ending in `/`.
    endpoint: String,
    tokens: Arc<TokenProvider>,
    http: SharedHttpClient,
    reads: Semaphore,
}

impl ResultStore {
    pub fn new(endpoint: String, tokens: Arc<TokenProvider>, http: SharedHttpClient) -> Self {
        Self { endpoint, tokens, http, reads: Semaphore::new(READ_CONCURRENCY) }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The Results of `ids` (a job id each; `None` where none exists), in order. Fails as a
    /// whole when any read fails or the deadline passes.
    pub async fn results(&self, ids: &[&str], deadline: Instant) -> Result<Vec<Option<String>>, ApiError> {
        let reads = ids.iter().map(|id| async move {
            let _permit = self.reads.acquire().await.map_err(|_| ApiError::internal("the result reader was closed"))?;
            self.result(id, deadline).await
        });
        let all = futures_util::future::try_join_all(reads);
        match tokio::time::timeout_at(deadline.into(), all).await {
            Ok(results) => results,
            Err(_) => Err(self.unavailable("did not answer in time")),
        }
    }

    /// `results/{id}.json`'s text, or `None` when it does not exist.
    pub async fn result(&self, id: &str, deadline: Instant) -> Result<Option<String>, ApiError> {
        let url = format!("{}{RESULTS_CONTAINER}/{id}.json", self.endpoint);
        let mut refused_once = false;
        loop {
            let token = self.tokens.token_for(STORAGE_SCOPE, deadline).await?;
            let client = self.http.get().map_err(|e| ApiError::internal(e.to_owned()))?;
            let timeout = deadline.saturating_duration_since(Instant::now());
            let response = client
                .get(&url)
                .bearer_auth(token.secret())
                .header("x-ms-version", STORAGE_API_VERSION)
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| self.unavailable(&format!("could not be reached ({})", echo(&e.to_string()))))?;
            let status = response.status();
            let code = response
                .headers()
                .get("x-ms-error-code")
                .and_then(|v| v.to_str().ok())
                .map(echo)
                .unwrap_or_else(|| status.as_u16().to_string());
            match status {
                StatusCode::OK => return read_bounded(response, deadline).await.map(Some),
                StatusCode::NOT_FOUND => return Ok(None),
                StatusCode::UNAUTHORIZED if !refused_once => {
                    // Expired or revoked: never send it again; one more try with a new token.
                    self.tokens.invalidate(&token);
                    refused_once = true;
                }
                StatusCode::UNAUTHORIZED => {
                    return Err(ApiError::UpstreamAuthFailed {
                        message: format!(
                            "Blob Storage ({}) refused the app's token for {STORAGE_SCOPE} twice ({code})",
                            self.endpoint
                        ),
                        transient: true,
                    });
                }
                StatusCode::FORBIDDEN => {
                    return Err(ApiError::UpstreamPermissionDenied {
                        message: format!(
                            "the app's identity may not read blob {RESULTS_CONTAINER}/{id}.json in {} ({code}): grant it Storage Blob Data Reader on the `{RESULTS_CONTAINER}` container (the Bicep in infra/ grants Storage Blob Data Owner on the account)",
                            self.endpoint
                        ),
                    });
                }
                _ => return Err(self.unavailable(&format!("answered {} ({code})", status.as_u16()))),
            }
        }
    }

    fn unavailable(&self, what: &str) -> ApiError {
        ApiError::UpstreamUnavailable {
            message: format!(
                "could not check for existing Results: Blob Storage at {} {what}; nothing was enqueued, retry later",
                self.endpoint
            ),
        }
    }
}

/// The body as text, at most [`MAX_BLOB_BYTES`], by the deadline.
async fn read_bounded(mut response: reqwest::Response, deadline: Instant) -> Result<String, ApiError> {
    let too_large = || ApiError::UpstreamUnavailable {
        message: format!("a stored Result is larger than {MAX_BLOB_BYTES} bytes: it is not a Result"),
    };
    if response.content_length().is_some_and(|n| n > MAX_BLOB_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline.into(), response.chunk()).await.map_err(|_| {
            ApiError::UpstreamUnavailable { message: "a stored Result did not arrive in time".to_owned() }
        })?;
        match chunk {
            Ok(Some(bytes)) => {
                if body.len() + bytes.len() > MAX_BLOB_BYTES {
                    return Err(too_large());
                }
                body.extend_from_slice(&bytes);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(ApiError::UpstreamUnavailable {
                    message: format!("a stored Result could not be read ({})", echo(&e.to_string())),
                });
            }
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}
