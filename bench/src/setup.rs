//! How the bench starts what it measures: the in-process emulator, the handler, the peer and
//! the relay as launches pinned to the server core, and the small requests and facts every
//! part shares (the article, a job's cost, the machine).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use emulator::{Emulator, EmulatorConfig};
use serde_json::{Value, json};

use crate::args::Args;
use crate::batch;
use crate::http::{self, Connection, request};
use crate::process::{self, Launch, Server};

/// The article every summarise sends (the tests' ARTICLE).
pub const ARTICLE: &str = "The city council approved a new budget on Tuesday. It funds three new libraries and repairs to the old bridge. \
    Opponents said the plan raises property taxes too quickly. The mayor promised a review of spending in the spring. \
    Construction of the first library starts next year.";
pub const MAX_WORDS: u32 = 60;
pub const DEPLOYMENT: &str = "gpt-4o-mini";
pub const SERVER_CPU: usize = 1;
pub const BENCH_CPU: usize = 0;

pub async fn start_emulator(runtime: &tokio::runtime::Handle, config: EmulatorConfig) -> Result<Emulator, String> {
    runtime
        .spawn(Emulator::start(config))
        .await
        .map_err(|e| format!("the emulator task failed: {e}"))?
        .map_err(|e| format!("the emulator did not start: {e}"))
}

pub fn base_env(emulator: &Emulator) -> Vec<(String, String)> {
    vec![
        ("AZURE_OPENAI_ENDPOINT".into(), emulator.endpoint()),
        ("AZURE_OPENAI_DEPLOYMENT".into(), DEPLOYMENT.into()),
        ("IDENTITY_ENDPOINT".into(), emulator.identity_endpoint()),
        ("IDENTITY_HEADER".into(), emulator.identity_header()),
        ("NO_PROXY".into(), "127.0.0.1,localhost".into()),
        ("FUNCTIONS_CUSTOMHANDLER_WORKER_ID".into(), uuid::Uuid::new_v4().to_string()),
    ]
}

/// The handler as the host starts it: its settings, the platform's identity variables,
/// `RUST_LOG` at its default (info: one line per invocation), host.json in the working folder.
pub fn handler_launch(args: &Args, emulator: &Emulator, extra: &[(String, String)], phase: &str) -> Launch {
    let mut env = base_env(emulator);
    env.push(("RUST_LOG".into(), "info".into()));
    env.extend(extra.iter().cloned());
    Launch {
        name: "handler",
        program: args.handler.clone(),
        args: vec![],
        cwd: repo_root(&args.peer_dir),
        env,
        cpu: SERVER_CPU,
        log: args.out.join("logs").join(format!("handler-{phase}.log")),
    }
}

/// The peer: `python -m uvicorn app:app`, one worker, its default logging (an access-log line
/// per request).
pub fn peer_launch(args: &Args, emulator: &Emulator, phase: &str) -> Launch {
    let mut env = base_env(emulator);
    env.push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
    Launch {
        name: "peer",
        program: args.python.clone(),
        args: ["-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"]
            .map(String::from)
            .to_vec(),
        cwd: args.peer_dir.clone(),
        env,
        cpu: SERVER_CPU,
        log: args.out.join("logs").join(format!("peer-{phase}.log")),
    }
}

/// The null relay (see relay.rs) on the server core, in front of the emulator.
pub fn relay_launch(args: &Args, emulator: SocketAddr) -> Result<Launch, String> {
    Ok(Launch {
        name: "relay",
        program: std::env::current_exe().map_err(|e| e.to_string())?,
        args: vec!["relay".into(), "{port}".into(), emulator.to_string()],
        cwd: args.out.clone(),
        env: vec![],
        cpu: SERVER_CPU,
        log: args.out.join("logs").join("relay.log"),
    })
}

