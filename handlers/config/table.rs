//! The settings table: every setting the handler reads, declared once with its name, kind
//! (and so its bounds), default and meaning. Parsing (`config/mod.rs`), `handler doctor`,
//! `local.settings.json.example` and the settings table in `docs/settings.md` all come from
//! here; `tests/settings_table.rs` checks the two files against it.
//!
//! Adding a setting is one row in [`settings!`] below, then reading it where it is used
//! (`FOO.whole(&get)?`, `FOO.flag(&get)?`, ...).

use std::fmt::Write as _;

use super::ConfigError;

/// What a setting's value may be; the parse methods of [`Setting`] enforce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text whose form `allowed` describes; its reader in `config/mod.rs` checks it.
    Text { allowed: &'static str },
    /// A whole number in `min..=max`.
    Whole { min: u64, max: u64 },
    /// `true` or `false` (also `1`/`0`, `yes`/`no`).
    Flag,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A .NET time span as host.json writes it (`hh:mm:ss`, `d.hh:mm:ss`), `min..=max` seconds,
    /// or `-1` for unbounded.
    TimeSpan { min_secs: u64, max_secs: u64 },
    /// Read by a library (tracing's filter, the OpenTelemetry SDK), not by the handler's parser.
    Library { allowed: &'static str },
}

/// Where the value comes from when the setting is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absent {
    /// Start-up fails; `local.settings.json.example` shows this placeholder.
    Required { example: &'static str },
    /// This value.
    Default(&'static str),
    /// Nothing: the feature is off or chosen automatically, as said here.
    Off(&'static str),
    /// host.json's value at this path: the setting is the host's own override
    /// (`AzureFunctionsJobHost__...`), so it is in neither the example file nor the Bicep.
    HostJson(&'static str),
    /// Part of the Functions host's identity-based storage connection (`AzureWebJobsStorage__*`),
    /// which the deployment sets; absent (e.g. `AzureWebJobsStorage=UseDevelopmentStorage=true`)
    /// it means what is said here. In neither the example file nor the settings the handler adds.
    Connection(&'static str),
}

/// One setting the handler reads.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    pub kind: Kind,
    pub absent: Absent,
    pub meaning: &'static str,
}

/// Declares each setting as a constant named like it, and [`SETTINGS`], the list of all of them
/// in table order.
macro_rules! settings {
    ($($name:ident: $kind:expr, $absent:expr, $meaning:literal;)*) => {
        $(
            #[allow(non_upper_case_globals)]
            pub const $name: Setting = Setting { name: stringify!($name), kind: $kind, absent: $absent, meaning: $meaning };
        )*
        /// Every setting the handler reads, in the order the docs list them (the host-provided
        /// `FUNCTIONS_CUSTOMHANDLER_PORT`, `FUNCTIONS_APP_ROOT_PATH` and the platform's
        /// `IDENTITY_ENDPOINT`/`IDENTITY_HEADER` are not listed: nobody configures them).
        pub const SETTINGS: &[Setting] = &[$($name),*];
    };
}

use Absent::{Connection, Default, HostJson, Off, Required};
use Kind::{Flag, Library, OneOf, Text, TimeSpan, Whole};

settings! {
    AZURE_OPENAI_ENDPOINT: Text { allowed: "an https URL, no path (http only for 127.0.0.1/localhost)" },
        Required { example: "https://<your-resource>.openai.azure.com" },
        "the Azure OpenAI resource endpoint, `https://<resource>.openai.azure.com`";
    AZURE_OPENAI_DEPLOYMENT: Text { allowed: "1..=64 of letters, digits, `-`, `_`, `.`" },
        Required { example: "gpt-5.4-mini" },
        "deployment name, used in the path (dated route) or as `model` (v1 route)";
    AZURE_OPENAI_API_VERSION: Text { allowed: "a dated api-version (`YYYY-MM-DD[-preview]`) or `v1`" },
        Default(super::DEFAULT_API_VERSION),
        "`v1` selects `/openai/v1/chat/completions`, which serves every current model; a dated api-version selects `/openai/deployments/...` (reasoning models need `2024-12-01-preview` or later)";
    AZURE_CLIENT_ID: Text { allowed: "a GUID" },
        Off("none"),
        "client id of a user-assigned managed identity; absent = system-assigned";
    AZURE_TOKEN_CREDENTIALS: OneOf(&["ManagedIdentityCredential", "AzureCliCredential", "AzureDeveloperCliCredential"]),
        Off("automatic"),
        "force one credential; automatic = managed identity when `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` are set (Azure sets them), else the Azure CLI";
    AZURE_TENANT_ID: Text { allowed: "a tenant id or domain" },
        Off("none"),
        "tenant for the Azure CLI / azd credential (fixes \"token tenant does not match resource tenant\")";
    AOAI_REASONING_EFFORT: OneOf(&["none", "minimal", "low", "medium", "high"]),
        Off("the lowest the deployment accepts"),
        "`reasoning_effort` for reasoning models (gpt-5 family); absent = the lowest effort the deployment accepts, found on the first call and remembered (nothing is sent to models that do not reason); see docs/troubleshooting.md";
    AOAI_MAX_CONCURRENCY: Whole { min: 1, max: 256 },
        Default("8"),
        "Azure OpenAI calls in flight per instance";
    AOAI_TOKENS_PER_MINUTE: Whole { min: 0, max: 100_000_000 },
        Default("0"),
        "optional cap per instance, tokens per minute (prompt characters / 4 + max completion tokens), for an app sharing the deployment with other apps; 0 = none (the instances pace themselves to the deployment, docs/operations.md)";
    AOAI_ADAPTIVE_PACING: Flag,
        Default("true"),
        "pace each instance from the deployment's remaining-quota headers and 429s, so a fleet shares it; `false` = only the cap and 429s (for comparison)";
    AOAI_QUOTA_WINDOW_SECONDS: Whole { min: 1, max: 60 },
        Default("60"),
        "the window over which the deployment counts tokens (Azure: a minute); another value only for an emulator with a shorter one";
    AOAI_REQUEST_TIMEOUT_SECONDS: Whole { min: 1, max: 600 },
        Default("60"),
        "timeout of one Azure OpenAI request";
    AOAI_MAX_RETRY_WAIT_SECONDS: Whole { min: 1, max: 600 },
        Default("30"),
        "longest single wait honoured from a retry hint or backoff";
    STREAM_KEEP_ALIVE_SECONDS: Whole { min: 1, max: 120 },
        Default("15"),
        "longest silence on a streamed answer (`\"stream\": true`) before a `: keep-alive` comment; one sent before the first text commits the 200, so a later failure is an `event: error` (docs/streaming.md)";
    AOAI_CONTEXT_TOKENS: Whole { min: 1024, max: 10_000_000 },
        Off("learned"),
        "the deployment's context window in tokens; absent = learned from the service's `context_length_exceeded` answers (docs/long-documents.md)";
    INVOCATION_MEMORY_BUDGET_MB: Whole { min: 16, max: 65_536 },
        Default("512"),
        "memory the large invocations (batch submits and PUTs over 1 MiB) may hold at once, each counted as twice its body (a 1 000-job submit of 44 MB: 94 MB); more wait their turn within their deadline, then get 503 `server_busy`. About a quarter of the instance's memory (docs/reliability.md)";
    LOG_FORMAT: OneOf(&["text", "json"]),
        Default("text"),
        "`text` (human-readable) or `json` (one JSON object per line) on stdout";
    LOG_SENSITIVE_DATA: Flag,
        Default("false"),
        "`true` adds prompt and completion text to debug telemetry; never in production";
    OTEL_EXPORTER_OTLP_ENDPOINT: Library { allowed: "an http(s) URL" },
        Off("no export"),
        "OTLP/HTTP collector base URL (the other standard `OTEL_*` variables apply; see docs/observability.md)";
    APPLICATIONINSIGHTS_CONNECTION_STRING: Text { allowed: "an Application Insights connection string (`InstrumentationKey=...;IngestionEndpoint=https://...`)" },
        Off("no export"),
        "the handler exports its traces and metrics to Application Insights (`POST {IngestionEndpoint}/v2.1/track`); the host reads it too";
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: Text { allowed: "`Authorization=AAD` or `ClientId=<client-id>;Authorization=AAD`" },
        Off("instrumentation key only"),
        "exports carry an Entra token for `https://monitor.azure.com` from the app's identity (`ClientId` = a user-assigned one), never the key alone; needs the role Monitoring Metrics Publisher";
    WEBSITE_SITE_NAME: Text { allowed: "the Function App's name (set by the platform)" },
        Off("`keyless-jobs`"),
        "exported as `service.name`, Application Insights' cloud role (`OTEL_SERVICE_NAME` wins)";
    WEBSITE_INSTANCE_ID: Text { allowed: "the instance's id (set by the platform)" },
        Off("the host name"),
        "exported as `service.instance.id`, Application Insights' role instance";
    OTEL_TRACES_SAMPLER: OneOf(&["always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio", "microsoft.rate_limited", "microsoft.fixed_percentage"]),
        Off("`microsoft.rate_limited` (5 traces per second) with Application Insights export, as the Azure Monitor distros do; else `parentbased_always_on` (every trace)"),
        "which traces are exported (OTLP and Application Insights); every kept item tells Application Insights its sample rate, so the portal rescales its counts";
    OTEL_TRACES_SAMPLER_ARG: Text { allowed: "a number in 0..=1 (ratio samplers, `microsoft.fixed_percentage`), or traces per second >= 0 (`microsoft.rate_limited`)" },
        Off("1.0; 5 for `microsoft.rate_limited`"),
        "the share of traces kept, or the traces kept per second per instance";
    RUST_LOG: Library { allowed: "a tracing filter, e.g. `info,handler=debug`" },
        Default("info"),
        "log filter; it also filters which spans and events are exported";
    AzureWebJobsStorage__blobServiceUri: Text { allowed: "the storage account's blob endpoint, `https://<account>.blob.core.windows.net/` (http only for 127.0.0.1/localhost)" },
        Connection("no Result check at submit"),
        "the host's identity-based storage connection (the Bicep sets it); `POST /api/jobs` reads `results/{id}.json` there with the app's identity to answer 409 for an id used by another input (docs/reliability.md)";
    AzureWebJobsStorage__accountName: Text { allowed: "a storage account name (3..=24 lower-case letters and digits)" },
        Connection("no Result check at submit"),
        "the other form of the host's storage connection: the blob endpoint is `https://<name>.blob.core.windows.net/` (`__blobServiceUri` wins)";
    AzureFunctionsJobHost__extensions__queues__maxDequeueCount: Whole { min: 1, max: 1000 },
        HostJson("extensions.queues.maxDequeueCount"),
        "the host's own override; the handler reads the same value to know the last delivery";
    AzureFunctionsJobHost__functionTimeout: TimeSpan { min_secs: 1, max_secs: super::host_json::MAX_FUNCTION_TIMEOUT_SECS },
        HostJson("functionTimeout"),
        "the host's own override; the handler reads the same value for its time budget";
}

impl Setting {
    /// Whether start-up fails without it.
    pub const fn required(&self) -> bool {
        matches!(self.absent, Required { .. })
    }

    /// The value `local.settings.json.example` shows; `None` for host.json overrides.
    pub fn example(&self) -> Option<&'static str> {
        match self.absent {
            Required { example } => Some(example),
            Default(value) => Some(value),
            Off(_) => Some(""),
            HostJson(_) | Connection(_) => None,
        }
    }

    /// What the value may be, as the docs and error messages say it.
    pub fn allowed(&self) -> String {
        match self.kind {
            Text { allowed } | Library { allowed } => allowed.to_owned(),
            Whole { min, max } => format!("a whole number in {min}..={max}"),
            Flag => "`true` or `false`".to_owned(),
            OneOf(words) => format!("one of {}", words.join(", ")),
            TimeSpan { min_secs, max_secs } => format!(
                "a time span {}..={} (`hh:mm:ss` or `d.hh:mm:ss`), or `-1` (no limit)",
                super::host_json::format_timespan(min_secs),
                super::host_json::format_timespan(max_secs)
            ),
        }
    }

    /// The error for a value outside [`Self::allowed`]: one line naming the setting.
    pub fn invalid(&self, value: &str) -> ConfigError {
        ConfigError::new(self.name, format!("must be {} (got `{}`)", self.allowed(), echo(value)))
    }

    /// A [`Kind::Whole`] setting: its value, or its default when absent.
    pub fn whole(&self, get: &impl Fn(&str) -> Option<String>) -> Result<u64, ConfigError> {
        let Whole { min, max } = self.kind else { unreachable!("{} is not a whole number", self.name) };
        match get(self.name) {
            Some(value) => {
                value.parse::<u64>().ok().filter(|v| (min..=max).contains(v)).ok_or_else(|| self.invalid(&value))
            }
            None => self.default_whole(),
        }
    }

    /// A [`Kind::Flag`] setting.
    pub fn flag(&self, get: &impl Fn(&str) -> Option<String>) -> Result<bool, ConfigError> {
        let value = get(self.name).or_else(|| self.default_text().map(str::to_owned)).unwrap_or_default();
        match value.to_ascii_lowercase().as_str() {
            "" | "false" | "0" | "no" => Ok(false),
            "true" | "1" | "yes" => Ok(true),
            _ => Err(self.invalid(&value)),
        }
    }

    /// A [`Kind::OneOf`] setting: the word as declared (matched case-insensitively), or the
    /// default, or `None` when absent without one.
    pub fn one_of(&self, get: &impl Fn(&str) -> Option<String>) -> Result<Option<&'static str>, ConfigError> {
        let OneOf(words) = self.kind else { unreachable!("{} is not a choice", self.name) };
        match get(self.name) {
            Some(value) => words
                .iter()
                .find(|w| w.eq_ignore_ascii_case(&value))
                .copied()
                .map(Some)
                .ok_or_else(|| self.invalid(&value)),
            None => Ok(self.default_text()),
        }
    }

    /// A [`Kind::Text`] setting: the value, or the default; its reader checks the form.
    pub fn text(&self, get: &impl Fn(&str) -> Option<String>) -> Result<Option<String>, ConfigError> {
        match (get(self.name), self.absent) {
            (Some(value), _) => Ok(Some(value)),
            (None, Required { .. }) => {
                Err(ConfigError::new(self.name, format!("is required: set it to {}", self.allowed())))
            }
            (None, _) => Ok(self.default_text().map(str::to_owned)),
        }
    }

    fn default_text(&self) -> Option<&'static str> {
        match self.absent {
            Default(value) => Some(value),
            _ => None,
        }
    }

    fn default_whole(&self) -> Result<u64, ConfigError> {
        let default = self.default_text().unwrap_or("0");
        default
            .parse()
            .map_err(|_| ConfigError::new(self.name, format!("the declared default `{default}` is not a number")))
    }
}

/// A user's value inside an error message: at most 100 characters, control characters escaped.
pub(crate) fn echo(value: &str) -> String {
    let mut out: String = value.chars().take(100).flat_map(char::escape_debug).collect();
    if value.chars().count() > 100 {
        out.push('…');
    }
    out
}

/// The settings table of `docs/settings.md`, generated from [`SETTINGS`].
pub fn markdown_table() -> String {
    let mut out = String::from("| setting | default | allowed | meaning |\n|---|---|---|---|\n");
    for s in SETTINGS {
        let default = match s.absent {
            Required { .. } => "required".to_owned(),
            Default(value) => format!("`{value}`"),
            Off(what) => what.to_owned(),
            HostJson(path) => format!("host.json `{path}`"),
            Connection(what) => format!("storage connection; absent: {what}"),
        };
        let _ = writeln!(out, "| `{}` | {default} | {} | {} |", s.name, s.allowed().replace('|', "\\|"), s.meaning);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_is_an_allowed_value_and_every_row_says_what_it_means() {
        for s in SETTINGS {
            assert!(!s.meaning.is_empty() && !s.allowed().is_empty(), "{}", s.name);
            let get = |_: &str| None;
            match s.kind {
                Whole { .. } => assert!(s.whole(&get).is_ok(), "{}", s.name),
                Flag => assert!(s.flag(&get).is_ok(), "{}", s.name),
                OneOf(_) => assert!(s.one_of(&get).is_ok(), "{}", s.name),
                _ => {}
            }
            if let Default(value) = s.absent {
                let set = |_: &str| Some(value.to_owned());
                let ok = match s.kind {
                    Whole { .. } => s.whole(&set).is_ok(),
                    Flag => s.flag(&set).is_ok(),
                    OneOf(_) => s.one_of(&set).is_ok(),
                    _ => true,
                };
                assert!(ok, "{}: default `{value}` is not allowed", s.name);
            }
        }
    }

    #[test]
    fn echoed_values_are_truncated_and_escaped() {
        assert_eq!(echo("a\nb"), "a\\nb");
        assert_eq!(echo(&"é".repeat(150)).chars().count(), 101);
    }
}
