//! Pacing of Azure OpenAI calls per instance, so that 1, 4 or 40 instances sharing one
//! deployment use its quota without a 429 storm and without knowing about each other.
//!
//! Three limits, each waited for inside the invocation's deadline:
//! - `AOAI_MAX_CONCURRENCY` calls in flight;
//! - an **adaptive rate** ([`adaptive`]: tokens per second, a token bucket) steered by the
//!   deployment's own fleet-wide signals: every answer's `x-ratelimit-remaining-tokens` /
//!   `-requests` and every 429. The answer to a call says how much of the window the whole
//!   fleet had used when the call was admitted; the instance knows its own part of that (its
//!   admitted calls over the window, `AOAI_QUOTA_WINDOW_SECONDS`, up to that call) and sets
//!   its rate to that part of the fleet's goal (all but 7 % of the window): summed over the
//!   instances this is the goal, whatever their number, with no coordination. Two calls one at
//!   a time before the first rate; a 429 cuts the rate and no call starts until the server's
//!   `retry-after` has passed. `simulation.rs` runs the fleet bench in simulated time;
//! - an optional **per-instance cap** ([`cap`], `AOAI_TOKENS_PER_MINUTE`, for an app sharing
//!   the deployment with other apps): a bucket holding at most 1.5 s of the cap, refilled at
//!   97.5 % of it and starting empty, so no 60 s window goes over the cap.
//!
//! A call's cost is Azure's own estimate ([`token_cost::estimated_tokens`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::OpenAiSettings;
use crate::error::ApiError;

mod adaptive;
mod cap;
#[cfg(test)]
mod simulation;

use adaptive::Adaptive;
use cap::Bucket;

pub struct Pacer {
    slots: Arc<Semaphore>,
    /// None with `AOAI_ADAPTIVE_PACING=false`.
    adaptive: Option<Mutex<Adaptive>>,
    cap: Option<Mutex<Bucket>>,
}

/// What an answer from Azure OpenAI said about the deployment's quota.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Signal {
    /// `x-ratelimit-remaining-tokens`, when present and a number.
    pub remaining_tokens: Option<u64>,
    /// `x-ratelimit-remaining-requests`, when present and a number.
    pub remaining_requests: Option<u64>,
    /// A 429, with the server's wait (if it said).
    pub throttled: Option<Option<Duration>>,
    /// Any other answer than a 2xx or a 429 (a 400 for a parameter, a 5xx).
    pub failed: bool,
}

impl Signal {
    /// Reads the remaining-quota headers with checked conversions (anything else is ignored).
    pub fn from_headers(status: u16, headers: &reqwest::header::HeaderMap, hint: Option<Duration>) -> Signal {
        let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
        Signal {
            remaining_tokens: number("x-ratelimit-remaining-tokens"),
            remaining_requests: number("x-ratelimit-remaining-requests"),
            throttled: (status == 429).then_some(hint),
            failed: status != 429 && !(200..300).contains(&status),
        }
    }
}

/// Held for the duration of one call.
pub struct Permit {
    _slot: OwnedSemaphorePermit,
    /// When the call went out (its answer's quota headers describe the deployment then).
    sent_at: Instant,
}

impl Pacer {
    /// Concurrency, the optional per-instance cap (`tokens_per_minute`, 0: none) and the
    /// adaptive rate (unless turned off) from the settings.
    pub fn new(settings: &OpenAiSettings) -> Self {
        let cap = (settings.tokens_per_minute > 0).then(|| Mutex::new(Bucket::cap(settings.tokens_per_minute as f64)));
        let adaptive = settings.adaptive_pacing.then(|| Mutex::new(Adaptive::new(settings.quota_window)));
        Self { slots: Arc::new(Semaphore::new(settings.max_concurrency)), adaptive, cap }
    }

