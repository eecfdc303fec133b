//! Blob Storage with the app's identity: the Results that `POST /api/jobs` checks before it
//! enqueues a batch (a batch cannot have a blob input binding per job), and the worker's claims.
//!
//! A claim is `claims/{id}`, holding the input digest of the job that owns the id, created with
//! Put Blob and `If-None-Match: *`: the service creates it for exactly one of any number of
//! racing writers (201) and answers the others 409 `BlobAlreadyExists`; they read it and compare
//! digests. Claims live in their own container, so no job id can name a Result or a stored job.
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
/// The container of claims (`claims/{id}`, the owning digest).
pub const CLAIMS_CONTAINER: &str = "claims";
/// A claim holds a 64-character hex digest; anything longer is not one.
const MAX_CLAIM_BYTES: usize = 1024;

/// Who owns a job id across instances.
#[derive(Debug, PartialEq, Eq)]
pub enum IdClaim {
    /// This digest owns the id (created now, or by an earlier delivery of the same input).
    Owned,
    /// Another input's digest owns the id.
    OwnedByOther(String),
}

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
        let blob = format!("{RESULTS_CONTAINER}/{id}.json");
        let unavailable = |what: &str| self.unavailable(what);
        match self.send(Operation::Get, &blob, deadline, &unavailable).await? {
            Some(response) => read_bounded(response, MAX_BLOB_BYTES, deadline).await.map(Some),
            None => Ok(None),
        }
    }

    /// Claims job `id` for the input with `digest` (see the module documentation). Any failure
    /// (unreachable, refused, slow) is an error, never a silent pass: the caller hands the
    /// message back to be redelivered.
    pub async fn claim(&self, id: &str, digest: &str, deadline: Instant) -> Result<IdClaim, ApiError> {
        let blob = format!("{CLAIMS_CONTAINER}/{id}");
        let unavailable = |what: &str| ApiError::UpstreamUnavailable {
            message: format!(
                "could not claim job id `{id}`: Blob Storage at {} {what}; the message will be redelivered",
                self.endpoint
            ),
        };
        let work = async {
            if self.send(Operation::Create(digest), &blob, deadline, &unavailable).await?.is_some() {
                return Ok(IdClaim::Owned);
            }
            // It exists: whose is it?
            let Some(response) = self.send(Operation::Get, &blob, deadline, &unavailable).await? else {
                return Err(unavailable("lost the claim it had just refused to create (deleted meanwhile?)"));
            };
            let owner = read_bounded(response, MAX_CLAIM_BYTES, deadline).await?;
            let owner = owner.trim();
            Ok(if owner == digest { IdClaim::Owned } else { IdClaim::OwnedByOther(echo(owner)) })
        };
        match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(claim) => claim,
            Err(_) => Err(unavailable("did not answer in time")),
        }
    }

    /// One request to `{endpoint}{blob}` with the app's token: the response when the blob was
    /// read (Get, 200) or created (Create, 201); `None` when it does not exist (Get, 404) or
    /// already exists (Create, 409 `BlobAlreadyExists` or 412). A 401 drops the token and tries
    /// once more with a new one.
    async fn send(
        &self,
        operation: Operation<'_>,
        blob: &str,
        deadline: Instant,
        unavailable: &(dyn Fn(&str) -> ApiError + Sync),
    ) -> Result<Option<reqwest::Response>, ApiError> {
        let url = format!("{}{blob}", self.endpoint);
        let mut refused_once = false;
        loop {
            let token = self.tokens.token_for(STORAGE_SCOPE, deadline).await?;
            let client = self.http.get().map_err(|e| ApiError::internal(e.to_owned()))?;
            let timeout = deadline.saturating_duration_since(Instant::now());
            let request = match operation {
                Operation::Get => client.get(&url),
                Operation::Create(content) => client
                    .put(&url)
                    .header("x-ms-blob-type", "BlockBlob")
                    .header("if-none-match", "*")
                    .header("content-type", "text/plain")
                    .body(content.to_owned()),
            };
            let response = request
                .bearer_auth(token.secret())
                .header("x-ms-version", STORAGE_API_VERSION)
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| unavailable(&format!("could not be reached ({})", echo(&e.to_string()))))?;
            let status = response.status();
            let code = response
                .headers()
                .get("x-ms-error-code")
                .and_then(|v| v.to_str().ok())
                .map(echo)
                .unwrap_or_else(|| status.as_u16().to_string());
            match (operation, status) {
                (Operation::Get, StatusCode::OK) | (Operation::Create(_), StatusCode::CREATED) => {
                    return Ok(Some(response));
                }
                (Operation::Get, StatusCode::NOT_FOUND) => return Ok(None),
                (Operation::Create(_), StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED) => return Ok(None),
                (_, StatusCode::UNAUTHORIZED) if !refused_once => {
                    // Expired or revoked: never send it again; one more try with a new token.
                    self.tokens.invalidate(&token);
                    refused_once = true;
                }
                (_, StatusCode::UNAUTHORIZED) => {
                    return Err(ApiError::UpstreamAuthFailed {
                        message: format!(
                            "Blob Storage ({}) refused the app's token for {STORAGE_SCOPE} twice ({code})",
                            self.endpoint
                        ),
                        transient: true,
                    });
                }
                (_, StatusCode::FORBIDDEN) => {
                    let (verb, role) = match operation {
                        Operation::Get => ("read", "Storage Blob Data Reader"),
                        Operation::Create(_) => ("create", "Storage Blob Data Contributor"),
                    };
                    let container = blob.split('/').next().unwrap_or_default();
                    return Err(ApiError::UpstreamPermissionDenied {
                        message: format!(
                            "the app's identity may not {verb} blob {blob} in {} ({code}): grant it {role} on the `{container}` container (the Bicep in infra/ grants Storage Blob Data Owner on the account)",
                            self.endpoint
                        ),
                    });
                }
                _ => return Err(unavailable(&format!("answered {} ({code})", status.as_u16()))),
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

#[derive(Clone, Copy)]
enum Operation<'a> {
    Get,
    /// Put Blob with `If-None-Match: *` of this content.
    Create(&'a str),
}

/// The body as text, at most `limit` bytes, by the deadline.
async fn read_bounded(mut response: reqwest::Response, limit: usize, deadline: Instant) -> Result<String, ApiError> {
    let too_large = || ApiError::UpstreamUnavailable {
        message: format!("a stored blob is larger than {limit} bytes: it is not a Result or a claim"),
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline.into(), response.chunk()).await.map_err(|_| {
            ApiError::UpstreamUnavailable { message: "a stored blob did not arrive in time".to_owned() }
        })?;
        match chunk {
            Ok(Some(bytes)) => {
                if body.len() + bytes.len() > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&bytes);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(ApiError::UpstreamUnavailable {
                    message: format!("a stored blob could not be read ({})", echo(&e.to_string())),
                });
            }
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}
