//! The load generator: `concurrency` keep-alive connections, each sending the next request as
//! soon as the previous answer arrives (closed loop), or no sooner than its share of a fixed
//! `rate` allows (paced: the servers compared then do the same work per second, so their CPU per
//! request is compared at one operating point, not each at its own saturation); for a warm-up
//! then a measured window, and bounded in requests as well as in time.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::http::Connection;
use crate::process::{ForeignMeter, cpu_time};

pub struct Load {
    pub addr: SocketAddr,
    /// The request bytes, sent as they are every time.
    pub request: Rc<Vec<u8>>,
    pub concurrency: usize,
    pub warmup: Duration,
    pub measure: Duration,
    /// Upper bound on requests sent in the whole run (warm-up included).
    pub max_requests: u64,
    /// Paced: requests per second over all connections (None: closed loop).
    pub rate: Option<f64>,
    /// Bytes every 200 body must contain (checks the answer is the real thing).
    pub expect: &'static str,
    /// Processes whose CPU time is read at the start and end of the measured window.
    pub watch: Vec<u32>,
    /// Every live server process (for telling other processes' CPU use apart).
    pub live: Vec<u32>,
}

#[derive(Debug, Default)]
pub struct LoadResult {
    /// Latencies of the requests sent within the measured window, in ns.
    pub latencies_ns: Vec<u64>,
    /// Answers (200, expected body) completed within the measured window.
    pub ok: u64,
    /// Non-200 answers, unexpected bodies and I/O errors in the whole run.
    pub errors: u64,
    pub first_error: Option<String>,
    pub measured: Duration,
    /// CPU time of each watched process during the measured window.
    pub cpu: Vec<Duration>,
    /// CPU used by other processes on the machine in the window, in cores.
    pub foreign_cores: f64,
    /// Steal time in the window, in cores.
    pub steal_cores: f64,
}

impl LoadResult {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.measured.as_secs_f64()
    }
}

struct Worker {
    latencies_ns: Vec<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `load` on the current (single-threaded) runtime: call from within a `LocalSet`.
pub async fn run(load: &Load) -> LoadResult {
    let started = Instant::now();
    let warm_end = started + load.warmup;
    let end = warm_end + load.measure;
    let sent = Rc::new(std::cell::Cell::new(0u64));
    let cpu_probe = tokio::task::spawn_local(probe_cpu(load.watch.clone(), load.live.clone(), warm_end, end));
    // Paced: each connection sends every `concurrency / rate` seconds, the connections staggered.
    let interval = load.rate.map(|rate| Duration::from_secs_f64(load.concurrency as f64 / rate.max(1e-3)));
    let workers: Vec<_> = (0..load.concurrency)
        .map(|index| {
            let request = load.request.clone();
            let sent = sent.clone();
            let (addr, max, expect) = (load.addr, load.max_requests, load.expect);
            let mut next = interval.map(|i| started + i.mul_f64(index as f64 / load.concurrency as f64));
            tokio::task::spawn_local(async move {
                let mut w = Worker { latencies_ns: Vec::new(), ok: 0, errors: 0, first_error: None };
                let mut connection = None;
                loop {
                    if let (Some(at), Some(interval)) = (next, interval) {
                        tokio::time::sleep_until(at.into()).await;
                        // Behind schedule (a slow answer): no burst to catch up.
                        next = Some((at + interval).max(Instant::now()));
                    }
                    let now = Instant::now();
                    if now >= end || sent.get() >= max {
                        break;
                    }
                    sent.set(sent.get() + 1);
                    if connection.is_none() {
                        match Connection::open(addr).await {
                            Ok(c) => connection = Some(c),
                            Err(e) => {
                                w.fail(format!("connect: {e}"));
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        }
                    }
                    let Some(conn) = connection.as_mut() else { continue };
                    let t0 = Instant::now();
                    let answer = conn.send(&request).await;
                    let t1 = Instant::now();
                    match answer {
                        Ok(r) if r.status == 200 && contains(&r.body, expect.as_bytes()) => {
                            // Throughput counts answers completed in the window; latency,
                            // requests sent in it (answered whenever).
                            if t1 >= warm_end && t1 <= end {
                                w.ok += 1;
                            }
                            if t0 >= warm_end {
                                w.latencies_ns.push((t1 - t0).as_nanos() as u64);
                            }
                        }
                        Ok(r) => w.fail(format!("status {}: {}", r.status, String::from_utf8_lossy(&r.body))),
                        Err(e) => {
                            w.fail(format!("I/O: {e}"));
                            connection = None;
                        }
                    }
                }
                w
            })
        })
        .collect();
    let mut result = LoadResult::default();
    for worker in workers {
        let w = worker.await.expect("a load worker panicked");
        result.latencies_ns.extend(w.latencies_ns);
        result.ok += w.ok;
        result.errors += w.errors;
        if result.first_error.is_none() {
            result.first_error = w.first_error;
        }
    }
    let (cpu, measured, (foreign, steal)) = cpu_probe.await.expect("the CPU probe panicked");
    result.cpu = cpu;
    result.measured = measured;
    result.foreign_cores = foreign;
    result.steal_cores = steal;
    result
}

impl Worker {
    fn fail(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what.chars().take(400).collect());
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// CPU time of each watched process, and what other processes used, between `from` and `to`.
async fn probe_cpu(
    watch: Vec<u32>,
    live: Vec<u32>,
    from: Instant,
    to: Instant,
) -> (Vec<Duration>, Duration, (f64, f64)) {
    tokio::time::sleep_until(from.into()).await;
    let before: Vec<Duration> = watch.iter().map(|pid| cpu_time(*pid).unwrap_or_default()).collect();
    let meter = ForeignMeter::start(&live);
    let at = Instant::now();
    tokio::time::sleep_until(to.into()).await;
    let after: Vec<Duration> = watch.iter().map(|pid| cpu_time(*pid).unwrap_or_default()).collect();
    let foreign = meter.read();
    let elapsed = at.elapsed();
    (before.iter().zip(&after).map(|(b, a)| a.saturating_sub(*b)).collect::<Vec<_>>(), elapsed, foreign)
}