pub fn repo_root(peer_dir: &Path) -> PathBuf {
    peer_dir.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

pub fn host_json(peer_dir: &Path) -> Result<Value, String> {
    let path = repo_root(peer_dir).join("host.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn spawn_ready(launch: &Launch) -> Result<Server, String> {
    let port = process::free_port().map_err(|e| e.to_string())?;
    let mut server = launch.spawn(port).map_err(|e| format!("{}: {e}", launch.name))?;
    server.wait_ready(Duration::from_secs(60)).map_err(|e| e.to_string())?;
    Ok(server)
}

pub async fn send_once(addr: SocketAddr, bytes: &[u8]) -> Result<http::Response, String> {
    let mut connection = Connection::open(addr).await.map_err(|e| format!("{addr}: {e}"))?;
    connection.send(bytes).await.map_err(|e| format!("{addr}: {e}"))
}

pub fn expect_ok(what: &str, response: &http::Response) -> Result<(), String> {
    if response.status == 200 {
        return Ok(());
    }
    Err(format!("{what}: {} {}", response.status, String::from_utf8_lossy(&response.body)))
}

/// A token from the emulator's managed-identity endpoint, for the baseline's direct calls.
pub async fn baseline_token(emulator: &Emulator) -> Result<String, String> {
    let addr = addr_of(&emulator.endpoint())?;
    let path = "/msi/token?api-version=2019-08-01&resource=https://cognitiveservices.azure.com";
    let bytes = request("GET", path, &[("X-IDENTITY-HEADER", emulator.identity_header())], b"");
    let response = send_once(addr, &bytes).await?;
    expect_ok("identity endpoint", &response)?;
    let body: Value = serde_json::from_slice(&response.body).map_err(|e| e.to_string())?;
    body["access_token"].as_str().map(str::to_owned).ok_or_else(|| format!("no access_token: {body}"))
}

pub fn addr_of(endpoint: &str) -> Result<SocketAddr, String> {
    let port = endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
        .ok_or_else(|| format!("no port in {endpoint}"))?;
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// What Azure OpenAI's limiter charges for a request ([`token_cost::estimated_tokens`]).
pub fn cost_of(body: &Value) -> u64 {
    let chars: usize = body["messages"]
        .as_array()
        .map(|m| m.iter().map(|m| m["content"].as_str().unwrap_or_default().chars().count()).sum())
        .unwrap_or(0);
    let max_completion = body["max_completion_tokens"].as_u64().unwrap_or(0);
    token_cost::estimated_tokens(chars, u32::try_from(max_completion).unwrap_or(u32::MAX))
}

/// A `process_job` invocation as the host sends it: one summarise job, no earlier Result.
pub fn queue_invocation_request() -> Vec<u8> {
    let job_message =
        json!({"id": "bench-queue", "task": "summarize", "input": {"text": ARTICLE, "max_words": MAX_WORDS}})
            .to_string();
    let (data, mut metadata) = emulator::host::queue_invocation(
        "job",
        &job_message,
        1,
        &uuid::Uuid::new_v4().to_string(),
        &[("existing_result", None)],
    );
    if let Some(sys) = metadata.get_mut("sys").and_then(Value::as_object_mut) {
        sys.insert("MethodName".into(), json!("process_job"));
    }
    let invocation = json!({"Data": data, "Metadata": metadata}).to_string();
    request("POST", "/process_job", &batch::host_headers(&uuid::Uuid::new_v4().to_string()), invocation.as_bytes())
}

pub fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("({program}: {e})"))
}

/// The machine, from lscpu, nproc, free and uname.
pub fn machine() -> Vec<(String, String)> {
    let lscpu = command_output("lscpu", &[]);
    let field = |name: &str| {
        lscpu
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim_start_matches(':').trim().to_owned()))
            .unwrap_or_default()
    };
    let mem = command_output("free", &["-m"]);
    let mem_total = mem
        .lines()
        .find(|l| l.starts_with("Mem:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|m| format!("{m} MiB"))
        .unwrap_or_default();
    vec![
        (
            "CPU (lscpu)".into(),
            format!("{}, {}, hypervisor {}", field("Model name"), field("Vendor ID"), field("Hypervisor vendor")),
        ),
        ("CPUs (nproc --all)".into(), command_output("nproc", &["--all"])),
        (
            "threads per core / cores per socket".into(),
            format!("{} / {}", field("Thread(s) per core"), field("Core(s) per socket")),
        ),
        (
            "caches L1d / L2 / L3".into(),
            format!("{} / {} / {}", field("L1d cache"), field("L2 cache"), field("L3 cache")),
        ),
        ("memory (free -m)".into(), mem_total),
        ("kernel".into(), command_output("uname", &["-sr"])),
        ("rustc".into(), command_output("rustc", &["--version"])),
    ]
}

/// `n` summarise jobs (id, queue message text), ids `{prefix}-00000` and on.
pub fn summarize_jobs(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i:05}");
            let text =
                json!({"id": id, "task": "summarize", "input": {"text": ARTICLE, "max_words": MAX_WORDS}}).to_string();
            (id, text)
        })
        .collect()
}

/// The simulated queue as host.json configures it: batchSize + newBatchThreshold invocations in
/// flight per instance, visibilityTimeout, maxDequeueCount.
pub fn queue_plan(args: &Args, time_limit: Duration) -> Result<batch::Plan, String> {
    let host = host_json(&args.peer_dir)?;
    let queues = &host["extensions"]["queues"];
    Ok(batch::Plan {
        in_flight: (queues["batchSize"].as_u64().unwrap_or(16) + queues["newBatchThreshold"].as_u64().unwrap_or(8))
            as usize,
        visibility: queues["visibilityTimeout"].as_str().and_then(handler::config::parse_timespan).unwrap_or_default(),
        max_dequeue: queues["maxDequeueCount"].as_u64().unwrap_or(5) as u32,
        time_limit,
    })
}
