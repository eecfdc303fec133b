//! `--streaming-only`: time to first byte of a streamed summary. Three targets read the same
//! streamed answer from the emulator (a delay between its chunks stands in for generation):
//! the emulator itself (the baseline: the handler's own upstream request, sent directly), the
//! handler (`"stream": true` on `/api/summarize`, as the host's proxy sends it), and the Python
//! peer streaming with `openai`'s async client. Each is measured at the same concurrency with
//! the same number of requests; the first byte is the first event carrying text (the first
//! `event: delta`, or upstream the first chunk with non-empty `delta.content`), the total is
//! the end of the chunked body.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use emulator::{EmulatorConfig, Faults};
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::args::Args;
use crate::batch;
use crate::http::request;
use crate::setup::{
    ARTICLE, MAX_WORDS, addr_of, baseline_token, handler_launch, peer_launch, spawn_ready, start_emulator,
};
use crate::stats::quantile;

/// Milliseconds between two chunks of the emulator's streamed answers.
const CHUNK_DELAY_MS: u64 = 20;
/// Unmeasured streams per request in flight before each measurement (each about 1.1 s).
const WARM_UP_ROUNDS: usize = 6;

#[derive(Serialize)]
pub struct StreamingRun {
    pub target: &'static str,
    pub in_flight: usize,
    pub requests: usize,
    pub ttfb: Latency,
    pub total: Latency,
    /// CPU other processes on the machine used meanwhile, in cores (should be about 0).
    pub others: f64,
}

/// Quantiles of a set of durations, in milliseconds.
#[derive(Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            p50: quantile(&sorted, 0.5),
            p90: quantile(&sorted, 0.9),
            p99: quantile(&sorted, 0.99),
            max: sorted.last().copied().unwrap_or_default(),
        }
    }
}

/// How a target marks its first text.
#[derive(Clone, Copy)]
enum FirstText {
    /// `event: delta` (the handler and the peer).
    DeltaEvent,
    /// A chunk whose `delta.content` is not empty (Azure OpenAI, the emulator).
    UpstreamContent,
}

impl FirstText {
    fn found(self, body: &[u8]) -> bool {
        match self {
            Self::DeltaEvent => find(body, b"event: delta").is_some(),
            Self::UpstreamContent => {
                let needle = b"\"delta\":{\"content\":\"";
                let mut from = 0;
                while let Some(at) = find(&body[from..], needle) {
                    let next = from + at + needle.len();
                    match body.get(next) {
                        Some(b'"') => from = next,
                        Some(_) => return true,
                        None => return false,
                    }
                }
                false
            }
        }
    }
}

struct Target {
    name: &'static str,
    addr: SocketAddr,
    request: Rc<Vec<u8>>,
    first: FirstText,
}

