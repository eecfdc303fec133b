//! The Markdown report of a run (target/bench/report.md).

use std::fmt::Write;

use crate::fleet::FleetPart;
use crate::overhead::{Added, Cell};
use crate::results::{Results, mb, summary_mb};
use crate::stats::Summary;

fn cell<'a>(r: &'a Results, target: &str, level: usize) -> Option<&'a Cell> {
    r.load.cells.iter().find(|c| c.target == target && c.concurrency == level)
}

fn added<'a>(r: &'a Results, target: &str, level: usize) -> Option<&'a Added> {
    r.load.added.iter().find(|a| a.target == target && a.concurrency == level)
}

fn ms(s: Option<&Summary>) -> String {
    s.map(|s| s.show(3)).unwrap_or_else(|| "n/a".into())
}

fn ratio(ours: f64, peer: f64) -> String {
    if peer == 0.0 || !ours.is_finite() || !peer.is_finite() {
        return "n/a".into();
    }
    let r = ours / peer;
    if r >= 10.0 {
        format!("{r:.0}")
    } else if r >= 0.1 {
        format!("{r:.2}")
    } else {
        format!("{r:.4}")
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**not met**" }
}

/// One row of the targets table: (what, target, figure, met).
pub fn targets(r: &Results) -> Vec<(String, String, String, bool)> {
    let mut rows = Vec::new();
    let ready = r.cold_handler.ready_ms.median;
    rows.push(("ready after spawn (median)".into(), "≤ 10 ms".into(), format!("{ready:.2} ms"), ready <= 10.0));
    let rss_mb = r.cold_handler.rss_idle_kib.median * 1024.0 / 1e6;
    rows.push(("idle RSS (median)".into(), "≤ 15 MB".into(), format!("{rss_mb:.1} MB"), rss_mb <= 15.0));
    if let Some(a) = added(r, "handler-http", 256) {
        let relay = added(r, "relay", 256);
        let relay_p = |f: &dyn Fn(&Added) -> f64| relay.map(|x| format!("{:.3} ms", f(x))).unwrap_or_default();
        rows.push((
            "p50 added at 256 in flight (HTTP)".into(),
            "≤ 0.3 ms".into(),
            format!(
                "{:.3} ms (mean added {:.3} ms; a null relay adds {})",
                a.p50_ms.median,
                a.mean_ms.median,
                relay_p(&|x| x.p50_ms.median)
            ),
            a.p50_ms.median <= 0.3,
        ));
        rows.push((
            "p99 added at 256 in flight (HTTP)".into(),
            "≤ 2 ms".into(),
            format!("{:.3} ms (a null relay adds {})", a.p99_ms.median, relay_p(&|x| x.p99_ms.median)),
            a.p99_ms.median <= 2.0,
        ));
        // The control: what the handler adds beyond one more process doing no HTTP work at all,
        // i.e. the part of the figures above that the handler's own code decides.
        if let Some(relay) = relay {
            let (p50, p99) = (a.p50_ms.median - relay.p50_ms.median, a.p99_ms.median - relay.p99_ms.median);
            rows.push((
                "control: handler added − null relay added, at 256 in flight (p50 / p99)".into(),
                "≤ 0.3 / ≤ 2 ms".into(),
                format!("{p50:.3} / {p99:.3} ms"),
                p50 <= 0.3 && p99 <= 2.0,
            ));
        }
    }
    if let (Some(h), Some(p)) = (cell(r, "handler-http", 256), cell(r, "peer-http", 256)) {
        let x = h.throughput.median / p.throughput.median;
        rows.push((
            "single-core throughput vs the peer".into(),
            "≥ 20×".into(),
            format!("{x:.1}× ({:.0} vs {:.0} req/s)", h.throughput.median, p.throughput.median),
            x >= 20.0,
        ));
    }
    let b = &r.batch;
    rows.push((
        "TPM budget used (steady part), throttling failures".into(),
        "≥ 95 %, 0".into(),
        format!("{:.1} %, {}", 100.0 * b.steady_share, b.failed_throttled),
        b.steady_share >= 0.95 && b.failed_throttled == 0,
    ));
    let (lo, hi) = b.identity_calls_expected;
    rows.push((
        "identity-endpoint calls".into(),
        "1 per token lifetime".into(),
        format!(
            "{} over {:.0} s of load (1 h tokens); {} over the {:.0} s batch ({} s tokens, expected {lo}–{hi})",
            r.load.handler_identity_calls,
            r.load.handler_lifetime_s,
            b.identity_calls,
            b.outcome.duration_s,
            b.token_lifetime_s
        ),
        r.load.handler_identity_calls == 1 && (lo..=hi).contains(&b.identity_calls),
    ));
    rows
}

pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    for section in [
        header,
        targets_section,
        cold_section,
        latency_section,
        mean_section,
        throughput_section,
        tokens_section,
        batch_section,
    ] {
        section(&mut s, r);
    }
    let _ = writeln!(
        s,
        "\n## Fleet: {} handler processes sharing one deployment\n",
        r.fleet.runs.iter().map(|run| run.instances.to_string()).collect::<Vec<_>>().join(", ")
    );
    s.push_str(&fleet_table(&r.fleet));
    s
}

