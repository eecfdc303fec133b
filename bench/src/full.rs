//! The full run: cold start, memory, latency added over the emulator, throughput and
//! identity calls for the handler and the peer, the tokens-per-minute batch and the fleet, then
//! results.json and report.md.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use emulator::{Emulator, EmulatorConfig, RecordedRequest};
use serde_json::json;

use crate::args::Args;
use crate::coldstart::ColdStart;
use crate::http::request;
use crate::process::Server;
use crate::results::{LoadPart, Results};
use crate::setup::*;
use crate::{batch, coldstart, fleet, overhead, process, report, tpm_batch};

/// Everything, in order; writes results.json and report.md and prints the report.
pub async fn run(args: &Args, emulator_runtime: &tokio::runtime::Handle, quiet_budget: Duration) -> Result<(), String> {
    let started = Instant::now();
    let about = describe(args)?;
    let summarize_body = json!({"text": ARTICLE, "max_words": MAX_WORDS}).to_string();
    let summarize = request(
        "POST",
        "/api/summarize",
        &batch::host_headers(&uuid::Uuid::new_v4().to_string()),
        summarize_body.as_bytes(),
    );
    // The emulator for cold start and load: no limit, no injected latency.
    let emulator = start_emulator(emulator_runtime, EmulatorConfig::default()).await?;
    eprintln!("== cold start ({:.0} s)", started.elapsed().as_secs_f64());
    let cold = cold_part(args, &emulator, &summarize).await?;
    eprintln!("== overhead and throughput ({:.0} s)", started.elapsed().as_secs_f64());
    let servers = start_servers(args, &emulator, &summarize).await?;
    let (same_upstream_request, job_cost) = (servers.same_upstream_request, cost_of(&servers.upstream.body));
    let load = load_part(args, &emulator, servers, &summarize).await?;
    drop(emulator);
    eprintln!("== batch ({:.0} s)", started.elapsed().as_secs_f64());
    let batch = tpm_batch::run_batch(args, emulator_runtime, job_cost).await?;
    eprintln!("== fleet ({:.0} s)", started.elapsed().as_secs_f64());
    let fleet = fleet::run_fleet(args, emulator_runtime, job_cost).await?;
    let results = Results {
        date: about.date,
        command: args.command.clone(),
        handler_build: args.build.clone(),
        quick: args.quick,
        machine: machine(),
        handler_binary_bytes: about.handler_binary_bytes,
        handler_binary_stripped: about.handler_binary_stripped,
        peer_venv_bytes: about.peer_venv_bytes,
        peer_versions: about.peer_versions,
        cold_handler: cold.handler,
        cold_peer: cold.peer,
        cold_handler_foreign: cold.handler_foreign,
        cold_peer_foreign: cold.peer_foreign,
        quiet_waited_s: quiet_budget.saturating_sub(process::quiet_budget_left()).as_secs_f64(),
        same_upstream_request,
        load,
        batch,
        fleet,
    };
    let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    std::fs::write(args.out.join("results.json"), json).map_err(|e| e.to_string())?;
    let markdown = report::markdown(&results);
    std::fs::write(args.out.join("report.md"), &markdown).map_err(|e| e.to_string())?;
    println!("{markdown}");
    eprintln!("== done in {:.0} s: {}", started.elapsed().as_secs_f64(), args.out.join("report.md").display());
    Ok(())
}

/// The build and the peer's installation, for the report's header.
struct About {
    date: String,
    handler_binary_bytes: u64,
    handler_binary_stripped: bool,
    peer_venv_bytes: u64,
    peer_versions: String,
}

fn describe(args: &Args) -> Result<About, String> {
    let handler_binary_bytes =
        std::fs::metadata(&args.handler).map_err(|e| format!("{}: {e}", args.handler.display()))?.len();
    let handler_binary_stripped = !process::has_symtab(&args.handler).map_err(|e| e.to_string())?;
    let venv = args.python.parent().and_then(Path::parent).unwrap_or(Path::new("."));
    let peer_versions = command_output(
        &args.python.display().to_string(),
        &[
            "-c",
            "import sys, importlib.metadata as m; print('Python ' + sys.version.split()[0] + ', ' + ', '.join(p + ' ' + m.version(p) for p in ['openai', 'azure-identity', 'aiohttp', 'fastapi', 'uvicorn', 'uvloop', 'httptools']))",
        ],
    );
    Ok(About {
        date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        handler_binary_bytes,
        handler_binary_stripped,
        peer_venv_bytes: process::dir_size(venv),
        peer_versions,
    })
}

