//! The emulator's start-up settings.

use std::time::Duration;

use crate::models::ModelProfile;

/// Start-up settings of an [`crate::Emulator`]; `Default` gives one deployment of each kind of
/// model: `gpt-4o-mini` (no reasoning), `gpt-5-mini` (reasoning, lowest effort `minimal`) and
/// `gpt-5.4-mini` (reasoning, lowest effort `none`).
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Deployment names that exist; any other answers 404 `DeploymentNotFound`.
    pub deployments: Vec<String>,
    /// The `model` reported for a deployment whose model is neither mapped nor in the catalog
    /// (a non-reasoning model).
    pub model_name: String,
    /// Deployment name -> catalog model name (`("chat", "gpt-5.4-mini")`), for deployments not
    /// named after their model. See [`crate::models`].
    pub deployment_models: Vec<(String, String)>,
    /// Lifetime of newly issued tokens (changeable later with `set_token_lifetime`).
    pub token_lifetime: Duration,
    /// The value the identity endpoint expects in `X-IDENTITY-HEADER`.
    pub identity_header: String,
    /// The Azure OpenAI resource's tenant; tokens from another tenant get a 400.
    pub resource_tenant: String,
    /// Tenant of tokens handed to the fake `az` when it passes no `--tenant`.
    pub cli_tenant: String,
    /// `None`: unlimited. `Some(n)`: every deployment's quota, n tokens per minute and 6
    /// requests per minute per 1 000 (see `crate::quota`), shared by all clients.
    pub tokens_per_minute: Option<u64>,
    /// The window over which the token estimate is counted: 60 s (Azure's documented running
    /// count, the default) admits the whole TPM per window; 10 s admits TPM / 6 per 10 s.
    /// Requests are always counted over 10 s (RPM / 6).
    pub token_window: Duration,
    /// Context windows in tokens, per deployment name; a deployment not listed has
    /// [`DEFAULT_CONTEXT_TOKENS`]. A request whose prompt plus `max_completion_tokens` exceeds
    /// its window gets 400 `context_length_exceeded`.
    pub context_tokens: Vec<(String, u64)>,
    /// The Application Insights resource's instrumentation key; items with another are refused.
    pub instrumentation_key: String,
    /// Whether track requests and accepted items are kept for `track_requests()` and
    /// `telemetry()` (tests). `false` (the bench) only counts them (`Stats::telemetry_items`):
    /// keeping thousands of items a second would cost the load generator's core.
    pub keep_telemetry: bool,
}

/// The context window of a deployment not listed in `context_tokens` (gpt-4o's).
pub const DEFAULT_CONTEXT_TOKENS: u64 = 128_000;

impl EmulatorConfig {
    /// The context window of `deployment`, in tokens.
    pub fn context_window(&self, deployment: &str) -> u64 {
        self.context_tokens.iter().find(|(name, _)| name == deployment).map_or(DEFAULT_CONTEXT_TOKENS, |(_, n)| *n)
    }
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        let tenant = "11111111-1111-1111-1111-111111111111".to_owned();
        Self {
            port: 0,
            deployments: vec!["gpt-4o-mini".into(), "gpt-5-mini".into(), "gpt-5.4-mini".into()],
            model_name: "gpt-4o-mini-2024-07-18".into(),
            deployment_models: Vec::new(),
            token_lifetime: Duration::from_secs(3600),
            identity_header: "emulator-identity-header".into(),
            resource_tenant: tenant.clone(),
            cli_tenant: tenant,
            tokens_per_minute: None,
            token_window: Duration::from_secs(60),
            context_tokens: Vec::new(),
            instrumentation_key: "00000000-0000-4000-8000-0000000a1b2c".into(),
            keep_telemetry: true,
        }
    }
}

impl EmulatorConfig {
    /// The model behind `deployment`: an explicit mapping, else the catalog model of that name,
    /// else a non-reasoning model reported as `model_name`.
    pub fn model_of(&self, deployment: &str) -> ModelProfile {
        match self.deployment_models.iter().find(|(d, _)| d == deployment) {
            Some((_, model)) => ModelProfile::known(model).unwrap_or_else(|| ModelProfile::plain(model)),
            None => ModelProfile::known(deployment).unwrap_or_else(|| ModelProfile::plain(&self.model_name)),
        }
    }
}
