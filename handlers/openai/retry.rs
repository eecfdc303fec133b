//! How long to wait before retrying Azure OpenAI: the server's own hint first
//! (`retry-after-ms`, `x-ms-retry-after-ms`, `retry-after`, then `x-ratelimit-reset-*`),
//! otherwise jittered exponential backoff; every wait capped.
//!
//! Every header is untrusted: numbers are parsed with checked conversions and clamped to
//! [`HINT_CEILING`] before any arithmetic, so no answer (`retry-after: 1e300`,
//! `x-ratelimit-reset-tokens: 99999999999999999999h`, negative, `NaN`) can overflow a
//! `Duration` and panic.

use std::time::Duration;

use reqwest::header::HeaderMap;

/// Attempts per call within one invocation (the queue redelivers beyond that).
pub const MAX_ATTEMPTS: u32 = 6;
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// The longest server hint believed (longer ones are clamped to it): above any configurable
/// retry cap (`AOAI_MAX_RETRY_WAIT_SECONDS` ≤ 600), far below what overflows a `Duration`.
pub const HINT_CEILING: Duration = Duration::from_secs(24 * 3600);

/// The wait the server asked for, if it said.
pub fn server_hint(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let millis = |name: &str| text(name).and_then(|v| seconds(v, 0.001));
    if let Some(wait) = millis("retry-after-ms").or_else(|| millis("x-ms-retry-after-ms")) {
        return Some(wait);
    }
    if let Some(value) = text("retry-after") {
        if let Some(wait) = seconds(value, 1.0) {
            return Some(wait);
        }
        if let Ok(when) = httpdate_to_system_time(value) {
            let wait = when.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO);
            return Some(wait.min(HINT_CEILING));
        }
    }
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "x-rate-limit-reset-tokens"]
        .iter()
        .filter_map(|name| text(name).and_then(parse_reset))
        .max()
}

/// The wait before attempt `attempt + 1` (attempt counts from 1), capped at `cap`.
pub fn wait_before_retry(attempt: u32, hint: Option<Duration>, cap: Duration) -> Duration {
    let cap = cap.min(HINT_CEILING);
    let wait = match hint {
        // A little jitter on top of the server's hint spreads the herd that got the same hint.
        // Clamped first: the jitter arithmetic then cannot overflow, whatever the hint.
        Some(hint) => {
            let hint = hint.min(cap);
            hint.saturating_add(jitter(hint / 10 + Duration::from_millis(20)))
        }
        None => {
            let exp = BACKOFF_BASE.saturating_mul(1 << attempt.saturating_sub(1).min(10));
            // "Equal jitter": half fixed, half random.
            exp / 2 + jitter(exp / 2)
        }
    };
    wait.min(cap)
}

fn jitter(max: Duration) -> Duration {
    // `max` is at most a tenth of the ceiling plus 20 ms: the product cannot overflow.
    max.mul_f64(rand::random::<f64>())
}

/// `value` (a decimal number) times `unit` seconds, clamped to [`HINT_CEILING`]; `None` for
/// anything that is not a finite, non-negative number.
fn seconds(value: &str, unit: f64) -> Option<Duration> {
    let number = value.parse::<f64>().ok().filter(|n| n.is_finite() && *n >= 0.0)?;
    Some(clamped_secs(number * unit))
}

/// Never panics: `Duration::from_secs_f64` does on values a `Duration` cannot hold.
fn clamped_secs(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs.min(HINT_CEILING.as_secs_f64())).unwrap_or(HINT_CEILING)
}

