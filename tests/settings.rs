//! Settings are declared once (`handlers/config/table.rs`): the README table and
//! `local.settings.json.example` must match the declaration, and no value of any setting may
//! crash the real binary: each bad value fails start-up with one line naming the setting and
//! what it may be. `BLESS=1 cargo test --test settings` rewrites the README table.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use handler::config::{SETTINGS, table};
use serde_json::Value;

mod common;

const BEGIN: &str =
    "<!-- settings table: generated from handlers/config/table.rs; BLESS=1 cargo test --test settings -->\n";
const END: &str = "<!-- end of settings table -->";
/// Values of `local.settings.json.example` that the host reads, not the handler.
const HOST_VALUES: &[&str] = &["FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsStorage"];

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn the_readme_table_is_the_declaration() {
    let path = repo("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let start = readme.find(BEGIN).expect("README.md has the settings table markers") + BEGIN.len();
    let end = start + readme[start..].find(END).expect("README.md has the end marker");
    let expected = table::markdown_table();
    if readme[start..end] != expected {
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(&path, format!("{}{expected}{}", &readme[..start], &readme[end..])).unwrap();
        } else {
            panic!(
                "README.md's settings table differs from handlers/config/table.rs; run BLESS=1 cargo test --test settings. Expected:\n{expected}"
            );
        }
    }
}

#[test]
fn the_example_file_lists_every_setting_with_its_default() {
    let text = std::fs::read_to_string(repo("local.settings.json.example")).unwrap();
    let example: Value = serde_json::from_str(&text).unwrap();
    let values: BTreeMap<&str, &str> = example["Values"]
        .as_object()
        .expect("Values")
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().expect("string values")))
        .collect();
    for setting in SETTINGS {
        match setting.example() {
            Some(value) => {
                assert_eq!(values.get(setting.name), Some(&value), "{} in local.settings.json.example", setting.name)
            }
            None => {
                assert!(!values.contains_key(setting.name), "{}: a host.json override, not a local Value", setting.name)
            }
        }
    }
    for name in values.keys() {
        assert!(
            HOST_VALUES.contains(name) || SETTINGS.iter().any(|s| s.name == *name),
            "local.settings.json.example sets {name}, which is not a setting (declare it in handlers/config/table.rs)"
        );
    }
}

/// Runs the real binary with the emulator-free base settings plus `vars`, in `root`; returns
/// its exit code and stderr. Fails the test if it keeps running (it must stop at start-up).
fn start_with(vars: &[(&str, &str)], root: &Path) -> (Option<i32>, String) {
    let mut command = Command::new(common::handler_bin());
    for setting in SETTINGS {
        command.env_remove(setting.name);
    }
    command
        .env("AZURE_OPENAI_ENDPOINT", "http://127.0.0.1:9")
        .env("AZURE_OPENAI_DEPLOYMENT", "gpt-4o-mini")
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", "9")
        .env("FUNCTIONS_APP_ROOT_PATH", root)
        .env_remove("IDENTITY_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in vars {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the handler kept running with {vars:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn assert_refused(vars: &[(&str, &str)], root: &Path, setting: &str) {
    let (code, stderr) = start_with(vars, root);
    assert!(!stderr.contains("panicked"), "{vars:?} crashed the handler: {stderr}");
    assert_eq!(code, Some(1), "{vars:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with(&format!("configuration error: {setting}: must be ")), "{vars:?}: {}", lines[0]);
    assert!(lines[0].chars().count() < 400, "{}", lines[0]);
}

#[test]
fn no_value_of_any_setting_crashes_the_binary() {
    let root = std::env::temp_dir().join(format!("settings-test-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let huge = "9".repeat(10_000);
    let cases: &[(&str, &str)] = &[
        ("AzureFunctionsJobHost__functionTimeout", "00:00:-1"),
        ("AzureFunctionsJobHost__functionTimeout", "NaN"),
        ("AzureFunctionsJobHost__functionTimeout", "00:00:NaN"),
        ("AzureFunctionsJobHost__functionTimeout", "1e300"),
        ("AzureFunctionsJobHost__functionTimeout", "00:00:1e300"),
        ("AzureFunctionsJobHost__functionTimeout", "99999999999.00:00:00"),
        ("AzureFunctionsJobHost__functionTimeout", "00:00:00"),
        ("AzureFunctionsJobHost__functionTimeout", "00:00:0é"),
        ("AzureFunctionsJobHost__extensions__queues__maxDequeueCount", "1e300"),
        ("AzureFunctionsJobHost__extensions__queues__maxDequeueCount", "-1"),
        ("AOAI_MAX_CONCURRENCY", "NaN"),
        ("AOAI_MAX_CONCURRENCY", "1e300"),
        ("AOAI_MAX_CONCURRENCY", "0"),
        ("AOAI_MAX_CONCURRENCY", &huge),
        ("AOAI_TOKENS_PER_MINUTE", "-1"),
        ("AOAI_TOKENS_PER_MINUTE", "18446744073709551616"),
        ("AOAI_REQUEST_TIMEOUT_SECONDS", "1e300"),
        ("AOAI_MAX_RETRY_WAIT_SECONDS", "inf"),
        ("STREAM_KEEP_ALIVE_SECONDS", "0"),
        ("STREAM_KEEP_ALIVE_SECONDS", "121"),
        ("STREAM_KEEP_ALIVE_SECONDS", "15s"),
        ("AZURE_OPENAI_API_VERSION", "2024-10-2é1"),
        ("AZURE_OPENAI_API_VERSION", "é"),
        ("AZURE_OPENAI_DEPLOYMENT", "gpt-4ö"),
        ("AZURE_OPENAI_DEPLOYMENT", &huge),
        ("AZURE_CLIENT_ID", "0000000é-0000-0000-0000-000000000000"),
        ("AZURE_TENANT_ID", "tenänt"),
        ("AZURE_TOKEN_CREDENTIALS", "Managedİdentity"),
        ("LOG_FORMAT", "ĵson"),
        ("LOG_SENSITIVE_DATA", "maybe"),
        ("FUNCTIONS_CUSTOMHANDLER_PORT", "99999"),
        ("FUNCTIONS_CUSTOMHANDLER_PORT", "NaN"),
        ("OTEL_TRACES_SAMPLER", "traceidratiö"),
    ];
    for (name, value) in cases {
        assert_refused(&[(name, value)], &root, name);
    }
    for ratio in ["1e300", "NaN", "-1", "50%", &huge] {
        let vars = [("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", ratio)];
        assert_refused(&vars, &root, "OTEL_TRACES_SAMPLER_ARG");
    }
    // The same through host.json, the file the host reads.
    for (host_json, setting) in [
        (r#"{"functionTimeout": "00:00:-1"}"#, "host.json functionTimeout"),
        (r#"{"functionTimeout": 1e300}"#, "host.json functionTimeout"),
        (r#"{"functionTimeout": "1e300"}"#, "host.json functionTimeout"),
        (r#"{"extensions": {"queues": {"maxDequeueCount": 1e300}}}"#, "host.json extensions.queues.maxDequeueCount"),
        (r#"{"extensions": {"queues": {"maxDequeueCount": -3}}}"#, "host.json extensions.queues.maxDequeueCount"),
    ] {
        std::fs::write(root.join("host.json"), host_json).unwrap();
        assert_refused(&[], &root, setting);
    }
    std::fs::remove_dir_all(&root).unwrap();
}
