//! The fleet bench in simulated time, to iterate on the controller in seconds: N instances,
//! each with the host's invocations in flight (24) and `AOAI_MAX_CONCURRENCY` slots (8), take
//! jobs from one queue and call one deployment that enforces its quota as Azure does (token
//! estimates over a sliding window, requests over 10 s, 429 + retry-after when full, the
//! remaining quota on every answer). A 429 is retried as the client does (the server's wait
//! plus jitter, the slot given back meanwhile, at most 6 attempts). Deterministic: 5 ms steps,
//! a seeded jitter. `scripts/bench --fleet` measures the same with the real processes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Signal;
use super::adaptive::{Adaptive, Tuning};

/// A deployment as Azure enforces it: token estimates over a sliding window, requests over 10 s.
struct Deployment {
    token_budget: f64,
    window: Duration,
    request_budget: f64,
    tokens: VecDeque<(Instant, f64)>,
    requests: VecDeque<Instant>,
    used: f64,
}

impl Deployment {
    fn new(tokens_per_minute: f64, window: Duration) -> Self {
        Deployment {
            token_budget: (tokens_per_minute * window.as_secs_f64() / 60.0).round(),
            window,
            request_budget: (tokens_per_minute / 1000.0).floor().max(1.0),
            tokens: VecDeque::new(),
            requests: VecDeque::new(),
            used: 0.0,
        }
    }

    /// Admits a call (Some(remaining)) or refuses it (the wait until it fits).
    fn call(&mut self, cost: f64, now: Instant) -> Signal {
        while let Some(&(at, c)) = self.tokens.front() {
            if now.duration_since(at) < self.window {
                break;
            }
            self.tokens.pop_front();
            self.used -= c;
        }
        while self.requests.front().is_some_and(|at| now.duration_since(*at) >= Duration::from_secs(10)) {
            self.requests.pop_front();
        }
        let remaining = |d: &Self| Signal {
            remaining_tokens: Some((d.token_budget - d.used).max(0.0) as u64),
            remaining_requests: Some((d.request_budget - d.requests.len() as f64).max(0.0) as u64),
            ..Signal::default()
        };
        if self.used + cost > self.token_budget {
            let mut freed = 0.0;
            let mut wait = self.window;
            for (at, c) in &self.tokens {
                freed += c;
                if self.used - freed + cost <= self.token_budget {
                    wait = (*at + self.window).saturating_duration_since(now).max(Duration::from_millis(1));
                    break;
                }
            }
            return Signal { throttled: Some(Some(wait)), ..remaining(self) };
        }
        if self.requests.len() as f64 + 1.0 > self.request_budget {
            let wait = self.requests.front().map_or(Duration::from_secs(10), |at| *at + Duration::from_secs(10) - now);
            return Signal { throttled: Some(Some(wait)), ..remaining(self) };
        }
        self.tokens.push_back((now, cost));
        self.used += cost;
        self.requests.push_back(now);
        remaining(self)
    }
}

/// What one simulated run is made of.
#[derive(Clone, Copy, Debug)]
pub struct Fleet {
    pub instances: usize,
    pub jobs: usize,
    pub tokens_per_minute: f64,
    /// The deployment's token window, and the one the handlers are told.
    pub window: Duration,
    pub assumed: Duration,
    pub cost: f64,
    pub latency: Duration,
    pub in_flight: usize,
    pub concurrency: usize,
    /// Instance i starts taking jobs i x `stagger` after the first (a fleet scaling out).
    pub stagger: Duration,
}

impl Fleet {
    /// The bench's fleet: 379-token jobs, 300 ms a call, 24 invocations and 8 slots per
    /// instance, a deployment of 20 calls a second counted over 10 s.
    pub fn bench(instances: usize, jobs: usize) -> Self {
        Fleet {
            instances,
            jobs,
            tokens_per_minute: 460_000.0,
            window: Duration::from_secs(10),
            assumed: Duration::from_secs(10),
            cost: 379.0,
            latency: Duration::from_millis(300),
            in_flight: 24,
            concurrency: 8,
            stagger: Duration::ZERO,
        }
    }
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub duration_s: f64,
    /// Admitted tokens / (TPM x duration), over the whole run.
    pub share: f64,
    /// The same until the queue was drained (the last job's first delivery).
    pub share_while_queued: f64,
    pub drained_s: f64,
    pub calls: u64,
    pub throttled_share: f64,
    /// Jobs whose every attempt was refused (redelivered by the queue).
    pub failed: u64,
    /// Per job: from its delivery to its Result.
    pub p50_s: f64,
    pub p99_s: f64,
}

#[derive(Clone, Copy)]
enum State {
    Idle,
    WaitSlot,
    Pacing(Instant),
    InFlight(Instant, Instant, Signal),
    Retry(Instant),
}

struct Invocation {
    state: State,
    attempt: u32,
    delivered: Instant,
}

