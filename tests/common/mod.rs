//! Shared test harness: the real `handler` binary, spawned and driven as the Functions host
//! does, against the project's Azure OpenAI + managed-identity emulator on 127.0.0.1.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use emulator::host::HandlerProcess;
use emulator::{Emulator, EmulatorConfig};
use serde_json::Value;

pub const DEPLOYMENT: &str = "gpt-4o-mini";

pub fn handler_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_handler"))
}

/// The fake `az` directory (absolute: `az` runs with /bin as its working directory).
pub fn fake_az_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-az")
}

/// Environment for the handler: only what a test names, everything identity-related reset.
pub struct HandlerEnv {
    vars: Vec<(String, Option<String>)>,
}

impl HandlerEnv {
    /// Managed identity through the emulator's identity endpoint.
    pub fn managed_identity(emulator: &Emulator) -> Self {
        Self::base(emulator)
            .set("IDENTITY_ENDPOINT", emulator.identity_endpoint())
            .set("IDENTITY_HEADER", emulator.identity_header())
    }

    /// The Azure CLI credential with the fake `az` first on PATH.
    pub fn azure_cli(emulator: &Emulator, az_log: &Path) -> Self {
        let path = format!("{}:{}", fake_az_dir().display(), std::env::var("PATH").unwrap_or_default());
        Self::base(emulator)
            .set("PATH", path)
            .set("FAKE_AZ_TOKEN_URL", emulator.az_token_url())
            .set("FAKE_AZ_LOG", az_log.display().to_string())
    }

    fn base(emulator: &Emulator) -> Self {
        let env = Self { vars: Vec::new() };
        let cleared = [
            "IDENTITY_ENDPOINT",
            "IDENTITY_HEADER",
            "AZURE_CLIENT_ID",
            "AZURE_TENANT_ID",
            "AZURE_TOKEN_CREDENTIALS",
            "AZURE_OPENAI_API_VERSION",
            "AOAI_REASONING_EFFORT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "APPLICATIONINSIGHTS_CONNECTION_STRING",
            "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
            "WEBSITE_SITE_NAME",
            "WEBSITE_INSTANCE_ID",
            "OTEL_TRACES_SAMPLER",
            "OTEL_TRACES_SAMPLER_ARG",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "FAKE_AZ_MODE",
            "LOG_FORMAT",
            "LOG_SENSITIVE_DATA",
        ];
        cleared
            .iter()
            .fold(env, |env, name| env.unset(name))
            .set("AZURE_OPENAI_ENDPOINT", emulator.endpoint())
            .set("AZURE_OPENAI_DEPLOYMENT", DEPLOYMENT)
            .set("NO_PROXY", "127.0.0.1,localhost")
            .set("RUST_LOG", "info")
    }

    pub fn set(mut self, name: &str, value: impl Into<String>) -> Self {
        self.vars.retain(|(n, _)| n != name);
        self.vars.push((name.to_owned(), Some(value.into())));
        self
    }

    pub fn unset(mut self, name: &str) -> Self {
        self.vars.retain(|(n, _)| n != name);
        self.vars.push((name.to_owned(), None));
        self
    }

    pub async fn spawn(&self) -> HandlerProcess {
        self.try_spawn().await.unwrap_or_else(|output| panic!("the handler did not start:\n{output}"))
    }

    pub async fn try_spawn(&self) -> Result<HandlerProcess, String> {
        self.try_spawn_bin(handler_bin()).await
    }

    /// Spawns another build of the handler (e.g. the packaged one) with this environment.
    pub async fn try_spawn_bin(&self, bin: &Path) -> Result<HandlerProcess, String> {
        let vars: Vec<(&str, Option<&str>)> = self.vars.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
        HandlerProcess::spawn(bin, &vars).await
    }
}

pub async fn emulator() -> Emulator {
    emulator_with(EmulatorConfig::default()).await
}

pub async fn emulator_with(config: EmulatorConfig) -> Emulator {
    Emulator::start(config).await.expect("the emulator starts")
}

/// An emulator and a handler using managed identity against it.
pub async fn started() -> (Emulator, HandlerProcess) {
    let emulator = emulator().await;
    let handler = HandlerEnv::managed_identity(&emulator).spawn().await;
    (emulator, handler)
}

pub const ARTICLE: &str = "The city council approved a new budget on Tuesday. It funds three new libraries and repairs to the old bridge. \
    Opponents said the plan raises property taxes too quickly. The mayor promised a review of spending in the spring. \
    Construction of the first library starts next year.";

/// POSTs JSON to a forwarded HTTP route; returns (status, parsed body).
pub async fn post_json(handler: &HandlerProcess, path: &str, body: &Value) -> (u16, Value) {
    let response = handler
        .forward(
            reqwest::Method::POST,
            path,
            &[("content-type", "application/json")],
            Some(body.to_string().into_bytes()),
        )
        .await;
    read(response).await
}

pub async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("status {status}: not JSON ({e}): {text}"));
    assert!(content_type.starts_with("application/json"), "status {status}: content-type `{content_type}`");
    (status, body)
}

/// Invokes the queue-triggered `process_job` as the host does; returns (status, body).
pub async fn invoke_job(
    handler: &HandlerProcess,
    message: &str,
    dequeue_count: u32,
    existing: Option<&str>,
) -> (u16, Value) {
    let message_id = uuid::Uuid::new_v4().to_string();
    let (data, metadata) =
        emulator::host::queue_invocation("job", message, dequeue_count, &message_id, &[("existing_result", existing)]);
    read(handler.invoke("process_job", data, metadata).await).await
}

/// The Result document a `process_job` response wrote (asserting blob and queue agree).
pub fn written_result(body: &Value) -> Value {
    let blob = body["Outputs"]["result_blob"].as_str().unwrap_or_else(|| panic!("no result_blob output: {body}"));
    let queue = body["Outputs"]["result_queue"].as_str().expect("a result_queue output");
    assert_eq!(blob, queue, "blob and queue Results differ");
    serde_json::from_str(blob).expect("the Result is JSON")
}

/// The error body shape of api.md.
pub fn assert_error(body: &Value, code: &str) {
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(error["message"].as_str().is_some_and(|m| m.len() > 10), "{body}");
}

/// The tokens a chat request asks the window for, as these tests hold the handler to it: four
/// characters of message content a token, plus the completion budget.
pub fn request_tokens(body: &Value) -> u64 {
    let chars: usize =
        body["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap().chars().count()).sum();
    chars.div_ceil(4) as u64 + body["max_completion_tokens"].as_u64().unwrap()
}
