//! A deployment's rate limits, enforced the way Azure OpenAI documents and answers them.
//!
//! "Manage Azure OpenAI Service quota" (learn.microsoft.com, azure-ai-docs
//! `articles/ai-services/openai/how-to/quota.md`, "Understanding rate limits"):
//! - a deployment's TPM sets a requests-per-minute limit of **6 RPM per 1 000 TPM**;
//! - TPM is charged at admission on an *estimate* (prompt text plus `max_tokens`), kept in a
//!   running count "reset each minute";
//! - RPM is evaluated "over a small period of time, typically 1 or 10 seconds": over 10 s a
//!   deployment admits RPM / 6 requests.
//!
//! Measured on a real 10 000-TPM deployment (stuartleeks/aoai-testing, `results/chat.md`):
//! `x-ratelimit-remaining-tokens` starts from the whole TPM and drops by each request's
//! estimate (10 requests of `max_tokens: 1000` within 11 s all admitted), and
//! `x-ratelimit-remaining-requests` counts down from RPM / 6 = 10.
//!
//! So by default tokens are counted over a sliding 60 s window (TPM per window) and requests
//! over a sliding 10 s window (RPM / 6). `token_window` can be shortened to 10 s (TPM / 6 per
//! 10 s), the stricter reading some guidance gives; the benchmarks use it so that a 30 s run
//! measures a steady rate rather than one minute's burst. Each deployment has its own quota,
//! shared by every client of the emulator. A refused request consumes nothing.

use std::time::{Duration, Instant};

use crate::tpm::Window;

/// The window over which requests are counted (RPM / 6 per 10 s).
pub(crate) const REQUEST_WINDOW: Duration = Duration::from_secs(10);

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    /// The tokens-per-minute limit ("exceeded token rate limit").
    Tokens,
    /// The requests-per-minute limit ("exceeded call rate limit").
    Requests,
}

/// What the limiter tells the caller: `x-ratelimit-remaining-*` after this request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Remaining {
    pub tokens: u64,
    pub requests: u64,
}

/// A refusal: which limit, how long until the request would fit, and what is left.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub limit: Limit,
    pub retry_after: Duration,
    pub remaining: Remaining,
}

/// One deployment's limiter.
pub(crate) struct Quota {
    token_budget: u64,
    request_budget: u64,
    tokens: Window,
    requests: Window,
}

impl Quota {
    /// The limits of a deployment with `tokens_per_minute`, tokens counted over `token_window`.
    pub fn new(tokens_per_minute: u64, token_window: Duration) -> Self {
        let window_share = token_window.as_secs_f64() / 60.0;
        let token_budget = ((tokens_per_minute as f64 * window_share).round() as u64).max(1);
        // 6 RPM per 1 000 TPM, RPM / 6 per 10 s: TPM / 1 000 requests per 10 s (at least one).
        let request_budget = (tokens_per_minute / 1000).max(1);
        Self { token_budget, request_budget, tokens: Window::new(token_window), requests: Window::new(REQUEST_WINDOW) }
    }

    /// Admits a request estimated at `cost` tokens, or says which limit refused it and when it fits.
    pub fn admit(&mut self, now: Instant, cost: u64) -> Result<Remaining, Refused> {
        let tokens = self.tokens.wait_until_fits(now, cost, self.token_budget);
        let requests = self.requests.wait_until_fits(now, 1, self.request_budget);
        let refusal = match (tokens, requests) {
            (None, None) => None,
            (Some(t), Some(r)) if r > t => Some((Limit::Requests, r)),
            (Some(t), _) => Some((Limit::Tokens, t)),
            (None, Some(r)) => Some((Limit::Requests, r)),
        };
        if let Some((limit, retry_after)) = refusal {
            return Err(Refused { limit, retry_after, remaining: self.remaining(now) });
        }
        self.tokens.push(now, cost);
        self.requests.push(now, 1);
        Ok(self.remaining(now))
    }

    /// What is left in both windows now.
    pub fn remaining(&mut self, now: Instant) -> Remaining {
        Remaining {
            tokens: self.token_budget.saturating_sub(self.tokens.used(now)),
            requests: self.request_budget.saturating_sub(self.requests.used(now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_requests_per_minute_per_thousand_tokens_counted_over_ten_seconds() {
        let t0 = Instant::now();
        // 10 000 TPM: 60 RPM, 10 requests per 10 s.
        let mut quota = Quota::new(10_000, Duration::from_secs(60));
        for i in 0..10 {
            let left = quota.admit(t0 + Duration::from_millis(i * 100), 10).unwrap();
            assert_eq!(left, Remaining { tokens: 10_000 - 10 * (i + 1), requests: 9 - i });
        }
        let refused = quota.admit(t0 + Duration::from_secs(1), 10).unwrap_err();
        assert_eq!(refused.limit, Limit::Requests);
        assert_eq!(refused.retry_after, Duration::from_secs(9));
        assert_eq!(refused.remaining, Remaining { tokens: 9_900, requests: 0 });
        assert!(quota.admit(t0 + Duration::from_secs(10), 10).is_ok(), "the first request left the window");
    }

    #[test]
    fn the_token_estimate_is_counted_over_the_token_window() {
        let t0 = Instant::now();
        let mut minute = Quota::new(10_000, Duration::from_secs(60));
        for i in 0..5 {
            assert!(minute.admit(t0 + Duration::from_secs(i), 2_000).is_ok());
        }
        let refused = minute.admit(t0 + Duration::from_secs(5), 2_000).unwrap_err();
        assert_eq!((refused.limit, refused.retry_after), (Limit::Tokens, Duration::from_secs(55)));
        assert_eq!(refused.remaining.tokens, 0);
        // TPM / 6 per 10 s: 10 000 TPM admits 1 667 tokens per 10 s.
        let mut short = Quota::new(10_000, Duration::from_secs(10));
        assert_eq!(short.admit(t0, 1_000).unwrap().tokens, 667);
        let refused = short.admit(t0 + Duration::from_secs(2), 1_000).unwrap_err();
        assert_eq!((refused.limit, refused.retry_after), (Limit::Tokens, Duration::from_secs(8)));
    }

    #[test]
    fn a_request_larger_than_the_whole_window_is_refused_for_a_whole_window() {
        let mut quota = Quota::new(1_000, Duration::from_secs(60));
        let refused = quota.admit(Instant::now(), 1_001).unwrap_err();
        assert_eq!((refused.limit, refused.retry_after), (Limit::Tokens, Duration::from_secs(60)));
    }
}