    /// Waits for a slot, for the end of a 429 hold, and for `cost` tokens of both rates, but
    /// not past `deadline`.
    pub async fn acquire(&self, cost: u64, deadline: Instant) -> Result<Permit, ApiError> {
        let slot = tokio::time::timeout_at(deadline.into(), self.slots.clone().acquire_owned())
            .await
            .map_err(|_| busy("every Azure OpenAI slot of this instance stayed busy until", None))?
            .map_err(|_| ApiError::internal("the pacer was closed"))?;
        if let Some(adaptive) = &self.adaptive {
            wait_for_room(|now| lock(adaptive).take(cost as f64, now), cost, deadline, "pacing to the deployment's quota", |wait| {
                format!(
                    "the deployment's quota (its 429s and remaining-quota headers) has room for this call only in {} s, past",
                    wait.as_secs_f64().ceil()
                )
            })
            .await?;
        }
        if let Some(cap) = &self.cap {
            // Say the real wait (minutes after a large call), not a guess.
            wait_for_room(|now| lock(cap).take(cost as f64, now), cost, deadline, "waiting for AOAI_TOKENS_PER_MINUTE", |wait| {
                format!(
                    "this instance's cap (AOAI_TOKENS_PER_MINUTE) has room for this call ({cost} tokens) only in {} s, past",
                    wait.as_secs_f64().ceil()
                )
            })
            .await?;
        }
        let sent_at = Instant::now();
        if let Some(adaptive) = &self.adaptive {
            lock(adaptive).sent(cost as f64, sent_at);
        }
        Ok(Permit { _slot: slot, sent_at })
    }

    /// Feeds an answer's quota signal (for the call of `permit`, which cost `cost`) into the
    /// adaptive rate.
    pub fn observe(&self, signal: Signal, cost: u64, permit: &Permit) {
        if let Some(adaptive) = &self.adaptive {
            lock(adaptive).observe(signal, cost as f64, permit.sent_at, Instant::now());
        }
        if let (Some(cap), Some(_)) = (&self.cap, signal.throttled) {
            lock(cap).refund(cost as f64);
        }
    }

    /// The adaptive rate in tokens per second (None while not pacing), for tests and telemetry.
    pub fn rate(&self) -> Option<f64> {
        self.adaptive.as_ref().and_then(|adaptive| lock(adaptive).rate)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A local refusal: the request was not sent. `wait` is when it could go (unknown for slots).
/// Sleeps until `take` finds room (it answers the wait still needed, or none once the tokens
/// are taken), or fails with the real wait (`refusal` says why) when that wait ends past `deadline`.
async fn wait_for_room(
    mut take: impl FnMut(Instant) -> Option<Duration>,
    cost: u64,
    deadline: Instant,
    waiting: &str,
    refusal: impl Fn(Duration) -> String,
) -> Result<(), ApiError> {
    while let Some(wait) = take(Instant::now()) {
        if Instant::now() + wait > deadline {
            return Err(busy(&refusal(wait), Some(wait)));
        }
        tracing::debug!(wait_ms = wait.as_millis() as u64, cost, "{waiting}");
        tokio::time::sleep(wait).await;
    }
    Ok(())
}

fn busy(what: &str, wait: Option<Duration>) -> ApiError {
    ApiError::UpstreamThrottled {
        message: format!(
            "{what} this invocation's deadline; the request was not sent. Retry later or raise the limit."
        ),
        retry_after: Some(wait.unwrap_or(Duration::from_secs(1))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12, item 9: the refusal said "retry after 1 s" when the real wait was minutes.
    #[tokio::test]
    async fn a_refusal_reports_the_real_wait() {
        // A cap of 600 tokens a minute (9.75 a second), 1 000 tokens in debt after a large call:
        // the next call waits ~100 s for its budget.
        let now = Instant::now();
        let cap = Bucket { capacity: 15.0, per_second: 9.75, level: -1000.0, updated: now };
        let pacer = Pacer { slots: Arc::new(Semaphore::new(1)), adaptive: None, cap: Some(Mutex::new(cap)) };
        let deadline = now + Duration::from_secs(5);
        let Err(ApiError::UpstreamThrottled { retry_after: Some(wait), message }) = pacer.acquire(10, deadline).await
        else {
            panic!("expected a local throttling refusal");
        };
        assert!(wait > Duration::from_secs(100), "{wait:?}");
        assert!(message.contains("AOAI_TOKENS_PER_MINUTE") && message.contains(" s, past"), "{message}");
    }

    #[test]
    fn quota_headers_are_read_with_checked_conversions() {
        use reqwest::header::{HeaderMap, HeaderValue};
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining-tokens", HeaderValue::from_static(" 1200 "));
        headers.insert("x-ratelimit-remaining-requests", HeaderValue::from_static("-3"));
        let signal = Signal::from_headers(200, &headers, None);
        assert_eq!((signal.remaining_tokens, signal.remaining_requests, signal.throttled), (Some(1200), None, None));
        headers.insert("x-ratelimit-remaining-tokens", HeaderValue::from_static("99999999999999999999999"));
        let signal = Signal::from_headers(429, &headers, Some(Duration::from_millis(5)));
        assert_eq!((signal.remaining_tokens, signal.throttled), (None, Some(Some(Duration::from_millis(5)))));
    }
}