/// OpenAI-style reset durations: "20ms", "1s", "6m0s", "1h2m3.5s", or plain seconds; clamped to
/// [`HINT_CEILING`].
pub fn parse_reset(value: &str) -> Option<Duration> {
    if let Some(wait) = seconds(value, 1.0) {
        return Some(wait);
    }
    if value.len() > 64 {
        return None;
    }
    let mut total = 0.0;
    let mut number = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                0.001
            }
            ('h', _) => 3600.0,
            ('m', _) => 60.0,
            ('s', _) => 1.0,
            _ => return None,
        };
        total += number.parse::<f64>().ok()? * unit;
        number.clear();
    }
    // An overflowing sum is infinite, so clamped like any long wait.
    (number.is_empty() && !total.is_nan()).then(|| clamped_secs(total))
}

/// `Retry-After` may also be an HTTP date (RFC 7231 IMF-fixdate).
fn httpdate_to_system_time(value: &str) -> Result<std::time::SystemTime, ()> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let parsed = time::PrimitiveDateTime::parse(value, &format).map_err(|_| ())?;
    Ok(parsed.assume_utc().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after() {
        let h = headers(&[("retry-after", "6"), ("retry-after-ms", "1500")]);
        assert_eq!(server_hint(&h), Some(Duration::from_millis(1500)));
        assert_eq!(server_hint(&headers(&[("x-ms-retry-after-ms", "250")])), Some(Duration::from_millis(250)));
        assert_eq!(server_hint(&headers(&[("retry-after", "6")])), Some(Duration::from_secs(6)));
    }

    #[test]
    fn ratelimit_reset_durations_parse() {
        assert_eq!(parse_reset("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(parse_reset("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_reset("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_reset("soon"), None);
        let h = headers(&[("x-ratelimit-reset-tokens", "2s"), ("x-ratelimit-reset-requests", "500ms")]);
        assert_eq!(server_hint(&h), Some(Duration::from_secs(2)));
    }

    #[test]
    fn waits_are_capped_and_grow() {
        let cap = Duration::from_secs(30);
        assert_eq!(wait_before_retry(1, Some(Duration::from_secs(86_400)), cap), cap);
        for attempt in 1..=MAX_ATTEMPTS {
            let w = wait_before_retry(attempt, None, cap);
            let exp = BACKOFF_BASE * (1 << (attempt - 1));
            assert!(w >= exp / 2 && w <= exp.min(cap), "attempt {attempt}: {w:?}");
        }
    }

    /// Issue 12, item 2: each of these panicked in `Duration::from_secs_f64` (and, with
    /// `panic = "abort"`, killed every in-flight invocation).
    #[test]
    fn hostile_hints_are_clamped_not_panics() {
        let ceiling = Some(HINT_CEILING);
        for (name, value, expected) in [
            ("retry-after", "1e300", ceiling),
            ("retry-after", "18446744073709551616", ceiling),
            ("retry-after-ms", "1e30", ceiling),
            ("x-ms-retry-after-ms", "1.7976931348623157e308", ceiling),
            ("x-ratelimit-reset-tokens", "99999999999999999999h", ceiling),
            ("x-ratelimit-reset-requests", "99999999999999999999h1m99999999999999999999s", ceiling),
            ("x-ratelimit-reset-tokens", "1e300", ceiling),
            ("retry-after", "-5", None),
            ("retry-after", "NaN", None),
            ("retry-after", "inf", None),
            ("retry-after-ms", "-0.5", None),
            ("x-ratelimit-reset-tokens", "5x", None),
            ("x-ratelimit-reset-tokens", "..h", None),
            ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT", ceiling),
        ] {
            assert_eq!(server_hint(&headers(&[(name, value)])), expected, "{name}: {value}");
        }
        for hint in [Duration::MAX, HINT_CEILING, Duration::from_secs(u64::MAX / 2)] {
            let cap = Duration::from_secs(600);
            assert_eq!(wait_before_retry(1, Some(hint), cap), cap);
            assert!(wait_before_retry(u32::MAX, None, Duration::MAX) <= HINT_CEILING);
        }
    }

    #[test]
    fn http_date_retry_after() {
        let h = headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert_eq!(server_hint(&h), Some(Duration::ZERO));
    }
}
