//! Which `azure_identity` credential answers, and how each fetch reaches it.
//!
//! Managed identity gets a fresh `ManagedIdentityCredential` for every fetch: the crate keeps its
//! own token cache inside each instance and hands the cached token back until five minutes before
//! expiry, even after Azure OpenAI refused it. Our cache (`cache.rs`) decides when to fetch, so a
//! fetch must be a real request. Building one is cheap (a few environment reads; the HTTP client
//! is the shared one). The CLI credentials cache nothing and run `az`/`azd` on every call anyway,
//! each run in a process group that is killed when the fetch is abandoned (`process.rs`).

use std::sync::Arc;

use azure_core::credentials::{AccessToken, TokenCredential};
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, AzureDeveloperCliCredential, AzureDeveloperCliCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
};

use super::diagnose::one_line;
use super::process::GroupKillingExecutor;
use crate::config::{CredentialKind, IdentitySettings};
use crate::error::ApiError;
use crate::http_client::SharedHttpClient;

type Build = dyn Fn() -> azure_core::Result<Arc<dyn TokenCredential>> + Send + Sync;

/// The chosen credential: what it is, and how to get a credential instance for one fetch.
pub(crate) struct CredentialSource {
    kind: CredentialKind,
    description: String,
    build: Box<Build>,
}

impl CredentialSource {
    pub(crate) fn from_settings(settings: &IdentitySettings, http: SharedHttpClient) -> Result<Self, ApiError> {
        let kind = settings.credential;
        let (build, description): (Box<Build>, String) = match kind {
            CredentialKind::ManagedIdentity => {
                let user_assigned_id = settings.client_id.clone().map(UserAssignedId::ClientId);
                let which = match &settings.client_id {
                    Some(id) => format!("user-assigned, client id {id}"),
                    None => "system-assigned".to_owned(),
                };
                let build = move || -> azure_core::Result<Arc<dyn TokenCredential>> {
                    let options = ManagedIdentityCredentialOptions {
                        user_assigned_id: user_assigned_id.clone(),
                        // The crate's default retries an unreachable endpoint for ~80 s; our cache
                        // backs off between fetches and every caller has its own deadline.
                        // One pool and one load of the CA roots with the Azure OpenAI client.
                        client_options: ClientOptions {
                            retry: RetryOptions::none(),
                            transport: Some(Transport::new(Arc::new(http.clone()))),
                            ..Default::default()
                        },
                    };
                    Ok(ManagedIdentityCredential::new(Some(options))?)
                };
                (Box::new(build), format!("ManagedIdentityCredential ({which})"))
            }
            CredentialKind::AzureCli => {
                let options = AzureCliCredentialOptions {
                    tenant_id: settings.tenant_id.clone(),
                    executor: Some(Arc::new(GroupKillingExecutor)),
                    ..Default::default()
                };
                let credential: Arc<dyn TokenCredential> =
                    AzureCliCredential::new(Some(options)).map_err(|e| config_error(kind, &e))?;
                (Box::new(move || Ok(credential.clone())), "AzureCliCredential".to_owned())
            }
            CredentialKind::AzureDeveloperCli => {
                let options = AzureDeveloperCliCredentialOptions {
                    tenant_id: settings.tenant_id.clone(),
                    executor: Some(Arc::new(GroupKillingExecutor)),
                };
                let credential: Arc<dyn TokenCredential> =
                    AzureDeveloperCliCredential::new(Some(options)).map_err(|e| config_error(kind, &e))?;
                (Box::new(move || Ok(credential.clone())), "AzureDeveloperCliCredential".to_owned())
            }
        };
        // Build one now: a configuration the crate rejects fails at start-up, not on first use.
        build().map_err(|e| config_error(kind, &e))?;
        Ok(Self { kind, description, build })
    }

    /// One credential instance for every fetch (its own cache, if any, stays in the way).
    pub(crate) fn fixed(credential: Arc<dyn TokenCredential>, kind: CredentialKind, description: String) -> Self {
        Self { kind, description, build: Box::new(move || Ok(credential.clone())) }
    }

    pub(crate) fn kind(&self) -> CredentialKind {
        self.kind
    }

    pub(crate) fn description(&self) -> &str {
        &self.description
    }

    /// Asks the credential for a token for `scope` (a real request, see the module docs).
    pub(crate) async fn get_token(&self, scope: &str) -> azure_core::Result<AccessToken> {
        let credential = (self.build)()?;
        credential.get_token(&[scope], None).await
    }
}

fn config_error(kind: CredentialKind, error: &azure_core::Error) -> ApiError {
    ApiError::Configuration {
        message: format!("could not create {}: {}", kind.sdk_name(), one_line(&error.to_string())),
    }
}
