//! `--export-cost`: what Application Insights export costs the handler per request. Each handler
//! build runs three times side by side: export off (no connection string), export on as deployed
//! (the emulator's ingestion endpoint, `Authorization=AAD`, the default sampler: 5 traces per
//! second) and export on keeping every trace (`microsoft.fixed_percentage` 1.0), under the same
//! load (HTTP summarize and queue `process_job`), interleaved run by run; the table gives the
//! server CPU per request of each and its ratio to export off, per repetition (of the same
//! repetition).
//!
//! Two kinds of load: closed loop at 1, 64 and 256 in flight (each server at its own saturation,
//! where any added work also costs batching: fewer requests per wake-up), then paced at
//! [`PACED_RATE`] requests per second with 64 in flight, where export off and on answer the same
//! requests per second and the CPU per request compares the work itself.
//!
//! The emulator counts the items it accepts without keeping them (`keep_telemetry: false`): it
//! shares the load generator's core, and storing every item would slow the load, not the handler.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use emulator::EmulatorConfig;
use serde_json::json;

use crate::args::Args;
use crate::batch;
use crate::http::request;
use crate::overhead::{self, Run, Target};
use crate::setup::*;
use crate::stats::Summary;

/// The paced runs' requests per second: well under what one core serves with export on (about
/// 7 000 HTTP summaries per second on the bench machine), so that every target keeps up.
const PACED_RATE: f64 = 3000.0;

/// The settings that turn export on, as the Bicep sets them, against the emulator.
fn export_env(connection_string: String) -> Vec<(String, String)> {
    vec![
        ("APPLICATIONINSIGHTS_CONNECTION_STRING".into(), connection_string),
        ("APPLICATIONINSIGHTS_AUTHENTICATION_STRING".into(), "Authorization=AAD".into()),
        ("WEBSITE_SITE_NAME".into(), "bench-export".into()),
    ]
}

pub async fn export_cost(args: &Args, emulator_runtime: &tokio::runtime::Handle) -> Result<(), String> {
    let config = EmulatorConfig { keep_telemetry: false, ..EmulatorConfig::default() };
    let emulator = start_emulator(emulator_runtime, config).await?;
    let body = json!({"text": ARTICLE, "max_words": MAX_WORDS}).to_string();
    let summarize = Rc::new(request("POST", "/api/summarize", &batch::host_headers("export-cost"), body.as_bytes()));
    let queue = Rc::new(queue_invocation_request());
    let mut common = vec![("AOAI_MAX_CONCURRENCY".to_owned(), "256".to_owned())];
    common.extend(args.env.iter().cloned());
    let mut on = common.clone();
    on.extend(export_env(emulator.connection_string()));
    let mut every = on.clone();
    every.push(("OTEL_TRACES_SAMPLER".into(), "microsoft.fixed_percentage".into()));
    every.push(("OTEL_TRACES_SAMPLER_ARG".into(), "1.0".into()));

    let mut servers = Vec::new();
    let mut targets = Vec::new();
    let mut builds = Vec::new();
    for (i, handler) in std::iter::once(&args.handler).chain(&args.others).enumerate() {
        for (export, env) in [("off", &common), ("on", &on), ("every", &every)] {
            let launch = handler_launch(
                &Args { handler: handler.clone(), ..args.clone() },
                &emulator,
                env,
                &format!("export-cost-{i}-{export}"),
            );
            let server = spawn_ready(&launch)?;
            expect_ok("handler summarize", &send_once(server.addr(), &summarize).await?)?;
            for (kind, request, expect) in [("http", &summarize, "\"summary\""), ("queue", &queue, "succeeded")] {
                targets.push(Target {
                    name: leak(format!("handler-{i}-{kind}-export-{export}")),
                    addr: server.addr(),
                    request: request.clone(),
                    expect,
                    pid: Some(server.pid()),
                });
            }
            servers.push(server);
        }
        println!("handler-{i}: {}", handler.display());
        builds.push(i);
    }
    let plan = overhead::Plan::cpu_levels(args.quick);
    let items = Cell::new(0u64);
    let between = || {
        items.set(items.get() + emulator.stats().telemetry_items);
        emulator.reset_stats();
    };
    let runs = overhead::measure(&targets, &plan, &between).await;
    let paced_plan =
        overhead::Plan { levels: vec![64], rate: Some(PACED_RATE), ..overhead::Plan::cpu_levels(args.quick) };
    let paced = overhead::measure(&targets, &paced_plan, &between).await;
    // What is still buffered arrives within the batch delay (OTEL_BSP_SCHEDULE_DELAY, 5 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    items.set(items.get() + emulator.stats().telemetry_items);
    println!("\nClosed loop (each server at its own pace):");
    print_table(&runs, &builds, &plan);
    println!("\nPaced at {PACED_RATE} requests per second (the same work per second for every server):");
    print_table(&paced, &builds, &paced_plan);
    let exported: f64 = runs
        .iter()
        .chain(&paced)
        .filter(|r| !r.target.ends_with("export-off"))
        .map(|r| r.throughput * r.measured_s)
        .sum();
    println!(
        "\nItems the ingestion endpoint accepted: {} (export-on targets answered {exported:.0} requests in the measured windows, plus warm-ups; two items per kept trace)",
        items.get()
    );
    drop(servers);
    Ok(())
}

/// Per level and trigger, each build's CPU per request with export off and on (as deployed, and
/// keeping every trace), and each on / off.
fn print_table(runs: &[Run], builds: &[usize], plan: &overhead::Plan) {
    let reps = plan.reps;
    println!(
        "\n| in flight | build | trigger | export | CPU µs/req export off | CPU µs/req export on | on / off | req/s off | req/s on | p50 ms off | p50 ms on |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &level in &plan.levels {
        for &i in builds {
            for (kind, export) in [("http", "on"), ("http", "every"), ("queue", "on"), ("queue", "every")] {
                let off_name = format!("handler-{i}-{kind}-export-off");
                let on_name = format!("handler-{i}-{kind}-export-{export}");
                let label = if export == "on" { "on, 5 traces/s (default)" } else { "on, every trace" };
                let (Some(off), Some(on)) =
                    (overhead::cell(runs, &off_name, level), overhead::cell(runs, &on_name, level))
                else {
                    continue;
                };
                let per_rep = |name: &str, rep: usize| {
                    runs.iter()
                        .find(|r| r.target == name && r.concurrency == level && r.rep == rep)
                        .map(|r| r.server_cpu_s * 1e6 / (r.throughput * r.measured_s).max(1.0))
                };
                let ratios: Vec<f64> =
                    (0..reps).filter_map(|rep| Some(per_rep(&on_name, rep)? / per_rep(&off_name, rep)?)).collect();
                println!(
                    "| {level} | handler-{i} | {kind} | {label} | {} | {} | {} | {} | {} | {} | {} |",
                    off.cpu_us_per_request.show(1),
                    on.cpu_us_per_request.show(1),
                    Summary::of(&ratios).show(2),
                    off.throughput.show(0),
                    on.throughput.show(0),
                    off.p50_ms.show(3),
                    on.p50_ms.show(3),
                );
            }
        }
    }
}

/// Target names live as long as the bench (a handful of short strings).
fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}
