//! Which traces the [`super::recorder`] keeps, and at what rate: the decision for each new root
//! span, whether it starts a trace or continues a caller's ([`super::recorder::continuing`]). Each
//! decision carries the percentage of traces kept at that moment; every kept span is exported
//! with it (`microsoft.sample_rate`), so Application Insights counts each item as
//! 100 / percentage and the portal's request counts, rates and sums stay right.
//!
//! The rules (`OTEL_TRACES_SAMPLER`, parsed in [`crate::config::TraceSampling`]):
//! - the OpenTelemetry ratio samplers: the SDK's `TraceIdRatioBased` test on the trace id's low
//!   bits, parent-based or not;
//! - `microsoft.fixed_percentage`: the Azure Monitor .NET exporter's rule, a DJB2 score of the
//!   trace id's upper-case hex under the share (other Application Insights SDKs hash other
//!   forms of the id, so they need not keep the same traces);
//! - `microsoft.rate_limited` (the default with Application Insights): the Azure Monitor
//!   distros' adaptive rate. The arrival rate of new traces is estimated over a window that
//!   forgets with a 0.1 s time constant; the kept percentage is the target rate over that
//!   estimate (at most 100), rounded down so that each item stands for a whole number of
//!   traces; the trace is kept when its DJB2 score is under it. One change from the distros:
//!   the first trace after start is always kept. Their estimate starts from an empty window, so
//!   a request a few milliseconds after a cold start (the one an operator looks for on a
//!   scale-out) is kept with a probability of about rate × elapsed time.

use std::sync::Mutex;
use std::time::Instant;

use opentelemetry::trace::{SpanContext, TraceId};

use crate::config::TraceSampling;

/// One sampling decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub sampled: bool,
    /// The percentage of traces kept when it was made (100: all).
    pub percent: f64,
}

/// The sampler of one process (`OTEL_TRACES_SAMPLER` with its state); see the module
/// documentation.
#[derive(Debug)]
pub enum Sampler {
    Ratio { parent_based: bool, ratio: f64 },
    FixedPercentage { ratio: f64 },
    RateLimited(RateLimit),
}

impl Sampler {
    pub fn new(sampling: TraceSampling) -> Self {
        match sampling {
            TraceSampling::Ratio { parent_based, ratio } => Self::Ratio { parent_based, ratio },
            TraceSampling::FixedPercentage { ratio } => Self::FixedPercentage { ratio },
            TraceSampling::RateLimited { per_second } => Self::RateLimited(RateLimit::new(per_second)),
        }
    }

    /// A new trace (a root span): counted by the rate limit, then decided on `trace_id`.
    pub fn new_trace(&self, trace_id: TraceId) -> Decision {
        match self {
            Self::Ratio { ratio, .. } => Decision { sampled: keeps(*ratio, trace_id), percent: percent(*ratio) },
            Self::FixedPercentage { ratio } => fixed(*ratio, trace_id),
            Self::RateLimited(rate) => by_score(rate.percent(), trace_id),
        }
    }

    /// A root span that continues the caller's trace `parent`; `root` is [`Sampler::new_trace`]'s
    /// decision on the caller's trace id (which counted it). Only a parent-based ratio sampler
    /// follows the caller's sampled flag instead: the flag does not say at what rate the caller
    /// sampled.
    pub fn continued(&self, parent: &SpanContext, root: Decision) -> Decision {
        match self {
            // Kept because the caller kept it, at a rate we do not know: the item stands for itself.
            Self::Ratio { parent_based: true, .. } => Decision { sampled: parent.is_sampled(), percent: 100.0 },
            Self::Ratio { ratio, .. } => Decision { sampled: keeps(*ratio, parent.trace_id()), ..root },
            Self::FixedPercentage { ratio } => fixed(*ratio, parent.trace_id()),
            Self::RateLimited(_) => by_score(root.percent, parent.trace_id()),
        }
    }
}

/// A ratio as the percentage an item stands for: 100 when all or nothing is kept (nothing is
/// sent at 0); rounded to 1e-9 so that 0.29 says 29, not 28.999999999999996.
fn percent(ratio: f64) -> f64 {
    if ratio > 0.0 && ratio < 1.0 { (ratio * 100.0 * 1e9).round() / 1e9 } else { 100.0 }
}

