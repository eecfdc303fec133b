//! Cold start: process spawn → first HTTP answer to `GET /` (the host's readiness rule), spawn →
//! first successful summarise, and the idle memory of the process.

use std::io;
use std::time::Duration;

use serde::Serialize;

use crate::http::Connection;
use crate::process::Launch;
use crate::stats::Summary;

#[derive(Debug, Default, Serialize)]
pub struct ColdStart {
    /// spawn → any HTTP answer to `GET /`, ms.
    pub ready_ms: Summary,
    /// spawn → 200 from `POST /api/summarize` sent as soon as ready, ms (token fetch included).
    pub first_summary_ms: Summary,
    /// ready → that 200, ms.
    pub ready_to_summary_ms: Summary,
    /// VmRSS 500 ms after readiness, before any request, KiB.
    pub rss_idle_kib: Summary,
    /// VmRSS 500 ms after the first summarise, KiB.
    pub rss_after_first_kib: Summary,
    /// Threads of the idle process.
    pub threads: Summary,
    /// Identity-endpoint calls per start (one summarise each).
    pub identity_calls_per_start: Summary,
    /// The CPUs the process was allowed (`Cpus_allowed_list`).
    pub cpus_allowed: String,
}

/// `summarize` is the full request (bytes) for `POST /api/summarize`; `identity_calls` reads the
/// emulator's identity-endpoint counter.
pub async fn measure(
    launch: &Launch,
    summarize: &[u8],
    runs: usize,
    rss_runs: usize,
    identity_calls: &dyn Fn() -> u64,
) -> io::Result<ColdStart> {
    // One start first, unmeasured: the binary, its libraries (and Python's modules) reach the
    // page cache; what follows is a process cold start, not a disk cold start.
    {
        let mut server = launch.spawn(crate::process::free_port()?)?;
        server.wait_ready(Duration::from_secs(60))?;
        summarise(&server, summarize).await?;
        server.terminate(Duration::from_secs(10))?;
    }
    let (mut ready, mut first, mut between, mut calls) = (vec![], vec![], vec![], vec![]);
    let mut cpus_allowed = String::new();
    for _ in 0..runs {
        crate::process::quiet_gate(&[], Duration::from_secs(20));
        let before = identity_calls();
        let mut server = launch.spawn(crate::process::free_port()?)?;
        let ready_after = server.wait_ready(Duration::from_secs(60))?;
        summarise(&server, summarize).await?;
        let first_after = server.spawned_at.elapsed();
        cpus_allowed = server.cpus_allowed()?;
        server.terminate(Duration::from_secs(10))?;
        ready.push(ms(ready_after));
        first.push(ms(first_after));
        between.push(ms(first_after - ready_after));
        calls.push((identity_calls() - before) as f64);
    }
    let (mut idle, mut after, mut threads) = (vec![], vec![], vec![]);
    for _ in 0..rss_runs {
        crate::process::quiet_gate(&[], Duration::from_secs(20));
        let mut server = launch.spawn(crate::process::free_port()?)?;
        server.wait_ready(Duration::from_secs(60))?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        idle.push(server.rss_kib()? as f64);
        threads.push(server.threads()? as f64);
        summarise(&server, summarize).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        after.push(server.rss_kib()? as f64);
        server.terminate(Duration::from_secs(10))?;
    }
    Ok(ColdStart {
        ready_ms: Summary::of(&ready),
        first_summary_ms: Summary::of(&first),
        ready_to_summary_ms: Summary::of(&between),
        rss_idle_kib: Summary::of(&idle),
        rss_after_first_kib: Summary::of(&after),
        threads: Summary::of(&threads),
        identity_calls_per_start: Summary::of(&calls),
        cpus_allowed,
    })
}

async fn summarise(server: &crate::process::Server, request: &[u8]) -> io::Result<()> {
    let mut connection = Connection::open(server.addr()).await?;
    let response = connection.send(request).await?;
    if response.status != 200 {
        return Err(io::Error::other(format!(
            "{}: POST /api/summarize answered {}: {}",
            server.name,
            response.status,
            String::from_utf8_lossy(&response.body)
        )));
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
