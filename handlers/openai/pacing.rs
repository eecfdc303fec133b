//! Pacing of Azure OpenAI calls per instance, so that 1, 4 or 40 instances sharing one
//! deployment use its quota without a 429 storm and without knowing about each other.
//!
//! Three limits, each waited for inside the invocation's deadline:
//! - `AOAI_MAX_CONCURRENCY` calls in flight;
//! - an **adaptive rate** (tokens per second, a token bucket) steered by the deployment's own
//!   fleet-wide signals: every answer's `x-ratelimit-remaining-tokens` / `-requests` and every
//!   429. The window budget is estimated as the largest `remaining + cost` seen, the headroom
//!   is `remaining / budget`, so the whole fleet used `1 - headroom` of the window, and this
//!   instance knows its own part (what it sent over the window, `AOAI_QUOTA_WINDOW_SECONDS`). Each instance scales its own
//!   part by `(1 - TARGET) / (1 - headroom)`: if every instance does, the fleet lands on
//!   leaving [`TARGET`] of the budget, whatever the number of instances, with no coordination.
//!   Before the first answer one call at a time; the first rate is a share of the budget; a
//!   headroom under [`LOW`] cuts the rate ([`BACKOFF`]); a 429 halves it and no call starts
//!   until the server's `retry-after` has passed;
//! - an optional **per-instance cap**, `AOAI_TOKENS_PER_MINUTE` (for an app sharing the
//!   deployment with other apps): a bucket holding at most 1.5 s of the cap, refilled at
//!   97.5 % of it and starting empty, so no 60 s window goes over the cap.
//!
//! A call's cost is Azure's own estimate ([`token_cost::estimated_tokens`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::OpenAiSettings;
use crate::error::ApiError;

/// The headroom (remaining / window budget) the fleet steers to.
pub const TARGET: f64 = 0.07;
/// Below this headroom the rate is cut at once.
pub const LOW: f64 = 0.02;
/// The first rate, as a share of the deployment's whole rate (a fleet starting together must
/// not overrun it before the first headroom readings arrive).
pub const START_SHARE: f64 = 0.1;
/// The rate moves towards its target over about this many seconds.
pub const SMOOTHING_S: f64 = 1.0;
/// Cut when the headroom falls below `LOW`.
pub const BACKOFF: f64 = 0.8;
/// At most one cut per this interval: the answers to calls sent before a cut report the same
/// shortage and must not cut the rate again.
pub const DECREASE_GAP: Duration = Duration::from_millis(300);
/// Before the first answer: how often a waiting call looks again, and when a probe that got
/// no answer (a connection error) stops holding the others back.
const PROBE_POLL: Duration = Duration::from_millis(20);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

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
}

impl Signal {
    /// Reads the remaining-quota headers with checked conversions (anything else is ignored).
    pub fn from_headers(status: u16, headers: &reqwest::header::HeaderMap, hint: Option<Duration>) -> Signal {
        let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
        Signal {
            remaining_tokens: number("x-ratelimit-remaining-tokens"),
            remaining_requests: number("x-ratelimit-remaining-requests"),
            throttled: (status == 429).then_some(hint),
        }
    }
}