/// Runs `fleet` to the last job (at most 10 simulated minutes).
pub fn run(fleet: Fleet, tuning: Tuning) -> Outcome {
    let start = Instant::now();
    let step = Duration::from_millis(5);
    let mut deployment = Deployment::new(fleet.tokens_per_minute, fleet.window);
    let mut pacers: Vec<Adaptive> = (0..fleet.instances).map(|_| Adaptive::tuned(fleet.assumed, tuning)).collect();
    let mut free = vec![fleet.concurrency; fleet.instances];
    let mut learned = vec![false; fleet.instances];
    let mut invocations: Vec<Vec<Invocation>> = (0..fleet.instances)
        .map(|_| {
            (0..fleet.in_flight).map(|_| Invocation { state: State::Idle, attempt: 0, delivered: start }).collect()
        })
        .collect();
    let (mut queued, mut done) = (fleet.jobs, 0);
    let mut out = Outcome::default();
    let mut latencies: Vec<f64> = Vec::new();
    let (mut admitted, mut admitted_while_queued, mut throttled) = (0.0, 0.0, 0u64);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut jitter = move |max: Duration| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        max.mul_f64((seed % 1000) as f64 / 1000.0)
    };
    let trace = std::env::var("FLEET_TRACE").is_ok_and(|n| n == fleet.instances.to_string());
    let (mut last_trace, mut last_calls, mut last_throttled) = (start, 0, 0);
    let mut now = start;
    while done < fleet.jobs && now < start + Duration::from_secs(600) {
        for (i, pacer) in pacers.iter_mut().enumerate() {
            if now < start + fleet.stagger * i as u32 {
                continue;
            }
            for invocation in invocations[i].iter_mut() {
                match invocation.state {
                    State::Idle if queued > 0 => {
                        queued -= 1;
                        if queued == 0 {
                            out.drained_s = (now - start).as_secs_f64();
                            admitted_while_queued = admitted;
                        }
                        invocation.attempt = 0;
                        invocation.delivered = now;
                        invocation.state = State::WaitSlot;
                    }
                    State::Retry(at) if now >= at => invocation.state = State::WaitSlot,
                    _ => {}
                }
                if let State::WaitSlot = invocation.state
                    && free[i] > 0
                {
                    free[i] -= 1;
                    invocation.state = State::Pacing(now);
                }
                match invocation.state {
                    State::Pacing(at) if now >= at => match pacer.take(fleet.cost, now) {
                        Some(wait) => invocation.state = State::Pacing(now + wait),
                        None if !learned[i] => {
                            // The process's first call: its `reasoning_effort` is refused
                            // before the limiter (a model that does not reason), then resent.
                            learned[i] = true;
                            pacer.sent(fleet.cost, now);
                            let refused = Signal { failed: true, ..Signal::default() };
                            invocation.state = State::InFlight(now, now + Duration::from_millis(2), refused);
                        }
                        None => {
                            pacer.sent(fleet.cost, now);
                            let signal = deployment.call(fleet.cost, now);
                            out.calls += 1;
                            let answer = if signal.throttled.is_some() {
                                throttled += 1;
                                Duration::from_millis(2)
                            } else {
                                admitted += fleet.cost;
                                fleet.latency
                            };
                            invocation.state = State::InFlight(now, now + answer, signal);
                        }
                    },
                    State::InFlight(sent_at, at, signal) if now >= at => {
                        pacer.observe(signal, fleet.cost, sent_at, now);
                        free[i] += 1;
                        if signal.failed {
                            // Sent again at once, the same attempt.
                            invocation.state = State::WaitSlot;
                            continue;
                        }
                        invocation.attempt += 1;
                        invocation.state = match signal.throttled {
                            None => {
                                done += 1;
                                latencies.push((now - invocation.delivered).as_secs_f64());
                                State::Idle
                            }
                            Some(_) if invocation.attempt >= 6 => {
                                // The queue redelivers it later.
                                out.failed += 1;
                                queued += 1;
                                State::Idle
                            }
                            Some(hint) => {
                                let hint = hint.unwrap_or(Duration::from_millis(500));
                                State::Retry(now + hint + jitter(hint / 10 + Duration::from_millis(20)))
                            }
                        };
                    }
                    _ => {}
                }
            }
        }
        if trace && now >= last_trace + Duration::from_secs(1) {
            let rates: Vec<f64> = pacers.iter().map(|p| p.rate.unwrap_or(0.0) / fleet.cost).collect();
            let sum: f64 = rates.iter().sum();
            eprintln!(
                "t={:5.1} used {:5.1} % sent {:3} 429 {:3} fleet rate {:5.1}/s (min {:.2} max {:.2}) queued {queued} done {done}",
                (now - start).as_secs_f64(),
                100.0 * deployment.used / deployment.token_budget,
                out.calls - last_calls,
                throttled - last_throttled,
                sum,
                rates.iter().copied().fold(f64::MAX, f64::min),
                rates.iter().copied().fold(0.0, f64::max)
            );
            (last_trace, last_calls, last_throttled) = (now, out.calls, throttled);
        }
        now += step;
    }
    let rate = fleet.tokens_per_minute / 60.0;
    out.duration_s = (now - start).as_secs_f64();
    out.share = admitted / (rate * out.duration_s);
    out.share_while_queued = admitted_while_queued / (rate * out.drained_s.max(0.001));
    out.throttled_share = throttled as f64 / out.calls.max(1) as f64;
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)));
    out.p50_s = at(0.5).copied().unwrap_or(0.0);
    out.p99_s = at(0.99).copied().unwrap_or(0.0);
    out
}

