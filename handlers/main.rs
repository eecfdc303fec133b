//! The `handler` binary: the custom handler the Functions host starts (`handler`), or the
//! diagnostics (`handler doctor`).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use handler::config::Settings;
use handler::functions::{AppState, READ_TIMEOUT, router, shutdown_signal};
use handler::openai::OpenAiClient;

/// musl only: its own malloc is the slow part of the deployed binary (see Cargo.toml).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: handler [doctor | --version | --help]

  handler          serve the Azure Functions custom handler on 127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT
  handler doctor   check the settings, the credential and one Azure OpenAI call, and print fixes";

fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    match command.as_deref() {
        Some("--version" | "-V") => {
            println!("handler {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("--help" | "-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("doctor") | None => {}
        Some(other) => {
            eprintln!("unknown argument `{other}`\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    // On one CPU (a one-vCPU instance, or `taskset`), the multi-thread scheduler's single worker
    // serves connections unfairly under load (p99 at 256 in flight 3x worse, BENCHMARKS.md); the
    // current-thread scheduler does not.
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if command.as_deref() == Some("doctor") {
        let code = runtime.block_on(handler::doctor::run(Settings::from_env()));
        return ExitCode::from(code as u8);
    }
    match runtime.block_on(serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> Result<(), String> {
    let settings = Settings::from_env().map_err(|e| e.to_string())?;
    let port = settings.port.ok_or(
        "configuration error: FUNCTIONS_CUSTOMHANDLER_PORT: is not set. The Functions host sets it when it starts the handler; to run the handler alone, set it (e.g. FUNCTIONS_CUSTOMHANDLER_PORT=8080)",
    )?;
    // Listen first: the host polls the port for readiness.
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .map_err(|e| format!("could not listen on 127.0.0.1:{port}: {e}"))?;
    // The HTTP client is built on first use: start-up only binds and reads settings.
    let client = OpenAiClient::from_settings(&settings).map_err(|e| format!("configuration error: {e}"))?;
    // Application Insights export (when configured) shares the client's HTTP client and token cache.
    let app_insights =
        handler::telemetry::app_insights(&settings.log, &settings.identity, client.tokens(), &client.http())
            .map_err(|e| e.to_string())?;
    let telemetry = handler::telemetry::init(&settings.log, app_insights).map_err(|e| e.to_string())?;
    tracing::info!(credential = client.tokens().description(), reason = %settings.identity.reason, deployment = %settings.openai.deployment, port, "handler listening on 127.0.0.1");
    let state = AppState::new(settings, client);
    match &state.results {
        Some(store) => tracing::info!(
            blob_endpoint = store.endpoint(),
            "POST /api/jobs checks each id against results/{{id}}.json in Blob Storage; the worker claims each id in claims/{{id}} before running it"
        ),
        None => tracing::info!(
            "no identity-based storage connection (AzureWebJobsStorage__blobServiceUri or __accountName): POST /api/jobs does not check ids against stored Results and the worker does not claim ids across instances; it still records a reused id as `conflict` (docs/reliability.md)"
        ),
    }
    let served = handler::functions::serve(listener, router(state), READ_TIMEOUT, shutdown_signal()).await;
    tracing::info!("stopped");
    // Every invocation has finished: export what is still buffered before the process exits.
    telemetry.shutdown().await;
    served.map_err(|e| format!("server error: {e}"))
}
