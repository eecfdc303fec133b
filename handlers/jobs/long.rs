//! What long documents share, summaries and classifications alike: how many tokens of text one
//! call may carry, the parallel "map" over the parts, and planning again when the service
//! taught the client a smaller context window mid-way.
//!
//! A text goes in one call when it fits the window (the usual case: `parts` is 1). Otherwise
//! it is split ([`super::split`]) into balanced parts that each leave room for the system
//! prompt and the answer, and the parts are sent concurrently; the client's pacer bounds the
//! calls in flight (`AOAI_MAX_CONCURRENCY`) and the tokens per minute, like any other calls.

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;

use crate::error::ApiError;
use crate::openai::context::estimated_tokens;
use crate::openai::{ChatRequest, Completion, OpenAiClient, Usage};

/// Times a job plans again after the service refused a part as too long (each refusal teaches
/// a smaller window or a larger token ratio, so one is nearly always enough).
pub const MAX_REPLANS: u32 = 3;
/// Estimated tokens per message for the chat format's framing, and a floor for the text.
const FRAMING_TOKENS: usize = 32;
const MIN_TEXT_TOKENS: usize = 256;

/// Estimated tokens of text one call may carry beside `system` and an answer of up to
/// `max_completion` tokens: the window less both, less 10 % for the estimate's spread, scaled
/// by what refusals taught about the estimate.
pub fn text_budget(client: &OpenAiClient, system: &str, max_completion: u32) -> Result<usize, ApiError> {
    let window = client.context().tokens() as usize;
    // The client adds room for a reasoning model's hidden reasoning to every budget.
    let completion = max_completion as usize + client.reasoning_reserve() as usize;
    let fixed = estimated_tokens(system) + completion + FRAMING_TOKENS;
    let room = (window.saturating_sub(fixed) as f64 * 0.9 / client.context().ratio()) as usize;
    if room < MIN_TEXT_TOKENS {
        return Err(ApiError::Configuration {
            message: format!(
                "deployment `{}` has a context window of {window} tokens, too small for this request's instructions and answer ({fixed} tokens) plus text; use a deployment with a larger window or check AOAI_CONTEXT_TOKENS",
                client.deployment()
            ),
        });
    }
    Ok(room)
}

/// The deadline for the map rounds: four fifths of what is left, so the final call keeps time.
pub fn map_deadline(deadline: Instant) -> Instant {
    let left = deadline.saturating_duration_since(Instant::now());
    Instant::now() + left.mul_f64(0.8).max(Duration::from_millis(1))
}

/// Sends every request concurrently (the pacer admits them) and returns the completions in
/// order, adding their usage to `usage`. The first failure cancels the calls still running.
pub async fn map(
    client: &OpenAiClient,
    requests: Vec<ChatRequest>,
    deadline: Instant,
    usage: &mut Usage,
) -> Result<Vec<Completion>, ApiError> {
    let calls = requests.into_iter().map(|request| async move { client.complete(&request, deadline).await });
    let completions = try_join_all(calls).await?;
    for completion in &completions {
        usage.add(&completion.usage);
    }
    Ok(completions)
}

/// Runs `attempt` again (up to [`MAX_REPLANS`] times) when it failed after the client learned
/// something about the context window, so the next plan splits the text to fit.
pub async fn replanning<T, F, Fut>(client: &OpenAiClient, mut attempt: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let mut replans = 0;
    loop {
        let generation = client.context().generation();
        match attempt().await {
            Err(error) if client.context().generation() != generation && replans < MAX_REPLANS => {
                replans += 1;
                tracing::info!(
                    replans,
                    context_tokens = client.context().tokens(),
                    code = error.code(),
                    "the deployment refused a call as too long; planning the parts again"
                );
            }
            outcome => return outcome,
        }
    }
}
