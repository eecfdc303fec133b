//! The fake `az` script (`tests/fake-az/az`) against the emulator, run as azure_identity runs it.

use std::path::PathBuf;
use std::process::Command;

use emulator::{Emulator, EmulatorConfig, decode_claims};
use serde_json::Value;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fake-az/az")
}

fn az(url: &str, args: &[&str], extra_env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new("bash");
    command.arg(script()).args(args).env("FAKE_AZ_TOKEN_URL", url).env_remove("FAKE_AZ_MODE").env_remove("FAKE_AZ_LOG");
    for (k, v) in extra_env {
        command.env(k, v);
    }
    command.output().unwrap()
}

const GET_TOKEN: [&str; 6] =
    ["account", "get-access-token", "-o", "json", "--scope", "https://cognitiveservices.azure.com/.default"];

#[tokio::test]
async fn the_fake_az_prints_a_cli_token_for_the_tenant_and_logs_its_arguments() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let url = emulator.az_token_url();
    let log = std::env::temp_dir().join(format!("emulator-fake-az-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let tenant = "33333333-3333-4333-8333-333333333333";
    let mut args = GET_TOKEN.to_vec();
    args.extend(["--tenant", tenant]);
    let output = tokio::task::spawn_blocking({
        let log = log.clone();
        move || az(&url, &args, &[("FAKE_AZ_LOG", log.to_str().unwrap())])
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let body: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(body["expires_on"].is_i64());
    assert_eq!(body["tenant"], tenant);
    assert_eq!(decode_claims(body["accessToken"].as_str().unwrap()).unwrap()["tid"], tenant);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged.trim(), format!("{} --tenant {tenant}", GET_TOKEN.join(" ")));
    let _ = std::fs::remove_file(&log);

    // Without --tenant: the CLI's default tenant.
    let url = emulator.az_token_url();
    let output = tokio::task::spawn_blocking(move || az(&url, &GET_TOKEN, &[])).await.unwrap();
    let body: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(body["tenant"], EmulatorConfig::default().cli_tenant);
    assert_eq!(emulator.stats().az_token_requests, 2);
}

#[test]
fn not_logged_in_and_unknown_commands_fail_like_the_cli() {
    let output = az("http://127.0.0.1:9/none", &GET_TOKEN, &[("FAKE_AZ_MODE", "not_logged_in")]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&output.stderr).trim(), "ERROR: Please run 'az login' to setup account.");
    assert!(output.stdout.is_empty());
    let output = az("http://127.0.0.1:9/none", &["group", "list"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(!output.stderr.is_empty());
}

#[test]
fn the_script_is_executable() {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(script()).unwrap().permissions().mode();
    assert!(mode & 0o111 == 0o111, "{mode:o}");
}
