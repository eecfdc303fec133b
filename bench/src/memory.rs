//! `bench memory --handler PATH [--handler PATH]...`: the handler's peak resident memory
//! (`VmHWM`) for the largest valid batch submit: 1 000 jobs, about 44 MB of JSON, sent to
//! `submit_jobs` inside the invocation envelope exactly as the Functions host forwards it
//! (`emulator::host::http_invocation`: the caller's body as the string `Data.req.Body`).
//!
//! Three scenarios per binary, each in a fresh process (VmHWM only ever grows): idle (started,
//! ready, nothing sent), one submit, and ten submits at once. Every submit must be accepted
//! (202 with 1 000 queue messages), else the figure means nothing and the run fails. Ratios are
//! against the idle process of the same binary in the same run, and against the submit's size.
//! The targets: one submit peaks at most 2.5x its size, ten at most 1 GB.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use emulator::host::{HandlerProcess, http_invocation};
use emulator::{Emulator, EmulatorConfig};
use serde_json::{Value, json};

const JOBS: usize = 1000;
/// Characters of each job's text: the 1 000 jobs make about 44 MB of JSON.
const TEXT_CHARS: usize = 44_000;
const CONCURRENT: usize = 10;

/// One job's text: prose with line breaks and quotes, which the host escapes once more.
fn text(job: usize) -> String {
    let mut text = String::with_capacity(TEXT_CHARS + 200);
    let mut line = 0;
    while text.len() < TEXT_CHARS {
        line += 1;
        text.push_str(&format!(
            "Ticket {job}-{line}: the customer wrote \"invoice {line} was charged twice\"; billing refunded it within a week.\n"
        ));
    }
    text.truncate(TEXT_CHARS);
    text
}

/// The submit's body (`{"jobs": [...]}`), about 44 MB.
fn batch() -> String {
    let jobs: Vec<Value> = (0..JOBS)
        .map(|i| {
            if i % 4 == 3 {
                json!({"id": format!("bench-{i}"), "task": "classify", "input": {"text": text(i), "labels": ["billing", "sales", "support"]}})
            } else {
                json!({"id": format!("bench-{i}"), "task": "summarize", "input": {"text": text(i), "max_words": 60}})
            }
        })
        .collect();
    json!({"jobs": jobs}).to_string()
}

/// Peak and current resident set of `pid` in kB (`VmHWM`, `VmRSS`).
fn rss_kb(pid: u32) -> Result<(u64, u64), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("/proc/{pid}: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

fn env(emulator: &Emulator) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("AZURE_OPENAI_ENDPOINT", Some(emulator.endpoint())),
        ("AZURE_OPENAI_DEPLOYMENT", Some("gpt-4o-mini".to_owned())),
        ("IDENTITY_ENDPOINT", Some(emulator.identity_endpoint())),
        ("IDENTITY_HEADER", Some(emulator.identity_header())),
        ("AZURE_CLIENT_ID", None),
        ("AZURE_TOKEN_CREDENTIALS", None),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", None),
        ("APPLICATIONINSIGHTS_CONNECTION_STRING", None),
        ("NO_PROXY", Some("127.0.0.1,localhost".to_owned())),
        ("RUST_LOG", Some("warn".to_owned())),
    ]
}

async fn spawn(emulator: &Emulator, handler: &Path) -> Result<HandlerProcess, String> {
    let env = env(emulator);
    let env: Vec<(&str, Option<&str>)> = env.iter().map(|(k, v)| (*k, v.as_deref())).collect();
    HandlerProcess::spawn(handler, &env).await
}

