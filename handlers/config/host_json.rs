//! The host.json values the handler must agree with the host on: `functionTimeout` (the host
//! kills the process past it) and `extensions.queues.maxDequeueCount` (the last delivery), read
//! from the same file the host reads and overridable the host's way (`AzureFunctionsJobHost__...`).
//! Also the one parser of host.json time spans (the bench reads `visibilityTimeout` with it).

use std::path::Path;
use std::time::Duration;

use super::table::{
    AzureFunctionsJobHost__extensions__queues__maxDequeueCount, AzureFunctionsJobHost__functionTimeout,
};
use super::{ConfigError, table};

/// Longest `functionTimeout` accepted (7 days); `-1` (no limit) counts as one day.
pub const MAX_FUNCTION_TIMEOUT_SECS: u64 = 7 * 86_400;
const UNBOUNDED_FUNCTION_TIMEOUT: Duration = Duration::from_secs(86_400);
/// Consumption's default `functionTimeout`; the safest assumption when host.json says nothing.
const DEFAULT_FUNCTION_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_MAX_DEQUEUE_COUNT: u32 = 5;

#[derive(Debug, Clone)]
pub struct HostSettings {
    /// `extensions.queues.maxDequeueCount`: the delivery on which a failed Result is written.
    pub max_dequeue_count: u32,
    /// `functionTimeout`: the host kills the whole process past it, whatever the trigger.
    pub function_timeout: Duration,
}

impl HostSettings {
    /// Time one invocation may spend: the function timeout less a margin for writing outputs.
    pub fn invocation_budget(&self) -> Duration {
        let margin = (self.function_timeout / 10).clamp(Duration::from_secs(2), Duration::from_secs(30));
        self.function_timeout.saturating_sub(margin)
    }

    /// Reads `root/host.json`, then the `AzureFunctionsJobHost__` overrides.
    pub(super) fn read(root: &Path, get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let host = read_host_json(&root.join("host.json"))?;
        let dequeue = AzureFunctionsJobHost__extensions__queues__maxDequeueCount;
        let max_dequeue_count = if get(dequeue.name).is_some() {
            dequeue.whole(get)?
        } else {
            match host.pointer("/extensions/queues/maxDequeueCount") {
                None => u64::from(DEFAULT_MAX_DEQUEUE_COUNT),
                Some(v) => v.as_u64().filter(|n| (1..=1000).contains(n)).ok_or_else(|| {
                    ConfigError::new(
                        "host.json extensions.queues.maxDequeueCount",
                        format!("must be 1..=1000 (got {})", table::echo(&v.to_string())),
                    )
                })?,
            }
        };
        let timeout = AzureFunctionsJobHost__functionTimeout;
        let function_timeout = match (get(timeout.name), host.get("functionTimeout")) {
            (Some(value), _) => function_timeout(&value).ok_or_else(|| timeout.invalid(&value))?,
            (None, Some(value)) => value.as_str().and_then(function_timeout).ok_or_else(|| {
                ConfigError::new(
                    "host.json functionTimeout",
                    format!("must be {} (got {})", timeout.allowed(), table::echo(&value.to_string())),
                )
            })?,
            (None, None) => DEFAULT_FUNCTION_TIMEOUT,
        };
        let max_dequeue_count = u32::try_from(max_dequeue_count).unwrap_or(DEFAULT_MAX_DEQUEUE_COUNT);
        Ok(Self { max_dequeue_count, function_timeout })
    }
}

fn read_host_json(path: &Path) -> Result<serde_json::Value, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| ConfigError::new("host.json", format!("{} is not valid JSON: {e}", path.display()))),
        Err(_) => Ok(serde_json::Value::Null),
    }
}

