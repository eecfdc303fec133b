//! Overhead and throughput: the same load, at each concurrency, straight to the emulator (the
//! baseline) and through each server under test, interleaved run by run so that drift hits all
//! of them alike.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use serde::Serialize;

use crate::load::{self, Load};
use crate::stats::{Summary, percentile_ms};

/// Something to send load to.
pub struct Target {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub request: Rc<Vec<u8>>,
    /// Bytes every 200 body must contain.
    pub expect: &'static str,
    /// The server process under test (None for the emulator, which runs inside the bench).
    pub pid: Option<u32>,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub target: &'static str,
    pub concurrency: usize,
    /// Paced runs: the requests per second sent (None: closed loop).
    pub rate: Option<f64>,
    pub rep: usize,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub throughput: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub measured_s: f64,
    /// CPU seconds of the server under test in the window.
    pub server_cpu_s: f64,
    /// CPU seconds of the bench process (load generator + emulator) in the window.
    pub bench_cpu_s: f64,
    /// Other processes' CPU use in the window, in cores.
    pub foreign_cores: f64,
    pub steal_cores: f64,
    /// Seconds waited before the run for the machine to be idle.
    pub waited_s: f64,
}

pub struct Plan {
    pub levels: Vec<usize>,
    pub reps: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub max_requests: u64,
    /// Longest wait before a run for other processes to leave the machine idle.
    pub max_quiet_wait: Duration,
    /// Paced load at this many requests per second (None: closed loop).
    pub rate: Option<f64>,
}

impl Plan {
    /// The CPU-per-request plan of the focused runs (`--load-only`, `--export-cost`): 1, 64 and
    /// 256 in flight, shorter and fewer repetitions with `--quick`.
    pub fn cpu_levels(quick: bool) -> Self {
        let (reps, measure) = if quick { (2, Duration::from_secs(1)) } else { (5, Duration::from_secs(2)) };
        Plan {
            levels: vec![1, 64, 256],
            reps,
            warmup: Duration::from_millis(500),
            measure,
            max_requests: 5_000_000,
            max_quiet_wait: Duration::from_secs(30),
            rate: None,
        }
    }
}