struct Cold {
    handler: ColdStart,
    peer: ColdStart,
    handler_foreign: f64,
    peer_foreign: f64,
}

async fn cold_part(args: &Args, emulator: &Emulator, summarize: &[u8]) -> Result<Cold, String> {
    let (runs_h, rss_h, runs_p, rss_p) = if args.quick { (5, 2, 3, 1) } else { (30, 5, 10, 3) };
    let identity_calls = || emulator.stats().identity_requests;
    let meter = process::ForeignMeter::start(&[]);
    let handler =
        coldstart::measure(&handler_launch(args, emulator, &[], "cold"), summarize, runs_h, rss_h, &identity_calls)
            .await
            .map_err(|e| format!("handler cold start: {e}"))?;
    let handler_foreign = meter.read().0;
    eprintln!(
        "  handler: ready {} ms, first summary {} ms, idle RSS {} KiB; other processes {:.0} % of a core",
        handler.ready_ms.show(2),
        handler.first_summary_ms.show(2),
        handler.rss_idle_kib.show(0),
        100.0 * handler_foreign
    );
    let meter = process::ForeignMeter::start(&[]);
    let peer = coldstart::measure(&peer_launch(args, emulator, "cold"), summarize, runs_p, rss_p, &identity_calls)
        .await
        .map_err(|e| format!("peer cold start: {e}"))?;
    let peer_foreign = meter.read().0;
    eprintln!(
        "  peer: ready {} ms, first summary {} ms, idle RSS {} KiB; other processes {:.0} % of a core",
        peer.ready_ms.show(1),
        peer.first_summary_ms.show(1),
        peer.rss_idle_kib.show(0),
        100.0 * peer_foreign
    );
    Ok(Cold { handler, peer, handler_foreign, peer_foreign })
}

/// The servers of the load part, warm, and what their first answers showed.
struct Servers {
    handler: Server,
    peer: Server,
    handler_env: Vec<(String, String)>,
    handler_started: Instant,
    /// The handler's upstream request (the baseline replays it).
    upstream: RecordedRequest,
    same_upstream_request: bool,
    identity_before_handler: u64,
    identity_after_handler: u64,
    peer_identity_warm: u64,
}

async fn start_servers(args: &Args, emulator: &Emulator, summarize: &[u8]) -> Result<Servers, String> {
    emulator.reset_stats();
    let handler_env = vec![("AOAI_MAX_CONCURRENCY".to_owned(), "256".to_owned())];
    let identity_before_handler = emulator.stats().identity_requests;
    let handler_started = Instant::now();
    let handler = spawn_ready(&handler_launch(args, emulator, &handler_env, "load"))?;
    expect_ok("handler summarize", &send_once(handler.addr(), summarize).await?)?;
    let upstream = emulator.requests().pop().ok_or("the handler's summarize reached no emulator")?;
    let identity_after_handler = emulator.stats().identity_requests;
    let peer = spawn_ready(&peer_launch(args, emulator, "load"))?;
    expect_ok("peer summarize", &send_once(peer.addr(), summarize).await?)?;
    let peer_upstream = emulator.requests().pop().ok_or("the peer's summarize reached no emulator")?;
    let same_upstream_request = upstream.body["messages"] == peer_upstream.body["messages"]
        && upstream.body["max_completion_tokens"] == peer_upstream.body["max_completion_tokens"]
        && upstream.path == peer_upstream.path;
    let peer_identity_warm = emulator.stats().identity_requests - identity_after_handler;
    Ok(Servers {
        handler,
        peer,
        handler_env,
        handler_started,
        upstream,
        same_upstream_request,
        identity_before_handler,
        identity_after_handler,
        peer_identity_warm,
    })
}

