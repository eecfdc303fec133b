//! Pacing of Azure OpenAI calls per instance: at most `AOAI_MAX_CONCURRENCY` in flight, and an
//! optional tokens-per-minute budget, so a large batch runs just under the deployment's limit
//! instead of in a 429 storm.
//!
//! The budget is a token bucket holding at most 1.5 s of budget, refilled at 97.5 % of the
//! budget's rate and starting empty: any 60 s window then stays within the budget (1.5 s +
//! 58.5 s), and so does the rate measured from start-up. The cost of a call is estimated the
//! way Azure OpenAI's limiter does ([`token_cost::estimated_tokens`]: prompt characters / 4 plus
//! the requested maximum completion tokens).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

pub struct Pacer {
    slots: std::sync::Arc<Semaphore>,
    budget: Option<Mutex<Bucket>>,
}

struct Bucket {
    capacity: f64,
    per_second: f64,
    /// May go negative: a call larger than the burst runs once the bucket is full, then the
    /// debt is paid off before the next one.
    level: f64,
    updated: Instant,
}

/// Held for the duration of one call.
pub struct Permit {
    _slot: OwnedSemaphorePermit,
}

impl Pacer {
    pub fn new(max_concurrency: usize, tokens_per_minute: u64) -> Self {
        let budget = (tokens_per_minute > 0).then(|| {
            let tpm = tokens_per_minute as f64;
            let capacity = tpm / 40.0;
            Mutex::new(Bucket { capacity, per_second: tpm * 0.975 / 60.0, level: 0.0, updated: Instant::now() })
        });
        Self { slots: std::sync::Arc::new(Semaphore::new(max_concurrency)), budget }
    }

    /// Waits for a slot and for `cost` tokens of budget, but not past `deadline`.
    pub async fn acquire(&self, cost: u64, deadline: Instant) -> Result<Permit, ApiError> {
        let slot = tokio::time::timeout_at(deadline.into(), self.slots.clone().acquire_owned())
            .await
            .map_err(|_| busy("every Azure OpenAI slot of this instance stayed busy"))?
            .map_err(|_| ApiError::internal("the pacer was closed"))?;
        if let Some(budget) = &self.budget {
            loop {
                let wait = budget.lock().unwrap_or_else(|e| e.into_inner()).take(cost as f64, Instant::now());
                let Some(wait) = wait else { break };
                if Instant::now() + wait > deadline {
                    return Err(busy("the tokens-per-minute budget (AOAI_TOKENS_PER_MINUTE) is used up"));
                }
                tracing::debug!(wait_ms = wait.as_millis() as u64, cost, "waiting for tokens-per-minute budget");
                tokio::time::sleep(wait).await;
            }
        }
        Ok(Permit { _slot: slot })
    }
}

impl Bucket {
    /// Takes `cost` if the bucket allows it now, else says how long to wait.
    fn take(&mut self, cost: f64, now: Instant) -> Option<Duration> {
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
        // A call bigger than the burst may go once the bucket is full.
        let needed = cost.min(self.capacity);
        if self.level >= needed {
            self.level -= cost;
            None
        } else {
            Some(Duration::from_secs_f64((needed - self.level) / self.per_second))
        }
    }
}

fn busy(what: &str) -> ApiError {
    ApiError::UpstreamThrottled {
        message: format!(
            "{what} until this invocation's deadline; the request was not sent. Retry later or raise the limit."
        ),
        retry_after: Some(Duration::from_secs(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_budget_rate_and_no_more() {
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
