//! The fleet: N handler processes against one emulated deployment, each fed by its own
//! host-like driver (host.json's batchSize + newBatchThreshold invocations in flight per
//! instance, one shared queue, a failed invocation redelivered with DequeueCount + 1 up to
//! maxDequeueCount). Measured per configuration: the share of the deployment's TPM used,
//! the share of calls answered 429, failed and lost jobs, p50/p99 job latency.
//!
//! The deployment is time-compressed so that a run lasts 20-40 s: the emulator counts tokens
//! over 10 s (TPM / 6 per 10 s) instead of Azure's minute, and the handlers are told so
//! (`AOAI_QUOTA_WINDOW_SECONDS=10`). Every call waits an emulated 300 ms, so the handlers'
//! CPU (2 shared cores) is not what limits them. Configurations: adaptive pacing (the
//! default) with 1, 4 and 16 instances, and two baselines with 16: the old static split
//! (each instance capped at TPM / 40, no adaptive pacing) and no pacing at all.

use std::rc::Rc;
use std::time::Duration;

use emulator::{EmulatorConfig, Faults};
use serde::Serialize;

use crate::args::Args;
use crate::setup::*;
use crate::stats::quantile;
use crate::{batch, process};

const WINDOW_SECONDS: u64 = 10;
const LATENCY_MS: u64 = 300;

#[derive(Serialize)]
pub struct FleetPart {
    pub tokens_per_minute: u64,
    pub window_s: u64,
    pub latency_ms: u64,
    pub job_cost: u64,
    pub jobs: usize,
    pub in_flight: usize,
    pub max_concurrency: usize,
    pub runs: Vec<FleetRun>,
}

