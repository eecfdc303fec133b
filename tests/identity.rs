//! Credentials end to end: managed identity through the emulator's identity endpoint and the
//! Azure CLI through the fake `az` on PATH; caching, single flight, refresh, and the errors a
//! person sees when identity is not set up.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn summarize_body() -> serde_json::Value {
    json!({"text": ARTICLE, "max_words": 15})
}

#[tokio::test]
async fn fifty_concurrent_first_requests_share_one_token_fetch() {
    let (emulator, handler) = started().await;
    let handler = std::sync::Arc::new(handler);
    let calls = (0..50).map(|_| {
        let handler = handler.clone();
        tokio::spawn(async move { post_json(&handler, "/api/summarize", &summarize_body()).await.0 })
    });
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    let stats = emulator.stats();
    assert_eq!(stats.identity_requests, 1, "{stats:?}");
    assert_eq!(stats.chat_ok, 50);
    let identity = emulator.identity_requests();
    let query: Vec<&str> = identity[0].query.iter().map(|(k, _)| k.as_str()).collect();
    assert!(!query.contains(&"client_id"), "system-assigned sends no client id: {query:?}");
}

#[tokio::test]
async fn a_user_assigned_identity_is_requested_by_client_id() {
    let emulator = emulator().await;
    let client_id = "0f6c3a52-9b9e-4c1a-8f43-2a6e1f0c9d11";
    let handler = HandlerEnv::managed_identity(&emulator).set("AZURE_CLIENT_ID", client_id).spawn().await;
    let (status, body) = post_json(&handler, "/api/summarize", &summarize_body()).await;
    assert_eq!(status, 200, "{body}");
    let identity = emulator.identity_requests();
    assert!(identity[0].query.iter().any(|(k, v)| k == "client_id" && v == client_id), "{:?}", identity[0].query);
}

#[tokio::test]
async fn the_cli_is_called_once_for_many_requests() {
    let emulator = emulator().await;
    let log = tempfile_path("az-once");
    let handler = HandlerEnv::azure_cli(&emulator, &log).spawn().await;
    for _ in 0..10 {
        let (status, body) = post_json(&handler, "/api/summarize", &summarize_body()).await;
        assert_eq!(status, 200, "{body}");
    }
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(calls.lines().count(), 1, "az calls: {calls}");
    assert!(
        calls.contains("account get-access-token")
            && calls.contains("--scope https://cognitiveservices.azure.com/.default"),
        "{calls}"
    );
    assert_eq!(emulator.stats().identity_requests, 0, "no managed identity locally");
}

#[tokio::test]
async fn the_cli_gets_the_tenant_from_azure_tenant_id() {
    let emulator = emulator().await;
    let log = tempfile_path("az-tenant");
    let tenant = emulator::EmulatorConfig::default().resource_tenant;
    let handler = HandlerEnv::azure_cli(&emulator, &log).set("AZURE_TENANT_ID", tenant.clone()).spawn().await;
    let (status, body) = post_json(&handler, "/api/summarize", &summarize_body()).await;
    assert_eq!(status, 200, "{body}");
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(calls.contains(&format!("--tenant {tenant}")), "{calls}");
}

#[tokio::test]
async fn a_token_from_another_tenant_says_to_set_azure_tenant_id() {
    let emulator = emulator_with(emulator::EmulatorConfig {
        cli_tenant: "99999999-9999-4999-8999-999999999999".into(),
        ..Default::default()
    })
    .await;
    let log = tempfile_path("az-wrong-tenant");
    let handler = HandlerEnv::azure_cli(&emulator, &log).spawn().await;
    let (status, body) = post_json(&handler, "/api/summarize", &summarize_body()).await;
    assert_eq!(status, 502, "{body}");
    assert_error(&body, "upstream_auth_failed");
    assert!(body["error"]["message"].as_str().unwrap().contains("AZURE_TENANT_ID"), "{body}");
}

#[tokio::test]
async fn az_not_logged_in_says_run_az_login() {
    let emulator = emulator().await;
    let log = tempfile_path("az-logged-out");
    let handler = HandlerEnv::azure_cli(&emulator, &log).set("FAKE_AZ_MODE", "not_logged_in").spawn().await;
    let (status, body) = post_json(&handler, "/api/summarize", &summarize_body()).await;
    assert_eq!(status, 502, "{body}");
    assert_error(&body, "upstream_auth_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("az login") && message.contains("AzureCliCredential"), "{message}");
    assert_eq!(emulator.stats().chat_requests, 0);
}

#[tokio::test]
async fn az_missing_says_install_it_and_run_az_login() {
    let emulator = emulator().await;
    // A PATH with a shell but no `az`.
    let handler = HandlerEnv::managed_identity(&emulator)
        .unset("IDENTITY_ENDPOINT")
        .unset("IDENTITY_HEADER")
        .set("PATH", "/usr/bin/nonexistent-dir")
        .spawn()
        .await;
    let (status, body) = post_json(&handler, "/api/summarize", &summarize_body()).await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("not found on PATH") && message.contains("az login"), "{message}");
}

