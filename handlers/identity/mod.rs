//! Identity: Microsoft Entra tokens for every outbound call, from the one `azure_identity`
//! credential the settings chose (managed identity in Azure, the Azure CLI or azd locally),
//! behind one cache per scope.
//!
//! # Using it (any scope: Azure OpenAI, Azure Monitor, ...)
//!
//! ```ignore
//! // One provider per process, built in `main` and shared as `Arc<TokenProvider>`.
//! let token = tokens.token_for(MONITOR_SCOPE, deadline).await?; // or `tokens.token(deadline)`
//! request.header(AUTHORIZATION, format!("Bearer {}", token.secret()));
//! if response.status() == 401 {
//!     tokens.invalidate(&token); // the next call fetches a new token; this one is never sent again
//! }
//! ```
//!
//! Each scope (`COGNITIVE_SERVICES_SCOPE`, `MONITOR_SCOPE`, or any other `.../.default`) gets its
//! own cache the first time it is asked for; all share the credential. Background callers with
//! no invocation deadline (an exporter) pass `Instant::now() + <their own send timeout>`.
//!
//! # What is guaranteed (per scope; `cache.rs`)
//! - **One fetch per lifetime.** A token serves every caller until a quarter of its life (at most
//!   five minutes) is left; then the first caller starts one refresh in the background and keeps
//!   using the current token, as does everyone else, so nobody waits on a slow refresh. A token is
//!   never handed out in its last fortieth of life (at most 30 s), so it cannot expire in flight.
//! - **Single flight, shared failure.** Callers without a usable token wait on the one fetch in
//!   flight and all get its result, success or error.
//! - **Backoff.** After a failed fetch the next one waits 1 s, then 2, 4, ... up to 30 s while the
//!   failures continue. A caller in that pause waits for the next attempt if it is due before its
//!   deadline, and otherwise fails at once with the last error and when the next attempt is due.
//! - **Deadlines.** No caller waits past the deadline it passes in. A fetch that has not finished
//!   in [`FETCH_LIMIT`] is abandoned and counts as a failure.
//! - **A refused token is never sent again.** [`TokenProvider::invalidate`] drops it and
//!   remembers it; the next fetch is a real request (managed identity: a fresh credential, so the
//!   crate's own cache, which would hand the same token back until five minutes before expiry,
//!   is bypassed), and if the source still answers with the refused token, that is an error.
//! - "acquired an Entra token" is logged only when a fetch returned a token we did not hold.
//!
//! Files: `credential.rs` (which credential and how it is built), `cache.rs` (the per-scope
//! cache), `diagnose.rs` (credential errors turned into one actionable line), `process.rs` (how
//! `az`/`azd` run: a process group killed when the fetch is abandoned).

mod cache;
mod credential;
mod diagnose;
mod process;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use base64::Engine;
use serde::Deserialize;

use crate::config::{CredentialKind, IdentitySettings};
use crate::error::ApiError;
use crate::http_client::SharedHttpClient;

use cache::ScopeCache;
use credential::CredentialSource;

/// Azure OpenAI's scope.
pub const COGNITIVE_SERVICES_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
/// Azure Monitor's scope (Application Insights ingestion with Entra authentication).
pub const MONITOR_SCOPE: &str = "https://monitor.azure.com/.default";
/// A fetch still running after this is abandoned (a hung `az`, an identity endpoint that accepts
/// and never answers) and counts as a failure; callers stop waiting at their own deadlines anyway.
pub const FETCH_LIMIT: Duration = Duration::from_secs(30);

/// A bearer token and the scope it is for. `Debug` and `Display` never print it.
#[derive(Clone)]
pub struct BearerToken {
    secret: Arc<str>,
    scope: Arc<str>,
}

impl BearerToken {
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The scope this token was issued for.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The token's identity claims (for diagnostics: object id, tenant), never the token.
    pub fn claims(&self) -> Option<TokenClaims> {
        let payload = self.secret.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn same_as(&self, other: &BearerToken) -> bool {
        self.secret == other.secret
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Claims worth showing a person: who the token is for, never the token itself.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenClaims {
    pub oid: Option<String>,
    pub tid: Option<String>,
    pub appid: Option<String>,
    pub upn: Option<String>,
    pub aud: Option<String>,
    pub exp: Option<i64>,
}

/// Tokens for any scope from one credential; see the module documentation for the guarantees.
pub struct TokenProvider {
    source: Arc<CredentialSource>,
    scopes: Mutex<HashMap<String, Arc<ScopeCache>>>,
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvider").field("credential", &self.source.description()).finish_non_exhaustive()
    }
}

impl TokenProvider {
    /// Builds the credential the settings chose; token requests go over `http`.
    pub fn from_settings(settings: &IdentitySettings, http: SharedHttpClient) -> Result<Self, ApiError> {
        Ok(Self::with_source(CredentialSource::from_settings(settings, http)?))
    }

    /// A provider over an existing credential instance (tests, other credentials). Prefer
    /// [`Self::from_settings`]: a credential with a cache of its own may hand a refused token back.
    pub fn new(credential: Arc<dyn TokenCredential>, kind: CredentialKind, description: String) -> Self {
        Self::with_source(CredentialSource::fixed(credential, kind, description))
    }

    fn with_source(source: CredentialSource) -> Self {
        Self { source: Arc::new(source), scopes: Mutex::new(HashMap::new()) }
    }

    pub fn kind(&self) -> CredentialKind {
        self.source.kind()
    }

    /// e.g. "ManagedIdentityCredential (system-assigned)".
    pub fn description(&self) -> &str {
        self.source.description()
    }

    /// A token for Azure OpenAI ([`COGNITIVE_SERVICES_SCOPE`]), waiting no later than `deadline`.
    pub async fn token(&self, deadline: Instant) -> Result<BearerToken, ApiError> {
        self.token_for(COGNITIVE_SERVICES_SCOPE, deadline).await
    }

    /// A token for `scope` (e.g. [`MONITOR_SCOPE`]), waiting no later than `deadline`.
    pub async fn token_for(&self, scope: &str, deadline: Instant) -> Result<BearerToken, ApiError> {
        self.cache(scope).token(deadline).await
    }

    /// The service refused `token` (401): drop it, never hand it out again, fetch anew next time.
    pub fn invalidate(&self, token: &BearerToken) {
        self.cache(token.scope()).invalidate(token);
    }

    fn cache(&self, scope: &str) -> Arc<ScopeCache> {
        let mut scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cache) = scopes.get(scope) {
            return cache.clone();
        }
        let cache = Arc::new(ScopeCache::new(scope, self.source.clone()));
        scopes.insert(scope.to_owned(), cache.clone());
        cache
    }
}
