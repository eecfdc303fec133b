//! `handler doctor` against the emulator: success, and each failure with its fix.

mod common;

use common::*;
use emulator::{Emulator, Fault, Faults};

/// Runs `handler doctor` with the managed-identity environment plus `changes`.
async fn doctor(emulator: &Emulator, changes: &[(&str, Option<String>)]) -> (i32, String) {
    let mut command = tokio::process::Command::new(handler_bin());
    command.arg("doctor");
    command.env("AZURE_OPENAI_ENDPOINT", emulator.endpoint()).env("AZURE_OPENAI_DEPLOYMENT", DEPLOYMENT);
    command.env("IDENTITY_ENDPOINT", emulator.identity_endpoint()).env("IDENTITY_HEADER", emulator.identity_header());
    command.env("NO_PROXY", "127.0.0.1,localhost");
    for name in [
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_TOKEN_CREDENTIALS",
        "AZURE_OPENAI_API_VERSION",
        "FUNCTIONS_CUSTOMHANDLER_PORT",
    ] {
        command.env_remove(name);
    }
    for (name, value) in changes {
        match value {
            Some(v) => command.env(name, v),
            None => command.env_remove(name),
        };
    }
    let output = command.output().await.expect("doctor runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn all_checks_pass_and_the_token_is_never_printed() {
    let emulator = emulator().await;
    let (code, out) = doctor(&emulator, &[]).await;
    assert_eq!(code, 0, "{out}");
    for step in ["✔ settings", "✔ credential", "✔ token", "✔ chat", "all checks passed"] {
        assert!(out.contains(step), "missing `{step}`:\n{out}");
    }
    assert!(out.contains("ManagedIdentityCredential (system-assigned)"), "{out}");
    assert!(out.contains("5a1f0c5e-0000-4000-8000-00000000a11d"), "shows the object id:\n{out}");
    assert!(!out.contains("eyJ"), "no JWT in the output:\n{out}");
}

#[tokio::test]
async fn each_failure_names_its_fix() {
    let emulator = emulator().await;
    let log = std::env::temp_dir().join(format!("doctor-az-{}.log", std::process::id()));
    let cli = |mode: &str| -> Vec<(&'static str, Option<String>)> {
        vec![
            ("IDENTITY_ENDPOINT", None),
            ("IDENTITY_HEADER", None),
            ("PATH", Some(format!("{}:{}", fake_az_dir().display(), std::env::var("PATH").unwrap()))),
            ("FAKE_AZ_TOKEN_URL", Some(emulator.az_token_url())),
            ("FAKE_AZ_LOG", Some(log.display().to_string())),
            ("FAKE_AZ_MODE", Some(mode.to_owned())),
        ]
    };
    // No identity endpoint but managed identity forced.
    let (code, out) = doctor(
        &emulator,
        &[("IDENTITY_ENDPOINT", None), ("AZURE_TOKEN_CREDENTIALS", Some("ManagedIdentityCredential".into()))],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("✘ settings") && out.contains("IDENTITY_ENDPOINT"), "{out}");
    // Missing setting.
    let (code, out) = doctor(&emulator, &[("AZURE_OPENAI_ENDPOINT", None)]).await;
    assert!(code == 1 && out.contains("✘ settings") && out.contains("AZURE_OPENAI_ENDPOINT"), "{out}");
    // CLI not logged in.
    let (code, out) = doctor(&emulator, &cli("not_logged_in")).await;
    assert!(code == 1 && out.contains("✔ credential") && out.contains("✘ token") && out.contains("az login"), "{out}");
    // CLI logged in: passes, and shows the user.
    let (code, out) = doctor(&emulator, &cli("ok")).await;
    assert!(code == 0 && out.contains("AzureCliCredential") && out.contains("dev@contoso.example"), "{out}");
    // Wrong deployment.
    let (code, out) = doctor(&emulator, &[("AZURE_OPENAI_DEPLOYMENT", Some("nope".into()))]).await;
    assert!(
        code == 1
            && out.contains("✘ chat")
            && out.contains("deployment_not_found")
            && out.contains("AZURE_OPENAI_DEPLOYMENT"),
        "{out}"
    );
    // Missing role.
    emulator.set_role_assigned(false);
    let (code, out) = doctor(&emulator, &[]).await;
    assert!(
        code == 1
            && out.contains("✘ chat")
            && out.contains("Cognitive Services OpenAI User")
            && out.contains("az role assignment create"),
        "{out}"
    );
    emulator.set_role_assigned(true);
    // Keys-disabled misconfiguration (a key added on the way).
    emulator.set_faults(Faults { script: vec![Fault::AuthenticationTypeDisabled], ..Faults::default() });
    let (code, out) = doctor(&emulator, &[]).await;
    assert!(code == 1 && out.contains("✘ chat") && out.contains("key-based authentication is disabled"), "{out}");
    // Identity endpoint down.
    emulator.set_identity_failure(Some(500));
    let (code, out) = doctor(&emulator, &[]).await;
    assert!(code == 1 && out.contains("✘ token") && out.contains("ManagedIdentityCredential"), "{out}");
}