fn header(w: &mut String, r: &Results) {
    let _ = writeln!(w, "# Benchmark report\n");
    let _ = writeln!(w, "- date: {}", r.date);
    let _ =
        writeln!(w, "- command: `{}`{}", r.command, if r.quick { " (quick smoke run: fewer repetitions)" } else { "" });
    let _ = writeln!(w, "- handler build: {}", r.handler_build);
    for (k, v) in &r.machine {
        let _ = writeln!(w, "- {k}: {v}");
    }
    let _ = writeln!(w, "- peer: {}", r.peer_versions);
    let _ = writeln!(
        w,
        "- layout: server under test pinned to CPU 1 (`Cpus_allowed_list` seen: handler `{}`, peer `{}`), as `taskset -c 1` does; load generator (one thread) and emulator (its own one-worker runtime) in the bench process, pinned to CPU 0",
        r.cold_handler.cpus_allowed, r.cold_peer.cpus_allowed
    );
    let _ = writeln!(
        w,
        "- both servers sent the same upstream request (messages, max_completion_tokens, route): {}",
        if r.same_upstream_request { "yes" } else { "**no**" }
    );
    let others: Vec<f64> = r.load.runs.iter().map(|run| run.foreign_cores).collect();
    let others = Summary::of(&others);
    let _ = writeln!(
        w,
        "\nFigures are median (min–max) over repetitions unless marked. Before each measurement the bench waits (up to a budget) for other processes to leave the machine idle; it waited {:.0} s in all. Other processes on the machine still used {:.2} / {:.2} cores during the handler / peer cold starts, {} cores during the load runs (see `others` below) and {:.2} during the batch.\n",
        r.quiet_waited_s,
        r.cold_handler_foreign,
        r.cold_peer_foreign,
        others.show(2),
        r.batch.foreign_cores
    );
}

fn targets_section(w: &mut String, r: &Results) {
    let _ = writeln!(w, "## Targets\n\n| what | target | figure | |\n|---|---|---|---|");
    for (what, target, figure, ok) in targets(r) {
        let _ = writeln!(w, "| {what} | {target} | {figure} | {} |", met(ok));
    }
}

fn cold_section(w: &mut String, r: &Results) {
    let (h, p) = (&r.cold_handler, &r.cold_peer);
    let _ = writeln!(w, "\n## Cold start and memory\n");
    let _ = writeln!(w, "| | handler (Rust) | peer (Python) | ours/peer |\n|---|---|---|---|");
    let _ = writeln!(
        w,
        "| spawn → first answer to `GET /` (ms; n = {} / {}) | {} | {} | {} |",
        h.ready_ms.n,
        p.ready_ms.n,
        h.ready_ms.show_iqr(2),
        p.ready_ms.show_iqr(1),
        ratio(h.ready_ms.median, p.ready_ms.median)
    );
    let _ = writeln!(
        w,
        "| spawn → first 200 from `POST /api/summarize` (ms) | {} | {} | {} |",
        h.first_summary_ms.show_iqr(2),
        p.first_summary_ms.show_iqr(1),
        ratio(h.first_summary_ms.median, p.first_summary_ms.median)
    );
    let _ = writeln!(
        w,
        "| of which ready → first summary (token fetch + call, ms) | {} | {} | {} |",
        h.ready_to_summary_ms.show(2),
        p.ready_to_summary_ms.show(1),
        ratio(h.ready_to_summary_ms.median, p.ready_to_summary_ms.median)
    );
    let _ = writeln!(
        w,
        "| idle RSS, 0.5 s after ready, no request yet (n = {} / {}) | {} | {} | {} |",
        h.rss_idle_kib.n,
        p.rss_idle_kib.n,
        summary_mb(&h.rss_idle_kib),
        summary_mb(&p.rss_idle_kib),
        ratio(h.rss_idle_kib.median, p.rss_idle_kib.median)
    );
    let _ = writeln!(
        w,
        "| idle RSS, 0.5 s after the first summary | {} | {} | {} |",
        summary_mb(&h.rss_after_first_kib),
        summary_mb(&p.rss_after_first_kib),
        ratio(h.rss_after_first_kib.median, p.rss_after_first_kib.median)
    );
    let l = &r.load;
    let _ = writeln!(
        w,
        "| RSS after all load runs / peak (VmHWM), single run | {} / {} | {} / {} | {} |",
        mb(l.handler_rss_after_kib as f64),
        mb(l.handler_hwm_kib as f64),
        mb(l.peer_rss_after_kib as f64),
        mb(l.peer_hwm_kib as f64),
        ratio(l.handler_hwm_kib as f64, l.peer_hwm_kib as f64)
    );
    let _ = writeln!(w, "| threads when idle | {} | {} | |", h.threads.show(0), p.threads.show(0));
    let _ = writeln!(
        w,
        "| identity-endpoint calls per start (one summary each) | {} | {} | |",
        h.identity_calls_per_start.show(0),
        p.identity_calls_per_start.show(0)
    );
    let _ = writeln!(
        w,
        "| deployable size | {:.2} MB binary ({}) | {:.1} MB venv | {} |",
        r.handler_binary_bytes as f64 / 1e6,
        if r.handler_binary_stripped { "stripped" } else { "**not stripped**" },
        r.peer_venv_bytes as f64 / 1e6,
        ratio(r.handler_binary_bytes as f64, r.peer_venv_bytes as f64)
    );
}