/// The SDK's `TraceIdRatioBased` decision: the trace id's low 63 bits under `ratio` × 2⁶³.
pub fn keeps(ratio: f64, trace_id: TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let low = u64::from_be_bytes(trace_id.to_bytes()[8..].try_into().unwrap_or_default());
    (low >> 1) < bound
}

/// `microsoft.fixed_percentage` at `ratio`: Application Insights' decision (0 keeps nothing).
fn fixed(ratio: f64, trace_id: TraceId) -> Decision {
    Decision { sampled: ratio > 0.0 && by_score(ratio * 100.0, trace_id).sampled, percent: percent(ratio) }
}

/// Application Insights' decision at `percent`: kept when the trace id's score is under it.
fn by_score(percent: f64, trace_id: TraceId) -> Decision {
    let sampled = percent >= 100.0 || (percent > 0.0 && 100.0 * score(trace_id) < percent);
    Decision { sampled, percent }
}

/// Application Insights' sampling score of a trace id, in 0..=1: the DJB2 hash (32-bit,
/// wrapping) of its upper-case hex, made non-negative, over `i32::MAX`.
fn score(trace_id: TraceId) -> f64 {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut hash: i32 = 5381;
    for byte in trace_id.to_bytes() {
        for digit in [HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]] {
            hash = hash.wrapping_shl(5).wrapping_add(hash).wrapping_add(i32::from(digit));
        }
    }
    let hash = if hash == i32::MIN { i32::MAX } else { hash.abs() };
    f64::from(hash) / f64::from(i32::MAX)
}

/// `microsoft.rate_limited`'s estimate of the arrival rate of new traces.
#[derive(Debug)]
pub struct RateLimit {
    /// The target, in traces per nanosecond.
    per_nano: f64,
    start: Instant,
    window: Mutex<Window>,
}

/// The decaying window: `count` traces arrived in the last `nanos` nanoseconds (both weighted
/// by recency); `last` is when the window was last moved, in nanoseconds since start.
#[derive(Debug, Default)]
struct Window {
    count: f64,
    nanos: f64,
    last: u64,
    first_kept: bool,
}

/// How fast the estimate forgets: the distros' adaptation time.
const ADAPTATION_NANOS: f64 = 0.1e9;

impl RateLimit {
    fn new(per_second: f64) -> Self {
        Self { per_nano: per_second * 1e-9, start: Instant::now(), window: Mutex::new(Window::default()) }
    }

    fn percent(&self) -> f64 {
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.percent_at(now)
    }

    /// Counts one new trace at `now` (nanoseconds since start) and returns the percentage kept.
    fn percent_at(&self, now: u64) -> f64 {
        if self.per_nano <= 0.0 {
            return 0.0;
        }
        let mut window = self.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if now > window.last {
            let elapsed = (now - window.last) as f64;
            let decay = (-elapsed / ADAPTATION_NANOS).exp();
            window.count = window.count * decay + 1.0;
            window.nanos = window.nanos * decay + elapsed;
            window.last = now;
        } else {
            window.count += 1.0;
        }
        if !window.first_kept {
            window.first_kept = true;
            return 100.0;
        }
        let probability = (window.nanos * self.per_nano / window.count).min(1.0);
        if probability <= 0.0 {
            return 0.0;
        }
        // Rounded down to 100 / n: each kept item then stands for n traces exactly.
        100.0 / (100.0 / (100.0 * probability)).ceil()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceState};

    use super::*;

    fn trace(hex: &str) -> TraceId {
        TraceId::from_hex(hex).unwrap()
    }

    #[test]
    fn the_score_is_application_insights_djb2_of_the_upper_case_hex() {
        // Computed independently (32-bit wrapping DJB2 over the upper-case hex, |h| / i32::MAX).
        assert_eq!(score(trace("4bf92f3577b34da6a3ce929d0e0e4736")), 1_330_905_010.0 / 2_147_483_647.0);
        assert_eq!(score(trace("00000000000000000000000000000001")), 50_237_190.0 / 2_147_483_647.0);
    }

