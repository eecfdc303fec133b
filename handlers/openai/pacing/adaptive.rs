//! The adaptive rate: a token bucket whose rate each instance sets from the deployment's
//! fleet-wide signals (remaining-quota headers, 429s), without knowing the other instances.
//!
//! The law (see [`Adaptive::observe`]): rate = (own admitted use of the window / the fleet's
//! use of it) x the fleet's goal per second. Why these details (each measured with the fleet
//! simulation, `simulation.rs`, then with `scripts/bench --fleet`):
//! - only *admitted* calls are this instance's use: counting refused ones inflated every
//!   instance's part after a 429 and fed the next ones (16 instances: 9.5 % of calls 429);
//! - the use is taken up to the answered call's own send time, the moment its headers
//!   describe, not up to the answer (calls sent meanwhile are not in the headers), less half
//!   of that call (see `Tuning::phase`);
//! - the fleet leaves 7 % of the window for the noise of many controllers reading at
//!   different times; an instance that is the whole fleet leaves 3 % (see `Tuning::alone`);
//! - two probe calls, then the law's rate at once: the second answer already counts the other
//!   instances' first calls, so a fleet starting together starts near its fair share and a
//!   lone instance at the whole goal (a fixed start share either overran with many instances
//!   or wasted the first seconds with one);
//! - a 429 cuts the rate by a fifth (the law restores it from the next answers; halving left
//!   holes the window then echoed) and leaves the bucket empty: with a refund every refused
//!   instance resent the moment the same short `retry-after` ended, a storm of its own;
//! - an answer refused before the limiter without quota headers (the first call's
//!   `reasoning_effort` on a model that does not reason) says nothing about the quota; taken
//!   for "no quota headers here" it let every instance out unpaced at the start;
//! - headers whose window holds one call while this instance alone sent more into it do not
//!   count its calls (fixed values: the emulator without a quota, a gateway): they no longer
//!   hold the rate back (a lone handler was held to the fixed "goal", 42 calls a second);
//! - tried and dropped: closing the gap to the goal faster than one window, predicting what
//!   leaves the window from the instance's own calls (as the target, or as a bound over the
//!   next 2-5 s), and a start capped at a share of the deployment: fewer 429s in some cases,
//!   but oscillation (the window echoes every burst) and 3-10 % less of the TPM.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Signal;

/// How the controller steers; [`Tuning::DEFAULT`] is what the handler uses (the fleet
/// simulation, `pacing/simulation.rs`, tries others).
#[derive(Clone, Copy, Debug)]
pub(super) struct Tuning {
    /// The headroom (remaining / window budget) the fleet steers to; `alone` when this
    /// instance is the whole fleet (in between in proportion to its part).
    pub target: f64,
    pub alone: f64,
    /// Below this headroom the rate is cut at once, by `backoff`.
    pub low: f64,
    pub backoff: f64,
    /// A 429 multiplies the rate by this (then the law restores it from the next answers).
    pub throttled_cut: f64,
    /// Calls sent one at a time before the rate is set: the second answer already counts the
    /// first calls of a fleet that started together.
    pub probes: u32,
    /// The rate moves towards its target over about this many seconds (at most a quarter of
    /// the window), at most by `growth` per answer.
    pub smoothing_s: f64,
    pub growth: f64,
    /// Of the answered call, the share not counted in this instance's use: every reading is
    /// taken just after one of its own calls, when its count in the window is at its peak
    /// (one call more than between its calls, on average half a call too many). Without it
    /// 16 instances each sending a call a second settled 4 % above the goal.
    pub phase: f64,
}

impl Tuning {
    pub const DEFAULT: Tuning = Tuning {
        target: 0.07,
        alone: 0.03,
        low: 0.02,
        backoff: 0.8,
        throttled_cut: 0.8,
        probes: 2,
        smoothing_s: 1.0,
        growth: 2.0,
        phase: 0.5,
    };
}