/// The mechanism in simulated time, on the bench's fleet: with 1, 4 and 16 instances the
/// fleet uses most of the deployment while the queue has messages, at most 5 % of calls are
/// answered 429 and no job fails, with the bench's 10 s window (1 000 jobs) and with Azure's
/// minute (4 000 jobs); 40 instances (0.5 calls a second each) stay clear of a 429 storm.
/// The figures the real processes reach are in BENCHMARKS.md.
#[test]
fn a_fleet_sharing_one_deployment_uses_most_of_it_without_a_429_storm() {
    for (window, jobs) in [(10, 1000), (60, 4000)] {
        for instances in [1, 4, 16, 40] {
            let window = Duration::from_secs(window);
            let o = run(Fleet { window, assumed: window, ..Fleet::bench(instances, jobs) }, Tuning::DEFAULT);
            let what = format!("{instances} instances, {window:?}: {o:?}");
            if instances <= 16 {
                assert!(o.share_while_queued >= 0.88, "{what}");
                assert!(o.throttled_share <= 0.05, "{what}");
            } else {
                // 960 invocations take the whole queue at once: the run's share, a looser bound.
                assert!(o.share >= 0.8, "{what}");
                assert!(o.throttled_share <= 0.10, "{what}");
            }
            assert_eq!(o.failed, 0, "{what}");
        }
    }
}

/// Told a minute while the deployment counts 10 s, the fleet uses less of it but never storms.
#[test]
fn a_fleet_told_the_wrong_window_does_not_storm() {
    for instances in [1, 16] {
        let fleet = Fleet { assumed: Duration::from_secs(60), ..Fleet::bench(instances, 600) };
        let o = run(fleet, Tuning::DEFAULT);
        assert!(o.throttled_share <= 0.10, "{instances} instances: {o:?}");
        assert_eq!(o.failed, 0, "{instances} instances: {o:?}");
    }
}

/// `FLEET_TUNING="target=0.05,probes=3"` overrides the default tuning.
fn tuning_from_env() -> Tuning {
    let mut t = Tuning::DEFAULT;
    for pair in std::env::var("FLEET_TUNING").unwrap_or_default().split(',').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').expect("key=value");
        let value: f64 = value.parse().expect("a number");
        match key {
            "target" => t.target = value,
            "alone" => t.alone = value,
            "low" => t.low = value,
            "backoff" => t.backoff = value,
            "probes" => t.probes = value as u32,
            "smoothing_s" => t.smoothing_s = value,
            "growth" => t.growth = value,
            "phase" => t.phase = value,
            "throttled_cut" => t.throttled_cut = value,
            other => panic!("unknown tuning {other}"),
        }
    }
    t
}

/// A comma-separated list from the environment, or `default`.
fn list<T: std::str::FromStr + Clone>(name: &str, default: &[T]) -> Vec<T> {
    match std::env::var(name) {
        Ok(v) => v.split(',').map(|s| s.parse().ok().expect("a number")).collect(),
        Err(_) => default.to_vec(),
    }
}

/// `cargo test --lib pacing::simulation -- --ignored --nocapture`; FLEET_WINDOWS (s),
/// FLEET_JOBS, FLEET_INSTANCES, FLEET_STAGGER_MS, FLEET_TUNING and FLEET_TRACE (an instance
/// count: print its run second by second) change what runs.
#[test]
#[ignore = "prints figures in simulated time, for tuning (a second or two)"]
fn the_bench_in_simulated_time() {
    let tuning = tuning_from_env();
    let stagger = Duration::from_millis(list("FLEET_STAGGER_MS", &[0u64])[0]);
    for window in list("FLEET_WINDOWS", &[10u64]) {
        for jobs in list("FLEET_JOBS", &[1000usize]) {
            for instances in list("FLEET_INSTANCES", &[1usize, 4, 16, 40]) {
                let window = Duration::from_secs(window);
                let fleet = Fleet { window, assumed: window, stagger, ..Fleet::bench(instances, jobs) };
                let o = run(fleet, tuning);
                eprintln!(
                    "{window:?}, {jobs} jobs x{instances}: {:.1} s, {:.1} % of the TPM ({:.1} % until drained at {:.1} s), {:.2} % of {} calls 429, {} failed, p50/p99 {:.1}/{:.1} s",
                    o.duration_s,
                    100.0 * o.share,
                    100.0 * o.share_while_queued,
                    o.drained_s,
                    100.0 * o.throttled_share,
                    o.calls,
                    o.failed,
                    o.p50_s,
                    o.p99_s
                );
            }
        }
    }
}
