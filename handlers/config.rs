//! Settings: read once at start-up from the environment (app settings in Azure,
//! `local.settings.json` `Values` under `func start`) into typed structs.
//!
//! Every setting the binary reads is listed in [`SETTINGS`], which the README table, the
//! Bicep app settings and `local.settings.json.example` are checked against. A missing or
//! invalid setting fails start-up with one line naming it.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Documentation of one setting the binary reads.
#[derive(Debug, Clone, Copy)]
pub struct SettingDoc {
    pub name: &'static str,
    pub required: bool,
    pub default: Option<&'static str>,
    pub description: &'static str,
}

const fn doc(
    name: &'static str,
    required: bool,
    default: Option<&'static str>,
    description: &'static str,
) -> SettingDoc {
    SettingDoc { name, required, default, description }
}

/// Every setting the binary reads (the host-provided `FUNCTIONS_CUSTOMHANDLER_PORT` and the
/// identity endpoint variables the platform sets are not listed: nobody configures them).
pub const SETTINGS: &[SettingDoc] = &[
    doc(
        "AZURE_OPENAI_ENDPOINT",
        true,
        None,
        "https://<resource>.openai.azure.com (http only for a 127.0.0.1/localhost emulator)",
    ),
    doc("AZURE_OPENAI_DEPLOYMENT", true, None, "deployment name, used as `model` and in the request path"),
    doc(
        "AZURE_OPENAI_API_VERSION",
        false,
        Some(DEFAULT_API_VERSION),
        "dated api-version for /openai/deployments/...; `v1` selects /openai/v1/chat/completions",
    ),
    doc("AZURE_CLIENT_ID", false, None, "client id of a user-assigned managed identity; absent = system-assigned"),
    doc(
        "AZURE_TOKEN_CREDENTIALS",
        false,
        None,
        "force one credential: ManagedIdentityCredential, AzureCliCredential or AzureDeveloperCliCredential; absent = managed identity when IDENTITY_ENDPOINT is set, else Azure CLI",
    ),
    doc(
        "AZURE_TENANT_ID",
        false,
        None,
        "tenant passed to the Azure CLI / azd credential (fixes \"token tenant does not match resource tenant\")",
    ),
    doc("AOAI_MAX_CONCURRENCY", false, Some("8"), "Azure OpenAI calls in flight per instance (1..=256)"),
    doc(
        "AOAI_TOKENS_PER_MINUTE",
        false,
        Some("0"),
        "optional cap per instance, tokens per minute (prompt estimate + max completion tokens), for an app sharing the deployment with other apps; 0 = none (instances pace themselves to the deployment's remaining quota)",
    ),
    doc(
        "AOAI_ADAPTIVE_PACING",
        false,
        Some("true"),
        "pace each instance from the deployment's remaining-quota headers and 429s, so a fleet shares it; false = only the cap and 429s (for comparison)",
    ),
    doc(
        "AOAI_QUOTA_WINDOW_SECONDS",
        false,
        Some("60"),
        "the window over which the deployment counts tokens (Azure: a minute); another value only for an emulator with a shorter one (1..=60)",
    ),
    doc("AOAI_REQUEST_TIMEOUT_SECONDS", false, Some("60"), "timeout of one Azure OpenAI request (1..=600)"),
    doc(
        "AOAI_MAX_RETRY_WAIT_SECONDS",
        false,
        Some("30"),
        "longest single wait honoured from retry-after headers or backoff (1..=600)",
    ),
    doc("LOG_FORMAT", false, Some("text"), "`text` (human-readable) or `json` (one JSON object per line) on stdout"),
    doc(
        "LOG_SENSITIVE_DATA",
        false,
        Some("false"),
        "`true` logs prompt and completion text for debugging; never in production",
    ),
    doc(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        false,
        None,
        "OTLP/HTTP collector base URL; absent = no export (the other standard OTEL_* variables apply)",
    ),
];

pub const DEFAULT_API_VERSION: &str = "2024-10-21";
const DEFAULT_MAX_DEQUEUE_COUNT: u32 = 5;
/// Consumption's default `functionTimeout`; the safest assumption when host.json says nothing.
const DEFAULT_FUNCTION_TIMEOUT: Duration = Duration::from_secs(300);

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
    pub queue: QueueSettings,
    pub log: LogSettings,
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
pub struct QueueSettings {
    /// `extensions.queues.maxDequeueCount`: the delivery on which a failed Result is written.
    pub max_dequeue_count: u32,
    /// `functionTimeout`: the host kills the whole process past it.
    pub function_timeout: Duration,
}