/// At most one cut per this interval: the answers to calls sent before a cut report the same
/// shortage and must not cut the rate again.
const DECREASE_GAP: Duration = Duration::from_millis(300);
/// Before the first answer: how often a waiting call looks again, and when a probe that got
/// no answer (a connection error) stops holding the others back.
const PROBE_POLL: Duration = Duration::from_millis(20);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The rate when the headers cannot steer it (tokens per second; finite, so that no
/// arithmetic on it makes a NaN).
const UNBOUNDED: f64 = 1e12;
/// Azure counts requests over 10 s (RPM / 6).
const REQUEST_WINDOW: Duration = Duration::from_secs(10);

/// One call this instance sent: when, its cost, and whether the deployment refused it.
struct Sent {
    at: Instant,
    cost: f64,
    refused: bool,
}

/// The adaptive controller and its bucket.
pub(super) struct Adaptive {
    tuning: Tuning,
    /// The deployment's token window (`AOAI_QUOTA_WINDOW_SECONDS`; Azure: a minute): this
    /// instance's sends over it are its part of the fleet's use.
    window: Duration,
    /// Tokens per second; None until the first answer with quota headers (or a 429).
    pub(super) rate: Option<f64>,
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
    /// This instance's calls over the last window (and a little more), in the order sent.
    sent: VecDeque<Sent>,
    /// The bucket may hold this much beyond half a second of the rate (see `capacity`).
    burst: f64,
    /// The smallest rate worth keeping.
    floor: f64,
    /// The one call in flight before the first answers, and how many answered.
    probe: Option<Instant>,
    probed: u32,
}

impl Adaptive {
    pub(super) fn new(window: Duration) -> Self {
        Self::tuned(window, Tuning::DEFAULT)
    }

    pub(super) fn tuned(window: Duration, tuning: Tuning) -> Self {
        let now = Instant::now();
        Adaptive {
            tuning,
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
            burst: 0.0,
            probe: None,
            probed: 0,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(rate) = self.rate {
            let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
            self.level = (self.level + elapsed * rate).min(self.capacity(rate));
        }
        self.updated = now;
    }

    /// Half a second of the rate (a few calls at once), or, for an instance that is the whole
    /// fleet, the room the window has beyond the headroom, whichever is more: after an idle
    /// spell a window with room admits a burst (the parts of a long document) at once, while a
    /// window at its goal has no room and calls go evenly.
    fn capacity(&self, rate: f64) -> f64 {
        (rate * 0.5).max(self.burst)
    }

    /// Takes `cost` if allowed now, else says how long to wait.
    pub(super) fn take(&mut self, cost: f64, now: Instant) -> Option<Duration> {
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
            if self.last_observe.is_some() && self.probed == 0 {
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
        let needed = cost.min(self.capacity(rate));
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

    /// A call of `cost` goes out now.
    pub(super) fn sent(&mut self, cost: f64, now: Instant) {
        if self.rate.is_none() {
            self.probe = Some(now);
        }
        self.sent.push_back(Sent { at: now, cost, refused: false });
        // Kept a little longer than the window: answers arrive after their call was counted.
        let keep = self.window.max(REQUEST_WINDOW) + Duration::from_secs(5);
        while self.sent.front().is_some_and(|s| now.saturating_duration_since(s.at) > keep) {
            self.sent.pop_front();
        }
        // One call per 10 s is the least a paced instance keeps.
        self.floor = self.floor.max(cost / 10.0);
    }

    /// What this instance had admitted over `length` up to `at` (inclusive): tokens, requests.
    fn own(&self, at: Instant, length: Duration) -> (f64, f64) {
        self.sent
            .iter()
            .filter(|s| !s.refused && s.at <= at && at.saturating_duration_since(s.at) < length)
            .fold((0.0, 0.0), |(tokens, requests), s| (tokens + s.cost, requests + 1.0))
    }

    /// The answer to the call of `cost` sent at `sent_at`.
    pub(super) fn observe(&mut self, signal: Signal, cost: f64, sent_at: Instant, now: Instant) {
        self.refill(now);
        self.probe = None;
        if let Some(hint) = signal.throttled {
            // The deployment did not admit the call: it is no part of this instance's use, and
            // its cost goes back (a 429 storm must not leave a debt that outlasts it).
            if let Some(call) = self.sent.iter_mut().rev().find(|s| s.at == sent_at && !s.refused) {
                call.refused = true;
            }
            // No credit either: the bucket starts again from empty at most, so the instance's
            // next call waits for its (cut) rate, not only for the retry-after every refused
            // instance got at once.
            self.level = (self.level + cost).min(0.0);
            let wait = hint.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(60));
            let until = now + wait;
            self.hold_until = Some(self.hold_until.map_or(until, |held| held.max(until)));
            self.decrease(self.tuning.throttled_cut, now);
            return;
        }
        if signal.failed && signal.remaining_tokens.is_none() && signal.remaining_requests.is_none() {
            // Refused before the limiter (the first call's `reasoning_effort` on a model that
            // does not reason, a gateway's 5xx): not admitted, and no word on the quota. Taken
            // for "this deployment sends no quota headers" it let every instance's calls out
            // unpaced at the start (16 instances: 25 calls answered 429 in the second second).
            if let Some(call) = self.sent.iter_mut().rev().find(|s| s.at == sent_at && !s.refused) {
                call.refused = true;
            }
            return;
        }
        let t = self.tuning;
        // Each limit: the fleet had used `used` of the window's `budget` when this call was
        // admitted, this instance `own` of it. The fleet as a whole should send (1 - target) x
        // budget per window; this instance takes its own part of that: own / used. Summed over
        // the instances that is exactly the fleet's goal, whatever their number, and a fleet
        // that used too much (too little) of the window slows down (speeds up) in proportion.
        let target_for = |budget: f64, left: f64, unit: f64, own: f64, window: Duration| {
            let used = (budget - left).max(unit);
            if own > 1.5 * used && used <= 1.5 * unit {
                // The window holds one call while this instance alone sent more into it: the
                // headers do not count our calls (fixed values: a gateway's, or the emulator's
                // without a quota). They cannot hold the rate back; only 429s can.
                return UNBOUNDED;
            }
            let part = (own / used).min(1.0);
            // The headroom absorbs the noise of many controllers reading at different times;
            // an instance that is (nearly) the whole fleet controls its window exactly.
            let headroom = t.alone + (t.target - t.alone) * (1.0 - part);
            part * (1.0 - headroom) * budget / window.as_secs_f64()
        };
        let mut headroom: f64 = 1.0;
        let mut target: Option<f64> = None;
        if let Some(left) = signal.remaining_tokens {
            let left = left as f64;
            self.token_budget = self.token_budget.max(left + cost);
            headroom = headroom.min(left / self.token_budget);
            let (own, _) = self.own(sent_at, self.window);
            let own = (own - t.phase * cost).max(0.5 * cost);
            target = Some(target_for(self.token_budget, left, cost, own, self.window));
            // Only an instance that is (nearly) the whole fleet: many instances bursting into
            // the same room at once overran it (40 instances: 11 % of calls 429).
            let alone = own / (self.token_budget - left).max(cost) >= 0.9;
            self.burst = if alone { (left - t.target * self.token_budget).max(0.0) } else { 0.0 };
        }
        if let Some(left) = signal.remaining_requests {
            let left = left as f64;
            self.request_budget = self.request_budget.max(left + 1.0);
            headroom = headroom.min(left / self.request_budget);
            let (tokens, requests) = self.own(sent_at, REQUEST_WINDOW);
            // In tokens: this instance's calls over the request window at their average cost.
            let per_call = if requests > 0.0 { tokens / requests } else { cost };
            let own = (requests - t.phase).max(0.5);
            let calls = target_for(self.request_budget, left, 1.0, own, REQUEST_WINDOW);
            target = Some(target.map_or(calls * per_call, |t| t.min(calls * per_call)));
        }
        let previous = self.last_observe.replace(now);
        // No headers: nothing says the quota is short, so only 429s steer.
        let Some(target) = target else { return };
        let Some(rate) = self.rate else {
            self.probed += 1;
            if self.probed < t.probes {
                return;
            }
            // The last probe's answer: the law's target at once (alone: the whole goal).
            self.rate = Some(target.max(self.floor));
            return;
        };
        if headroom < t.low {
            self.decrease(t.backoff, now);
            return;
        }
        let Some(then) = previous else { return };
        let dt = now.saturating_duration_since(then).as_secs_f64().min(5.0);
        let limited =
            self.last_limited.is_some_and(|until| now.saturating_duration_since(until) < Duration::from_secs(1));
        if target > rate && !limited {
            // Not sending as fast as allowed (concurrency, or no work): no reason to allow more.
            return;
        }
        // Move towards the target over about `smoothing` (one answer is one reading of a
        // wobbling headroom), at most by `growth`.
        let smoothing = t.smoothing_s.min(self.window.as_secs_f64() / 4.0);
        let next = if target >= UNBOUNDED {
            rate * t.growth
        } else {
            rate + (dt / smoothing).min(1.0) * (target.min(rate * t.growth) - rate)
        };
        self.rate = Some(next.clamp(self.floor, UNBOUNDED));
    }

    fn decrease(&mut self, factor: f64, now: Instant) {
        if self.last_decrease.is_some_and(|at| now.duration_since(at) < DECREASE_GAP) {
            return;
        }
        self.last_decrease = Some(now);
        let current = self.rate.unwrap_or_else(|| self.own(now, self.window).0 / self.window.as_secs_f64());
        self.rate = Some((current * factor).max(self.floor));
        self.burst = 0.0;
        self.level = self.level.min(self.capacity(self.rate.unwrap_or(0.0)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer as the deployment gives it: `left` of a 10 000-token window.
    fn answer(left: u64) -> Signal {
        Signal { remaining_tokens: Some(left), ..Signal::default() }
    }

    #[test]
    fn the_rate_is_this_instances_part_of_the_fleets_goal() {
        let window = Duration::from_secs(10);
        let mut pacer = Adaptive::new(window);
        let t0 = Instant::now();
        // Two probes of 100 tokens: the fleet had used 100 (this call) then 1 000 of 10 000.
        pacer.sent(100.0, t0);
        pacer.observe(answer(9_900), 100.0, t0, t0 + Duration::from_millis(300));
        assert_eq!(pacer.rate, None, "one more probe first");
        let t1 = t0 + Duration::from_millis(300);
        pacer.sent(100.0, t1);
        pacer.observe(answer(9_000), 100.0, t1, t1 + Duration::from_millis(300));
        // Own 200 of the fleet's 1 000, less half the answered call (its own count is at a
        // peak just after it): 15 % of 93 % of 10 000 tokens per 10 s.
        let rate = pacer.rate.unwrap();
        assert!((rate - 0.15 * 930.0).abs() < 1.0, "{rate}");
    }

    #[test]
    fn an_instance_alone_with_room_in_the_window_sends_a_burst_after_an_idle_spell() {
        // A long document's parts of 9 000 tokens against a window of 1 000 000 that stays
        // empty: at 97 % of 1 000 000 per minute, half a second of the rate holds less than one
        // part, so without the room they went one after the other even after an idle spell.
        let mut pacer = Adaptive::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..2 {
            let at = t0 + Duration::from_millis(300 * i);
            pacer.sent(9_000.0, at);
            pacer.observe(answer(1_000_000), 9_000.0, at, at + Duration::from_millis(300));
        }
        let later = t0 + Duration::from_secs(5);
        for part in 0..3 {
            assert_eq!(pacer.take(9_000.0, later), None, "part {part} waited");
        }
    }

    #[test]
    fn headers_that_do_not_count_this_instances_calls_do_not_pace_it() {
        // The emulator without a quota answers a constant remaining: paced at the "goal" a
        // lone handler of the load bench would be held to 42 calls a second.
        let mut pacer = Adaptive::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let mut at = t0;
        for _ in 0..60 {
            if let Some(wait) = pacer.take(380.0, at) {
                at += wait;
                continue;
            }
            pacer.sent(380.0, at);
            pacer.observe(answer(1_000_000), 380.0, at, at + Duration::from_millis(1));
            at += Duration::from_millis(1);
        }
        at += Duration::from_millis(10);
        for call in 0..1000 {
            assert_eq!(pacer.take(380.0, at), None, "call {call} waited");
            pacer.sent(380.0, at);
        }
    }

    #[test]
    fn a_refused_call_is_no_part_of_the_instances_use_and_leaves_no_credit() {
        let window = Duration::from_secs(10);
        let mut pacer = Adaptive::new(window);
        let t0 = Instant::now();
        for i in 0..2 {
            let at = t0 + Duration::from_millis(300 * i);
            pacer.sent(100.0, at);
            pacer.observe(answer(9_000), 100.0, at, at + Duration::from_millis(300));
        }
        let t1 = t0 + Duration::from_secs(1);
        pacer.sent(100.0, t1);
        assert_eq!(pacer.own(t1, window).0, 300.0);
        let refused = Signal { throttled: Some(Some(Duration::from_millis(50))), ..answer(0) };
        pacer.observe(refused, 100.0, t1, t1);
        assert_eq!(pacer.own(t1, window).0, 200.0, "the refused call is not counted");
        // After the retry-after the next call still waits for the (cut) rate: no credit.
        assert!(pacer.take(100.0, t1 + Duration::from_millis(60)).is_some());
    }

    #[test]
    fn answers_without_quota_headers_end_the_one_call_probe() {
        let mut pacer = Adaptive::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(pacer.take(100.0, t0), None, "the first call goes");
        pacer.sent(100.0, t0);
        assert!(pacer.take(100.0, t0).is_some(), "the others wait for the first answer");
        pacer.observe(Signal::default(), 100.0, t0, t0 + Duration::from_millis(5));
        pacer.sent(100.0, t0 + Duration::from_millis(6));
        // Before the fix every later call waited for the previous answer (one in flight).
        assert_eq!(pacer.take(100.0, t0 + Duration::from_millis(7)), None);
        assert_eq!(pacer.rate, None);
    }

    #[test]
    fn a_refusal_before_the_limiter_does_not_end_the_probing() {
        let mut pacer = Adaptive::new(Duration::from_secs(10));
        let t0 = Instant::now();
        pacer.sent(100.0, t0);
        // The first call's `reasoning_effort` refused with a 400 that carries no quota headers.
        pacer.observe(Signal { failed: true, ..Signal::default() }, 100.0, t0, t0 + Duration::from_millis(5));
        let t1 = t0 + Duration::from_millis(6);
        assert_eq!(pacer.take(100.0, t1), None, "the call is sent again at once");
        pacer.sent(100.0, t1);
        assert!(pacer.take(100.0, t1).is_some(), "still one call at a time: it said nothing about the quota");
        assert_eq!(pacer.own(t1, Duration::from_secs(10)).0, 100.0, "the refused call is not counted");
    }

    #[test]
    fn without_headers_429s_alone_steer_the_rate() {
        let mut pacer = Adaptive::new(Duration::from_secs(60));
        let t0 = Instant::now();
        pacer.sent(100.0, t0);
        pacer.observe(Signal { throttled: Some(Some(Duration::from_secs(2))), ..Signal::default() }, 100.0, t0, t0);
        assert_eq!(
            pacer.take(100.0, t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(1)),
            "held until retry-after"
        );
        assert!(pacer.rate.is_some());
        // Answers without quota headers never cut the rate.
        let rate = pacer.rate;
        pacer.observe(Signal::default(), 100.0, t0, t0 + Duration::from_secs(3));
        assert!(pacer.rate >= rate);
    }
}
