//! The deployment's context window, and the token estimate measured against it.
//!
//! `AOAI_CONTEXT_TOKENS` sets the window up front. Without it the window is assumed to be
//! [`ASSUMED_CONTEXT_TOKENS`] until the service refuses a request with 400
//! `context_length_exceeded`, whose message states the maximum ("This model's maximum context
//! length is 16384 tokens. However, your messages resulted in 20113 tokens. ..."); the smaller
//! window is then remembered for the life of the process, so it works on any deployment
//! without a setting. The same message states the request's real token count: where it is
//! larger than the estimate, the ratio is remembered too and every later plan is scaled by it.

use std::sync::atomic::{AtomicU32, Ordering};

/// The window assumed until the service or the setting says otherwise (gpt-4o, gpt-4o-mini).
pub const ASSUMED_CONTEXT_TOKENS: u32 = 128_000;

/// What the process knows of the deployment's context window. Shared by every request.
#[derive(Debug)]
pub struct ContextWindow {
    /// The window in tokens (the setting, the assumption, or what the service said).
    tokens: AtomicU32,
    /// Real tokens per estimated token, in thousandths (at least 1000).
    ratio_permille: AtomicU32,
    /// Counts what was learned: a request planned under one generation and refused under
    /// another is worth planning again.
    generation: AtomicU32,
}

impl ContextWindow {
    pub fn new(configured: Option<u32>) -> Self {
        Self {
            tokens: AtomicU32::new(configured.unwrap_or(ASSUMED_CONTEXT_TOKENS)),
            ratio_permille: AtomicU32::new(1000),
            generation: AtomicU32::new(0),
        }
    }

    /// The window in tokens.
    pub fn tokens(&self) -> u32 {
        self.tokens.load(Ordering::Relaxed)
    }

    /// Real tokens per estimated token (1.0 until a refusal showed the estimate short).
    pub fn ratio(&self) -> f64 {
        f64::from(self.ratio_permille.load(Ordering::Relaxed)) / 1000.0
    }

    /// Changes whenever something was learned.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Learns from a `context_length_exceeded` message about a request whose prompt was
    /// estimated at `estimated_prompt` tokens. True when the window or the ratio changed, so
    /// that planning again can help.
    pub fn learn(&self, message: &str, estimated_prompt: usize) -> bool {
        let Some(refusal) = Refusal::parse(message) else { return false };
        let shrunk = self.tokens.fetch_min(refusal.max_tokens, Ordering::Relaxed) > refusal.max_tokens;
        let mut scaled = false;
        if let Some(real) = refusal.prompt_tokens
            && estimated_prompt > 0
            && real as usize > estimated_prompt
        {
            let permille = (u64::from(real) * 1000).div_ceil(estimated_prompt as u64).min(10_000) as u32;
            scaled = self.ratio_permille.fetch_max(permille, Ordering::Relaxed) < permille;
        }
        if shrunk || scaled {
            self.generation.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                context_tokens = self.tokens(),
                ratio = self.ratio(),
                "learned the deployment's context window from context_length_exceeded"
            );
        }
        shrunk || scaled
    }
}

/// The figures of a `context_length_exceeded` message.
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    max_tokens: u32,
    /// Tokens of the messages alone, when the message states them.
    prompt_tokens: Option<u32>,
}

impl Refusal {
    /// "maximum context length is N tokens", then "your messages resulted in M tokens" or
    /// "you requested T tokens (M in the messages, C in the completion)".
    fn parse(message: &str) -> Option<Self> {
        let number_after = |marker: &str| -> Option<u32> {
            let rest = &message[message.find(marker)? + marker.len()..];
            let digits: String = rest.trim_start().chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        let max_tokens = number_after("maximum context length is").filter(|n| *n >= 256)?;
        let prompt_tokens = number_after("your messages resulted in").or_else(|| number_after("tokens ("));
        Some(Self { max_tokens, prompt_tokens })
    }
}

/// Estimated tokens of `text`: ASCII characters at 3 a token, every other character 1 token.
/// Conservative for the gpt-4o / gpt-5 tokenizers (about 4 characters a token in English); see
/// `jobs::split` for why no real tokenizer is loaded.
pub fn estimated_tokens(text: &str) -> usize {
    estimated_thirds(text).div_ceil(3)
}

/// The estimate in thirds of a token, which adds up exactly over slices of a text.
pub fn estimated_thirds(text: &str) -> usize {
    let ascii = text.bytes().filter(u8::is_ascii).count();
    let other = text.chars().count() - ascii;
    ascii + 3 * other
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGES: &str = "This model's maximum context length is 16384 tokens. However, your messages resulted in \
                            20113 tokens. Please reduce the length of the messages.";
    const REQUESTED: &str = "This model's maximum context length is 32768 tokens. However, you requested 35969 tokens \
                             (9969 in the messages, 26000 in the completion). Please reduce the length of the messages or completion.";

    #[test]
    fn both_wordings_of_the_service_parse() {
        assert_eq!(Refusal::parse(MESSAGES), Some(Refusal { max_tokens: 16384, prompt_tokens: Some(20113) }));
        assert_eq!(Refusal::parse(REQUESTED), Some(Refusal { max_tokens: 32768, prompt_tokens: Some(9969) }));
        assert_eq!(Refusal::parse("Please reduce the length of the messages."), None);
        assert_eq!(Refusal::parse("This model's maximum context length is 12 tokens."), None);
    }

    #[test]
    fn the_window_only_shrinks_and_the_ratio_only_grows() {
        let window = ContextWindow::new(None);
        assert_eq!(window.tokens(), ASSUMED_CONTEXT_TOKENS);
        // Estimated 20000, real 20113: both the window and the ratio are learned.
        assert!(window.learn(MESSAGES, 20_000));
        assert_eq!((window.tokens(), window.generation()), (16384, 1));
        assert!((window.ratio() - 1.006).abs() < 0.001, "{}", window.ratio());
        // A larger maximum (another wording, a stale answer) never grows it back.
        assert!(!window.learn(REQUESTED, 20_000));
        assert_eq!(window.tokens(), 16384);
        assert!(!window.learn("no figures here", 10));
        assert_eq!(window.generation(), 1);
        let configured = ContextWindow::new(Some(8000));
        assert_eq!(configured.tokens(), 8000);
    }
}
