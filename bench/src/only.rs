//! The partial runs for trying a change: `--cold-only` (the handler's cold start) and
//! `--load-only` (HTTP and queue latency and throughput, several builds side by side).

use std::rc::Rc;

use emulator::EmulatorConfig;
use serde_json::json;

use crate::args::Args;
use crate::http::request;
use crate::setup::*;
use crate::{batch, coldstart, overhead, process};

/// `--cold-only`: the handler's cold start alone, printed.
pub async fn cold_only(args: &Args, emulator_runtime: &tokio::runtime::Handle) -> Result<(), String> {
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

/// `--load-only`: the load part alone (HTTP and queue invocations), for the emulator, the relay
/// and each handler build.
pub async fn load_only(args: &Args, emulator_runtime: &tokio::runtime::Handle) -> Result<(), String> {
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
    let plan = overhead::Plan::cpu_levels(args.quick);
    let runs = overhead::measure(&targets, &plan, &|| emulator.reset_stats()).await;
    print_table(&runs, &targets);
    Ok(())
}

/// The load-only results as a Markdown table.
fn print_table(runs: &[overhead::Run], targets: &[overhead::Target]) {
    println!(
        "| in flight | target | p50 ms | p99 ms | added p50 | added p99 | req/s | server CPU µs/req | others (cores) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for level in [1, 64, 256] {
        for target in targets {
            let Some(c) = overhead::cell(runs, target.name, level) else { continue };
            let a = overhead::added(runs, "emulator", target.name, level);
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
}
