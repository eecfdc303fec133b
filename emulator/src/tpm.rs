//! A sliding window of admitted costs (tokens, or 1 per request): what it holds now, and how
//! long until a new cost fits under a budget.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub(crate) struct Window {
    length: Duration,
    admitted: VecDeque<(Instant, u64)>,
    /// The sum of `admitted`'s costs.
    total: u64,
}

impl Window {
    pub fn new(length: Duration) -> Self {
        Self { length, admitted: VecDeque::new(), total: 0 }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, cost)) = self.admitted.front() {
            if now.duration_since(at) < self.length {
                break;
            }
            self.admitted.pop_front();
            self.total -= cost;
        }
    }

    /// The cost admitted within the last window length.
    pub fn used(&mut self, now: Instant) -> u64 {
        self.expire(now);
        self.total
    }

    /// Records `cost` as admitted at `now`.
    pub fn push(&mut self, now: Instant, cost: u64) {
        self.admitted.push_back((now, cost));
        self.total = self.total.saturating_add(cost);
    }

    /// None when `cost` fits in `budget` now; otherwise how long until enough cost leaves the
    /// window (a whole window when the cost alone exceeds the budget).
    pub fn wait_until_fits(&mut self, now: Instant, cost: u64, budget: u64) -> Option<Duration> {
        let used = self.used(now);
        if used.saturating_add(cost) <= budget {
            return None;
        }
        if cost > budget {
            return Some(self.length);
        }
        let mut freed = 0;
        for (at, c) in &self.admitted {
            freed += c;
            if used - freed + cost <= budget {
                return Some((*at + self.length).saturating_duration_since(now).max(Duration::from_millis(1)));
            }
        }
        Some(self.length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_when_a_cost_fits_and_forgets_what_left_the_window() {
        let mut w = Window::new(Duration::from_secs(60));
        let t0 = Instant::now();
        w.push(t0, 60);
        assert_eq!(w.wait_until_fits(t0 + Duration::from_secs(10), 30, 100), None);
        w.push(t0 + Duration::from_secs(10), 30);
        let wait = w.wait_until_fits(t0 + Duration::from_secs(20), 50, 100);
        assert_eq!(wait, Some(Duration::from_secs(40)));
        assert_eq!(w.used(t0 + Duration::from_secs(20)), 90, "asking consumes nothing");
        assert_eq!(w.wait_until_fits(t0 + Duration::from_secs(60), 50, 100), None);
        assert_eq!(w.wait_until_fits(t0, 101, 100), Some(Duration::from_secs(60)));
    }
}
