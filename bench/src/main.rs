//! `bench`: measures the `handler` binary side by side with a Python peer (bench/peer/app.py)
//! in one run: cold start, memory, latency added over the emulator, single-core throughput,
//! identity-endpoint calls, and a tokens-per-minute-limited queue batch. Run by
//! `scripts/bench`, which builds, installs the peer and passes the paths; see
//! the *Method* section of BENCHMARKS.md.
//!
//! CPU layout (2 cores): the server under test (handler or peer) is pinned to CPU 1, as
//! `taskset -c 1` would; this process — the load generator (one thread) and the in-process
//! emulator (its own one-worker runtime) — is pinned to CPU 0. Everything is on 127.0.0.1 and
//! every loop is bounded in requests and time.

mod args;
mod batch;
mod coldstart;
mod export_cost;
mod fleet;
mod full;
mod http;
mod load;
mod longdoc;
mod memory;
mod only;
mod overhead;
mod process;
mod relay;
mod report;
mod results;
mod setup;
mod stats;
mod streaming;
mod tpm_batch;

use std::process::ExitCode;

use crate::args::Args;
use crate::setup::BENCH_CPU;

fn main() -> ExitCode {
    // `bench relay PORT TARGET`: the null relay the bench starts on the server core.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("relay") {
        return match relay::main(argv.get(2).map_or("", String::as_str), argv.get(3).map_or("", String::as_str)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("relay: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // `bench long-docs --handler PATH`: the long-document figures (bench/src/longdoc.rs).
    if argv.get(1).map(String::as_str) == Some("long-docs") {
        let Some(handler) = argv.iter().position(|a| a == "--handler").and_then(|i| argv.get(i + 1)) else {
            eprintln!("usage: bench long-docs --handler PATH");
            return ExitCode::from(2);
        };
        return match longdoc::main(std::path::Path::new(handler)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("long-docs: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // `bench memory --handler PATH [--handler PATH]...`: peak RSS of the largest batch submit
    // (bench/src/memory.rs).
    if argv.get(1).map(String::as_str) == Some("memory") {
        let handlers: Vec<std::path::PathBuf> =
            argv.windows(2).filter(|w| w[0] == "--handler").map(|w| std::path::PathBuf::from(&w[1])).collect();
        if handlers.is_empty() || argv.len() != 2 + 2 * handlers.len() {
            eprintln!("usage: bench memory --handler PATH [--handler PATH]...");
            return ExitCode::from(2);
        }
        return match memory::main(&handlers) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("memory: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match args::parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: sysconf has no preconditions. Online CPUs, not this process's affinity (which
    // `taskset -c 0` may already have narrowed).
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if cpus < 2 {
        eprintln!(
            "bench needs 2 CPUs (one for the server under test, one for the load and the emulator); {cpus} are online"
        );
        return ExitCode::FAILURE;
    }
    // Before any other thread exists: every thread of this process inherits CPU 0.
    if let Err(e) = process::pin_current_thread(BENCH_CPU) {
        eprintln!("could not pin the bench to CPU {BENCH_CPU}: {e}");
        return ExitCode::FAILURE;
    }
    let emulator_runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(2)
        .thread_name("emulator")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("no emulator runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("no load runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, run(&args, emulator_runtime.handle().clone()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench failed: {message}");
            ExitCode::FAILURE
        }
    }
}

/// One part, or the full run.
async fn run(args: &Args, emulator_runtime: tokio::runtime::Handle) -> Result<(), String> {
    std::fs::create_dir_all(args.out.join("logs")).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let quiet_budget = std::time::Duration::from_secs(if args.quick { 30 } else { 180 });
    process::set_quiet_budget(quiet_budget);
    if args.cold_only {
        for handler in std::iter::once(&args.handler).chain(&args.others) {
            only::cold_only(&Args { handler: handler.clone(), ..args.clone() }, &emulator_runtime).await?;
        }
        return Ok(());
    }
    if args.load_only {
        return only::load_only(args, &emulator_runtime).await;
    }
    if args.fleet_only {
        return fleet::fleet_only(args, &emulator_runtime).await;
    }
    if args.export_cost {
        return export_cost::export_cost(args, &emulator_runtime).await;
    }
    if args.streaming_only {
        return streaming::streaming_only(args, &emulator_runtime).await;
    }
    full::run(args, &emulator_runtime, quiet_budget).await
}