fn latency_section(w: &mut String, r: &Results) {
    let l = &r.load;
    let _ = writeln!(
        w,
        "\n## Latency at zero injected latency\n\nClosed loop: N connections, each sending its next request when the previous answer arrives; {} repetitions of {:.1} s (after {:.1} s warm-up) per cell, interleaved (baseline, null relay, handler HTTP, handler queue, peer). Baseline = the handler's own upstream request (same body, route and bearer token) sent straight to the emulator. Added = through-server percentile − baseline percentile of the same repetition. Handler settings: {}.\n",
        l.reps,
        l.measure_s,
        l.warmup_s,
        l.handler_env.iter().map(|(k, v)| format!("`{k}={v}`")).collect::<Vec<_>>().join(", ")
    );
    let pair = |c: Option<&Cell>| format!("{} / {}", ms(c.map(|c| &c.p50_ms)), ms(c.map(|c| &c.p99_ms)));
    let add = |a: Option<&Added>| format!("{} / {}", ms(a.map(|a| &a.p50_ms)), ms(a.map(|a| &a.p99_ms)));
    let _ = writeln!(
        w,
        "HTTP `POST /api/summarize` (forwarded as the host forwards it), p50 / p99 in ms:\n\n| in flight | emulator (baseline) | null relay on CPU 1 | relay added | **handler** | **handler added** | peer | peer added | ours/peer p50 / p99 |\n|---|---|---|---|---|---|---|---|---|"
    );
    for &level in &l.levels {
        let (hh, pp) = (cell(r, "handler-http", level), cell(r, "peer-http", level));
        let ratios = match (hh, pp) {
            (Some(hh), Some(pp)) => {
                format!("{} / {}", ratio(hh.p50_ms.median, pp.p50_ms.median), ratio(hh.p99_ms.median, pp.p99_ms.median))
            }
            _ => "n/a".into(),
        };
        let _ = writeln!(
            w,
            "| {level} | {} | {} | {} | {} | {} | {} | {} | {ratios} |",
            pair(cell(r, "emulator", level)),
            pair(cell(r, "relay", level)),
            add(added(r, "relay", level)),
            pair(hh),
            add(added(r, "handler-http", level)),
            pair(pp),
            add(added(r, "peer-http", level)),
        );
    }
    let _ = writeln!(
        w,
        "\nQueue invocations (`POST /process_job` with the host's `{{Data, Metadata}}` payload), p50 / p99 in ms:\n\n| in flight | emulator (baseline) | handler | handler added |\n|---|---|---|---|"
    );
    for &level in &l.levels {
        let _ = writeln!(
            w,
            "| {level} | {} | {} | {} |",
            pair(cell(r, "emulator", level)),
            pair(cell(r, "handler-queue", level)),
            add(added(r, "handler-queue", level)),
        );
    }
}