#[derive(Serialize)]
pub struct FleetRun {
    pub name: String,
    pub instances: usize,
    pub duration_s: f64,
    /// Admitted cost over the run / (TPM x duration).
    pub share: f64,
    /// The same from the start until the queue handed out its last new message (`drained_s`):
    /// the share while there was work for every instance.
    pub share_while_queued: f64,
    pub drained_s: f64,
    /// The same between 10 % and 90 % of the run (after the first answers, before the tail).
    pub steady_share: f64,
    pub calls: u64,
    pub throttled: u64,
    pub throttled_share: f64,
    pub succeeded: usize,
    pub failed: usize,
    /// Jobs without a Result (poisoned, or still queued when the run was abandoned).
    pub lost: usize,
    pub redeliveries: u64,
    pub abandoned: bool,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Per second of the run: calls admitted and answered 429 (where the share and the 429s
    /// went: the start, the steady part or the tail).
    pub per_second: Vec<(u64, u64)>,
}

/// One configuration: a name, the instance count and the handlers' extra settings.
struct Config {
    name: String,
    instances: usize,
    env: Vec<(String, String)>,
}

fn configs(tokens_per_minute: u64) -> Vec<Config> {
    let set = |pairs: &[(&str, String)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    let mut configs: Vec<Config> = [1, 4, 16]
        .into_iter()
        .map(|n| Config {
            name: format!("adaptive, {n} instance{}", if n == 1 { "" } else { "s" }),
            instances: n,
            env: vec![],
        })
        .collect();
    configs.push(Config {
        name: "static split (TPM / 40 each), 16 instances".into(),
        instances: 16,
        env: set(&[
            ("AOAI_ADAPTIVE_PACING", "false".into()),
            ("AOAI_TOKENS_PER_MINUTE", (tokens_per_minute / 40).to_string()),
        ]),
    });
    configs.push(Config {
        name: "no pacing, 16 instances".into(),
        instances: 16,
        env: set(&[("AOAI_ADAPTIVE_PACING", "false".into())]),
    });
    configs
}

/// `--fleet-only`: the fleet alone, printed as a table (one command: `scripts/bench --fleet`).
pub async fn fleet_only(args: &Args, emulator_runtime: &tokio::runtime::Handle) -> Result<(), String> {
    let emulator = start_emulator(emulator_runtime, EmulatorConfig::default()).await?;
    let handler = spawn_ready(&handler_launch(args, &emulator, &[], "fleet-probe"))?;
    expect_ok("handler process_job", &send_once(handler.addr(), &queue_invocation_request()).await?)?;
    let job_cost = cost_of(&emulator.requests().pop().ok_or("the probe reached no emulator")?.body);
    let _ = handler.terminate(Duration::from_secs(10));
    let part = run_fleet(args, emulator_runtime, job_cost).await?;
    let json = serde_json::to_string_pretty(&part).map_err(|e| e.to_string())?;
    std::fs::write(args.out.join("fleet.json"), json).map_err(|e| e.to_string())?;
    println!("{}", crate::report::fleet_table(&part));
    Ok(())
}

/// Every configuration in turn, each against a fresh emulator (a fresh quota).
pub async fn run_fleet(
    args: &Args,
    emulator_runtime: &tokio::runtime::Handle,
    job_cost: u64,
) -> Result<FleetPart, String> {
    let plan = queue_plan(args, Duration::from_secs(if args.quick { 120 } else { 300 }))?;
    let in_flight = plan.in_flight;
    // About 20 calls a second at the limit: a run of `jobs` lasts ~50 s (~20 s with --quick).
    // Enough jobs that 16 instances x 24 invocations in flight (384) do not take the whole
    // queue at once: the share is measured while the queue still had messages.
    let calls_per_second = 20;
    let tokens_per_minute = (job_cost * calls_per_second * 60).div_ceil(10_000) * 10_000;
    let jobs = if args.quick { 400 } else { 1000 };
    eprintln!(
        "  {jobs} jobs of {job_cost} tokens per configuration; deployment {tokens_per_minute} TPM counted over {WINDOW_SECONDS} s, {LATENCY_MS} ms a call; {in_flight} invocations in flight per instance"
    );
    let mut runs = Vec::new();
    for config in configs(tokens_per_minute) {
        runs.push(run_one(args, emulator_runtime, &config, &plan, tokens_per_minute, job_cost, jobs).await?);
    }
    Ok(FleetPart {
        tokens_per_minute,
        window_s: WINDOW_SECONDS,
        latency_ms: LATENCY_MS,
        job_cost,
        jobs,
        in_flight,
        max_concurrency: 8,
        runs,
    })
}

async fn run_one(
    args: &Args,
    emulator_runtime: &tokio::runtime::Handle,
    config: &Config,
    plan: &batch::Plan,
    tokens_per_minute: u64,
    job_cost: u64,
    jobs: usize,
) -> Result<FleetRun, String> {
    let emulator = Rc::new(
        start_emulator(
            emulator_runtime,
            EmulatorConfig {
                tokens_per_minute: Some(tokens_per_minute),
                token_window: Duration::from_secs(WINDOW_SECONDS),
                ..EmulatorConfig::default()
            },
        )
        .await?,
    );
    emulator.set_faults(Faults { latency_ms: LATENCY_MS, ..Faults::default() });
    let mut env = vec![
        ("AOAI_QUOTA_WINDOW_SECONDS".to_owned(), WINDOW_SECONDS.to_string()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ];
    env.extend(config.env.iter().cloned());
    let mut handlers = Vec::new();
    for i in 0..config.instances {
        handlers.push(spawn_ready(&handler_launch(args, &emulator, &env, &format!("fleet-{i}")))?);
    }
    let addrs: Vec<_> = handlers.iter().map(|h| h.addr()).collect();
    let messages = summarize_jobs("fleet", jobs);
    let ids: Vec<String> = messages.iter().map(|(id, _)| id.clone()).collect();
    let sampler = emulator.clone();
    let sample = Rc::new(move || {
        let s = sampler.stats();
        (s.chat_ok, s.throttled, s.tokens_used)
    });
    process::quiet_gate(&handlers.iter().map(|h| h.pid()).collect::<Vec<_>>(), Duration::from_secs(20));
    let outcome = batch::run(&addrs, plan, messages, sample).await;
    for handler in handlers {
        let _ = handler.terminate(Duration::from_secs(10));
    }
    let run = summarize(config, &outcome, &emulator.stats(), &ids, tokens_per_minute, job_cost);
    eprintln!(
        "  {}: {:.1} s, {:.1} % of the TPM while queued (to {:.1} s), {:.1} % whole run ({:.1} % steady), {:.2} % of {} calls 429, {} failed, {} lost, p50 {:.0} ms, p99 {:.0} ms",
        run.name,
        run.duration_s,
        100.0 * run.share_while_queued,
        run.drained_s,
        100.0 * run.share,
        100.0 * run.steady_share,
        100.0 * run.throttled_share,
        run.calls,
        run.failed,
        run.lost,
        run.p50_ms,
        run.p99_ms
    );
    let throttled: Vec<String> = run
        .per_second
        .iter()
        .enumerate()
        .filter(|(_, (_, t))| *t > 0)
        .map(|(i, (_, t))| format!("{}-{} s: {t}", i, i + 1))
        .collect();
    if !throttled.is_empty() {
        eprintln!("    429s by second: {}", throttled.join(", "));
    }
    Ok(run)
}

/// What one configuration's run amounted to.
fn summarize(
    config: &Config,
    outcome: &batch::Outcome,
    stats: &emulator::Stats,
    ids: &[String],
    tokens_per_minute: u64,
    job_cost: u64,
) -> FleetRun {
    let tally = batch::tally(ids, &outcome.results);
    let duration = outcome.duration_s;
    let limit_per_s = tokens_per_minute as f64 / 60.0;
    let (steady_per_minute, _, _, _) =
        crate::tpm_batch::steady(&outcome.samples, job_cost, duration * 0.1, duration * 0.9);
    let (queued_per_minute, _, _, _) = crate::tpm_batch::steady(&outcome.samples, job_cost, 0.0, outcome.drained_s);
    let mut per_second = Vec::new();
    let mut last = (0, 0);
    for second in 1..=duration.ceil() as u64 {
        let sample = outcome.samples.iter().rev().find(|s| s.t_s <= second as f64);
        let now = sample.map_or(last, |s| (s.chat_ok, s.throttled));
        per_second.push((now.0.saturating_sub(last.0), now.1.saturating_sub(last.1)));
        last = now;
    }
    let mut latencies = outcome.job_latency_ms.clone();
    latencies.sort_by(f64::total_cmp);
    FleetRun {
        name: config.name.clone(),
        instances: config.instances,
        duration_s: duration,
        share: stats.admitted_tokens as f64 / (limit_per_s * duration),
        share_while_queued: queued_per_minute / tokens_per_minute as f64,
        drained_s: outcome.drained_s,
        steady_share: steady_per_minute / tokens_per_minute as f64,
        calls: stats.chat_requests,
        throttled: stats.throttled,
        throttled_share: stats.throttled as f64 / stats.chat_requests.max(1) as f64,
        succeeded: tally.succeeded,
        failed: tally.failed.values().sum(),
        lost: tally.with_no_result,
        redeliveries: outcome.redeliveries,
        abandoned: outcome.abandoned,
        p50_ms: quantile(&latencies, 0.5),
        p99_ms: quantile(&latencies, 0.99),
        per_second,
    }
}
