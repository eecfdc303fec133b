//! The tokens-per-minute budget: a sliding 60 s window of admitted request costs.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(crate) struct Window {
    admitted: VecDeque<(Instant, u64)>,
}

impl Window {
    fn expire(&mut self, now: Instant) {
        while self.admitted.front().is_some_and(|(at, _)| now.duration_since(*at) >= WINDOW) {
            self.admitted.pop_front();
        }
    }

    /// Tokens admitted in the last 60 s.
    pub fn used(&mut self, now: Instant) -> u64 {
        self.expire(now);
        self.admitted.iter().map(|(_, cost)| cost).sum()
    }

    /// Requests admitted in the last 60 s (as of the last `used` or `admit`).
    pub fn len(&self) -> usize {
        self.admitted.len()
    }

    /// Admits `cost` if it fits in `budget`; otherwise returns how long until enough cost
    /// leaves the window (a full window when the cost alone exceeds the budget).
    pub fn admit(&mut self, now: Instant, cost: u64, budget: u64) -> Result<(), Duration> {
        let used = self.used(now);
        if used + cost <= budget {
            self.admitted.push_back((now, cost));
            return Ok(());
        }
        if cost > budget {
            return Err(WINDOW);
        }
        let mut freed = 0;
        for (at, c) in &self.admitted {
            freed += c;
            if used - freed + cost <= budget {
                return Err((*at + WINDOW).saturating_duration_since(now).max(Duration::from_millis(1)));
            }
        }
        Err(WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_over_budget_and_says_when_it_fits() {
        let mut w = Window::default();
        let t0 = Instant::now();
        assert!(w.admit(t0, 60, 100).is_ok());
        assert!(w.admit(t0 + Duration::from_secs(10), 30, 100).is_ok());
        let wait = w.admit(t0 + Duration::from_secs(20), 50, 100).unwrap_err();
        assert_eq!(wait, Duration::from_secs(40));
        assert_eq!(w.used(t0 + Duration::from_secs(20)), 90, "a rejection consumes nothing");
        assert!(w.admit(t0 + Duration::from_secs(60), 50, 100).is_ok());
        assert_eq!(w.admit(t0, 101, 100).unwrap_err(), WINDOW);
    }
}