impl QueueSettings {
    /// Time one invocation may spend: the function timeout less a margin for writing outputs.
    pub fn invocation_budget(&self) -> Duration {
        let margin = (self.function_timeout / 10).clamp(Duration::from_secs(2), Duration::from_secs(30));
        self.function_timeout.saturating_sub(margin)
    }
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub json: bool,
    pub sensitive: bool,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `get` (tests pass a map). Empty values count as absent.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let port = get("FUNCTIONS_CUSTOMHANDLER_PORT")
            .map(|v| parse_in::<u16>("FUNCTIONS_CUSTOMHANDLER_PORT", &v, 1, u16::MAX))
            .transpose()?;
        let openai = OpenAiSettings {
            endpoint: endpoint(get("AZURE_OPENAI_ENDPOINT"))?,
            deployment: deployment(get("AZURE_OPENAI_DEPLOYMENT"))?,
            route: route(get("AZURE_OPENAI_API_VERSION"))?,
            request_timeout: secs(&get, "AOAI_REQUEST_TIMEOUT_SECONDS", 60, 1, 600)?,
            max_concurrency: number(&get, "AOAI_MAX_CONCURRENCY", 8, 1, 256)? as usize,
            tokens_per_minute: number(&get, "AOAI_TOKENS_PER_MINUTE", 0, 0, 100_000_000)?,
            adaptive_pacing: get("AOAI_ADAPTIVE_PACING").is_none() || flag(&get, "AOAI_ADAPTIVE_PACING")?,
            quota_window: secs(&get, "AOAI_QUOTA_WINDOW_SECONDS", 60, 1, 60)?,
            max_retry_wait: secs(&get, "AOAI_MAX_RETRY_WAIT_SECONDS", 30, 1, 600)?,
        };
        let identity = identity(&get)?;
        let queue = queue(&get)?;
        let log = LogSettings {
            json: match get("LOG_FORMAT").as_deref() {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => {
                    return Err(ConfigError::new("LOG_FORMAT", format!("must be `text` or `json` (got `{other}`)")));
                }
            },
            sensitive: flag(&get, "LOG_SENSITIVE_DATA")?,
        };
        Ok(Self { port, openai, identity, queue, log })
    }
}

fn endpoint(value: Option<String>) -> Result<String, ConfigError> {
    const NAME: &str = "AZURE_OPENAI_ENDPOINT";
    let value =
        value.ok_or_else(|| ConfigError::new(NAME, "is required: set it to https://<resource>.openai.azure.com"))?;
    let url =
        reqwest::Url::parse(&value).map_err(|e| ConfigError::new(NAME, format!("`{value}` is not a URL ({e})")))?;
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

fn deployment(value: Option<String>) -> Result<String, ConfigError> {
    const NAME: &str = "AZURE_OPENAI_DEPLOYMENT";
    let value =
        value.ok_or_else(|| ConfigError::new(NAME, "is required: set it to the name of your chat model deployment"))?;
    let valid = value.len() <= 64 && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(ConfigError::new(
            NAME,
            format!("`{value}` is not a deployment name (1..=64 of letters, digits, `-`, `_`, `.`)"),
        ));
    }
    Ok(value)
}

fn route(value: Option<String>) -> Result<ApiRoute, ConfigError> {
    let Some(value) = value else {
        return Ok(ApiRoute::Dated { api_version: DEFAULT_API_VERSION.to_owned() });
    };
    if value.eq_ignore_ascii_case("v1") {
        return Ok(ApiRoute::V1);
    }
    let dated = value.len() >= 10
        && value[..10].chars().enumerate().all(|(i, c)| if i == 4 || i == 7 { c == '-' } else { c.is_ascii_digit() })
        && value[10..].chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !dated {
        return Err(ConfigError::new(
            "AZURE_OPENAI_API_VERSION",
            format!("`{value}` is neither a dated api-version like {DEFAULT_API_VERSION} nor `v1`"),
        ));
    }
    Ok(ApiRoute::Dated { api_version: value })
}