/// Runs every target at every level, `reps` times; `between` runs after each run (the bench
/// resets the emulator's records there, which would otherwise grow with every request).
pub async fn measure(targets: &[Target], plan: &Plan, between: &dyn Fn()) -> Vec<Run> {
    let mut runs = Vec::new();
    let me = std::process::id();
    let live: Vec<u32> = targets.iter().filter_map(|t| t.pid).collect();
    for &concurrency in &plan.levels {
        for rep in 0..plan.reps {
            for target in targets {
                let mut watch = vec![me];
                watch.extend(target.pid);
                let load = Load {
                    addr: target.addr,
                    request: target.request.clone(),
                    concurrency,
                    warmup: plan.warmup,
                    measure: plan.measure,
                    max_requests: plan.max_requests,
                    rate: plan.rate,
                    expect: target.expect,
                    watch,
                    live: live.clone(),
                };
                let waited = crate::process::quiet_gate(&live, plan.max_quiet_wait);
                let mut result = load::run(&load).await;
                let run = Run {
                    target: target.name,
                    concurrency,
                    rate: plan.rate,
                    rep,
                    samples: result.latencies_ns.len(),
                    mean_ms: result.latencies_ns.iter().map(|n| *n as f64).sum::<f64>()
                        / result.latencies_ns.len().max(1) as f64
                        / 1e6,
                    p50_ms: percentile_ms(&mut result.latencies_ns, 0.50),
                    p99_ms: percentile_ms(&mut result.latencies_ns, 0.99),
                    throughput: result.throughput(),
                    errors: result.errors,
                    first_error: result.first_error.clone(),
                    measured_s: result.measured.as_secs_f64(),
                    bench_cpu_s: result.cpu.first().map(Duration::as_secs_f64).unwrap_or(0.0),
                    server_cpu_s: result.cpu.get(1).map(Duration::as_secs_f64).unwrap_or(0.0),
                    foreign_cores: result.foreign_cores,
                    steal_cores: result.steal_cores,
                    waited_s: waited.as_secs_f64(),
                };
                eprintln!(
                    "  {:<14} c={:<3} rep {}: p50 {:.3} ms, p99 {:.3} ms, {:.0} req/s, server CPU {:.0} %, bench CPU {:.0} %, others {:.0} %{}",
                    run.target,
                    concurrency,
                    rep + 1,
                    run.p50_ms,
                    run.p99_ms,
                    run.throughput,
                    100.0 * run.server_cpu_s / run.measured_s,
                    100.0 * run.bench_cpu_s / run.measured_s,
                    100.0 * run.foreign_cores,
                    if run.errors > 0 {
                        format!(", {} errors: {:?}", run.errors, run.first_error)
                    } else {
                        String::new()
                    }
                );
                runs.push(run);
                between();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    runs
}

/// The runs of one target at one level, summarised over the repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub target: &'static str,
    pub concurrency: usize,
    pub p50_ms: Summary,
    pub p99_ms: Summary,
    pub mean_ms: Summary,
    pub throughput: Summary,
    /// Share of one core the server under test used.
    pub server_busy: Summary,
    /// Share of one core the bench process (load generator + emulator) used.
    pub bench_busy: Summary,
    /// Server CPU time per answered request, µs.
    pub cpu_us_per_request: Summary,
    /// Other processes' CPU use, in cores.
    pub foreign_cores: Summary,
    pub errors: u64,
    pub first_error: Option<String>,
}

pub fn cell(runs: &[Run], target: &str, concurrency: usize) -> Option<Cell> {
    let mine: Vec<&Run> = runs.iter().filter(|r| r.target == target && r.concurrency == concurrency).collect();
    let first = mine.first()?;
    let of = |f: &dyn Fn(&Run) -> f64| Summary::of(&mine.iter().map(|r| f(r)).collect::<Vec<_>>());
    Some(Cell {
        target: first.target,
        concurrency,
        p50_ms: of(&|r| r.p50_ms),
        p99_ms: of(&|r| r.p99_ms),
        mean_ms: of(&|r| r.mean_ms),
        throughput: of(&|r| r.throughput),
        server_busy: of(&|r| r.server_cpu_s / r.measured_s),
        bench_busy: of(&|r| r.bench_cpu_s / r.measured_s),
        cpu_us_per_request: of(&|r| r.server_cpu_s * 1e6 / (r.throughput * r.measured_s).max(1.0)),
        foreign_cores: of(&|r| r.foreign_cores),
        errors: mine.iter().map(|r| r.errors).sum(),
        first_error: mine.iter().find_map(|r| r.first_error.clone()),
    })
}

/// Latency a target adds over the baseline: per repetition, its percentile minus the
/// baseline's percentile of the same repetition.
#[derive(Debug, Clone, Serialize)]
pub struct Added {
    pub target: &'static str,
    pub concurrency: usize,
    pub p50_ms: Summary,
    pub p99_ms: Summary,
    pub mean_ms: Summary,
}

pub fn added(runs: &[Run], baseline: &str, target: &'static str, concurrency: usize) -> Option<Added> {
    let pairs: Vec<(&Run, &Run)> = runs
        .iter()
        .filter(|r| r.target == target && r.concurrency == concurrency)
        .filter_map(|r| {
            runs.iter().find(|b| b.target == baseline && b.concurrency == concurrency && b.rep == r.rep).map(|b| (r, b))
        })
        .collect();
    if pairs.is_empty() {
        return None;
    }
    Some(Added {
        target,
        concurrency,
        p50_ms: Summary::of(&pairs.iter().map(|(r, b)| r.p50_ms - b.p50_ms).collect::<Vec<_>>()),
        p99_ms: Summary::of(&pairs.iter().map(|(r, b)| r.p99_ms - b.p99_ms).collect::<Vec<_>>()),
        mean_ms: Summary::of(&pairs.iter().map(|(r, b)| r.mean_ms - b.mean_ms).collect::<Vec<_>>()),
    })
}

/// Every target's cell at every level, and what each adds over the "emulator" baseline.
pub fn cells_and_added(runs: &[Run], targets: &[Target], levels: &[usize]) -> (Vec<Cell>, Vec<Added>) {
    let (mut cells, mut added) = (Vec::new(), Vec::new());
    for &level in levels {
        for target in targets {
            cells.extend(cell(runs, target.name, level));
            if target.name != "emulator" {
                added.extend(added_over(runs, target.name, level));
            }
        }
    }
    (cells, added)
}

fn added_over(runs: &[Run], target: &'static str, level: usize) -> Option<Added> {
    added(runs, "emulator", target, level)
}
