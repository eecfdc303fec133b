//! `aoai-emulator`: the emulator as a standalone server for manual runs and benchmarks; prints
//! the settings to export for the handler, then serves until Ctrl-C.

use std::process::ExitCode;
use std::time::Duration;

use emulator::{Emulator, EmulatorConfig};

const USAGE: &str = "\
aoai-emulator: a local Azure OpenAI + managed-identity endpoint on 127.0.0.1

USAGE: aoai-emulator [--port N] [--token-lifetime-secs N] [--tpm N] [--token-window-secs N] [--deployment NAME[=MODEL]]... [--context-tokens NAME=N]...

  --port N                 port on 127.0.0.1 (default 8000; 0 = any free port)
  --token-lifetime-secs N  lifetime of issued tokens in seconds (default 3600)
  --tpm N                  each deployment's quota: N tokens per minute and 6 requests per
                           minute per 1 000, shared by every client (default: unlimited)
  --token-window-secs N    window of the token count: 60 (default, Azure's documented
                           per-minute count) or shorter, e.g. 10 for TPM / 6 per 10 s
  --deployment NAME[=MODEL]  a deployment that exists, optionally of a catalog model (repeatable;
                           default gpt-4o-mini, gpt-5-mini, gpt-5.4-mini; reasoning models:
                           gpt-5, gpt-5-mini, gpt-5-nano, gpt-5.1, gpt-5.2, gpt-5.4[-mini|-nano])
  --context-tokens NAME=N  context window of deployment NAME in tokens (repeatable; default 128000);
                           longer requests get 400 context_length_exceeded
  --help                   this text

Control API: GET /_emulator/stats, POST /_emulator/reset, PUT /_emulator/faults,
PUT /_emulator/token-lifetime, PUT /_emulator/role, PUT /_emulator/identity-failure,
PUT /_emulator/identity-hang, POST /_emulator/forget-tokens, POST /_emulator/release-streams.";

fn parse(args: &[String]) -> Result<Option<EmulatorConfig>, String> {
    let mut config = EmulatorConfig { port: 8000, ..EmulatorConfig::default() };
    let mut deployments = Vec::new();
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|_| format!("{flag}: `{value}` is not a whole number"));
        match flag.as_str() {
            "--port" => config.port = u16::try_from(number()?).map_err(|_| format!("--port: {value} is too large"))?,
            "--token-lifetime-secs" => config.token_lifetime = Duration::from_secs(number()?),
            "--tpm" => config.tokens_per_minute = Some(number()?),
            "--token-window-secs" => match number()? {
                secs @ 1..=60 => config.token_window = Duration::from_secs(secs),
                _ => return Err(format!("--token-window-secs: {value} is not within 1..=60")),
            },
            "--deployment" => match value.split_once('=') {
                Some((name, model)) => {
                    deployments.push(name.to_owned());
                    config.deployment_models.push((name.to_owned(), model.to_owned()));
                }
                None => deployments.push(value.clone()),
            },
            "--context-tokens" => {
                let (name, tokens) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--context-tokens: expected NAME=N (got `{value}`)"))?;
                let tokens =
                    tokens.parse::<u64>().map_err(|_| format!("--context-tokens: `{tokens}` is not a whole number"))?;
                config.context_tokens.push((name.to_owned(), tokens));
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if !deployments.is_empty() {
        config.deployments = deployments;
    }
    Ok(Some(config))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse(&args) {
        Ok(Some(config)) => config,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let deployment = config.deployments[0].clone();
    let emulator = match Emulator::start(config).await {
        Ok(emulator) => emulator,
        Err(e) => {
            eprintln!("error: could not start the emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("# Azure OpenAI emulator listening on {}", emulator.endpoint());
    println!("export AZURE_OPENAI_ENDPOINT={}", emulator.endpoint());
    println!("export AZURE_OPENAI_DEPLOYMENT={deployment}");
    println!("export IDENTITY_ENDPOINT={}", emulator.identity_endpoint());
    println!("export IDENTITY_HEADER={}", emulator.identity_header());
    println!(
        "# For the Azure CLI path instead: PATH=$PWD/tests/fake-az:$PATH FAKE_AZ_TOKEN_URL={}",
        emulator.az_token_url()
    );
    println!("# Ctrl-C stops it.");
    let _ = tokio::signal::ctrl_c().await;
    let stats = emulator.stats();
    emulator.shutdown().await;
    println!("# stopped; stats: {}", serde_json::to_string(&stats).unwrap_or_default());
    ExitCode::SUCCESS
}
