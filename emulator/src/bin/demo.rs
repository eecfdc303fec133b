//! `demo`: the project's first command. Starts the emulator in-process, runs the release
//! `handler` next to this executable with managed identity against it, and drives it as the
//! Functions host would: a forwarded summarize, a forwarded classify and a queue-triggered job.
//!
//! The deployment is `gpt-5.4-mini`, a reasoning model like the one `infra/main.bicep` deploys
//! (`--deployment gpt-5-mini` or `--deployment gpt-4o-mini` shows the other kinds): the same
//! settings serve all three, and the answers report the hidden reasoning tokens.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use emulator::host::{HandlerProcess, queue_invocation};
use emulator::{Emulator, EmulatorConfig};
use serde_json::{Value, json};

const TEXT: &str = "The Golden Gate Bridge opened to traffic in May 1937 after four years of construction. \
    Its main span of 1,280 metres was the longest in the world until 1964. Chief engineer Joseph Strauss led the \
    project, but much of the structural design came from Leon Moisseiff and Charles Ellis. The towers rise 227 \
    metres above the water and carry two main cables, each made of more than 27,000 individual wires. The bridge \
    is painted International Orange, a colour chosen because it stays visible in fog and blends with the hills. \
    A permanent crew of painters and ironworkers maintains the steel against the salty air. Today about 112,000 \
    vehicles cross it every day, and a protective net below the deck was completed in 2024. Engineers expect the \
    bridge to remain in service for many decades with regular seismic upgrades.";

const TICKET: &str = "Hi, I was charged twice for my subscription this month. Please refund the duplicate \
    payment and send me a corrected invoice.";

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 110 { format!("{}…", text.chars().take(110).collect::<String>()) } else { text }
}

async fn show(title: &str, response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    println!("  ← {status}");
    println!("{}\n", serde_json::to_string_pretty(&body).unwrap_or_default());
    if status != 200 {
        println!("  ✘ {title} failed\n");
    }
    (status, body)
}

async fn run(handler_path: &Path, deployment: &str) -> Result<bool, String> {
    let emulator = Emulator::start(EmulatorConfig::default()).await.map_err(|e| format!("emulator: {e}"))?;
    println!("Azure OpenAI + managed-identity emulator on {}\n", emulator.endpoint());
    let endpoint = emulator.endpoint();
    let identity_endpoint = emulator.identity_endpoint();
    let identity_header = emulator.identity_header();
    let env: Vec<(&str, Option<&str>)> = vec![
        ("AZURE_OPENAI_ENDPOINT", Some(&endpoint)),
        ("AZURE_OPENAI_DEPLOYMENT", Some(deployment)),
        ("AZURE_OPENAI_API_VERSION", None),
        ("AOAI_REASONING_EFFORT", None),
        ("IDENTITY_ENDPOINT", Some(&identity_endpoint)),
        ("IDENTITY_HEADER", Some(&identity_header)),
        ("AZURE_TOKEN_CREDENTIALS", None),
        ("AZURE_CLIENT_ID", None),
        ("NO_PROXY", Some("127.0.0.1,localhost")),
        ("RUST_LOG", Some("warn")),
    ];
    let mut handler = HandlerProcess::spawn(handler_path, &env).await?;
    println!("handler started (pid {}) on {}, as the Functions host would", handler.pid(), handler.base_url());
    let model = emulator::ModelProfile::known(deployment);
    let kind = match model.as_ref().and_then(|m| m.reasoning) {
        Some(r) => format!("a reasoning model (lowest effort `{}`)", r.efforts[0].as_str()),
        None => "a model that does not reason".to_owned(),
    };
    println!("deployment `{deployment}`: {kind}; only the endpoint, the deployment and the identity are set\n");

    let summarize = json!({"text": TEXT, "max_words": 40});
    println!("1. POST /api/summarize (forwarded HTTP)  {}", short(&summarize));
    let body = Some(summarize.to_string().into_bytes());
    let response =
        handler.forward(reqwest::Method::POST, "/api/summarize", &[("content-type", "application/json")], body).await;
    let (s1, _) = show("summarize", response).await;

    let classify = json!({"text": TICKET, "labels": ["billing", "technical support", "sales", "feedback"]});
    println!("2. POST /api/classify (forwarded HTTP)  {}", short(&classify));
    let body = Some(classify.to_string().into_bytes());
    let response =
        handler.forward(reqwest::Method::POST, "/api/classify", &[("content-type", "application/json")], body).await;
    let (s2, _) = show("classify", response).await;

    let message = json!({"id": "demo-1", "task": "summarize", "input": {"text": TEXT, "max_words": 30}}).to_string();
    println!(
        "3. invoke process_job (queue trigger, DequeueCount 1)  {}",
        short(&serde_json::from_str(&message).unwrap_or_default())
    );
    let message_id = uuid::Uuid::new_v4().to_string();
    let (data, metadata) = queue_invocation("job", &message, 1, &message_id, &[("existing_result", None)]);
    let (s3, body) = show("process_job", handler.invoke("process_job", data, metadata).await).await;
    let outputs_ok = body["Outputs"].as_object().is_some_and(|o| !o.is_empty());
    if s3 == 200 && !outputs_ok {
        println!("  ✘ process_job answered 200 without Outputs\n");
    }

    let stats = emulator.stats();
    println!(
        "Emulator saw: {} identity-endpoint call(s), {} chat call(s) ({} answered 200), {} `api-key` header(s)",
        stats.identity_requests, stats.chat_requests, stats.chat_ok, stats.api_key_requests
    );
    let efforts: Vec<String> = emulator
        .requests()
        .iter()
        .map(|r| r.body["reasoning_effort"].as_str().unwrap_or("(none)").to_owned())
        .collect();
    println!(
        "reasoning_effort sent per call: {} ({} refused while the handler found the lowest the model accepts); \
         {} hidden reasoning token(s), {} answer(s) cut off",
        efforts.join(", "),
        stats.model_refusals,
        stats.reasoning_tokens,
        stats.length_finishes
    );
    let status = handler.terminate(Duration::from_secs(10)).await;
    println!("handler stopped with SIGTERM: {}", status.map_or("killed after 10 s".to_owned(), |s| s.to_string()));
    emulator.shutdown().await;
    Ok(s1 == 200 && s2 == 200 && s3 == 200 && outputs_ok && stats.api_key_requests == 0 && stats.model_refusals <= 1)
}

#[tokio::main]
async fn main() -> ExitCode {
    let handler = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name("handler"),
        Err(e) => {
            eprintln!("error: cannot locate this executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !handler.is_file() {
        eprintln!(
            "error: the handler binary is missing at {}: build it with cargo build --release --workspace",
            handler.display()
        );
        return ExitCode::FAILURE;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let deployment = match args.as_slice() {
        [] => "gpt-5.4-mini".to_owned(),
        [flag, name] if flag == "--deployment" && emulator::ModelProfile::known(name).is_some() => name.clone(),
        _ => {
            eprintln!(
                "usage: demo [--deployment gpt-5.4-mini|gpt-5-mini|gpt-4o-mini] (default gpt-5.4-mini, a reasoning model)"
            );
            return ExitCode::from(2);
        }
    };
    match run(&handler, &deployment).await {
        Ok(true) => {
            println!("\n✔ demo succeeded: keyless calls only (managed identity → Bearer token)");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("\n✘ demo failed: see the answers above");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
