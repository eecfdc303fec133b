//! Identity: picks the `azure_identity` credential (managed identity in Azure, Azure CLI
//! locally) and puts one token cache in front of it.
//!
//! Why our own cache: `AzureCliCredential` caches nothing (every call spawns `az`), and the
//! crate never caches a token with under five minutes left. [`TokenProvider`] serves every
//! request from one token, refreshes it once (single flight) before it expires, keeps serving
//! the old token while a refresh is in flight, never hands out an expired one, and shares a
//! failed fetch with everyone who waited on it instead of stampeding the identity endpoint.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_core::time::OffsetDateTime;
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, AzureDeveloperCliCredential, AzureDeveloperCliCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
};
use base64::Engine;
use serde::Deserialize;

use crate::config::{CredentialKind, IdentitySettings};
use crate::error::ApiError;
use crate::http_client::SharedHttpClient;

/// The only scope this app ever asks for.
pub const COGNITIVE_SERVICES_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
/// A CLI that prompts or hangs must not hang the invocation.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// A bearer token. `Debug` and `Display` never print it.
#[derive(Clone)]
pub struct BearerToken(Arc<str>);

impl BearerToken {
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// The token's identity claims (for diagnostics: object id, tenant), never the token.
    pub fn claims(&self) -> Option<TokenClaims> {
        let payload = self.0.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
        serde_json::from_slice(&bytes).ok()
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

struct Cached {
    token: BearerToken,
    /// After this, the next caller refreshes (the others keep using this token meanwhile).
    refresh_at: Instant,
    /// After this, the token is not handed out any more: it could expire in flight.
    usable_until: Instant,
}

/// The outcome of the last fetch, kept so that callers who queued behind a failing fetch get
/// its error instead of each trying again.
#[derive(Default)]
struct FetchState {
    last_failure: Option<(Instant, ApiError)>,
}

pub struct TokenProvider {
    credential: Arc<dyn TokenCredential>,
    kind: CredentialKind,
    description: String,
    cached: RwLock<Option<Cached>>,
    fetch: tokio::sync::Mutex<FetchState>,
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvider").field("credential", &self.description).finish_non_exhaustive()
    }
}

impl TokenProvider {
    /// Builds the credential the settings chose; token requests go over `http`.
    pub fn from_settings(settings: &IdentitySettings, http: SharedHttpClient) -> Result<Self, ApiError> {
        let config_error = |e: azure_core::Error| ApiError::Configuration {
            message: format!("could not create {}: {}", settings.credential.sdk_name(), one_line(&e.to_string())),
        };
        let (credential, description): (Arc<dyn TokenCredential>, String) = match settings.credential {
            CredentialKind::ManagedIdentity => {
                let options = ManagedIdentityCredentialOptions {
                    user_assigned_id: settings.client_id.clone().map(UserAssignedId::ClientId),
                    // The crate's default retries an unreachable endpoint for ~80 s; our caller
                    // retries within the invocation's own budget instead.
                    // One pool and one load of the CA roots with the Azure OpenAI client.
                    client_options: ClientOptions {
                        retry: RetryOptions::none(),
                        transport: Some(Transport::new(Arc::new(http))),
                        ..Default::default()
                    },
                };
                let which = match &settings.client_id {
                    Some(id) => format!("user-assigned, client id {id}"),
                    None => "system-assigned".to_owned(),
                };
                (
                    ManagedIdentityCredential::new(Some(options)).map_err(config_error)?,
                    format!("ManagedIdentityCredential ({which})"),
                )
            }
            CredentialKind::AzureCli => {
                let options = AzureCliCredentialOptions { tenant_id: settings.tenant_id.clone(), ..Default::default() };
                (AzureCliCredential::new(Some(options)).map_err(config_error)?, "AzureCliCredential".to_owned())
            }
            CredentialKind::AzureDeveloperCli => {
                let options =
                    AzureDeveloperCliCredentialOptions { tenant_id: settings.tenant_id.clone(), ..Default::default() };
                (
                    AzureDeveloperCliCredential::new(Some(options)).map_err(config_error)?,
                    "AzureDeveloperCliCredential".to_owned(),
                )
            }
        };
        Ok(Self::new(credential, settings.credential, description))
    }

    pub fn new(credential: Arc<dyn TokenCredential>, kind: CredentialKind, description: String) -> Self {
        Self {
            credential,
            kind,
            description,
            cached: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
        }
    }

    pub fn kind(&self) -> CredentialKind {
        self.kind
    }

    /// e.g. "ManagedIdentityCredential (system-assigned)".
    pub fn description(&self) -> &str {
        &self.description
    }

    /// A token valid for at least the safety margin, fetched at most once per lifetime.
    pub async fn token(&self) -> Result<BearerToken, ApiError> {
        let asked_at = Instant::now();
        // Fast path: a fresh token, or a usable one while someone else refreshes it.
        if let Some((token, fresh)) = self.peek(asked_at) {
            if fresh {
                return Ok(token);
            }
            let Ok(mut state) = self.fetch.try_lock() else { return Ok(token) };
            return match self.peek(Instant::now()) {
                Some((token, true)) => Ok(token),
                _ => match self.fetch_now(&mut state).await {
                    Ok(fresh) => Ok(fresh),
                    Err(e) => {
                        tracing::warn!(error = %e, "token refresh failed; the current token is still valid");
                        Ok(token)
                    }
                },
            };
        }
        let mut state = self.fetch.lock().await;
        if let Some((token, _)) = self.peek(Instant::now()) {
            return Ok(token);
        }
        if let Some((failed_at, error)) = &state.last_failure
            && *failed_at >= asked_at
        {
            return Err(error.clone());
        }
        self.fetch_now(&mut state).await
    }