/// The targets: the emulator itself (the baseline), the null relay, the handler over HTTP and
/// queue invocations, the peer.
fn targets(
    servers: &Servers,
    relay: &Server,
    emulator_addr: std::net::SocketAddr,
    token: &str,
    summarize: &[u8],
    queue_request: Vec<u8>,
) -> Vec<overhead::Target> {
    let upstream = &servers.upstream;
    let baseline = Rc::new(request(
        "POST",
        &format!("{}?{}", upstream.path, upstream.query),
        &[("Content-Type", "application/json".into()), ("Authorization", format!("Bearer {token}"))],
        upstream.body.to_string().as_bytes(),
    ));
    let target = |name, addr, request, expect, pid| overhead::Target { name, addr, request, expect, pid };
    let (handler, peer) = (&servers.handler, &servers.peer);
    vec![
        target("emulator", emulator_addr, baseline.clone(), "\"choices\"", None),
        target("relay", relay.addr(), baseline, "\"choices\"", Some(relay.pid())),
        target("handler-http", handler.addr(), Rc::new(summarize.to_vec()), "\"summary\"", Some(handler.pid())),
        target("handler-queue", handler.addr(), Rc::new(queue_request), "succeeded", Some(handler.pid())),
        target("peer-http", peer.addr(), Rc::new(summarize.to_vec()), "\"summary\"", Some(peer.pid())),
    ]
}

async fn load_part(args: &Args, emulator: &Emulator, servers: Servers, summarize: &[u8]) -> Result<LoadPart, String> {
    let (levels, reps, warmup, measure) = if args.quick {
        (vec![1, 64, 256], 2, Duration::from_millis(300), Duration::from_secs(1))
    } else {
        (vec![1, 64, 256], 5, Duration::from_millis(500), Duration::from_secs(2))
    };
    let token = baseline_token(emulator).await?;
    let queue_request = queue_invocation_request();
    let answer = send_once(servers.handler.addr(), &queue_request).await?;
    expect_ok("handler process_job", &answer)?;
    if !String::from_utf8_lossy(&answer.body).contains("succeeded") {
        return Err(format!("process_job did not succeed: {}", String::from_utf8_lossy(&answer.body)));
    }
    let emulator_addr = addr_of(&emulator.endpoint())?;
    let relay = spawn_ready(&relay_launch(args, emulator_addr)?)?;
    let targets = targets(&servers, &relay, emulator_addr, &token, summarize, queue_request);
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
        rate: None,
    };
    let runs = overhead::measure(&targets, &plan, &settle).await;
    let identity_during_runs = totals.borrow().0 - identity_at_start;
    let Servers { handler, peer, .. } = &servers;
    let (handler_rss_after_kib, handler_hwm_kib) = (handler.rss_kib().unwrap_or(0), handler.hwm_kib().unwrap_or(0));
    let (peer_rss_after_kib, peer_hwm_kib) = (peer.rss_kib().unwrap_or(0), peer.hwm_kib().unwrap_or(0));
    let handler_lifetime_s = servers.handler_started.elapsed().as_secs_f64();
    let (cells, added) = overhead::cells_and_added(&runs, &targets, &levels);
    // Identity calls during the runs cannot be told apart; with hour-long tokens there are none.
    let load = LoadPart {
        levels,
        reps,
        warmup_s: warmup.as_secs_f64(),
        measure_s: measure.as_secs_f64(),
        handler_env: servers.handler_env,
        runs,
        cells,
        added,
        handler_identity_calls: servers.identity_after_handler - servers.identity_before_handler + identity_during_runs,
        peer_identity_calls: servers.peer_identity_warm + identity_during_runs,
        handler_lifetime_s,
        token_lifetime_s: EmulatorConfig::default().token_lifetime.as_secs(),
        handler_rss_after_kib,
        handler_hwm_kib,
        peer_rss_after_kib,
        peer_hwm_kib,
        chat_requests: totals.borrow().1,
    };
    let _ = servers.handler.terminate(Duration::from_secs(10));
    let _ = servers.peer.terminate(Duration::from_secs(10));
    let _ = relay.terminate(Duration::from_secs(10));
    Ok(load)
}
