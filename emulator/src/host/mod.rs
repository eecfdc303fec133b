//! Drives the handler binary exactly as the Azure Functions host does: start-up environment,
//! readiness polling, forwarded HTTP requests, invocation payloads, and SIGTERM on shutdown;
//! and the host's HTTP front door in its proxying (streamed) and forwarding (buffered) modes.

mod bindings;
mod front_door;
mod payload;

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

pub use bindings::{Binding, Function, HttpOutcome, Storage};
pub use front_door::{FrontDoor, HttpMode, PROXY_ACTIVITY_TIMEOUT};
pub use payload::{http_invocation, queue_invocation};

/// The host version the driver claims to be.
pub const HOST_VERSION: &str = "4.1037.0.0";

/// A running handler process, killed on drop.
pub struct HandlerProcess {
    child: Child,
    pid: u32,
    port: u16,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    client: reqwest::Client,
}

fn capture(stream: impl AsyncRead + Unpin + Send + 'static, output: Arc<Mutex<String>>) -> JoinHandle<()> {
    let echo = std::env::var_os("EMULATOR_ECHO_HANDLER").is_some();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if echo {
                eprintln!("[handler] {line}");
            }
            let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
            out.push_str(&line);
            out.push('\n');
        }
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl HandlerProcess {
    /// Picks a free 127.0.0.1 port, spawns `bin` with `FUNCTIONS_CUSTOMHANDLER_PORT`,
    /// `FUNCTIONS_CUSTOMHANDLER_WORKER_ID` and `env` applied over the inherited environment (a
    /// `None` value removes a variable), captures stdout and stderr, and polls `GET /` every
    /// 25 ms until any HTTP response, up to 30 s. Err carries the captured output.
    pub async fn spawn(bin: &Path, env: &[(&str, Option<&str>)]) -> Result<HandlerProcess, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let mut command = Command::new(bin);
        command
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("FUNCTIONS_CUSTOMHANDLER_WORKER_ID", uuid::Uuid::new_v4().to_string());
        for (name, value) in env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| format!("could not start {}: {e}", bin.display()))?;
        let pid = child.id().unwrap_or(0);
        let output = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            capture(child.stdout.take().expect("piped stdout"), output.clone()),
            capture(child.stderr.take().expect("piped stderr"), output.clone()),
        ];
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(11 * 60))
            .build()
            .map_err(|e| format!("no HTTP client: {e}"))?;
        let mut process = HandlerProcess { child, pid, port, output, readers, client };
        process.wait_ready().await?;
        Ok(process)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let url = format!("{}/", self.base_url());
        loop {
            let probe = self.client.get(&url).timeout(Duration::from_secs(2)).send().await;
            if probe.is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.drain().await;
                return Err(format!(
                    "the handler exited ({status}) before it was ready. Its output:\n{}",
                    self.output()
                ));
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = self.child.start_kill();
                self.drain().await;
                return Err(format!("the handler was not ready within 30 s. Its output:\n{}", self.output()));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits (briefly) for the output readers to reach end of stream.
    async fn drain(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything the process printed so far (stdout and stderr, line by line).
    pub fn output(&self) -> String {
        self.output.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn host_request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base_url()))
            .header("x-azure-functions-invocationid", uuid::Uuid::new_v4().to_string())
            .header("x-azure-functions-hostversion", HOST_VERSION)
            .header("user-agent", format!("Azure-Functions-Host/{HOST_VERSION}"))
    }

    /// A forwarded HTTP request (`enableForwardingHttpRequest`): the caller's request to `path`
    /// with the host's headers added. Panics when the handler cannot be reached.
    pub async fn forward(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> reqwest::Response {
        let mut request = self.host_request(method.clone(), path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        request.send().await.unwrap_or_else(|e| panic!("{method} {path}: the handler did not answer: {e}"))
    }

    /// An invocation: `POST /{function}` with `{"Data": data, "Metadata": metadata}`;
    /// `Metadata.sys.MethodName` is set to `function`. Panics when the handler cannot be reached.
    pub async fn invoke(&self, function: &str, data: Value, mut metadata: Value) -> reqwest::Response {
        if let Some(sys) = metadata.get_mut("sys").and_then(Value::as_object_mut) {
            sys.insert("MethodName".into(), json!(function));
        }
        let body = json!({"Data": data, "Metadata": metadata}).to_string();
        self.host_request(reqwest::Method::POST, &format!("/{function}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("invoking {function}: the handler did not answer: {e}"))
    }

    /// Sends SIGTERM and waits up to `grace` for the exit; None (after a kill) if it did not exit.
    pub async fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.drain().await;
                Some(status)
            }
            _ => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                None
            }
        }
    }
}

impl Drop for HandlerProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
