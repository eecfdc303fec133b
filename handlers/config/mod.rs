//! Settings: read once at start-up from the environment (app settings in Azure,
//! `local.settings.json` `Values` under `func start`) into typed structs.
//!
//! Every setting is declared once, in [`table`] (name, kind and bounds, default, meaning);
//! this module reads them into typed structs, [`host_json`] reads the values shared with the
//! Functions host. A missing or invalid setting fails start-up with one line naming it and
//! what it may be; no value can panic.

mod app_insights;
pub mod host_json;
mod sampling;
pub mod table;

use std::path::PathBuf;
use std::time::Duration;

pub use app_insights::{AadIngestion, AppInsightsSettings};
pub use host_json::{HostSettings, parse_timespan};
pub use sampling::TraceSampling;
use table::{
    AOAI_ADAPTIVE_PACING, AOAI_CONTEXT_TOKENS, AOAI_MAX_CONCURRENCY, AOAI_MAX_RETRY_WAIT_SECONDS,
    AOAI_QUOTA_WINDOW_SECONDS, AOAI_REASONING_EFFORT, AOAI_REQUEST_TIMEOUT_SECONDS, AOAI_TOKENS_PER_MINUTE,
    AZURE_CLIENT_ID, AZURE_OPENAI_API_VERSION, AZURE_OPENAI_DEPLOYMENT, AZURE_OPENAI_ENDPOINT, AZURE_TENANT_ID,
    AZURE_TOKEN_CREDENTIALS, AzureWebJobsStorage__accountName, AzureWebJobsStorage__blobServiceUri,
    INVOCATION_MEMORY_BUDGET_MB, LOG_FORMAT, LOG_SENSITIVE_DATA, STREAM_KEEP_ALIVE_SECONDS, WEBSITE_INSTANCE_ID,
    WEBSITE_SITE_NAME,
};
pub use table::{SETTINGS, Setting};

/// `v1`: the route that serves every current model, reasoning or not (contract v2).
pub const DEFAULT_API_VERSION: &str = "v1";

/// A setting that is missing or invalid.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self { setting: setting.into(), message: message.into() }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// `FUNCTIONS_CUSTOMHANDLER_PORT`; only the server needs it (not `doctor`).
    pub port: Option<u16>,
    pub openai: OpenAiSettings,
    pub identity: IdentitySettings,
    /// host.json's `functionTimeout` and `maxDequeueCount`, shared with the host.
    pub host: HostSettings,
    pub log: LogSettings,
    /// Longest silence on a streamed answer before a `: keep-alive` comment.
    pub stream_keep_alive: Duration,
    /// The Blob service of the host's storage account (`AzureWebJobsStorage__blobServiceUri`, or
    /// from `__accountName`), ending in `/`; `None` (a connection string, e.g.
    /// `UseDevelopmentStorage=true`): `POST /api/jobs` does not read Results.
    pub blob_endpoint: Option<String>,
    /// `INVOCATION_MEMORY_BUDGET_MB`, in bytes: what large invocations may hold at once.
    pub invocation_memory_budget_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    /// Scheme, host and port, no trailing slash.
    pub endpoint: String,
    pub deployment: String,
    pub route: ApiRoute,
    pub request_timeout: Duration,
    pub max_concurrency: usize,
    /// 0 = no per-instance cap.
    pub tokens_per_minute: u64,
    /// Pace from the deployment's remaining-quota headers and 429s.
    pub adaptive_pacing: bool,
    /// The window over which the deployment counts tokens.
    pub quota_window: Duration,
    pub max_retry_wait: Duration,
    /// `AOAI_REASONING_EFFORT`; `None` = the lowest the deployment accepts, found by itself.
    pub reasoning_effort: Option<crate::openai::Effort>,
    /// `AOAI_CONTEXT_TOKENS`: the deployment's context window, when set up front.
    pub context_tokens: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRoute {
    Dated { api_version: String },
    V1,
}

