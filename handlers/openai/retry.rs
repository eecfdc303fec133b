//! How long to wait before retrying Azure OpenAI: the server's own hint first
//! (`retry-after-ms`, `x-ms-retry-after-ms`, `retry-after`, then `x-ratelimit-reset-*`),
//! otherwise jittered exponential backoff; every wait capped.

use std::time::Duration;

use reqwest::header::HeaderMap;

/// Attempts per call within one invocation (the queue redelivers beyond that).
pub const MAX_ATTEMPTS: u32 = 6;
const BACKOFF_BASE: Duration = Duration::from_millis(500);

/// The wait the server asked for, if it said.
pub fn server_hint(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let millis = |name: &str| text(name).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite() && *v >= 0.0);
    if let Some(ms) = millis("retry-after-ms").or_else(|| millis("x-ms-retry-after-ms")) {
        return Some(seconds(ms / 1000.0));
    }
    if let Some(value) = text("retry-after") {
        if let Ok(secs) = value.parse::<f64>()
            && secs.is_finite()
            && secs >= 0.0
        {
            return Some(seconds(secs));
        }
        if let Ok(when) = httpdate_to_system_time(value) {
            return Some(when.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO));
        }
    }
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "x-rate-limit-reset-tokens"]
        .iter()
        .filter_map(|name| text(name).and_then(parse_reset))
        .max()
}

/// The wait before attempt `attempt + 1` (attempt counts from 1), capped at `cap`.
pub fn wait_before_retry(attempt: u32, hint: Option<Duration>, cap: Duration) -> Duration {
    let wait = match hint {
        // A little jitter on top of the server's hint spreads the herd that got the same hint.
        Some(hint) => hint.saturating_add(jitter(hint / 10 + Duration::from_millis(20))),
        None => {
            let exp = BACKOFF_BASE.saturating_mul(1 << attempt.saturating_sub(1).min(10));
            // "Equal jitter": half fixed, half random.
            exp / 2 + jitter(exp / 2)
        }
    };
    wait.min(cap)
}

fn jitter(max: Duration) -> Duration {
    max.mul_f64(rand::random::<f64>())
}

/// OpenAI-style reset durations: "20ms", "1s", "6m0s", "1h2m3.5s", or plain seconds.
fn parse_reset(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| seconds(secs));
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
    (number.is_empty() && total.is_finite()).then(|| seconds(total))
}

/// Non-negative finite seconds as a Duration; a value too large for one saturates (never panics:
/// the number comes from an upstream header, and every wait is capped later anyway).
fn seconds(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
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

    #[test]
    fn absurd_values_saturate_instead_of_panicking() {
        let huge = "1e300";
        for name in ["retry-after-ms", "x-ms-retry-after-ms", "retry-after", "x-ratelimit-reset-tokens"] {
            assert_eq!(server_hint(&headers(&[(name, huge)])), Some(Duration::MAX), "{name}");
        }
        assert_eq!(parse_reset("99999999999999999999h"), Some(Duration::MAX));
        assert_eq!(server_hint(&headers(&[("retry-after-ms", "-5"), ("retry-after", "NaN")])), None);
    }

    #[test]
    fn http_date_retry_after() {
        let h = headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert_eq!(server_hint(&h), Some(Duration::ZERO));
    }
}
