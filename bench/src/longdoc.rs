//! `bench long-docs --handler PATH`: long documents through `POST /api/summarize` against the
//! in-process emulator with a 16 384-token context window and 300 ms per answered call: wall
//! time, calls and tokens for 100 000 and 1 000 000 characters, beside the ideal (one round of
//! parallel calls for the parts plus the combining call: 2 x 300 ms), and the handler's peak
//! resident memory (VmHWM) after the 1 000 000-character run, and after the same text went
//! through `PUT /api/jobs/{id}` and `process_job` (the host's blob and queue bindings emulated).
//!
//! Each size runs once "cold" in a fresh handler (the window is not known yet: the whole text
//! is refused once, which teaches it), then three times "warm". Two settings are measured:
//! the default `AOAI_MAX_CONCURRENCY` (8) and 32, which lets one round hold every part.

use std::path::Path;
use std::time::{Duration, Instant};

use emulator::fixtures::chaptered_document;
use emulator::host::{Function, HandlerProcess, Storage};
use emulator::{Emulator, EmulatorConfig, Faults};
use serde_json::{Value, json};

const WINDOW: u64 = 16_384;
const LATENCY_MS: u64 = 300;
const DEPLOYMENT: &str = "gpt-4o-mini";
const WARM_RUNS: usize = 3;

struct Run {
    wall: Duration,
    calls: u64,
    refused: u64,
    tokens: u64,
    parts: u64,
}

async fn summarize(emulator: &Emulator, handler: &HandlerProcess, text: &str) -> Result<Run, String> {
    emulator.reset_stats();
    let body = json!({"text": text, "max_words": 120}).to_string().into_bytes();
    let started = Instant::now();
    let response = handler
        .forward(reqwest::Method::POST, "/api/summarize", &[("content-type", "application/json")], Some(body))
        .await;
    let status = response.status().as_u16();
    let answer: Value = serde_json::from_str(&response.text().await.map_err(|e| e.to_string())?)
        .map_err(|e| format!("not JSON: {e}"))?;
    let wall = started.elapsed();
    if status != 200 {
        return Err(format!("status {status}: {answer}"));
    }
    let stats = emulator.stats();
    Ok(Run {
        wall,
        calls: stats.chat_requests,
        refused: stats.context_length_exceeded,
        tokens: answer["usage"]["total_tokens"].as_u64().unwrap_or(0),
        parts: answer["parts"].as_u64().unwrap_or(0),
    })
}

/// Peak resident set of `pid` in kB (`VmHWM`).
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn row(size: usize, concurrency: &str, kind: &str, run: &Run) -> String {
    let ideal = Duration::from_millis(2 * LATENCY_MS);
    format!(
        "| {size} | {concurrency} | {kind} | {} | {} ({} refused) | {} | {:.2} s | {:.2} s | {:.2} |",
        run.parts,
        run.calls,
        run.refused,
        run.tokens,
        run.wall.as_secs_f64(),
        ideal.as_secs_f64(),
        run.wall.as_secs_f64() / ideal.as_secs_f64()
    )
}

fn env(emulator: &Emulator, concurrency: &str) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("AZURE_OPENAI_ENDPOINT", Some(emulator.endpoint())),
        ("AZURE_OPENAI_DEPLOYMENT", Some(DEPLOYMENT.to_owned())),
        ("IDENTITY_ENDPOINT", Some(emulator.identity_endpoint())),
        ("IDENTITY_HEADER", Some(emulator.identity_header())),
        ("AOAI_MAX_CONCURRENCY", Some(concurrency.to_owned())),
        ("AOAI_CONTEXT_TOKENS", None),
        ("AZURE_CLIENT_ID", None),
        ("AZURE_TOKEN_CREDENTIALS", None),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", None),
        ("NO_PROXY", Some("127.0.0.1,localhost".to_owned())),
        ("RUST_LOG", Some("warn".to_owned())),
    ]
}

async fn spawn(emulator: &Emulator, handler: &Path, concurrency: &str) -> Result<HandlerProcess, String> {
    let env = env(emulator, concurrency);
    let env: Vec<(&str, Option<&str>)> = env.iter().map(|(k, v)| (*k, v.as_deref())).collect();
    HandlerProcess::spawn(handler, &env).await
}

/// 1 000 000 characters through `PUT /api/jobs/{id}` and `process_job` in a fresh handler:
/// the time `process_job` took and the handler's peak RSS in kB.
async fn queued_job(emulator: &Emulator, handler: &Path) -> Result<(Duration, u64), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (put, process) = (Function::load(&root, "put_job")?, Function::load(&root, "process_job")?);
    let process_handle = spawn(emulator, handler, "8").await?;
    let storage = Storage::default();
    let job = json!({"task": "summarize", "input": {"text": chaptered_document(1_000_000)}}).to_string();
    let url = "http://localhost:7071/api/jobs/bench-1";
    let outcome = storage.invoke_http(&process_handle, &put, "PUT", url, &[("id", "bench-1")], Some(&job)).await?;
    if outcome.status != 202 {
        return Err(format!("PUT answered {}: {}", outcome.status, outcome.body));
    }
    let message = storage.pop("jobs").ok_or("PUT enqueued nothing")?;
    let started = Instant::now();
    let (status, body) = storage.invoke_queue(&process_handle, &process, &message, 1).await?;
    let took = started.elapsed();
    let result = storage.blob("results/bench-1.json").unwrap_or_default();
    if status != 200 || !result.contains("\"succeeded\"") {
        return Err(format!("process_job answered {status}: {body}"));
    }
    Ok((took, peak_rss_kb(process_handle.pid()).unwrap_or(0)))
}

pub fn main(handler: &Path) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(run(handler))
}

async fn run(handler: &Path) -> Result<(), String> {
    let config = EmulatorConfig { context_tokens: vec![(DEPLOYMENT.into(), WINDOW)], ..Default::default() };
    let emulator = Emulator::start(config).await.map_err(|e| e.to_string())?;
    emulator.set_faults(Faults { latency_ms: LATENCY_MS, ..Default::default() });
    println!("Long documents: {WINDOW}-token window, {LATENCY_MS} ms per answered call (refusals are immediate),");
    println!("ideal = one round of parallel part calls + the combining call = {} ms.", 2 * LATENCY_MS);
    println!();
    println!("| characters | AOAI_MAX_CONCURRENCY | run | parts | calls | tokens | wall | ideal | wall / ideal |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut peak = Vec::new();
    for concurrency in ["8", "32"] {
        for size in [100_000, 1_000_000] {
            let text = chaptered_document(size);
            let process = spawn(&emulator, handler, concurrency).await?;
            let cold = summarize(&emulator, &process, &text).await?;
            println!("{}", row(size, concurrency, "cold", &cold));
            for _ in 0..WARM_RUNS {
                let warm = summarize(&emulator, &process, &text).await?;
                println!("{}", row(size, concurrency, "warm", &warm));
            }
            if let Some(kb) = peak_rss_kb(process.pid()) {
                peak.push(format!(
                    "{size} characters, AOAI_MAX_CONCURRENCY={concurrency}: {:.1} MB",
                    kb as f64 / 1024.0
                ));
            }
        }
    }
    let queued = queued_job(&emulator, handler).await?;
    peak.push(format!(
        "1000000 characters through PUT /api/jobs/{{id}} and process_job ({:.2} s in process_job): {:.1} MB",
        queued.0.as_secs_f64(),
        queued.1 as f64 / 1024.0
    ));
    println!();
    println!("Peak RSS (VmHWM) of the handler after its runs:");
    for line in peak {
        println!("- {line}");
    }
    Ok(())
}
