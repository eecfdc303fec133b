//! The cost Azure OpenAI's rate limiter charges a chat-completions request, in tokens.
//!
//! Azure OpenAI admits a request against the deployment's tokens-per-minute limit *before* it
//! runs, on an estimate: the prompt's characters divided by four, plus the requested maximum
//! completion tokens (`max_completion_tokens`, or `max_tokens`). The tokens the answer really
//! used (`usage`) do not enter the limiter's count. One function, shared by the handler's pacer,
//! the emulator's limiter, the benchmarks and the tests, so all four charge the same.

/// The limiter's estimate for a request whose messages hold `prompt_chars` characters
/// (Unicode scalar values, summed over every message's content) and which allows
/// `max_completion_tokens` completion tokens: `ceil(prompt_chars / 4) + max_completion_tokens`.
///
/// ```
/// assert_eq!(token_cost::estimated_tokens(401, 100), 101 + 100);
/// assert_eq!(token_cost::estimated_tokens(0, 0), 0);
/// ```
pub fn estimated_tokens(prompt_chars: usize, max_completion_tokens: u32) -> u64 {
    (prompt_chars as u64).div_ceil(4) + u64::from(max_completion_tokens)
}

#[cfg(test)]
mod tests {
    use super::estimated_tokens;

    #[test]
    fn prompt_characters_round_up_to_whole_tokens() {
        assert_eq!(estimated_tokens(1, 0), 1);
        assert_eq!(estimated_tokens(4, 0), 1);
        assert_eq!(estimated_tokens(5, 0), 2);
        assert_eq!(estimated_tokens(4000, 256), 1256);
    }

    #[test]
    fn extremes_do_not_overflow() {
        assert_eq!(estimated_tokens(usize::MAX, u32::MAX), (usize::MAX as u64).div_ceil(4) + u64::from(u32::MAX));
    }
}