impl OpenAiSettings {
    /// The chat-completions URL for the configured route.
    pub fn chat_completions_url(&self) -> String {
        match &self.route {
            ApiRoute::Dated { api_version } => format!(
                "{}/openai/deployments/{}/chat/completions?api-version={api_version}",
                self.endpoint, self.deployment
            ),
            ApiRoute::V1 => format!("{}/openai/v1/chat/completions", self.endpoint),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    ManagedIdentity,
    AzureCli,
    AzureDeveloperCli,
}

impl CredentialKind {
    /// The name the Azure SDKs use in `AZURE_TOKEN_CREDENTIALS`.
    pub fn sdk_name(self) -> &'static str {
        match self {
            Self::ManagedIdentity => "ManagedIdentityCredential",
            Self::AzureCli => "AzureCliCredential",
            Self::AzureDeveloperCli => "AzureDeveloperCliCredential",
        }
    }
}

#[derive(Debug, Clone)]
pub struct IdentitySettings {
    pub credential: CredentialKind,
    /// Why this credential was chosen, for `doctor` and the start-up log.
    pub reason: String,
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub json: bool,
    pub sensitive: bool,
    /// `WEBSITE_SITE_NAME`: the default `service.name` (Application Insights' cloud role).
    pub site_name: Option<String>,
    /// `WEBSITE_INSTANCE_ID`: the instance, exported as `service.instance.id` (Application
    /// Insights' role instance); `None`: the host name is.
    pub instance_id: Option<String>,
    /// `None`: no Application Insights export.
    pub app_insights: Option<AppInsightsSettings>,
    /// `OTEL_TRACES_SAMPLER` (+ `_ARG`): which traces are exported, and the sample rate
    /// Application Insights rescales its counts by.
    pub sampling: TraceSampling,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `get` (tests pass a map). Empty values count as absent.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let port = get("FUNCTIONS_CUSTOMHANDLER_PORT")
            .map(|v| {
                v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    ConfigError::new(
                        "FUNCTIONS_CUSTOMHANDLER_PORT",
                        format!("must be a port in 1..=65535 (got `{}`)", table::echo(&v)),
                    )
                })
            })
            .transpose()?;
        let openai = OpenAiSettings {
            endpoint: endpoint(AZURE_OPENAI_ENDPOINT.text(&get)?.unwrap_or_default())?,
            deployment: deployment(AZURE_OPENAI_DEPLOYMENT.text(&get)?.unwrap_or_default())?,
            route: route(AZURE_OPENAI_API_VERSION.text(&get)?.unwrap_or_default())?,
            request_timeout: Duration::from_secs(AOAI_REQUEST_TIMEOUT_SECONDS.whole(&get)?),
            max_concurrency: usize::try_from(AOAI_MAX_CONCURRENCY.whole(&get)?).unwrap_or(1),
            tokens_per_minute: AOAI_TOKENS_PER_MINUTE.whole(&get)?,
            adaptive_pacing: AOAI_ADAPTIVE_PACING.flag(&get)?,
            quota_window: Duration::from_secs(AOAI_QUOTA_WINDOW_SECONDS.whole(&get)?),
            max_retry_wait: Duration::from_secs(AOAI_MAX_RETRY_WAIT_SECONDS.whole(&get)?),
            reasoning_effort: AOAI_REASONING_EFFORT.one_of(&get)?.and_then(crate::openai::Effort::parse),
            // Absent reads as 0 (the table's bounds keep a set value at 1024 or more).
            context_tokens: u32::try_from(AOAI_CONTEXT_TOKENS.whole(&get)?).ok().filter(|n| *n > 0),
        };
        let identity = identity(&get)?;
        let root = get("FUNCTIONS_APP_ROOT_PATH").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        let host = HostSettings::read(&root, &get)?;
        let log = LogSettings {
            json: LOG_FORMAT.one_of(&get)? == Some("json"),
            sensitive: LOG_SENSITIVE_DATA.flag(&get)?,
            site_name: WEBSITE_SITE_NAME.text(&get)?,
            instance_id: WEBSITE_INSTANCE_ID.text(&get)?,
            app_insights: app_insights::app_insights(&get)?,
            sampling: sampling::sampling(&get)?,
        };
        let stream_keep_alive = Duration::from_secs(STREAM_KEEP_ALIVE_SECONDS.whole(&get)?);
        let blob_endpoint = blob_endpoint(&get)?;
        let invocation_memory_budget_bytes = INVOCATION_MEMORY_BUDGET_MB.whole(&get)? * 1024 * 1024;
        Ok(Self { port, openai, identity, host, log, stream_keep_alive, blob_endpoint, invocation_memory_budget_bytes })
    }
}