fn mean_section(w: &mut String, r: &Results) {
    let l = &r.load;
    let _ = writeln!(
        w,
        "\nMean latency (ms; in a closed loop, in flight / throughput), and the mean added:\n\n| in flight | emulator | relay (added) | handler HTTP (added) | handler queue (added) | peer (added) |\n|---|---|---|---|---|---|"
    );
    let mean = |target: &str, level: usize| {
        let m = cell(r, target, level).map(|c| format!("{:.3}", c.mean_ms.median)).unwrap_or_else(|| "n/a".into());
        match added(r, target, level) {
            Some(a) => format!("{m} ({:+.3})", a.mean_ms.median),
            None => m,
        }
    };
    for &level in &l.levels {
        let _ = writeln!(
            w,
            "| {level} | {} | {} | {} | {} | {} |",
            mean("emulator", level),
            mean("relay", level),
            mean("handler-http", level),
            mean("handler-queue", level),
            mean("peer-http", level)
        );
    }
}

fn throughput_section(w: &mut String, r: &Results) {
    let l = &r.load;
    let _ = writeln!(
        w,
        "\n## Throughput (server pinned to one core)\n\nAnswers completed per second in the same runs; `busy` = CPU time / wall time of the server's process (1.0 = its whole core) and of the bench process (load generator + emulator, the other core); `others` = CPU used meanwhile by every other process on the machine, in cores (should be ≈ 0); CPU per request = server CPU time / answers.\n"
    );
    let _ = writeln!(
        w,
        "| in flight | target | req/s | server busy | bench busy | others | server CPU µs/request | errors |\n|---|---|---|---|---|---|---|---|"
    );
    for &level in &l.levels {
        for target in ["emulator", "relay", "handler-http", "handler-queue", "peer-http"] {
            if let Some(c) = cell(r, target, level) {
                let _ = writeln!(
                    w,
                    "| {level} | {target} | {} | {} | {} | {} | {} | {} |",
                    c.throughput.show(0),
                    if target == "emulator" { "–".into() } else { c.server_busy.show(2) },
                    c.bench_busy.show(2),
                    c.foreign_cores.show(2),
                    if target == "emulator" { "–".into() } else { c.cpu_us_per_request.show(0) },
                    c.errors
                );
            }
        }
    }
    if let (Some(hh), Some(pp)) = (cell(r, "handler-http", 256), cell(r, "peer-http", 256)) {
        let _ = writeln!(
            w,
            "\nAt 256 in flight: handler {:.0} req/s vs peer {:.0} req/s = **{:.1}×** (ours/peer); by CPU cost per request, {:.0} µs vs {:.0} µs = {:.1}× (the handler's single-core capacity would be ≈ {:.0} req/s if its core were the bottleneck).",
            hh.throughput.median,
            pp.throughput.median,
            hh.throughput.median / pp.throughput.median,
            hh.cpu_us_per_request.median,
            pp.cpu_us_per_request.median,
            pp.cpu_us_per_request.median / hh.cpu_us_per_request.median,
            1e6 / hh.cpu_us_per_request.median
        );
    }
}

fn tokens_section(w: &mut String, r: &Results) {
    let l = &r.load;
    let _ = writeln!(w, "\n## Tokens (identity endpoint)\n");
    let _ = writeln!(
        w,
        "- load part: handler made {} identity call(s) over its {:.0} s life ({} chat calls; token lifetime {} s); peer made {}.",
        l.handler_identity_calls, l.handler_lifetime_s, l.chat_requests, l.token_lifetime_s, l.peer_identity_calls
    );
    let b = &r.batch;
    let _ = writeln!(
        w,
        "- batch: {} identity call(s) over {:.1} s with {} s tokens (one per lifetime spanned, ⌈run / lifetime⌉ = {}, plus at most one refresh shortly before an expiry: {}–{} expected).",
        b.identity_calls,
        b.outcome.duration_s,
        b.token_lifetime_s,
        b.identity_calls_expected.0,
        b.identity_calls_expected.0,
        b.identity_calls_expected.1
    );
}