/// One submit, checked: the invocation succeeds, the caller gets 202 and every job a message.
async fn submit(handler: &HandlerProcess, data: Value, metadata: Value) -> Result<(), String> {
    let response = handler.invoke("submit_jobs", data, metadata).await;
    let status = response.status().as_u16();
    let invocation: Value = response.json().await.map_err(|e| format!("the invocation answer is not JSON: {e}"))?;
    let res_status = invocation["Outputs"]["res"]["statusCode"].as_u64().unwrap_or(0);
    let messages = invocation["Outputs"]["outjobs"].as_array().map_or(0, Vec::len);
    if status != 200 || res_status != 202 || messages != JOBS {
        let res = invocation["Outputs"]["res"]["body"].as_str().unwrap_or_default();
        return Err(format!(
            "submit: invocation {status}, res {res_status}, {messages} messages: {}",
            res.chars().take(300).collect::<String>()
        ));
    }
    Ok(())
}

struct Figures {
    idle_kb: u64,
    one_kb: u64,
    one_wall: Duration,
    many_kb: u64,
    many_wall: Duration,
}

async fn measure(emulator: &Emulator, handler: &Path, data: &Value, metadata: &Value) -> Result<Figures, String> {
    let idle = spawn(emulator, handler).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle_kb, _) = rss_kb(idle.pid())?;
    drop(idle);

    let one = spawn(emulator, handler).await?;
    let started = Instant::now();
    submit(&one, data.clone(), metadata.clone()).await?;
    let one_wall = started.elapsed();
    let (one_kb, _) = rss_kb(one.pid())?;
    drop(one);

    let many = spawn(emulator, handler).await?;
    let started = Instant::now();
    let submits = (0..CONCURRENT).map(|_| submit(&many, data.clone(), metadata.clone()));
    for outcome in futures_util::future::join_all(submits).await {
        outcome?;
    }
    let many_wall = started.elapsed();
    let (many_kb, _) = rss_kb(many.pid())?;
    drop(many);
    Ok(Figures { idle_kb, one_kb, one_wall, many_kb, many_wall })
}

pub fn main(handlers: &[PathBuf]) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(run(handlers))
}

async fn run(handlers: &[PathBuf]) -> Result<(), String> {
    let emulator = Emulator::start(EmulatorConfig::default()).await.map_err(|e| e.to_string())?;
    let body = batch();
    let (data, metadata) = http_invocation("POST", "https://app.azurewebsites.net/api/jobs", &[], Some(&body), &[]);
    let envelope = json!({"Data": &data, "Metadata": &metadata}).to_string().len();
    let mb = |bytes: f64| bytes / 1_000_000.0;
    let size = body.len() as f64;
    println!(
        "Batch submit: {JOBS} jobs, body {:.1} MB, invocation envelope {:.1} MB; {CONCURRENT} at once = {:.1} MB of bodies.",
        mb(size),
        mb(envelope as f64),
        mb(size * CONCURRENT as f64)
    );
    println!("Peak RSS = VmHWM of a fresh handler process per scenario; ratios against its idle process, same run.");
    println!();
    println!(
        "| handler | idle | 1 submit | 1 submit / idle | 1 submit / body | {CONCURRENT} at once | {CONCURRENT} / idle | {CONCURRENT} / body |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for handler in handlers {
        let f = measure(&emulator, handler, &data, &metadata).await?;
        let kb = |kb: u64| kb as f64 * 1024.0;
        println!(
            "| {} | {:.1} MB | {:.1} MB ({:.2} s) | {:.1}x | {:.2}x | {:.1} MB ({:.2} s) | {:.1}x | {:.2}x |",
            handler.display(),
            mb(kb(f.idle_kb)),
            mb(kb(f.one_kb)),
            f.one_wall.as_secs_f64(),
            f.one_kb as f64 / f.idle_kb as f64,
            kb(f.one_kb) / size,
            mb(kb(f.many_kb)),
            f.many_wall.as_secs_f64(),
            f.many_kb as f64 / f.idle_kb as f64,
            kb(f.many_kb) / size,
        );
    }
    println!();
    println!(
        "Targets (issue 12): 1 submit at most 2.5x the body ({:.1} MB); {CONCURRENT} at once at most 1 GB.",
        mb(2.5 * size)
    );
    Ok(())
}