/// Held for the duration of one call.
pub struct Permit {
    _slot: OwnedSemaphorePermit,
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
        while let Some(adaptive) = &self.adaptive {
            let wait = lock(adaptive).take(cost as f64, Instant::now());
            let Some(wait) = wait else { break };
            if Instant::now() + wait > deadline {
                return Err(busy(
                    &format!(
                        "the deployment's quota (its 429s and remaining-quota headers) has room for this call only in {} s, past",
                        wait.as_secs_f64().ceil()
                    ),
                    Some(wait),
                ));
            }
            tracing::debug!(wait_ms = wait.as_millis() as u64, cost, "pacing to the deployment's quota");
            tokio::time::sleep(wait).await;
        }
        if let Some(cap) = &self.cap {
            loop {
                let wait = lock(cap).take(cost as f64, Instant::now());
                let Some(wait) = wait else { break };
                if Instant::now() + wait > deadline {
                    // Say the real wait (minutes after a large call), not a guess.
                    return Err(busy(
                        &format!(
                            "this instance's cap (AOAI_TOKENS_PER_MINUTE) has room for this call ({cost} tokens) only in {} s, past",
                            wait.as_secs_f64().ceil()
                        ),
                        Some(wait),
                    ));
                }
                tracing::debug!(wait_ms = wait.as_millis() as u64, cost, "waiting for AOAI_TOKENS_PER_MINUTE");
                tokio::time::sleep(wait).await;
            }
        }
        if let Some(adaptive) = &self.adaptive {
            lock(adaptive).sent(cost as f64, Instant::now());
        }
        Ok(Permit { _slot: slot })
    }

    /// Feeds an answer's quota signal (for a call that cost `cost`) into the adaptive rate.
    pub fn observe(&self, signal: Signal, cost: u64) {
        if let Some(adaptive) = &self.adaptive {
            lock(adaptive).observe(signal, cost as f64, Instant::now());
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

/// The adaptive controller and its bucket.
struct Adaptive {
    /// The deployment's token window (`AOAI_QUOTA_WINDOW_SECONDS`; Azure: a minute): this
    /// instance's sends over it are its part of the fleet's use.
    window: Duration,
    /// Tokens per second; None until the headroom first runs low (or a 429).
    rate: Option<f64>,
    level: f64,
    updated: Instant,
    /// Largest `remaining + cost` seen: the deployment's window budget, in tokens / requests.
    token_budget: f64,
    request_budget: f64,
    /// No call starts before this (the server's retry-after of the last 429).
    hold_until: Option<Instant>,
    last_decrease: Option<Instant>,
    /// The previous answer's time.
    last_observe: Option<Instant>,
    /// When the bucket last made a call wait: the rate only grows while it is the limit.
    last_limited: Option<Instant>,
    /// This instance's sends over the last window, and the smallest rate worth keeping.
    sent: VecDeque<(Instant, f64)>,
    floor: f64,
    /// The one call in flight before the first answer.
    probe: Option<Instant>,
}

impl Adaptive {
    fn new(window: Duration) -> Self {
        let now = Instant::now();
        Adaptive {
            window,
            rate: None,
            level: 0.0,
            updated: now,
            token_budget: 0.0,
            request_budget: 0.0,
            hold_until: None,
            last_decrease: None,
            last_observe: None,
            last_limited: None,
            sent: VecDeque::new(),
            floor: 1.0,
            probe: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(rate) = self.rate {
            let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
            self.level = (self.level + elapsed * rate).min(Self::capacity(rate));
        }
        self.updated = now;
    }

    /// Half a second of the rate: enough for a few calls at once, never a large burst.
    fn capacity(rate: f64) -> f64 {
        rate * 0.5
    }

    /// Takes `cost` if allowed now, else says how long to wait.
    fn take(&mut self, cost: f64, now: Instant) -> Option<Duration> {
        if let Some(until) = self.hold_until {
            if now < until {
                return Some(until - now);
            }
            self.hold_until = None;
        }
        self.refill(now);
        let Some(rate) = self.rate else {
            // An answer without quota headers (a gateway that strips them): nothing says the
            // quota is short, so nothing holds calls back until a 429 sets a rate.
            if self.last_observe.is_some() {
                return None;
            }
            // Before the deployment has said anything, one call at a time: a fleet starting
            // together must not spend a window's budget before the first answer.
            return match self.probe {
                Some(sent) if now.saturating_duration_since(sent) < PROBE_TIMEOUT => Some(PROBE_POLL),
                _ => None,
            };
        };
        // A call bigger than the burst may go once the bucket is full (then pays its debt).
        let needed = cost.min(Self::capacity(rate));
        if self.level >= needed {
            self.level -= cost;
            return None;
        }
        // `try_`: a NaN (never expected) is a maximal wait, not a panic.
        let wait = Duration::try_from_secs_f64(((needed - self.level) / rate).clamp(0.001, 60.0))
            .unwrap_or(Duration::from_secs(60));
        // Limited until the call this wait holds back goes out.
        self.last_limited = Some(now + wait);
        Some(wait)
    }

    fn sent(&mut self, cost: f64, now: Instant) {
        if self.rate.is_none() {
            self.probe = Some(now);
        }
        self.sent.push_back((now, cost));
        while self.sent.front().is_some_and(|(at, _)| now.duration_since(*at) > self.window) {
            self.sent.pop_front();
        }
        // One call per 10 s is the least a paced instance keeps.
        self.floor = self.floor.max(cost / 10.0);
    }

    fn own_rate(&self) -> f64 {
        self.sent.iter().map(|(_, c)| c).sum::<f64>() / self.window.as_secs_f64()
    }

    fn observe(&mut self, signal: Signal, cost: f64, now: Instant) {
        self.refill(now);
        self.probe = None;
        if let Some(hint) = signal.throttled {
            // The deployment did not admit the call: its cost goes back (a 429 storm must not
            // leave a debt that outlasts it).
            if let Some(rate) = self.rate {
                self.level = (self.level + cost).min(Self::capacity(rate));
            }
            let wait = hint.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(60));
            let until = now + wait;
            self.hold_until = Some(self.hold_until.map_or(until, |held| held.max(until)));
            self.decrease(0.5, now);
            return;
        }
        let token_headroom = signal.remaining_tokens.map(|left| {
            self.token_budget = self.token_budget.max(left as f64 + cost);
            left as f64 / self.token_budget
        });
        let request_headroom = signal.remaining_requests.map(|left| {
            self.request_budget = self.request_budget.max(left as f64 + 1.0);
            left as f64 / self.request_budget
        });
        // No headers: nothing says the quota is short, so only 429s steer.
        let headroom = token_headroom.into_iter().chain(request_headroom).fold(1.0, f64::min);
        let previous = self.last_observe.replace(now);
        let Some(rate) = self.rate else {
            // The first answer: start at a share of the budget per minute, then adjust.
            if token_headroom.is_some() {
                let per_second = self.token_budget / self.window.as_secs_f64();
                self.rate = Some((per_second * START_SHARE).max(self.floor));
            }
            return;
        };
        if headroom < LOW {
            self.decrease(BACKOFF, now);
            return;
        }
        let Some(then) = previous else { return };
        let dt = now.saturating_duration_since(then).as_secs_f64().min(5.0);
        // The fleet used (1 - headroom) of the window's budget, this instance what it sent in the
        // window: scale that share so that the fleet as a whole leaves TARGET of the budget.
        let target = self.own_rate() * (1.0 - TARGET) / (1.0 - headroom).max(0.05);
        let limited =
            self.last_limited.is_some_and(|until| now.saturating_duration_since(until) < Duration::from_secs(1));
        if target > rate && !limited {
            // Not sending as fast as allowed (concurrency, or no work): no reason to allow more.
            return;
        }
        // Move towards the target over about SMOOTHING (the headroom wobbles as bursts leave
        // the window), at most doubling.
        let smoothing = SMOOTHING_S.min(self.window.as_secs_f64() / 4.0);
        let next = rate + (dt / smoothing).min(1.0) * (target.min(rate * 2.0) - rate);
        self.rate = Some(next.max(self.floor));
    }

    fn decrease(&mut self, factor: f64, now: Instant) {
        if self.last_decrease.is_some_and(|at| now.duration_since(at) < DECREASE_GAP) {
            return;
        }
        self.last_decrease = Some(now);
        let current = self.rate.unwrap_or_else(|| self.own_rate());
        self.rate = Some((current * factor).max(self.floor));
        self.level = self.level.min(Self::capacity(self.rate.unwrap_or(0.0)));
    }
}

/// The per-instance cap: a token bucket.
struct Bucket {
    capacity: f64,
    per_second: f64,
    /// May go negative: a call larger than the burst runs once the bucket is full, then the
    /// debt is paid off before the next one.
    level: f64,
    updated: Instant,
}

impl Bucket {
    /// A call the deployment refused (429) used nothing of the cap.
    fn refund(&mut self, cost: f64) {
        self.level = (self.level + cost).min(self.capacity);
    }

    /// At most 1.5 s of the cap, refilled at 97.5 % and starting empty: any 60 s window then
    /// stays within the cap (1.5 s + 58.5 s), and so does the rate measured from start-up.
    fn cap(tokens_per_minute: f64) -> Self {
        Bucket {
            capacity: tokens_per_minute / 40.0,
            per_second: tokens_per_minute * 0.975 / 60.0,
            level: 0.0,
            updated: Instant::now(),
        }
    }

    /// Takes `cost` if the bucket allows it now, else says how long to wait.
    fn take(&mut self, cost: f64, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
        let needed = cost.min(self.capacity);
        if self.level >= needed {
            self.level -= cost;
            None
        } else {
            let secs = ((needed - self.level) / self.per_second).clamp(0.0, 3600.0);
            Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::from_secs(3600)))
        }
    }
}