fn endpoint(value: String) -> Result<String, ConfigError> {
    const NAME: &str = AZURE_OPENAI_ENDPOINT.name;
    let url = reqwest::Url::parse(&value)
        .map_err(|e| ConfigError::new(NAME, format!("`{}` is not a URL ({e})", table::echo(&value))))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = matches!(host, "127.0.0.1" | "localhost" | "[::1]");
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => {
            return Err(ConfigError::new(
                NAME,
                format!(
                    "`{value}` must use https (http is accepted only for a local emulator on 127.0.0.1 or localhost): bearer tokens are never sent in clear text"
                ),
            ));
        }
    }
    if !url.path().trim_end_matches('/').is_empty() || url.query().is_some() {
        return Err(ConfigError::new(
            NAME,
            format!(
                "`{value}` must be the resource endpoint only, e.g. https://<resource>.openai.azure.com (no /openai/... path or query: the deployment and api-version have their own settings)"
            ),
        ));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// The Blob service endpoint of the identity-based storage connection, if there is one.
fn blob_endpoint(get: &impl Fn(&str) -> Option<String>) -> Result<Option<String>, ConfigError> {
    if let Some(value) = AzureWebJobsStorage__blobServiceUri.text(get)? {
        let setting = &AzureWebJobsStorage__blobServiceUri;
        let url = reqwest::Url::parse(&value).map_err(|_| setting.invalid(&value))?;
        let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        if !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) || url.query().is_some() {
            return Err(setting.invalid(&value));
        }
        let mut endpoint = url.to_string();
        if !endpoint.ends_with('/') {
            endpoint.push('/');
        }
        return Ok(Some(endpoint));
    }
    match AzureWebJobsStorage__accountName.text(get)? {
        Some(name)
            if (3..=24).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) =>
        {
            Ok(Some(format!("https://{name}.blob.core.windows.net/")))
        }
        Some(name) => Err(AzureWebJobsStorage__accountName.invalid(&name)),
        None => Ok(None),
    }
}

fn deployment(value: String) -> Result<String, ConfigError> {
    let valid = value.len() <= 64 && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(AZURE_OPENAI_DEPLOYMENT.invalid(&value));
    }
    Ok(value)
}

fn route(value: String) -> Result<ApiRoute, ConfigError> {
    if value.eq_ignore_ascii_case("v1") {
        return Ok(ApiRoute::V1);
    }
    // ASCII only, so byte positions are character positions.
    let dated = value.len() <= 32
        && value.is_ascii()
        && value.len() >= 10
        && value
            .bytes()
            .take(10)
            .enumerate()
            .all(|(i, c)| if i == 4 || i == 7 { c == b'-' } else { c.is_ascii_digit() })
        && value.bytes().skip(10).all(|c| c.is_ascii_alphanumeric() || c == b'-');
    if !dated {
        return Err(AZURE_OPENAI_API_VERSION.invalid(&value));
    }
    Ok(ApiRoute::Dated { api_version: value })
}