pub async fn streaming_only(args: &Args, emulator_runtime: &tokio::runtime::Handle) -> Result<(), String> {
    let emulator = start_emulator(emulator_runtime, EmulatorConfig::default()).await?;
    emulator.set_faults(Faults { stream_chunk_delay_ms: CHUNK_DELAY_MS, ..Faults::default() });
    let body = json!({"text": ARTICLE, "max_words": MAX_WORDS, "stream": true}).to_string();
    let summarize = Rc::new(request("POST", "/api/summarize", &batch::host_headers("streaming"), body.as_bytes()));
    // As in the latency runs: the handler may have as many calls in flight as the peer (which
    // has no limit); its default of 8 would queue half of the 16 streams behind the others.
    let mut env = vec![("AOAI_MAX_CONCURRENCY".to_owned(), "256".to_owned())];
    env.extend(args.env.iter().cloned());
    let handler = spawn_ready(&handler_launch(args, &emulator, &env, "streaming"))?;
    let peer = spawn_ready(&peer_launch(args, &emulator, "streaming"))?;
    // One streamed call through the handler gives the exact upstream request for the baseline.
    let (_, _, text) = timed(handler.addr(), &summarize, FirstText::DeltaEvent).await?;
    if !text.contains("event: done") {
        return Err(format!("the handler's stream did not end with `done`: {text}"));
    }
    let upstream = emulator.requests().pop().ok_or("no upstream request")?;
    let token = baseline_token(&emulator).await?;
    let baseline = Rc::new(request(
        "POST",
        &format!("{}?{}", upstream.path, upstream.query),
        &[("Content-Type", "application/json".into()), ("Authorization", format!("Bearer {token}"))],
        upstream.body.to_string().as_bytes(),
    ));
    let (_, _, text) = timed(peer.addr(), &summarize, FirstText::DeltaEvent).await?;
    if !text.contains("event: done") {
        return Err(format!("the peer's stream did not end with `done`: {text}"));
    }
    let peer_upstream = emulator.requests().pop().ok_or("no upstream request from the peer")?;
    let differing: Vec<&str> = ["stream", "stream_options", "messages", "max_completion_tokens"]
        .into_iter()
        .filter(|field| peer_upstream.body[field] != upstream.body[field])
        .collect();
    let same = differing.is_empty();
    if !same {
        eprintln!("the peer's upstream request differs from the handler's in {differing:?}");
    }
    let targets = [
        Target {
            name: "emulator",
            addr: addr_of(&emulator.endpoint())?,
            request: baseline,
            first: FirstText::UpstreamContent,
        },
        Target { name: "handler", addr: handler.addr(), request: summarize.clone(), first: FirstText::DeltaEvent },
        Target { name: "peer", addr: peer.addr(), request: summarize, first: FirstText::DeltaEvent },
    ];
    let live = [handler.pid(), peer.pid()];
    let levels: &[(usize, usize)] = if args.quick { &[(1, 10), (16, 64)] } else { &[(1, 40), (16, 320)] };
    let mut runs = Vec::new();
    for &(in_flight, requests) in levels {
        for target in &targets {
            // Warm-up (not measured): connections, the first token, and the handler's adaptive
            // pacing, which starts a fresh instance at a tenth of the deployment's rate and
            // raises it over a few seconds of use (handlers/openai/pacing.rs); about 6 s.
            measure(target, in_flight, in_flight * WARM_UP_ROUNDS).await?;
            crate::process::quiet_gate(&live, Duration::from_secs(10));
            let others = crate::process::ForeignMeter::start(&live);
            let (ttfb, total) = measure(target, in_flight, requests).await?;
            let (others, _) = others.read();
            runs.push(StreamingRun {
                target: target.name,
                in_flight,
                requests,
                ttfb: Latency::of(&ttfb),
                total: Latency::of(&total),
                others,
            });
        }
    }
    println!(
        "streamed summaries, emulator chunk delay {CHUNK_DELAY_MS} ms; same upstream request for handler and peer: {same}"
    );
    println!(
        "| in flight | target | TTFB p50 ms | TTFB p90 ms | TTFB p99 ms | TTFB p50 vs emulator | total p50 ms | total p99 ms | others (cores) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for run in &runs {
        let base = runs.iter().find(|r| r.target == "emulator" && r.in_flight == run.in_flight);
        let added = base.map(|b| run.ttfb.p50 - b.ttfb.p50).unwrap_or_default();
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:+.2} | {:.1} | {:.1} | {:.2} |",
            run.in_flight,
            run.target,
            run.ttfb.p50,
            run.ttfb.p90,
            run.ttfb.p99,
            added,
            run.total.p50,
            run.total.p99,
            run.others
        );
    }
    let results = json!({"chunk_delay_ms": CHUNK_DELAY_MS, "same_upstream_request": same, "runs": runs});
    let path = args.out.join("streaming.json");
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    std::fs::write(&path, serde_json::to_vec_pretty(&results).unwrap_or_default())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    println!("results: {}", path.display());
    Ok(())
}

/// `requests` streamed calls, `in_flight` at a time; time to first text and to the end, in ms.
async fn measure(target: &Target, in_flight: usize, requests: usize) -> Result<(Vec<f64>, Vec<f64>), String> {
    let next = Rc::new(std::cell::Cell::new(0usize));
    let mut workers = Vec::new();
    for _ in 0..in_flight {
        let (next, request, addr, first) = (next.clone(), target.request.clone(), target.addr, target.first);
        workers.push(tokio::task::spawn_local(async move {
            let mut samples = Vec::new();
            while next.get() < requests {
                next.set(next.get() + 1);
                let (ttfb, total, _) = timed(addr, &request, first).await?;
                samples.push((ttfb.as_secs_f64() * 1000.0, total.as_secs_f64() * 1000.0));
            }
            Ok::<_, String>(samples)
        }));
    }
    let (mut ttfb, mut total) = (Vec::new(), Vec::new());
    for worker in workers {
        for (first, all) in worker.await.map_err(|e| e.to_string())?? {
            ttfb.push(first);
            total.push(all);
        }
    }
    Ok((ttfb, total))
}

/// One request on a new connection: (time to first text, time to the end, the raw answer).
async fn timed(addr: SocketAddr, request: &[u8], first: FirstText) -> Result<(Duration, Duration, String), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("{addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let started = Instant::now();
    stream.write_all(request).await.map_err(|e| format!("{addr}: {e}"))?;
    let mut buffer = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let mut first_at = None;
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("{addr}: {e}"))?;
        if n == 0 {
            return Err(format!("{addr}: the connection closed before the end of the answer"));
        }
        buffer.extend_from_slice(&chunk[..n]);
        if first_at.is_none() && first.found(&buffer) {
            first_at = Some(started.elapsed());
        }
        if buffer.ends_with(b"\r\n0\r\n\r\n") {
            break;
        }
    }
    let total = started.elapsed();
    let text = String::from_utf8_lossy(&buffer).into_owned();
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("{addr}: {}", text.lines().next().unwrap_or_default()));
    }
    let first_at = first_at.ok_or_else(|| format!("{addr}: no text in the answer: {text}"))?;
    Ok((first_at, total, text))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
