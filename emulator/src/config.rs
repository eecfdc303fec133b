//! The emulator's start-up settings.

use std::time::Duration;

/// Start-up settings of an [`crate::Emulator`]; `Default` gives a single `gpt-4o-mini` deployment.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Deployment names that exist; any other answers 404 `DeploymentNotFound`.
    pub deployments: Vec<String>,
    /// The `model` reported in chat completions.
    pub model_name: String,
    /// Lifetime of newly issued tokens (changeable later with `set_token_lifetime`).
    pub token_lifetime: Duration,
    /// The value the identity endpoint expects in `X-IDENTITY-HEADER`.
    pub identity_header: String,
    /// The Azure OpenAI resource's tenant; tokens from another tenant get a 400.
    pub resource_tenant: String,
    /// Tenant of tokens handed to the fake `az` when it passes no `--tenant`.
    pub cli_tenant: String,
    /// `None`: unlimited. `Some(n)`: a tokens-per-minute budget over a sliding 60 s window.
    pub tokens_per_minute: Option<u64>,
    /// Context windows in tokens, per deployment name; a deployment not listed has
    /// [`DEFAULT_CONTEXT_TOKENS`]. A request whose prompt plus `max_completion_tokens` exceeds
    /// its window gets 400 `context_length_exceeded`.
    pub context_tokens: Vec<(String, u64)>,
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
            deployments: vec!["gpt-4o-mini".into()],
            model_name: "gpt-4o-mini-2024-07-18".into(),
            token_lifetime: Duration::from_secs(3600),
            identity_header: "emulator-identity-header".into(),
            resource_tenant: tenant.clone(),
            cli_tenant: tenant,
            tokens_per_minute: None,
            context_tokens: Vec::new(),
        }
    }
}