#[tokio::test]
async fn short_lived_tokens_are_refreshed_and_no_request_fails() {
    let emulator =
        emulator_with(emulator::EmulatorConfig { token_lifetime: Duration::from_secs(5), ..Default::default() }).await;
    let handler = std::sync::Arc::new(HandlerEnv::managed_identity(&emulator).spawn().await);
    let started = std::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(12) {
        let batch: Vec<_> = (0..8)
            .map(|_| {
                let handler = handler.clone();
                tokio::spawn(async move {
                    post_json(&handler, "/api/classify", &json!({"text": "a bill", "labels": ["billing", "sales"]}))
                        .await
                })
            })
            .collect();
        for call in batch {
            let (status, body) = call.await.unwrap();
            assert_eq!(status, 200, "{body}");
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = emulator.stats();
    assert_eq!(stats.expired_tokens, 0, "{stats:?}");
    assert_eq!(stats.unauthorized, 0, "{stats:?}");
    assert_eq!(stats.chat_ok, sent);
    // 12 s of 5 s tokens (seen as 4-5 s: `expires_on` is whole seconds), each refreshed with a
    // quarter of its life left: one fetch per 3-3.75 s, so 2..=5, never one per request.
    assert!((2..=5).contains(&stats.identity_requests), "{stats:?}");
}

#[tokio::test]
async fn an_identity_endpoint_outage_is_a_clear_transient_error_and_recovers() {
    let (emulator, handler) = started().await;
    emulator.set_identity_failure(Some(503));
    let (status, body) = post_json(&handler, "/api/summarize", &summarize_body()).await;
    assert_eq!(status, 503, "{body}");
    assert_error(&body, "upstream_unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("ManagedIdentityCredential"), "names the credential: {message}");
    emulator.set_identity_failure(None);
    let (status, body) = post_json(&handler, "/api/summarize", &summarize_body()).await;
    assert_eq!(status, 200, "{body}");
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keyless-jobs-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.log"));
    let _ = std::fs::remove_file(&path);
    path
}

#[tokio::test]
async fn azure_token_credentials_forces_the_cli_even_in_azure() {
    let emulator = emulator().await;
    let log = tempfile_path("az-forced");
    let handler = HandlerEnv::azure_cli(&emulator, &log)
        .set("IDENTITY_ENDPOINT", emulator.identity_endpoint())
        .set("IDENTITY_HEADER", emulator.identity_header())
        .set("AZURE_TOKEN_CREDENTIALS", "AzureCliCredential")
        .spawn()
        .await;
    let (status, body) = post_json(&handler, "/api/summarize", &summarize_body()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);
    assert_eq!(emulator.stats().identity_requests, 0);
}

#[tokio::test]
async fn azure_token_credentials_forces_managed_identity_over_a_cli_login() {
    let emulator = emulator().await;
    let log = tempfile_path("mi-forced");
    let handler = HandlerEnv::azure_cli(&emulator, &log)
        .set("IDENTITY_ENDPOINT", emulator.identity_endpoint())
        .set("IDENTITY_HEADER", emulator.identity_header())
        .set("AZURE_TOKEN_CREDENTIALS", "ManagedIdentityCredential")
        .spawn()
        .await;
    let (status, body) = post_json(&handler, "/api/summarize", &summarize_body()).await;
    assert_eq!(status, 200, "{body}");
    assert!(std::fs::read_to_string(&log).unwrap_or_default().is_empty(), "az was not called");
    assert_eq!(emulator.stats().identity_requests, 1);
}

#[tokio::test]
async fn the_diagnostic_reaches_the_log_too() {
    let (emulator, handler) = started().await;
    emulator.set_role_assigned(false);
    let (status, _) = post_json(&handler, "/api/summarize", &summarize_body()).await;
    assert_eq!(status, 502);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let output = handler.output();
    assert!(
        output.contains("Cognitive Services OpenAI User") && output.contains("upstream_permission_denied"),
        "{output}"
    );
}

/// The most fetches the token cache's backoff allows in `elapsed` while every fetch fails:
/// attempt k starts no earlier than the sum of the pauses before it (1 s, 2 s, 4 s, ... 30 s).
fn most_fetches_within(elapsed: Duration) -> u64 {
    let (mut fetches, mut earliest) = (0, Duration::ZERO);
    while earliest <= elapsed {
        earliest += Duration::from_secs(1 << fetches.min(5)).min(Duration::from_secs(30));
        fetches += 1;
    }
    fetches
}

#[tokio::test]
async fn a_refused_token_is_never_sent_again_and_a_real_fetch_replaces_it() {
    let (emulator, handler) = started().await;
    let (status, body) = post_json(&handler, "/api/summarize", &summarize_body()).await;
    assert_eq!(status, 200, "{body}");
    // The service forgets every token (a restart, a revocation): Azure OpenAI answers 401 to it.
    emulator.forget_tokens();
    for _ in 0..3 {
        let (status, body) = post_json(&handler, "/api/summarize", &summarize_body()).await;
        assert_eq!(status, 200, "{body}");
    }
    let stats = emulator.stats();
    assert_eq!(stats.unauthorized, 1, "the refused token was sent once, never again: {stats:?}");
    assert_eq!(stats.identity_requests, 2, "one real fetch after the refusal: {stats:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let acquired = handler.output().matches("acquired an Entra token").count();
    assert_eq!(acquired, 2, "logged once per real fetch:\n{}", handler.output());
}

#[tokio::test]
async fn a_hanging_identity_endpoint_answers_within_the_invocation_budget() {
    let emulator = emulator().await;
    emulator.set_identity_hang(true);
    // functionTimeout 8 s: the invocation's budget is 6 s (the host kills the process at 8 s).
    let handler =
        HandlerEnv::managed_identity(&emulator).set("AzureFunctionsJobHost__functionTimeout", "00:00:08").spawn().await;
    let started = std::time::Instant::now();
    let (status, body) = post_json(&handler, "/api/summarize", &summarize_body()).await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_error(&body, "upstream_unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("ManagedIdentityCredential") && message.contains("deadline"), "{message}");
    assert!(took < Duration::from_secs(8), "answered after {took:?}, past functionTimeout");
    assert_eq!(emulator.stats().identity_requests, 1);
}

#[tokio::test]
async fn fifty_requests_against_a_failing_identity_endpoint_share_backed_off_fetches() {
    let emulator = emulator().await;
    emulator.set_identity_failure(Some(503));
    // functionTimeout 5 s: a 3 s budget, so no request waits long for the next attempt. Pacing
    // off: this is about the credential, and 50 calls in 3 s are more than the first-answer
    // pacing lets out.
    let handler = std::sync::Arc::new(
        HandlerEnv::managed_identity(&emulator)
            .set("AzureFunctionsJobHost__functionTimeout", "00:00:05")
            .set("AOAI_ADAPTIVE_PACING", "false")
            .spawn()
            .await,
    );
    let wave = |handler: std::sync::Arc<emulator::host::HandlerProcess>| async move {
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let handler = handler.clone();
                tokio::spawn(async move { post_json(&handler, "/api/summarize", &summarize_body()).await })
            })
            .collect();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.unwrap());
        }
        answers
    };
    let started = std::time::Instant::now();
    for (status, body) in wave(handler.clone()).await {
        assert_eq!(status, 503, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("ManagedIdentityCredential"), "{body}");
    }
    let failed = emulator.stats().identity_requests;
    println!(
        "50 concurrent requests, identity endpoint answering 503: {failed} identity calls in {:?}",
        started.elapsed()
    );
    assert!(
        (1..=most_fetches_within(started.elapsed())).contains(&failed),
        "{failed} identity calls in {:?}",
        started.elapsed()
    );
    // The endpoint recovers: requests fail at once until the next allowed attempt, which one
    // request makes and every later one shares.
    emulator.set_identity_failure(None);
    let mut recovered = false;
    for _ in 0..40 {
        let (status, body) = post_json(&handler, "/api/summarize", &summarize_body()).await;
        if status == 200 {
            recovered = true;
            break;
        }
        assert_eq!(status, 503, "{body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(recovered, "no recovery within the backoff");
    assert_eq!(emulator.stats().identity_requests, failed + 1, "one fetch after the recovery");
    for (status, body) in wave(handler.clone()).await {
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(emulator.stats().identity_requests, failed + 1);
}

#[tokio::test]
async fn a_slow_refresh_does_not_hold_up_requests_while_the_token_is_valid() {
    // 10 s tokens (seen as 9-10 s): refreshed from 6.75-7.5 s on, usable until 8.7-9.7 s.
    let emulator =
        emulator_with(emulator::EmulatorConfig { token_lifetime: Duration::from_secs(10), ..Default::default() }).await;
    let handler = HandlerEnv::managed_identity(&emulator).spawn().await;
    let body = json!({"text": "a bill", "labels": ["billing", "sales"]});
    let (status, answer) = post_json(&handler, "/api/classify", &body).await;
    assert_eq!(status, 200, "{answer}");
    let fetched = std::time::Instant::now();
    // Every refresh from now on hangs.
    emulator.set_identity_hang(true);
    let mut sent = 0;
    while fetched.elapsed() < Duration::from_millis(8500) {
        let call = post_json(&handler, "/api/classify", &body);
        let (status, answer) = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .unwrap_or_else(|_| panic!("request {sent} waited on the refresh"));
        assert_eq!(status, 200, "{answer}");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = emulator.stats();
    assert_eq!(stats.identity_requests, 2, "one refresh started (and hanging), not one per request: {stats:?}");
    assert_eq!(stats.chat_ok, sent + 1);
}

#[tokio::test]
async fn az_failing_offline_is_a_network_error_in_one_line_not_a_login_problem() {
    let emulator = emulator().await;
    let log = tempfile_path("az-offline");
    let handler = HandlerEnv::azure_cli(&emulator, &log).set("FAKE_AZ_MODE", "network_error").spawn().await;
    let (status, body) = post_json(&handler, "/api/summarize", &summarize_body()).await;
    assert_eq!(status, 503, "{body}");
    assert_error(&body, "upstream_unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("network, proxy or DNS") && message.contains("login.microsoftonline.com"), "{message}");
    assert!(!message.contains("not logged in") && !message.contains("Run `az login`"), "{message}");
    assert!(!message.contains("Traceback") && message.len() < 800, "{} characters: {message}", message.len());
}

#[tokio::test]
async fn repeated_az_failures_are_backed_off_not_run_per_request() {
    let emulator = emulator().await;
    let log = tempfile_path("az-backoff");
    // functionTimeout 5 s: a 3 s budget, shorter than the pauses after the third failure.
    let handler = HandlerEnv::azure_cli(&emulator, &log)
        .set("FAKE_AZ_MODE", "not_logged_in")
        .set("AzureFunctionsJobHost__functionTimeout", "00:00:05")
        .spawn()
        .await;
    let started = std::time::Instant::now();
    for _ in 0..10 {
        let (status, body) = post_json(&handler, "/api/summarize", &summarize_body()).await;
        assert_eq!(status, 502, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("az login"), "{body}");
    }
    let runs = std::fs::read_to_string(&log).unwrap().lines().count() as u64;
    assert!(
        (1..=most_fetches_within(started.elapsed())).contains(&runs) && runs < 10,
        "{runs} az runs for 10 requests in {:?}",
        started.elapsed()
    );
}

/// Issue 12 (hung `az`): `az` runs in a process group that is killed when its fetch is abandoned,
/// so a hanging CLI (here: the handler stops while the fetch is still running) leaves no process
/// behind. The 30 s fetch limit takes the same path (`identity::process` unit test).
#[tokio::test]
async fn a_hanging_az_is_killed_not_left_behind() {
    let emulator = emulator().await;
    let dir = tempdir("hung-az");
    let pid_file = dir.join("az.pid");
    let mut handler = HandlerEnv::azure_cli(&emulator, &dir.join("az.log"))
        .set("FAKE_AZ_MODE", "hang")
        .set("FAKE_AZ_PID_FILE", pid_file.display().to_string())
        .set("AzureFunctionsJobHost__functionTimeout", "00:00:05")
        .spawn()
        .await;
    let (status, body) = post_json(&handler, "/api/summarize", &summarize_body()).await;
    assert_eq!(status, 503, "the call answers by its deadline: {body}");
    let pids: Vec<i32> = std::fs::read_to_string(&pid_file)
        .expect("the fake az wrote its pid")
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 1, "one az run for the one fetch");
    assert!(alive(pids[0]), "the fetch is still running (it may take up to 30 s)");
    assert!(handler.terminate(Duration::from_secs(10)).await.is_some(), "the handler stops");
    for _ in 0..100 {
        if !alive(pids[0]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(pids[0]), "the hanging az (pid {}) was killed with its fetch", pids[0]);
    let _ = std::fs::remove_dir_all(dir);
}

/// Running, not a zombie waiting to be reaped.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}-{}", std::process::id(), uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
