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

mod batch;
mod coldstart;
mod http;
mod load;
mod longdoc;
mod overhead;
mod process;
mod relay;
mod report;
mod stats;
mod streaming;

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use emulator::{Emulator, EmulatorConfig};
use serde::Serialize;
use serde_json::{Value, json};

use crate::http::{Connection, request};
use crate::process::{Launch, Server};
use crate::stats::Summary;

const USAGE: &str = "usage: bench --handler PATH --python PATH --peer-dir DIR --out DIR [--quick] [--command TEXT]
       bench --handler PATH [--handler PATH]... --peer-dir DIR --out DIR --cold-only [--runs N] [--env NAME=VALUE]...
       bench --handler PATH [--handler PATH]... --peer-dir DIR --out DIR --load-only [--queue] [--quick] [--env NAME=VALUE]...
       bench --handler PATH --python PATH --peer-dir DIR --out DIR --streaming-only [--quick] [--env NAME=VALUE]...

  --handler   the release handler binary (target/release/handler)
  --python    the peer venv's python (target/bench-peer/venv/bin/python)
  --peer-dir  the folder holding the peer's app.py (bench/peer)
  --out       where results.json, report.md and the servers' logs go (target/bench)
  --quick     a short smoke run (fewer repetitions, shorter windows, 1 000 batch jobs)
  --command   the command line to print in the report
  --build     what the handler binary is, for the report (e.g. \"x86_64-unknown-linux-musl\")
  --cold-only only the handler's cold start (N starts, default 30), to try a change of the
              handler: no peer, no load, no report; --env adds a setting
  --load-only only the HTTP latency and throughput runs (emulator, null relay, handler)
  --queue     with --load-only: queue invocations (process_job) too, as handler-N-queue
              Both take --handler more than once to compare builds.
  --streaming-only  time to first byte of streamed summaries: the emulator, the handler and the
              peer (openai's async client), same emulator, same load (streaming.rs)";

/// The article every summarise sends (the tests' ARTICLE).
const ARTICLE: &str = "The city council approved a new budget on Tuesday. It funds three new libraries and repairs to the old bridge. \
    Opponents said the plan raises property taxes too quickly. The mayor promised a review of spending in the spring. \
    Construction of the first library starts next year.";
const MAX_WORDS: u32 = 60;
const DEPLOYMENT: &str = "gpt-4o-mini";
const SERVER_CPU: usize = 1;
const BENCH_CPU: usize = 0;

#[derive(Clone)]
struct Args {
    handler: PathBuf,
    python: PathBuf,
    peer_dir: PathBuf,
    out: PathBuf,
    quick: bool,
    command: String,
    /// What the handler binary is (its target), for the report.
    build: String,
    cold_only: bool,
    runs: usize,
    env: Vec<(String, String)>,
    load_only: bool,
    /// `--load-only`: also queue invocations (`process_job`).
    queue: bool,
    /// More handler builds to compare (`--load-only`, `--cold-only`).
    others: Vec<PathBuf>,
    /// Only the streamed summaries' time to first byte.
    streaming_only: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut handler, mut python, mut peer_dir, mut out, mut quick, mut command) =
        (None, None, None, None, false, String::from("bench"));
    let (mut cold_only, mut runs, mut env) = (false, 30, Vec::new());
    let mut build = String::from("unstated");
    let (mut load_only, mut others, mut queue) = (false, Vec::new(), false);
    let mut streaming_only = false;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--handler" => {
                let path = PathBuf::from(value()?);
                if handler.is_some() {
                    others.push(std::path::absolute(&path).unwrap_or(path));
                } else {
                    handler = Some(path);
                }
            }
            "--load-only" => load_only = true,
            "--queue" => queue = true,
            "--streaming-only" => streaming_only = true,
            "--python" => python = Some(PathBuf::from(value()?)),
            "--peer-dir" => peer_dir = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--command" => command = value()?,
            "--build" => build = value()?,
            "--quick" => quick = true,
            "--cold-only" => cold_only = true,
            "--runs" => runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--env" => {
                let pair = value()?;
                let (k, v) = pair.split_once('=').ok_or(format!("--env wants NAME=VALUE, got `{pair}`"))?;
                env.push((k.to_owned(), v.to_owned()));
            }
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    let need = |v: Option<PathBuf>, name: &str| v.ok_or(format!("{name} is required\n{USAGE}"));
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    Ok(Args {
        handler: absolute(need(handler, "--handler")?),
        python: absolute(if cold_only || load_only { python.unwrap_or_default() } else { need(python, "--python")? }),
        peer_dir: absolute(need(peer_dir, "--peer-dir")?),
        out: absolute(need(out, "--out")?),
        quick,
        command,
        build,
        cold_only,
        runs,
        env,
        load_only,
        queue,
        others,
        streaming_only,
    })
}

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
        return match longdoc::main(Path::new(handler)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("long-docs: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args() {
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

/// Everything measured, as written to results.json.
#[derive(Serialize)]
pub struct Results {
    pub date: String,
    pub command: String,
    /// The handler build measured (its target).
    pub handler_build: String,
    pub quick: bool,
    pub machine: Vec<(String, String)>,
    pub handler_binary_bytes: u64,
    pub handler_binary_stripped: bool,
    pub peer_venv_bytes: u64,
    pub peer_versions: String,
    pub cold_handler: coldstart::ColdStart,
    pub cold_peer: coldstart::ColdStart,
    /// Other processes' CPU use during each cold-start phase, in cores.
    pub cold_handler_foreign: f64,
    pub cold_peer_foreign: f64,
    /// Seconds spent waiting for other processes to leave the machine idle before measuring.
    pub quiet_waited_s: f64,
    pub same_upstream_request: bool,
    pub load: LoadPart,
    pub batch: BatchPart,
}

#[derive(Serialize)]
pub struct LoadPart {
    pub levels: Vec<usize>,
    pub reps: usize,
    pub warmup_s: f64,
    pub measure_s: f64,
    pub handler_env: Vec<(String, String)>,
    pub runs: Vec<overhead::Run>,
    pub cells: Vec<overhead::Cell>,
    pub added: Vec<overhead::Added>,
    /// Identity-endpoint calls of the handler from its start to its end (all load runs).
    pub handler_identity_calls: u64,
    pub peer_identity_calls: u64,
    pub handler_lifetime_s: f64,
    pub token_lifetime_s: u64,
    pub handler_rss_after_kib: u64,
    pub handler_hwm_kib: u64,
    pub peer_rss_after_kib: u64,
    pub peer_hwm_kib: u64,
    pub chat_requests: u64,
}

#[derive(Serialize)]
pub struct BatchPart {
    pub jobs: usize,
    pub tokens_per_minute: u64,
    pub job_cost: u64,
    pub in_flight: usize,
    pub visibility_s: f64,
    pub max_dequeue: u32,
    pub token_lifetime_s: u64,
    pub outcome: batch::Outcome,
    pub tally: batch::Tally,
    pub steady_from_s: f64,
    pub steady_to_s: f64,
    /// Emulator-accounted cost (prompt chars / 4 + max_completion_tokens) per minute in the
    /// steady window.
    pub steady_tokens_per_minute: f64,
    pub steady_share: f64,
    /// The same, over the whole run.
    pub overall_share: f64,
    /// Usage tokens (what the answers report) per minute in the steady window.
    pub steady_usage_per_minute: f64,
    pub throttled: u64,
    pub server_errors: u64,
    pub chat_requests: u64,
    pub identity_calls: u64,
    pub identity_calls_expected: (u64, u64),
    pub failed_throttled: usize,
    /// Other processes' CPU use during the batch, in cores.
    pub foreign_cores: f64,
}

async fn run(args: &Args, emulator_runtime: tokio::runtime::Handle) -> Result<(), String> {
    let started = Instant::now();
    std::fs::create_dir_all(args.out.join("logs")).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let quiet_budget = Duration::from_secs(if args.quick { 30 } else { 180 });
    process::set_quiet_budget(quiet_budget);
    if args.cold_only {
        for handler in std::iter::once(&args.handler).chain(&args.others) {
            cold_only(&Args { handler: handler.clone(), ..args.clone() }, &emulator_runtime).await?;
        }
        return Ok(());
    }
    if args.load_only {
        return load_only(args, &emulator_runtime).await;
    }
    if args.streaming_only {
        return streaming::streaming_only(args, &emulator_runtime).await;
    }
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let machine = machine();
    let handler_binary_bytes =
        std::fs::metadata(&args.handler).map_err(|e| format!("{}: {e}", args.handler.display()))?.len();
    let handler_binary_stripped = !process::has_symtab(&args.handler).map_err(|e| e.to_string())?;
    let venv = args.python.parent().and_then(Path::parent).unwrap_or(Path::new("."));
    let peer_venv_bytes = process::dir_size(venv);
    let peer_versions = command_output(
        &args.python.display().to_string(),
        &[
            "-c",
            "import sys, importlib.metadata as m; print('Python ' + sys.version.split()[0] + ', ' + ', '.join(p + ' ' + m.version(p) for p in ['openai', 'azure-identity', 'aiohttp', 'fastapi', 'uvicorn', 'uvloop', 'httptools']))",
        ],
    );
    let (levels, reps, warmup, measure) = if args.quick {
        (vec![1, 64, 256], 2, Duration::from_millis(300), Duration::from_secs(1))
    } else {
        (vec![1, 64, 256], 5, Duration::from_millis(500), Duration::from_secs(2))
    };
    let summarize_body = json!({"text": ARTICLE, "max_words": MAX_WORDS}).to_string();
    let summarize = request(
        "POST",
        "/api/summarize",
        &batch::host_headers(&uuid::Uuid::new_v4().to_string()),
        summarize_body.as_bytes(),
    );

    // ---- the emulator for cold start and load: no limit, no injected latency
    let emulator = start_emulator(&emulator_runtime, EmulatorConfig::default()).await?;
    let token_lifetime_s = EmulatorConfig::default().token_lifetime.as_secs();

    // ---- cold start
    eprintln!("== cold start ({:.0} s)", started.elapsed().as_secs_f64());
    let (runs_h, rss_h, runs_p, rss_p) = if args.quick { (5, 2, 3, 1) } else { (30, 5, 10, 3) };
    let identity_calls = || emulator.stats().identity_requests;
    let meter = process::ForeignMeter::start(&[]);
    let cold_handler =
        coldstart::measure(&handler_launch(args, &emulator, &[], "cold"), &summarize, runs_h, rss_h, &identity_calls)
            .await
            .map_err(|e| format!("handler cold start: {e}"))?;
    let cold_handler_foreign = meter.read().0;
    eprintln!(
        "  handler: ready {} ms, first summary {} ms, idle RSS {} KiB; other processes {:.0} % of a core",
        cold_handler.ready_ms.show(2),
        cold_handler.first_summary_ms.show(2),
        cold_handler.rss_idle_kib.show(0),
        100.0 * cold_handler_foreign
    );
    let meter = process::ForeignMeter::start(&[]);
    let cold_peer =
        coldstart::measure(&peer_launch(args, &emulator, "cold"), &summarize, runs_p, rss_p, &identity_calls)
            .await
            .map_err(|e| format!("peer cold start: {e}"))?;
    let cold_peer_foreign = meter.read().0;
    eprintln!(
        "  peer: ready {} ms, first summary {} ms, idle RSS {} KiB; other processes {:.0} % of a core",
        cold_peer.ready_ms.show(1),
        cold_peer.first_summary_ms.show(1),
        cold_peer.rss_idle_kib.show(0),
        100.0 * cold_peer_foreign
    );

    // ---- overhead and throughput
    eprintln!("== overhead and throughput ({:.0} s)", started.elapsed().as_secs_f64());
    emulator.reset_stats();
    let token = baseline_token(&emulator).await?;
    let handler_env = vec![("AOAI_MAX_CONCURRENCY".to_owned(), "256".to_owned())];
    let identity_before_handler = emulator.stats().identity_requests;
    let handler_started = Instant::now();
    let handler = spawn_ready(&handler_launch(args, &emulator, &handler_env, "load"))?;
    let answer = send_once(handler.addr(), &summarize).await?;
    expect_ok("handler summarize", &answer)?;
    let upstream = emulator.requests().pop().ok_or("the handler's summarize reached no emulator")?;
    let identity_after_handler = emulator.stats().identity_requests;
    let peer = spawn_ready(&peer_launch(args, &emulator, "load"))?;
    let answer = send_once(peer.addr(), &summarize).await?;
    expect_ok("peer summarize", &answer)?;
    let peer_upstream = emulator.requests().pop().ok_or("the peer's summarize reached no emulator")?;
    let same_upstream_request = upstream.body["messages"] == peer_upstream.body["messages"]
        && upstream.body["max_completion_tokens"] == peer_upstream.body["max_completion_tokens"]
        && upstream.path == peer_upstream.path;
    let peer_identity_warm = emulator.stats().identity_requests - identity_after_handler;
    let job_cost = cost_of(&upstream.body);

    let emulator_addr = addr_of(&emulator.endpoint())?;
    let baseline_request = request(
        "POST",
        &format!("{}?{}", upstream.path, upstream.query),
        &[("Content-Type", "application/json".into()), ("Authorization", format!("Bearer {token}"))],
        upstream.body.to_string().as_bytes(),
    );
    let queue_request = queue_invocation_request();
    let answer = send_once(handler.addr(), &queue_request).await?;
    expect_ok("handler process_job", &answer)?;
    if !String::from_utf8_lossy(&answer.body).contains("succeeded") {
        return Err(format!("process_job did not succeed: {}", String::from_utf8_lossy(&answer.body)));
    }
    let relay = spawn_ready(&relay_launch(args, emulator_addr)?)?;
    let baseline_request = Rc::new(baseline_request);
    let targets = vec![
        overhead::Target {
            name: "emulator",
            addr: emulator_addr,
            request: baseline_request.clone(),
            expect: "\"choices\"",
            pid: None,
        },
        overhead::Target {
            name: "relay",
            addr: relay.addr(),
            request: baseline_request,
            expect: "\"choices\"",
            pid: Some(relay.pid()),
        },
        overhead::Target {
            name: "handler-http",
            addr: handler.addr(),
            request: Rc::new(summarize.clone()),
            expect: "\"summary\"",
            pid: Some(handler.pid()),
        },
        overhead::Target {
            name: "handler-queue",
            addr: handler.addr(),
            request: Rc::new(queue_request),
            expect: "succeeded",
            pid: Some(handler.pid()),
        },
        overhead::Target {
            name: "peer-http",
            addr: peer.addr(),
            request: Rc::new(summarize.clone()),
            expect: "\"summary\"",
            pid: Some(peer.pid()),
        },
    ];
    // The emulator records every request; totals are kept here and the records dropped after each run.
    let totals = RefCell::new((emulator.stats().identity_requests, emulator.stats().chat_requests));
    let settle = || {
        let stats = emulator.stats();
        let mut t = totals.borrow_mut();
        t.0 += stats.identity_requests;
        t.1 += stats.chat_requests;
        emulator.reset_stats();
    };
    settle();
    let identity_at_start = totals.borrow().0;
    let plan = overhead::Plan {
        levels: levels.clone(),
        reps,
        warmup,
        measure,
        max_requests: 5_000_000,
        max_quiet_wait: Duration::from_secs(30),
    };
    let runs = overhead::measure(&targets, &plan, &settle).await;
    let identity_during_runs = totals.borrow().0 - identity_at_start;
    let handler_rss_after_kib = handler.rss_kib().unwrap_or(0);
    let handler_hwm_kib = handler.hwm_kib().unwrap_or(0);
    let peer_rss_after_kib = peer.rss_kib().unwrap_or(0);
    let peer_hwm_kib = peer.hwm_kib().unwrap_or(0);
    let handler_lifetime_s = handler_started.elapsed().as_secs_f64();
    let _ = handler.terminate(Duration::from_secs(10));
    let _ = peer.terminate(Duration::from_secs(10));
    let _ = relay.terminate(Duration::from_secs(10));
    let mut cells = Vec::new();
    let mut added = Vec::new();
    for &level in &levels {
        for target in &targets {
            cells.extend(overhead::cell(&runs, target.name, level));
            if target.name != "emulator" {
                added.extend(overhead::added(&runs, "emulator", target.name, level));
            }
        }
    }
    // Identity calls during the runs cannot be told apart; with hour-long tokens there are none.
    let load = LoadPart {
        levels: levels.clone(),
        reps,
        warmup_s: warmup.as_secs_f64(),
        measure_s: measure.as_secs_f64(),
        handler_env,
        runs,
        cells,
        added,
        handler_identity_calls: identity_after_handler - identity_before_handler + identity_during_runs,
        peer_identity_calls: peer_identity_warm + identity_during_runs,
        handler_lifetime_s,
        token_lifetime_s,
        handler_rss_after_kib,
        handler_hwm_kib,
        peer_rss_after_kib,
        peer_hwm_kib,
        chat_requests: totals.borrow().1,
    };
    drop(emulator);

    // ---- the batch
    eprintln!("== batch ({:.0} s)", started.elapsed().as_secs_f64());
    let batch = run_batch(args, &emulator_runtime, job_cost).await?;

    let results = Results {
        date,
        command: args.command.clone(),
        handler_build: args.build.clone(),
        quick: args.quick,
        machine,
        handler_binary_bytes,
        handler_binary_stripped,
        peer_venv_bytes,
        peer_versions,
        cold_handler,
        cold_peer,
        cold_handler_foreign,
        cold_peer_foreign,
        quiet_waited_s: quiet_budget.saturating_sub(process::quiet_budget_left()).as_secs_f64(),
        same_upstream_request,
        load,
        batch,
    };
    let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    std::fs::write(args.out.join("results.json"), json).map_err(|e| e.to_string())?;
    let markdown = report::markdown(&results);
    std::fs::write(args.out.join("report.md"), &markdown).map_err(|e| e.to_string())?;
    println!("{markdown}");
    eprintln!("== done in {:.0} s: {}", started.elapsed().as_secs_f64(), args.out.join("report.md").display());
    Ok(())
}

/// `--cold-only`: the handler's cold start alone, printed.
async fn cold_only(args: &Args, emulator_runtime: &tokio::runtime::Handle) -> Result<(), String> {
    let emulator = start_emulator(emulator_runtime, EmulatorConfig::default()).await?;
    let body = json!({"text": ARTICLE, "max_words": MAX_WORDS}).to_string();
    let summarize = request("POST", "/api/summarize", &batch::host_headers("cold-only"), body.as_bytes());
    let identity_calls = || emulator.stats().identity_requests;
    let meter = process::ForeignMeter::start(&[]);
    let launch = handler_launch(args, &emulator, &args.env, "cold-only");
    let cold = coldstart::measure(&launch, &summarize, args.runs, args.runs.min(5), &identity_calls)
        .await
        .map_err(|e| format!("handler cold start: {e}"))?;
    println!("{}", args.handler.display());
    println!("  spawn → ready            {} ms", cold.ready_ms.show_iqr(2));
    println!("  spawn → first summary    {} ms", cold.first_summary_ms.show_iqr(2));
    println!("  idle RSS                 {} KiB", cold.rss_idle_kib.show(0));
    println!("  RSS after first summary  {} KiB", cold.rss_after_first_kib.show(0));
    println!("  other processes          {:.2} cores", meter.read().0);
    Ok(())
}

/// A `process_job` invocation as the host sends it: one summarise job, no earlier Result.
fn queue_invocation_request() -> Vec<u8> {
    let job_message =
        json!({"id": "bench-queue", "task": "summarize", "input": {"text": ARTICLE, "max_words": MAX_WORDS}})
            .to_string();
    let (data, mut metadata) = emulator::host::queue_invocation(
        "job",
        &job_message,
        1,
        &uuid::Uuid::new_v4().to_string(),
        &[("existing_result", None)],
    );
    if let Some(sys) = metadata.get_mut("sys").and_then(Value::as_object_mut) {
        sys.insert("MethodName".into(), json!("process_job"));
    }
    let invocation = json!({"Data": data, "Metadata": metadata}).to_string();
    request("POST", "/process_job", &batch::host_headers(&uuid::Uuid::new_v4().to_string()), invocation.as_bytes())
}

/// `--load-only`: the load part alone (HTTP and queue invocations), for the emulator, the relay
/// and each handler build.
async fn load_only(args: &Args, emulator_runtime: &tokio::runtime::Handle) -> Result<(), String> {
    let emulator = start_emulator(emulator_runtime, EmulatorConfig::default()).await?;
    let body = json!({"text": ARTICLE, "max_words": MAX_WORDS}).to_string();
    let summarize = Rc::new(request("POST", "/api/summarize", &batch::host_headers("load-only"), body.as_bytes()));
    let token = baseline_token(&emulator).await?;
    let mut env = vec![("AOAI_MAX_CONCURRENCY".to_owned(), "256".to_owned())];
    env.extend(args.env.iter().cloned());
    let mut servers = Vec::new();
    for (i, handler) in std::iter::once(&args.handler).chain(&args.others).enumerate() {
        let launch = handler_launch(
            &Args { handler: handler.clone(), ..args.clone() },
            &emulator,
            &env,
            &format!("load-only-{i}"),
        );
        let server = spawn_ready(&launch)?;
        expect_ok("handler summarize", &send_once(server.addr(), &summarize).await?)?;
        println!("handler-{i}: {}", handler.display());
        servers.push(server);
    }
    let upstream = emulator.requests().pop().ok_or("no upstream request")?;
    let emulator_addr = addr_of(&emulator.endpoint())?;
    let baseline = Rc::new(request(
        "POST",
        &format!("{}?{}", upstream.path, upstream.query),
        &[("Content-Type", "application/json".into()), ("Authorization", format!("Bearer {token}"))],
        upstream.body.to_string().as_bytes(),
    ));
    let relay = spawn_ready(&relay_launch(args, emulator_addr)?)?;
    let names = ["handler-0", "handler-1", "handler-2", "handler-3"];
    let mut targets = vec![
        overhead::Target {
            name: "emulator",
            addr: emulator_addr,
            request: baseline.clone(),
            expect: "\"choices\"",
            pid: None,
        },
        overhead::Target {
            name: "relay",
            addr: relay.addr(),
            request: baseline,
            expect: "\"choices\"",
            pid: Some(relay.pid()),
        },
    ];
    let queue = Rc::new(queue_invocation_request());
    let queue_names = ["handler-0-queue", "handler-1-queue", "handler-2-queue", "handler-3-queue"];
    for ((server, name), queue_name) in servers.iter().zip(names).zip(queue_names) {
        targets.push(overhead::Target {
            name,
            addr: server.addr(),
            request: summarize.clone(),
            expect: "\"summary\"",
            pid: Some(server.pid()),
        });
        if args.queue {
            targets.push(overhead::Target {
                name: queue_name,
                addr: server.addr(),
                request: queue.clone(),
                expect: "succeeded",
                pid: Some(server.pid()),
            });
        }
    }
    let (reps, measure) = if args.quick { (2, Duration::from_secs(1)) } else { (5, Duration::from_secs(2)) };
    let plan = overhead::Plan {
        levels: vec![1, 64, 256],
        reps,
        warmup: Duration::from_millis(500),
        measure,
        max_requests: 5_000_000,
        max_quiet_wait: Duration::from_secs(30),
    };
    let runs = overhead::measure(&targets, &plan, &|| emulator.reset_stats()).await;
    println!(
        "| in flight | target | p50 ms | p99 ms | added p50 | added p99 | req/s | server CPU µs/req | others (cores) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for level in [1, 64, 256] {
        for target in &targets {
            let Some(c) = overhead::cell(&runs, target.name, level) else { continue };
            let a = overhead::added(&runs, "emulator", target.name, level);
            println!(
                "| {level} | {} | {} | {} | {} | {} | {} | {} | {} |",
                target.name,
                c.p50_ms.show(3),
                c.p99_ms.show(3),
                a.as_ref().map(|a| a.p50_ms.show(3)).unwrap_or_default(),
                a.as_ref().map(|a| a.p99_ms.show(3)).unwrap_or_default(),
                c.throughput.show(0),
                c.cpu_us_per_request.show(1),
                c.foreign_cores.show(2)
            );
        }
    }
    Ok(())
}

async fn run_batch(args: &Args, emulator_runtime: &tokio::runtime::Handle, job_cost: u64) -> Result<BatchPart, String> {
    let host = host_json(&args.peer_dir)?;
    let queues = &host["extensions"]["queues"];
    let in_flight =
        (queues["batchSize"].as_u64().unwrap_or(16) + queues["newBatchThreshold"].as_u64().unwrap_or(8)) as usize;
    let max_dequeue = queues["maxDequeueCount"].as_u64().unwrap_or(5) as u32;
    let visibility = queues["visibilityTimeout"].as_str().and_then(handler::config::parse_timespan).unwrap_or_default();
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
    let messages: Vec<(String, String)> = (0..jobs)
        .map(|i| {
            let id = format!("batch-{i:05}");
            let text =
                json!({"id": id, "task": "summarize", "input": {"text": ARTICLE, "max_words": MAX_WORDS}}).to_string();
            (id, text)
        })
        .collect();
    let ids: Vec<String> = messages.iter().map(|(id, _)| id.clone()).collect();
    let plan = batch::Plan {
        in_flight,
        visibility,
        max_dequeue,
        time_limit: Duration::from_secs(if args.quick { 120 } else { 240 }),
    };
    let sampler = emulator.clone();
    let sample = Rc::new(move || {
        let s = sampler.stats();
        (s.chat_ok, s.throttled, s.tokens_used)
    });
    process::quiet_gate(&[handler.pid()], Duration::from_secs(60));
    let meter = process::ForeignMeter::start(&[handler.pid()]);
    let outcome = batch::run(handler.addr(), &plan, messages, sample).await;
    let foreign_cores = meter.read().0;
    let stats = emulator.stats();
    // Every request's cost, as the emulator's limiter counts it: all jobs cost the same.
    let costs: Vec<u64> = emulator.requests().iter().map(|r| cost_of(&r.body)).collect();
    if costs.iter().any(|c| *c != job_cost) {
        return Err(format!(
            "the batch's requests do not all cost {job_cost} tokens: {:?}",
            costs.iter().find(|c| **c != job_cost)
        ));
    }
    let _ = handler.terminate(Duration::from_secs(10));
    let tally = batch::tally(&ids, &outcome.results);
    let failed_throttled = tally.failed.get("upstream_throttled").copied().unwrap_or(0);
    let duration = outcome.duration_s;
    let (from, to) = (duration * 0.1, duration * 0.9);
    let at = |t: f64| outcome.samples.iter().min_by(|a, b| (a.t_s - t).abs().total_cmp(&(b.t_s - t).abs())).copied();
    let (steady_tokens_per_minute, steady_usage_per_minute, steady_from_s, steady_to_s) = match (at(from), at(to)) {
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
    };
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

async fn start_emulator(runtime: &tokio::runtime::Handle, config: EmulatorConfig) -> Result<Emulator, String> {
    runtime
        .spawn(Emulator::start(config))
        .await
        .map_err(|e| format!("the emulator task failed: {e}"))?
        .map_err(|e| format!("the emulator did not start: {e}"))
}

fn base_env(emulator: &Emulator) -> Vec<(String, String)> {
    vec![
        ("AZURE_OPENAI_ENDPOINT".into(), emulator.endpoint()),
        ("AZURE_OPENAI_DEPLOYMENT".into(), DEPLOYMENT.into()),
        ("IDENTITY_ENDPOINT".into(), emulator.identity_endpoint()),
        ("IDENTITY_HEADER".into(), emulator.identity_header()),
        ("NO_PROXY".into(), "127.0.0.1,localhost".into()),
        ("FUNCTIONS_CUSTOMHANDLER_WORKER_ID".into(), uuid::Uuid::new_v4().to_string()),
    ]
}

/// The handler as the host starts it: its settings, the platform's identity variables,
/// `RUST_LOG` at its default (info: one line per invocation), host.json in the working folder.
fn handler_launch(args: &Args, emulator: &Emulator, extra: &[(String, String)], phase: &str) -> Launch {
    let mut env = base_env(emulator);
    env.push(("RUST_LOG".into(), "info".into()));
    env.extend(extra.iter().cloned());
    Launch {
        name: "handler",
        program: args.handler.clone(),
        args: vec![],
        cwd: repo_root(&args.peer_dir),
        env,
        cpu: SERVER_CPU,
        log: args.out.join("logs").join(format!("handler-{phase}.log")),
    }
}

/// The peer: `python -m uvicorn app:app`, one worker, its default logging (an access-log line
/// per request).
fn peer_launch(args: &Args, emulator: &Emulator, phase: &str) -> Launch {
    let mut env = base_env(emulator);
    env.push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
    Launch {
        name: "peer",
        program: args.python.clone(),
        args: ["-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"]
            .map(String::from)
            .to_vec(),
        cwd: args.peer_dir.clone(),
        env,
        cpu: SERVER_CPU,
        log: args.out.join("logs").join(format!("peer-{phase}.log")),
    }
}

/// The null relay (see relay.rs) on the server core, in front of the emulator.
fn relay_launch(args: &Args, emulator: SocketAddr) -> Result<Launch, String> {
    Ok(Launch {
        name: "relay",
        program: std::env::current_exe().map_err(|e| e.to_string())?,
        args: vec!["relay".into(), "{port}".into(), emulator.to_string()],
        cwd: args.out.clone(),
        env: vec![],
        cpu: SERVER_CPU,
        log: args.out.join("logs").join("relay.log"),
    })
}

fn repo_root(peer_dir: &Path) -> PathBuf {
    peer_dir.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn host_json(peer_dir: &Path) -> Result<Value, String> {
    let path = repo_root(peer_dir).join("host.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn spawn_ready(launch: &Launch) -> Result<Server, String> {
    let port = process::free_port().map_err(|e| e.to_string())?;
    let mut server = launch.spawn(port).map_err(|e| format!("{}: {e}", launch.name))?;
    server.wait_ready(Duration::from_secs(60)).map_err(|e| e.to_string())?;
    Ok(server)
}

async fn send_once(addr: SocketAddr, bytes: &[u8]) -> Result<http::Response, String> {
    let mut connection = Connection::open(addr).await.map_err(|e| format!("{addr}: {e}"))?;
    connection.send(bytes).await.map_err(|e| format!("{addr}: {e}"))
}

fn expect_ok(what: &str, response: &http::Response) -> Result<(), String> {
    if response.status == 200 {
        return Ok(());
    }
    Err(format!("{what}: {} {}", response.status, String::from_utf8_lossy(&response.body)))
}

/// A token from the emulator's managed-identity endpoint, for the baseline's direct calls.
async fn baseline_token(emulator: &Emulator) -> Result<String, String> {
    let addr = addr_of(&emulator.endpoint())?;
    let path = "/msi/token?api-version=2019-08-01&resource=https://cognitiveservices.azure.com";
    let bytes = request("GET", path, &[("X-IDENTITY-HEADER", emulator.identity_header())], b"");
    let response = send_once(addr, &bytes).await?;
    expect_ok("identity endpoint", &response)?;
    let body: Value = serde_json::from_slice(&response.body).map_err(|e| e.to_string())?;
    body["access_token"].as_str().map(str::to_owned).ok_or_else(|| format!("no access_token: {body}"))
}

fn addr_of(endpoint: &str) -> Result<SocketAddr, String> {
    let port = endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
        .ok_or_else(|| format!("no port in {endpoint}"))?;
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// What Azure OpenAI's limiter charges for a request ([`token_cost::estimated_tokens`]).
fn cost_of(body: &Value) -> u64 {
    let chars: usize = body["messages"]
        .as_array()
        .map(|m| m.iter().map(|m| m["content"].as_str().unwrap_or_default().chars().count()).sum())
        .unwrap_or(0);
    let max_completion = body["max_completion_tokens"].as_u64().unwrap_or(0);
    token_cost::estimated_tokens(chars, u32::try_from(max_completion).unwrap_or(u32::MAX))
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("({program}: {e})"))
}

/// The machine, from lscpu, nproc, free and uname.
fn machine() -> Vec<(String, String)> {
    let lscpu = command_output("lscpu", &[]);
    let field = |name: &str| {
        lscpu
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim_start_matches(':').trim().to_owned()))
            .unwrap_or_default()
    };
    let mem = command_output("free", &["-m"]);
    let mem_total = mem
        .lines()
        .find(|l| l.starts_with("Mem:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|m| format!("{m} MiB"))
        .unwrap_or_default();
    vec![
        (
            "CPU (lscpu)".into(),
            format!("{}, {}, hypervisor {}", field("Model name"), field("Vendor ID"), field("Hypervisor vendor")),
        ),
        ("CPUs (nproc --all)".into(), command_output("nproc", &["--all"])),
        (
            "threads per core / cores per socket".into(),
            format!("{} / {}", field("Thread(s) per core"), field("Core(s) per socket")),
        ),
        (
            "caches L1d / L2 / L3".into(),
            format!("{} / {} / {}", field("L1d cache"), field("L2 cache"), field("L3 cache")),
        ),
        ("memory (free -m)".into(), mem_total),
        ("kernel".into(), command_output("uname", &["-sr"])),
        ("rustc".into(), command_output("rustc", &["--version"])),
    ]
}

/// Medians in KiB as "x.x MB".
pub fn mb(kib: f64) -> String {
    format!("{:.1} MB", kib * 1024.0 / 1e6)
}

pub fn summary_mb(s: &Summary) -> String {
    if s.n == 0 {
        return "n/a".into();
    }
    let f = |k: f64| k * 1024.0 / 1e6;
    if s.n == 1 {
        return format!("{:.1} MB", f(s.median));
    }
    format!("{:.1} MB ({:.1}–{:.1})", f(s.median), f(s.min), f(s.max))
}
