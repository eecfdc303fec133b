//! The optional per-instance cap (`AOAI_TOKENS_PER_MINUTE`): a token bucket.

use std::time::{Duration, Instant};

/// The per-instance cap: a token bucket.
pub(super) struct Bucket {
    pub(super) capacity: f64,
    pub(super) per_second: f64,
    /// May go negative: a call larger than the burst runs once the bucket is full, then the
    /// debt is paid off before the next one.
    pub(super) level: f64,
    pub(super) updated: Instant,
}

impl Bucket {
    /// A call the deployment refused (429) used nothing of the cap.
    pub(super) fn refund(&mut self, cost: f64) {
        self.level = (self.level + cost).min(self.capacity);
    }

    /// At most 1.5 s of the cap, refilled at 97.5 % and starting empty: any 60 s window then
    /// stays within the cap (1.5 s + 58.5 s), and so does the rate measured from start-up.
    pub(super) fn cap(tokens_per_minute: f64) -> Self {
        Bucket {
            capacity: tokens_per_minute / 40.0,
            per_second: tokens_per_minute * 0.975 / 60.0,
            level: 0.0,
            updated: Instant::now(),
        }
    }

    /// Takes `cost` if the bucket allows it now, else says how long to wait.
    pub(super) fn take(&mut self, cost: f64, now: Instant) -> Option<Duration> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