fn batch_section(w: &mut String, r: &Results) {
    let b = &r.batch;
    let _ = writeln!(w, "\n## Batch: {} queue jobs under a tokens-per-minute limit\n", b.jobs);
    let _ = writeln!(
        w,
        "Every job is the same summarise (cost {} tokens = prompt characters / 4 + max_completion_tokens, as the emulator's limiter charges). Limit {} tokens/min in the emulator (sliding 60 s window) and `AOAI_TOKENS_PER_MINUTE={}` in the handler. Simulated queue: {} invocations in flight (host.json batchSize + newBatchThreshold), a non-2xx answer redelivers the message after {:.0} s (visibilityTimeout) with DequeueCount + 1, up to {} deliveries.\n",
        b.job_cost, b.tokens_per_minute, b.tokens_per_minute, b.in_flight, b.visibility_s, b.max_dequeue
    );
    let t = &b.tally;
    let _ = writeln!(w, "| | |\n|---|---|");
    let _ = writeln!(
        w,
        "| duration | {:.1} s{} |",
        b.outcome.duration_s,
        if b.outcome.abandoned { " (**abandoned at the time limit**)" } else { "" }
    );
    let _ = writeln!(
        w,
        "| budget used, steady part ({:.0}–{:.0} s) | {:.0} tokens/min = **{:.1} %** of the limit |",
        b.steady_from_s,
        b.steady_to_s,
        b.steady_tokens_per_minute,
        100.0 * b.steady_share
    );
    let _ = writeln!(w, "| budget used, whole run | {:.1} % |", 100.0 * b.overall_share);
    let _ = writeln!(
        w,
        "| usage tokens reported by the answers, steady part | {:.0} tokens/min |",
        b.steady_usage_per_minute
    );
    let _ = writeln!(w, "| 429s from the emulator | {} (of {} chat calls) |", b.throttled, b.chat_requests);
    let _ = writeln!(
        w,
        "| invocations / non-2xx / redeliveries / poisoned | {} / {} / {} / {} |",
        b.outcome.invocations, b.outcome.non_2xx, b.outcome.redeliveries, b.outcome.poisoned
    );
    let _ = writeln!(
        w,
        "| jobs with exactly one Result / none / several | {} / {} / {} (of {}) |",
        t.with_one_result, t.with_no_result, t.with_several_results, t.jobs
    );
    let failed = if t.failed.is_empty() {
        "none".to_owned()
    } else {
        t.failed.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
    };
    let _ = writeln!(w, "| Results succeeded / failed (by code) | {} / {failed} |", t.succeeded);
    let _ = writeln!(w, "| jobs failed because of throttling | **{}** |", b.failed_throttled);
}

/// The fleet's configurations side by side (also printed by `--fleet-only`).
pub fn fleet_table(f: &FleetPart) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Each configuration: {} summarise jobs of {} tokens (prompt characters / 4 + max_completion_tokens) from one queue, {} invocations in flight per instance (host.json), `AOAI_MAX_CONCURRENCY={}`, against one emulated deployment of {} TPM ({} RPM) that counts tokens over {} s (TPM / 6 per 10 s; the handlers are told, `AOAI_QUOTA_WINDOW_SECONDS={}`), {} ms per call. Share of TPM = tokens the deployment admitted / (TPM × time): while queued = from the start until the queue handed out its last new message (after that, instances whose invocations finish find no work: the tail measures the queue, not the pacing), whole run = to the last Result, steady = between 10 % and 90 % of the run. The targets are judged on the share while queued, with 429s and failures over the whole run. Job latency = first delivery to the delivery that wrote its Result.\n",
        f.jobs,
        f.job_cost,
        f.in_flight,
        f.max_concurrency,
        f.tokens_per_minute,
        f.tokens_per_minute * 6 / 1000,
        f.window_s,
        f.window_s,
        f.latency_ms
    );
    let _ = writeln!(
        s,
        "| configuration | run | share of TPM while queued | whole run (steady) | calls answered 429 | failed / lost jobs | redeliveries | job p50 / p99 | targets (≥ 90 %, ≤ 5 %, 0 / 0) |\n|---|---|---|---|---|---|---|---|---|"
    );
    for run in &f.runs {
        let adaptive = run.name.starts_with("adaptive");
        let ok = run.share_while_queued >= 0.9 && run.throttled_share <= 0.05 && run.failed == 0 && run.lost == 0;
        let _ = writeln!(
            s,
            "| {} | {:.1} s{} | {:.1} % (to {:.1} s) | {:.1} % ({:.1} %) | {:.2} % of {} | {} / {} | {} | {:.0} / {:.0} ms | {} |",
            run.name,
            run.duration_s,
            if run.abandoned { " (abandoned at the limit)" } else { "" },
            100.0 * run.share_while_queued,
            run.drained_s,
            100.0 * run.share,
            100.0 * run.steady_share,
            100.0 * run.throttled_share,
            run.calls,
            run.failed,
            run.lost,
            run.redeliveries,
            run.p50_ms,
            run.p99_ms,
            if adaptive { met(ok) } else { "baseline" }
        );
    }
    s
}