fn identity(get: &impl Fn(&str) -> Option<String>) -> Result<IdentitySettings, ConfigError> {
    let endpoint_present = get("IDENTITY_ENDPOINT").is_some() && get("IDENTITY_HEADER").is_some();
    let client_id = get("AZURE_CLIENT_ID");
    let tenant_id = get("AZURE_TENANT_ID");
    let (credential, reason) = match get("AZURE_TOKEN_CREDENTIALS") {
        Some(forced) => {
            let kind = [CredentialKind::ManagedIdentity, CredentialKind::AzureCli, CredentialKind::AzureDeveloperCli]
                .into_iter()
                .find(|k| k.sdk_name().eq_ignore_ascii_case(&forced))
                .ok_or_else(|| {
                    ConfigError::new(
                        "AZURE_TOKEN_CREDENTIALS",
                        format!("`{forced}` is not supported; allowed values: ManagedIdentityCredential, AzureCliCredential, AzureDeveloperCliCredential (or leave it unset to choose automatically)"),
                    )
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
        return Err(ConfigError::new("AZURE_CLIENT_ID", format!("`{id}` is not a client id (a GUID)")));
    }
    if let Some(tenant) = &tenant_id
        && !tenant.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
    {
        return Err(ConfigError::new("AZURE_TENANT_ID", format!("`{tenant}` is not a tenant id or domain")));
    }
    Ok(IdentitySettings { credential, reason, client_id, tenant_id })
}

fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `maxDequeueCount` and `functionTimeout` come from host.json (the same file the host reads),
/// overridable like the host's own settings (`AzureFunctionsJobHost__...`).
fn queue(get: &impl Fn(&str) -> Option<String>) -> Result<QueueSettings, ConfigError> {
    let root = get("FUNCTIONS_APP_ROOT_PATH").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let host = read_host_json(&root.join("host.json"))?;
    const DEQUEUE: &str = "AzureFunctionsJobHost__extensions__queues__maxDequeueCount";
    let max_dequeue_count = match get(DEQUEUE) {
        Some(v) => parse_in(DEQUEUE, &v, 1, 1000)?,
        None => match host.pointer("/extensions/queues/maxDequeueCount") {
            None => DEFAULT_MAX_DEQUEUE_COUNT,
            Some(v) => v.as_u64().filter(|n| (1..=1000).contains(n)).map(|n| n as u32).ok_or_else(|| {
                ConfigError::new("host.json extensions.queues.maxDequeueCount", format!("must be 1..=1000 (got {v})"))
            })?,
        },
    };
    const TIMEOUT: &str = "AzureFunctionsJobHost__functionTimeout";
    let function_timeout = match get(TIMEOUT) {
        Some(v) => timespan(TIMEOUT, &v)?,
        None => match host.get("functionTimeout").and_then(|v| v.as_str()) {
            Some(v) => timespan("host.json functionTimeout", v)?,
            None => DEFAULT_FUNCTION_TIMEOUT,
        },
    };
    Ok(QueueSettings { max_dequeue_count, function_timeout })
}

fn read_host_json(path: &Path) -> Result<serde_json::Value, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| ConfigError::new("host.json", format!("{} is not valid JSON: {e}", path.display()))),
        Err(_) => Ok(serde_json::Value::Null),
    }
}

/// A .NET TimeSpan as host.json writes it: `hh:mm:ss` or `d.hh:mm:ss`; `-1` means unbounded.
fn timespan(name: &str, value: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::new(name, format!("`{value}` is not a time span like 00:10:00"));
    if value == "-1" {
        return Ok(Duration::from_secs(24 * 3600));
    }
    let (days, rest) = match value.split_once('.') {
        Some((d, rest)) if rest.contains(':') && !d.contains(':') => (d.parse::<u64>().map_err(|_| bad())?, rest),
        _ => (0, value),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let [h, m, s] = parts.as_slice() else { return Err(bad()) };
    let h: u64 = h.parse().map_err(|_| bad())?;
    let m: u64 = m.parse().map_err(|_| bad())?;
    let s: f64 = s.parse().map_err(|_| bad())?;
    let total = Duration::from_secs(days * 86_400 + h * 3600 + m * 60) + Duration::from_secs_f64(s);
    if total.is_zero() {
        return Err(bad());
    }
    Ok(total)
}

fn parse_in<T>(name: &str, value: &str, min: T, max: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    value
        .parse::<T>()
        .ok()
        .filter(|v| *v >= min && *v <= max)
        .ok_or_else(|| ConfigError::new(name, format!("must be a whole number in {min}..={max} (got `{value}`)")))
}

fn number(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    get(name).map_or(Ok(default), |v| parse_in(name, &v, min, max))
}

fn secs(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    number(get, name, default, min, max).map(Duration::from_secs)
}

fn flag(get: &impl Fn(&str) -> Option<String>, name: &str) -> Result<bool, ConfigError> {
    match get(name).map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("false" | "0" | "no") => Ok(false),
        Some("true" | "1" | "yes") => Ok(true),
        Some(other) => Err(ConfigError::new(name, format!("must be true or false (got `{other}`)"))),
    }
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
    fn defaults_choose_the_dated_route_and_the_cli_off_azure() {
        let s = settings(&[]).unwrap();
        assert_eq!(
            s.openai.chat_completions_url(),
            "https://res.openai.azure.com/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
        );
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
            (&[("FUNCTIONS_CUSTOMHANDLER_PORT", "http")], "FUNCTIONS_CUSTOMHANDLER_PORT"),
        ];
        for (pairs, name) in cases {
            let err = settings(pairs).unwrap_err();
            assert_eq!(err.setting, *name, "{pairs:?} -> {err}");
        }
        let err = settings(&[("AZURE_TOKEN_CREDENTIALS", "Bogus")]).unwrap_err();
        assert!(err.message.contains("ManagedIdentityCredential, AzureCliCredential"), "{err}");
    }

    #[test]
    fn timespans_parse_like_host_json() {
        assert_eq!(timespan("t", "00:10:00").unwrap(), Duration::from_secs(600));
        assert_eq!(timespan("t", "1.00:00:30").unwrap(), Duration::from_secs(86_430));
        assert!(timespan("t", "ten").is_err());
        let q = QueueSettings { max_dequeue_count: 5, function_timeout: Duration::from_secs(600) };
        assert_eq!(q.invocation_budget(), Duration::from_secs(570));
    }
}