    /// Drops `token` from the cache after Azure OpenAI refused it, so the next call fetches anew.
    pub fn invalidate(&self, token: &BearerToken) {
        let mut cached = self.cached.write().unwrap_or_else(|e| e.into_inner());
        if cached.as_ref().is_some_and(|c| Arc::ptr_eq(&c.token.0, &token.0)) {
            *cached = None;
        }
    }

    /// The cached token if usable, and whether it is still fresh.
    fn peek(&self, now: Instant) -> Option<(BearerToken, bool)> {
        let cached = self.cached.read().unwrap_or_else(|e| e.into_inner());
        let c = cached.as_ref()?;
        (now < c.usable_until).then(|| (c.token.clone(), now < c.refresh_at))
    }

    async fn fetch_now(&self, state: &mut FetchState) -> Result<BearerToken, ApiError> {
        let started = Instant::now();
        let result =
            tokio::time::timeout(FETCH_TIMEOUT, self.credential.get_token(&[COGNITIVE_SERVICES_SCOPE], None)).await;
        let access = match result {
            Ok(Ok(access)) => access,
            Ok(Err(e)) => return Err(self.remember(state, self.classify(&e))),
            Err(_) => {
                let message = format!(
                    "{} did not return a token within {} s{}",
                    self.description,
                    FETCH_TIMEOUT.as_secs(),
                    if self.kind == CredentialKind::ManagedIdentity {
                        ""
                    } else {
                        " (is `az` waiting for input? run `az login` in a terminal)"
                    }
                );
                return Err(self.remember(state, ApiError::UpstreamUnavailable { message }));
            }
        };
        let now = Instant::now();
        let remaining = (access.expires_on - OffsetDateTime::now_utc()).try_into().unwrap_or(Duration::ZERO);
        let lifetime: Duration = remaining;
        let expires_at = now + lifetime;
        // Refresh in the last twentieth of life (at most five minutes early), so one fetch
        // serves one lifetime; never send a token in its last fortieth of life (at most 30 s),
        // so it cannot expire in flight. `expires_on` is whole seconds, rounded down: the real
        // expiry is up to a second later still.
        let refresh_at = expires_at - (lifetime / 20).min(Duration::from_secs(300));
        let usable_until = expires_at - (lifetime / 40).min(Duration::from_secs(30));
        let token = BearerToken(Arc::from(access.token.secret()));
        if now >= usable_until {
            let message =
                format!("{} returned a token that has already expired (check the machine's clock)", self.description);
            return Err(self.remember(state, ApiError::UpstreamAuthFailed { message, transient: true }));
        }
        *self.cached.write().unwrap_or_else(|e| e.into_inner()) =
            Some(Cached { token: token.clone(), refresh_at, usable_until });
        state.last_failure = None;
        tracing::info!(credential = %self.description, lifetime_s = lifetime.as_secs(), fetch_ms = started.elapsed().as_millis() as u64, "acquired an Entra token");
        Ok(token)
    }

    fn remember(&self, state: &mut FetchState, error: ApiError) -> ApiError {
        state.last_failure = Some((Instant::now(), error.clone()));
        error
    }

    /// Turns a credential error into one message a person can act on.
    fn classify(&self, error: &azure_core::Error) -> ApiError {
        let said = one_line(&error.to_string());
        let lower = said.to_ascii_lowercase();
        match self.kind {
            CredentialKind::AzureCli | CredentialKind::AzureDeveloperCli => {
                let (tool, login) =
                    if self.kind == CredentialKind::AzureCli { ("az", "az login") } else { ("azd", "azd auth login") };
                let message = if lower.contains("not found on path") || lower.contains("wasn't found on path") {
                    format!(
                        "{}: the `{tool}` command was not found on PATH. Install it and run `{login}`, or set AZURE_TOKEN_CREDENTIALS to another credential.",
                        self.description
                    )
                } else if lower.contains("login") {
                    format!(
                        "{}: not logged in. Run `{login}` (add --tenant <tenant-id> if the Azure OpenAI resource is in another tenant), then retry. {tool} said: {said}",
                        self.description
                    )
                } else {
                    format!(
                        "{}: could not get a token for {COGNITIVE_SERVICES_SCOPE}: {said}. Check `{login}` and AZURE_TENANT_ID.",
                        self.description
                    )
                };
                ApiError::UpstreamAuthFailed { message, transient: true }
            }
            CredentialKind::ManagedIdentity => {
                let status = http_status(error);
                let message =
                    format!("{} could not get a token for {COGNITIVE_SERVICES_SCOPE}: {said}", self.description);
                match status {
                    Some(400) => ApiError::UpstreamAuthFailed {
                        message: format!(
                            "{message}. Enable the Function App's system-assigned identity, or check that AZURE_CLIENT_ID names a user-assigned identity attached to the app."
                        ),
                        transient: true,
                    },
                    Some(s) if (400..500).contains(&s) && s != 408 && s != 429 => {
                        ApiError::UpstreamAuthFailed { message, transient: true }
                    }
                    // Connection errors, timeouts, 5xx: the identity endpoint blipped.
                    _ => ApiError::UpstreamUnavailable {
                        message: format!("{message} (the identity endpoint is unavailable; retrying)"),
                    },
                }
            }
        }
    }
}

/// The HTTP status of the innermost `azure_core` error that has one.
fn http_status(error: &azure_core::Error) -> Option<u16> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(core) = e.downcast_ref::<azure_core::Error>()
            && let Some(status) = core.http_status()
        {
            return Some(u16::from(status));
        }
        current = e.source();
    }
    None
}

fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}