/// A local refusal: the request was not sent. `wait` is when it could go (unknown for slots).
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

    /// A deployment as Azure enforces it: token estimates over a sliding window, requests over 10 s.
    struct Deployment {
        token_budget: f64,
        window: Duration,
        request_budget: f64,
        tokens: VecDeque<(Instant, f64)>,
        requests: VecDeque<Instant>,
    }

    impl Deployment {
        fn new(tokens_per_minute: f64, window: Duration) -> Self {
            let token_budget = tokens_per_minute * window.as_secs_f64() / 60.0;
            let request_budget = (tokens_per_minute / 1000.0).floor();
            Deployment { token_budget, window, request_budget, tokens: VecDeque::new(), requests: VecDeque::new() }
        }

        fn call(&mut self, cost: f64, now: Instant) -> Signal {
            while self.tokens.front().is_some_and(|(at, _)| now.duration_since(*at) >= self.window) {
                self.tokens.pop_front();
            }
            while self.requests.front().is_some_and(|at| now.duration_since(*at) >= Duration::from_secs(10)) {
                self.requests.pop_front();
            }
            let used: f64 = self.tokens.iter().map(|(_, c)| c).sum();
            if used + cost > self.token_budget || self.requests.len() as f64 + 1.0 > self.request_budget {
                let wait = self.tokens.front().map_or(self.window, |(at, _)| *at + self.window - now);
                return Signal { throttled: Some(Some(wait)), ..Signal::default() };
            }
            self.tokens.push_back((now, cost));
            self.requests.push_back(now);
            Signal {
                remaining_tokens: Some((self.token_budget - used - cost) as u64),
                remaining_requests: Some((self.request_budget - self.requests.len() as f64) as u64),
                throttled: None,
            }
        }
    }

    enum Slot {
        Ready(Instant),
        InFlight(Instant, Signal),
    }

    /// Runs `instances` pacers with `concurrency` slots each, always busy, against one
    /// deployment for `seconds` of simulated time (5 ms steps, answers after 200 ms); returns the
    /// share of the deployment's token rate admitted after the first 5 s and the share of calls
    /// answered 429.
    fn simulate(instances: usize, tokens_per_minute: f64, window: Duration, assumed: Duration) -> (f64, f64) {
        let concurrency = 8;
        let start = Instant::now();
        let cost = 350.0;
        let mut deployment = Deployment::new(tokens_per_minute, window);
        let mut pacers: Vec<Adaptive> = (0..instances).map(|_| Adaptive::new(assumed)).collect();
        let mut slots: Vec<Vec<Slot>> =
            (0..instances).map(|_| (0..concurrency).map(|_| Slot::Ready(start)).collect()).collect();
        let (mut calls, mut throttled, mut admitted) = (0u64, 0u64, 0.0);
        let step = Duration::from_millis(5);
        // Measured from half a window in, over three windows.
        let (warm, end) = (start + window / 2, start + window / 2 + window * 3);
        let mut now = start;
        while now < end {
            for (pacer, slots) in pacers.iter_mut().zip(slots.iter_mut()) {
                for slot in slots.iter_mut() {
                    if let Slot::InFlight(at, signal) = *slot
                        && now >= at
                    {
                        pacer.observe(signal, cost, now);
                        *slot = Slot::Ready(now);
                    }
                    let Slot::Ready(at) = *slot else { continue };
                    if now < at {
                        continue;
                    }
                    match pacer.take(cost, now) {
                        Some(wait) => *slot = Slot::Ready(now + wait),
                        None => {
                            pacer.sent(cost, now);
                            let signal = deployment.call(cost, now);
                            calls += 1;
                            if signal.throttled.is_some() {
                                throttled += 1;
                            } else if now >= warm {
                                admitted += cost;
                            }
                            *slot = Slot::InFlight(now + Duration::from_millis(200), signal);
                        }
                    }
                }
            }
            now += step;
        }
        let limit = tokens_per_minute / 60.0 * (end - warm).as_secs_f64();
        (admitted / limit, throttled as f64 / calls as f64)
    }

    /// The mechanism, in simulated time: 1, 4 and 16 instances (8 calls in flight each, always
    /// busy) share a 300 000-TPM deployment that one instance alone could overrun 2.8 times.
    /// Knowing the deployment's window (Azure's minute, or an emulator's 10 s) they use most of
    /// it with few 429s; assuming a minute against a 10 s window they use less but never storm.
    /// Measured (1, 4, 16 instances): minute 91.6 / 92.6 / 94.0 % of the TPM with no 429; 10 s
    /// 93.8 / 93.6 / 88.7 % with 0 / 0 / 8.8 % 429.
    #[test]
    fn a_fleet_sharing_one_deployment_uses_most_of_it_without_a_429_storm() {
        let (minute, ten) = (Duration::from_secs(60), Duration::from_secs(10));
        for (window, assumed) in [(minute, minute), (ten, ten), (ten, minute)] {
            for instances in [1, 4, 16] {
                let (share, throttled) = simulate(instances, 300_000.0, window, assumed);
                eprintln!(
                    "{window:?} window, {assumed:?} assumed, x{instances}: {:.1} % of the TPM, {:.2} % 429",
                    share * 100.0,
                    throttled * 100.0
                );
                // Azure's minute: at most 5 % 429. The 10 s window is harsher (it remembers bursts
                // for a sixth of the time, and 16 instances each send about one call a second).
                let most = if window == minute { 0.05 } else { 0.10 };
                assert!(throttled <= most, "{instances} instances, {window:?}: {throttled:.3} of calls 429");
                if window == assumed {
                    assert!(share >= 0.85, "{instances} instances, {window:?}: only {share:.3} of the TPM");
                }
            }
        }
    }

    #[test]
    fn answers_without_quota_headers_end_the_one_call_probe() {
        let mut pacer = Adaptive::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(pacer.take(100.0, t0), None, "the first call goes");
        pacer.sent(100.0, t0);
        assert!(pacer.take(100.0, t0).is_some(), "the others wait for the first answer");
        pacer.observe(Signal::default(), 100.0, t0 + Duration::from_millis(5));
        pacer.sent(100.0, t0 + Duration::from_millis(6));
        // Before the fix every later call waited for the previous answer (one in flight).
        assert_eq!(pacer.take(100.0, t0 + Duration::from_millis(7)), None);
        assert_eq!(pacer.rate, None);
    }

    #[test]
    fn without_headers_429s_alone_steer_the_rate() {
        let mut pacer = Adaptive::new(Duration::from_secs(60));
        let t0 = Instant::now();
        pacer.sent(100.0, t0);
        pacer.observe(Signal { throttled: Some(Some(Duration::from_secs(2))), ..Signal::default() }, 100.0, t0);
        assert_eq!(
            pacer.take(100.0, t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(1)),
            "held until retry-after"
        );
        assert!(pacer.rate.is_some());
        // Answers without quota headers never cut the rate.
        let rate = pacer.rate;
        pacer.observe(Signal::default(), 100.0, t0 + Duration::from_secs(3));
        assert!(pacer.rate >= rate);
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

    #[test]
    fn the_cap_allows_its_rate_and_no_more() {
        let start = Instant::now();
        let mut bucket = Bucket { capacity: 1500.0, per_second: 975.0, level: 1500.0, updated: start };
        // 60 000 TPM: over 60 simulated seconds, spend as fast as allowed in 100-token calls.
        let (mut spent, mut now) = (0.0, start);
        while now < start + Duration::from_secs(60) {
            match bucket.take(100.0, now) {
                None => spent += 100.0,
                Some(wait) => now += wait.max(Duration::from_millis(1)),
            }
        }
        assert!(spent <= 60_000.0, "{spent}");
        assert!(spent >= 0.95 * 60_000.0, "{spent}");
    }

    #[test]
    fn a_call_larger_than_the_burst_goes_into_debt() {
        let now = Instant::now();
        let mut bucket = Bucket { capacity: 100.0, per_second: 10.0, level: 100.0, updated: now };
        assert_eq!(bucket.take(500.0, now), None);
        let wait = bucket.take(10.0, now).unwrap();
        assert!(wait >= Duration::from_secs(41), "{wait:?}");
    }
}
