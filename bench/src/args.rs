//! The command line: what to measure and where the binaries and outputs are.

use std::path::PathBuf;

pub const USAGE: &str = "usage: bench --handler PATH --python PATH --peer-dir DIR --out DIR [--quick] [--command TEXT]
       bench --handler PATH [--handler PATH]... --peer-dir DIR --out DIR --cold-only [--runs N] [--env NAME=VALUE]...
       bench --handler PATH [--handler PATH]... --peer-dir DIR --out DIR --load-only [--queue] [--quick] [--env NAME=VALUE]...
       bench --handler PATH --peer-dir DIR --out DIR --fleet-only [--quick]
       bench --handler PATH --python PATH --peer-dir DIR --out DIR --streaming-only [--quick] [--env NAME=VALUE]...
       bench --handler PATH [--handler PATH]... --peer-dir DIR --out DIR --export-cost [--quick] [--env NAME=VALUE]...

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
  --fleet-only only the fleet: 1, 4 and 16 handler processes sharing one emulated deployment,
              beside the old static split and no pacing (about 3 minutes; --quick about 1)
  --queue     with --load-only: queue invocations (process_job) too, as handler-N-queue
              Both take --handler more than once to compare builds.
  --streaming-only  time to first byte of streamed summaries: the emulator, the handler and the
              peer (openai's async client), same emulator, same load (streaming.rs)
  --export-cost  Application Insights export's cost: each handler build with export off and on
              (the emulator's ingestion endpoint, Entra token), HTTP and queue, CPU per request
              and the ratio on / off per repetition, closed loop and paced at a fixed rate
              (export_cost.rs)";

#[derive(Clone)]
pub struct Args {
    pub handler: PathBuf,
    pub python: PathBuf,
    pub peer_dir: PathBuf,
    pub out: PathBuf,
    pub quick: bool,
    pub command: String,
    /// What the handler binary is (its target), for the report.
    pub build: String,
    pub cold_only: bool,
    pub runs: usize,
    pub env: Vec<(String, String)>,
    pub load_only: bool,
    /// Only the fleet simulation.
    pub fleet_only: bool,
    /// `--load-only`: also queue invocations (`process_job`).
    pub queue: bool,
    /// More handler builds to compare (`--load-only`, `--cold-only`).
    pub others: Vec<PathBuf>,
    /// Only the streamed summaries' time to first byte.
    pub streaming_only: bool,
    /// Only the cost of Application Insights export (off and on, side by side).
    pub export_cost: bool,
}

/// Parses the command line (`--help` is an Err carrying the usage).
pub fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut handler, mut python, mut peer_dir, mut out, mut quick, mut command) =
        (None, None, None, None, false, String::from("bench"));
    let (mut cold_only, mut runs, mut env) = (false, 30, Vec::new());
    let mut build = String::from("unstated");
    let (mut load_only, mut others, mut queue, mut fleet_only) = (false, Vec::new(), false, false);
    let (mut streaming_only, mut export_cost) = (false, false);
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
            "--fleet-only" => fleet_only = true,
            "--streaming-only" => streaming_only = true,
            "--export-cost" => export_cost = true,
            "--queue" => queue = true,
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
        python: absolute(if cold_only || load_only || fleet_only || export_cost {
            python.unwrap_or_default()
        } else {
            need(python, "--python")?
        }),
        peer_dir: absolute(need(peer_dir, "--peer-dir")?),
        out: absolute(need(out, "--out")?),
        quick,
        command,
        build,
        cold_only,
        runs,
        env,
        load_only,
        fleet_only,
        queue,
        others,
        streaming_only,
        export_cost,
    })
}