    #[test]
    fn a_fixed_percentage_keeps_by_score_and_ignores_the_callers_flag() {
        let sampler = Sampler::new(TraceSampling::FixedPercentage { ratio: 0.6 });
        // Scores 0.023 and 0.620.
        let (low, high) = (trace("00000000000000000000000000000001"), trace("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(sampler.new_trace(low), Decision { sampled: true, percent: 60.0 });
        assert_eq!(sampler.new_trace(high), Decision { sampled: false, percent: 60.0 });
        let unsampled_caller = SpanContext::new(low, SpanId::from(1), TraceFlags::default(), true, TraceState::NONE);
        let decision = sampler.continued(&unsampled_caller, sampler.new_trace(low));
        assert_eq!(decision, Decision { sampled: true, percent: 60.0 });
        assert_eq!(percent(0.29), 29.0, "no float noise in sampleRate");
    }

    #[test]
    fn a_trace_kept_for_its_caller_stands_for_itself() {
        let sampler = Sampler::new(TraceSampling::Ratio { parent_based: true, ratio: 0.25 });
        let id = TraceId::from(u128::from(u64::MAX));
        let sampled_caller = SpanContext::new(id, SpanId::from(1), TraceFlags::SAMPLED, true, TraceState::NONE);
        // Dropped at 0.25 as a new trace, kept because the caller kept it.
        assert!(!sampler.new_trace(id).sampled);
        let decision = sampler.continued(&sampled_caller, sampler.new_trace(id));
        assert_eq!(decision, Decision { sampled: true, percent: 100.0 });
    }

    #[test]
    fn the_rate_limit_keeps_the_first_trace_then_about_its_rate() {
        let rate = RateLimit::new(5.0);
        let ms = 1_000_000;
        assert_eq!(rate.percent_at(3 * ms), 100.0, "the first trace after start");
        // 1000 new traces per second for two seconds: the kept share settles at 5 / 1000.
        let mut kept = 0.0;
        let mut last = 0.0;
        for i in 1..=2000u64 {
            last = rate.percent_at(3 * ms + i * ms);
            assert!((0.0..=100.0).contains(&last));
            let stands_for = 100.0 / last;
            assert!((stands_for - stands_for.round()).abs() < 1e-9, "each item stands for whole traces: {last}");
            if i > 1000 {
                kept += last / 100.0;
            }
        }
        assert!((4.0..=6.0).contains(&kept), "traces kept in the second second: {kept}");
        assert_eq!(last, 0.5);
        // After a quiet second, everything is kept again: up to about five traces at one instant
        // are within 5 per second over that second; by the sixth, half are kept.
        for _ in 0..4 {
            assert_eq!(rate.percent_at(3003 * ms), 100.0);
        }
        rate.percent_at(3003 * ms);
        assert_eq!(rate.percent_at(3003 * ms), 50.0);
    }

    #[test]
    fn a_zero_rate_or_share_keeps_nothing() {
        let lowest = trace("00000000000000000000000000000001");
        for sampling in [TraceSampling::RateLimited { per_second: 0.0 }, TraceSampling::FixedPercentage { ratio: 0.0 }]
        {
            let sampler = Sampler::new(sampling);
            assert!(!sampler.new_trace(lowest).sampled, "{sampling:?}");
            let caller = SpanContext::new(lowest, SpanId::from(1), TraceFlags::SAMPLED, true, TraceState::NONE);
            assert!(!sampler.continued(&caller, sampler.new_trace(lowest)).sampled, "{sampling:?}");
        }
        let every = Sampler::new(TraceSampling::FixedPercentage { ratio: 1.0 });
        assert_eq!(
            every.new_trace(trace("ffffffffffffffffffffffffffffffff")),
            Decision { sampled: true, percent: 100.0 }
        );
    }

    #[test]
    fn ratio_sampling_decides_on_the_trace_ids_low_bits_like_the_sdk() {
        let low = |bits: u64| TraceId::from(u128::from(bits));
        assert!(keeps(1.0, low(u64::MAX)));
        assert!(!keeps(0.0, low(0)));
        // 0.5 × 2⁶³ = 2⁶²: the low 63 bits (id >> 1) must be under it.
        assert!(keeps(0.5, low((1 << 63) - 2)));
        assert!(!keeps(0.5, low(1 << 63)));
        let sampler = Sampler::new(TraceSampling::Ratio { parent_based: false, ratio: 0.25 });
        assert_eq!(sampler.new_trace(low(0)), Decision { sampled: true, percent: 25.0 });
    }
}
