//! The tokens-per-minute batch: 10 000 queue jobs through one handler whose cap
//! (`AOAI_TOKENS_PER_MINUTE`) equals the emulator's limit, sized to last about 75 s.

use std::rc::Rc;
use std::time::Duration;

use emulator::EmulatorConfig;

use crate::args::Args;
use crate::results::BatchPart;
use crate::setup::*;
use crate::{batch, process};

pub async fn run_batch(
    args: &Args,
    emulator_runtime: &tokio::runtime::Handle,
    job_cost: u64,
) -> Result<BatchPart, String> {
    let plan = queue_plan(args, Duration::from_secs(if args.quick { 120 } else { 240 }))?;
    let (in_flight, visibility, max_dequeue) = (plan.in_flight, plan.visibility, plan.max_dequeue);
    let (jobs, target_s, token_lifetime) =
        if args.quick { (1_000, 15.0, Duration::from_secs(10)) } else { (10_000, 75.0, Duration::from_secs(30)) };
    // The limit that makes the batch last about `target_s` at the handler's pace (97.5 % of it).
    let tokens_per_minute =
        ((job_cost * jobs as u64) as f64 / target_s * 60.0 / 0.975 / 10_000.0).ceil() as u64 * 10_000;
    let config =
        EmulatorConfig { tokens_per_minute: Some(tokens_per_minute), token_lifetime, ..EmulatorConfig::default() };
    let emulator = Rc::new(start_emulator(emulator_runtime, config).await?);
    let env = vec![("AOAI_TOKENS_PER_MINUTE".to_owned(), tokens_per_minute.to_string())];
    let handler = spawn_ready(&handler_launch(args, &emulator, &env, "batch"))?;
    eprintln!(
        "  {jobs} jobs of {job_cost} tokens, limit {tokens_per_minute} tokens/min on both sides, {in_flight} in flight, token lifetime {} s",
        token_lifetime.as_secs()
    );
    let messages = summarize_jobs("batch", jobs);
    let ids: Vec<String> = messages.iter().map(|(id, _)| id.clone()).collect();
    let sampler = emulator.clone();
    let sample = Rc::new(move || {
        let s = sampler.stats();
        (s.chat_ok, s.throttled, s.tokens_used)
    });
    process::quiet_gate(&[handler.pid()], Duration::from_secs(60));
    let meter = process::ForeignMeter::start(&[handler.pid()]);
    let outcome = batch::run(&[handler.addr()], &plan, messages, sample).await;
    let foreign_cores = meter.read().0;
    let stats = emulator.stats();
    same_cost(&emulator.requests(), job_cost)?;
    let _ = handler.terminate(Duration::from_secs(10));
    let tally = batch::tally(&ids, &outcome.results);
    let failed_throttled = tally.failed.get("upstream_throttled").copied().unwrap_or(0);
    let duration = outcome.duration_s;
    let (steady_tokens_per_minute, steady_usage_per_minute, steady_from_s, steady_to_s) =
        steady(&outcome.samples, job_cost, duration * 0.1, duration * 0.9);
    let overall_share = (stats.chat_ok * job_cost) as f64 / (duration / 60.0) / tokens_per_minute as f64;
    // One call per token lifetime: the run spans ⌈T / lifetime⌉ lifetimes; a refresh shortly
    // before expiry may add one.
    let lifetimes = (duration / token_lifetime.as_secs_f64()).ceil() as u64;
    let expected = (lifetimes, lifetimes + 1);
    let identity_calls = stats.identity_requests;
    eprintln!(
        "  {:.1} s, {:.1} % of the budget in the steady part, {} 429s, {} failed on throttling, {} identity calls",
        duration,
        100.0 * steady_tokens_per_minute / tokens_per_minute as f64,
        stats.throttled,
        failed_throttled,
        identity_calls
    );
    Ok(BatchPart {
        jobs,
        tokens_per_minute,
        job_cost,
        in_flight,
        visibility_s: visibility.as_secs_f64(),
        max_dequeue,
        token_lifetime_s: token_lifetime.as_secs(),
        outcome,
        tally,
        steady_from_s,
        steady_to_s,
        steady_tokens_per_minute,
        steady_share: steady_tokens_per_minute / tokens_per_minute as f64,
        overall_share,
        steady_usage_per_minute,
        throttled: stats.throttled,
        server_errors: stats.server_errors,
        chat_requests: stats.chat_requests,
        identity_calls,
        identity_calls_expected: expected,
        failed_throttled,
        foreign_cores,
    })
}

/// Admitted cost and usage tokens per minute between the samples nearest `from` and `to` (s),
/// and those samples' times.
pub fn steady(samples: &[batch::Sample], job_cost: u64, from: f64, to: f64) -> (f64, f64, f64, f64) {
    let at = |t: f64| samples.iter().min_by(|a, b| (a.t_s - t).abs().total_cmp(&(b.t_s - t).abs())).copied();
    match (at(from), at(to)) {
        (Some(a), Some(b)) if b.t_s > a.t_s => {
            let minutes = (b.t_s - a.t_s) / 60.0;
            (
                ((b.chat_ok - a.chat_ok) * job_cost) as f64 / minutes,
                (b.tokens_used - a.tokens_used) as f64 / minutes,
                a.t_s,
                b.t_s,
            )
        }
        _ => (0.0, 0.0, 0.0, 0.0),
    }
}

/// Every request's cost, as the emulator's limiter counts it: all jobs must cost the same.
fn same_cost(requests: &[emulator::RecordedRequest], job_cost: u64) -> Result<(), String> {
    match requests.iter().map(|r| cost_of(&r.body)).find(|c| *c != job_cost) {
        Some(other) => Err(format!("the batch's requests do not all cost {job_cost} tokens: one costs {other}")),
        None => Ok(()),
    }
}