fn identity(get: &impl Fn(&str) -> Option<String>) -> Result<IdentitySettings, ConfigError> {
    let endpoint_present = get("IDENTITY_ENDPOINT").is_some() && get("IDENTITY_HEADER").is_some();
    let client_id = AZURE_CLIENT_ID.text(get)?;
    let tenant_id = AZURE_TENANT_ID.text(get)?;
    let (credential, reason) = match AZURE_TOKEN_CREDENTIALS.one_of(get)? {
        Some(forced) => {
            let kind = [CredentialKind::ManagedIdentity, CredentialKind::AzureCli, CredentialKind::AzureDeveloperCli]
                .into_iter()
                .find(|k| k.sdk_name() == forced)
                .ok_or_else(|| {
                    ConfigError::new(AZURE_TOKEN_CREDENTIALS.name, format!("`{forced}` has no credential"))
                })?;
            if kind == CredentialKind::ManagedIdentity && !endpoint_present {
                return Err(ConfigError::new(
                    "AZURE_TOKEN_CREDENTIALS",
                    "is ManagedIdentityCredential but IDENTITY_ENDPOINT/IDENTITY_HEADER are not set: enable the Function App's identity (Identity blade or the Bicep in infra/), or use AzureCliCredential locally",
                ));
            }
            (kind, format!("AZURE_TOKEN_CREDENTIALS={}", kind.sdk_name()))
        }
        None if endpoint_present => (
            CredentialKind::ManagedIdentity,
            "IDENTITY_ENDPOINT and IDENTITY_HEADER are set (running in Azure)".to_owned(),
        ),
        None => (
            CredentialKind::AzureCli,
            "no IDENTITY_ENDPOINT (not running in Azure): using the Azure CLI login".to_owned(),
        ),
    };
    if let Some(id) = &client_id
        && !is_guid(id)
    {
        return Err(AZURE_CLIENT_ID.invalid(id));
    }
    if let Some(tenant) = &tenant_id
        && !(tenant.len() <= 253 && tenant.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')))
    {
        return Err(AZURE_TENANT_ID.invalid(tenant));
    }
    Ok(IdentitySettings { credential, reason, client_id, tenant_id })
}

pub(crate) fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut map: HashMap<String, String> =
            [("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com"), ("AZURE_OPENAI_DEPLOYMENT", "gpt-4o-mini")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        for (k, v) in pairs {
            map.insert(k.to_string(), v.to_string());
        }
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_choose_the_v1_route_and_the_cli_off_azure() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.openai.chat_completions_url(), "https://res.openai.azure.com/openai/v1/chat/completions");
        assert_eq!(s.openai.reasoning_effort, None);
        let s = settings(&[("AZURE_OPENAI_API_VERSION", "2024-10-21"), ("AOAI_REASONING_EFFORT", "Minimal")]).unwrap();
        assert_eq!(
            s.openai.chat_completions_url(),
            "https://res.openai.azure.com/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(s.openai.reasoning_effort, Some(crate::openai::Effort::Minimal));
        assert_eq!(s.identity.credential, CredentialKind::AzureCli);
        assert_eq!(s.openai.max_concurrency, 8);
    }

    #[test]
    fn v1_route_and_managed_identity_in_azure() {
        let s = settings(&[
            ("AZURE_OPENAI_API_VERSION", "v1"),
            ("IDENTITY_ENDPOINT", "http://x"),
            ("IDENTITY_HEADER", "h"),
        ])
        .unwrap();
        assert_eq!(s.openai.chat_completions_url(), "https://res.openai.azure.com/openai/v1/chat/completions");
        assert_eq!(s.identity.credential, CredentialKind::ManagedIdentity);
    }

    #[test]
    fn errors_name_the_setting() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("AZURE_OPENAI_ENDPOINT", "")], "AZURE_OPENAI_ENDPOINT"),
            (&[("AZURE_OPENAI_ENDPOINT", "http://res.openai.azure.com")], "AZURE_OPENAI_ENDPOINT"),
            (&[("AZURE_OPENAI_ENDPOINT", "https://r.openai.azure.com/openai/deployments/x")], "AZURE_OPENAI_ENDPOINT"),
            (&[("AZURE_OPENAI_DEPLOYMENT", "a b")], "AZURE_OPENAI_DEPLOYMENT"),
            (&[("AZURE_OPENAI_API_VERSION", "latest")], "AZURE_OPENAI_API_VERSION"),
            (&[("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")], "AZURE_TOKEN_CREDENTIALS"),
            (&[("AZURE_TOKEN_CREDENTIALS", "ManagedIdentityCredential")], "AZURE_TOKEN_CREDENTIALS"),
            (&[("AZURE_CLIENT_ID", "not-a-guid")], "AZURE_CLIENT_ID"),
            (&[("AOAI_MAX_CONCURRENCY", "0")], "AOAI_MAX_CONCURRENCY"),
            (&[("LOG_FORMAT", "xml")], "LOG_FORMAT"),
            (&[("AOAI_REASONING_EFFORT", "extreme")], "AOAI_REASONING_EFFORT"),
            (&[("FUNCTIONS_CUSTOMHANDLER_PORT", "http")], "FUNCTIONS_CUSTOMHANDLER_PORT"),
        ];
        for (pairs, name) in cases {
            let err = settings(pairs).unwrap_err();
            assert_eq!(err.setting, *name, "{pairs:?} -> {err}");
        }
        let err = settings(&[("AZURE_TOKEN_CREDENTIALS", "Bogus")]).unwrap_err();
        assert!(err.message.contains("ManagedIdentityCredential, AzureCliCredential"), "{err}");
    }
}