/// `functionTimeout`: 1 s ..= 7 days, or `-1` (no limit, taken as one day).
fn function_timeout(value: &str) -> Option<Duration> {
    if value.trim() == "-1" {
        return Some(UNBOUNDED_FUNCTION_TIMEOUT);
    }
    parse_timespan(value).filter(|d| *d >= Duration::from_secs(1) && d.as_secs() <= MAX_FUNCTION_TIMEOUT_SECS)
}

/// A .NET `TimeSpan` the way host.json writes one: `[d.]hh:mm:ss[.fffffff]`, hours below 24,
/// minutes and seconds below 60, at most 10 675 199 days (.NET's limit). Anything else,
/// including a sign, is `None`: no value can panic or overflow.
pub fn parse_timespan(value: &str) -> Option<Duration> {
    let value = value.trim();
    let (days, clock) = match value.split_once(':').map(|(head, _)| head.split_once('.')) {
        Some(Some((days, _))) => (digits(days, 8)?, &value[days.len() + 1..]),
        _ => (0, value),
    };
    let mut parts = clock.split(':');
    let (hours, minutes, seconds) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (seconds, fraction) = match seconds.split_once('.') {
        Some((s, f)) if !f.is_empty() && f.len() <= 7 => (s, digits(f, 7)? * 10u64.pow(7 - f.len() as u32)),
        Some(_) => return None,
        None => (seconds, 0),
    };
    let (hours, minutes, seconds) = (digits(hours, 2)?, digits(minutes, 2)?, digits(seconds, 2)?);
    if hours >= 24 || minutes >= 60 || seconds >= 60 || days > 10_675_199 {
        return None;
    }
    let whole = days * 86_400 + hours * 3600 + minutes * 60 + seconds;
    Some(Duration::from_secs(whole) + Duration::from_nanos(fraction * 100))
}

/// `max_len` ASCII digits or fewer (at least one) as a number.
fn digits(text: &str, max_len: usize) -> Option<u64> {
    (!text.is_empty() && text.len() <= max_len && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())?
}

/// `hh:mm:ss`, with `d.` in front past a day: the inverse of [`parse_timespan`] for whole seconds.
pub fn format_timespan(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let clock = format!("{:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60);
    if days > 0 { format!("{days}.{clock}") } else { clock }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespans_parse_like_host_json() {
        assert_eq!(parse_timespan("00:10:00"), Some(Duration::from_secs(600)));
        assert_eq!(parse_timespan("1.00:00:30"), Some(Duration::from_secs(86_430)));
        assert_eq!(parse_timespan("00:00:30.5"), Some(Duration::from_millis(30_500)));
        assert_eq!(parse_timespan("00:00:00"), Some(Duration::ZERO));
        for bad in [
            "ten",
            "00:00:-1",
            "-00:00:01",
            "NaN",
            "00:00:NaN",
            "1e300",
            "00:00:1e300",
            "99999999999.00:00:00",
            "00:60:00",
            "24:00:00",
            "00:00:00.",
            "00:00:00.12345678",
            "1.2.00:00:00",
            "00:00",
            "é:00:00",
            "00:00:00:00",
            "",
        ] {
            assert_eq!(parse_timespan(bad), None, "{bad}");
        }
        for secs in [0, 59, 3600, 86_399, 86_400, 7 * 86_400 + 1] {
            assert_eq!(parse_timespan(&format_timespan(secs)), Some(Duration::from_secs(secs)));
        }
    }

    #[test]
    fn function_timeouts_are_bounded() {
        assert_eq!(function_timeout("-1"), Some(UNBOUNDED_FUNCTION_TIMEOUT));
        assert_eq!(function_timeout("00:00:00"), None);
        assert_eq!(function_timeout("8.00:00:00"), None);
        assert_eq!(function_timeout("7.00:00:00"), Some(Duration::from_secs(MAX_FUNCTION_TIMEOUT_SECS)));
        let host = HostSettings { max_dequeue_count: 5, function_timeout: Duration::from_secs(600) };
        assert_eq!(host.invocation_budget(), Duration::from_secs(570));
    }
}
