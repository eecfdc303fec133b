//! Application Insights export through the real binary, against the emulator's ingestion
//! endpoint: request and dependency items with the caller's operation id, sent with a
//! monitor-audience token from the app's credential; a 403 reported once while jobs succeed and
//! the batch is retried until the role is granted; a partial success resends only the refused
//! items; no token, prompt or completion in any item;
//! nothing sent without a connection string; `doctor`'s export step.

mod common;

use std::time::Duration;

use common::*;
use emulator::Emulator;
use emulator::host::HandlerProcess;
use serde_json::{Value, json};

const HTTP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const QUEUE_TRACE: &str = "5ce0a1b2c3d4e5f60718293a4b5c6d7e";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const SITE: &str = "func-jobs-under-test";
const INSTANCE: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const MONITOR: &str = "https://monitor.azure.com";

/// Export as the Bicep sets it, with the default sampler (`microsoft.rate_limited`, 5 traces per
/// second, the first after start always kept).
fn exporting_by_default(emulator: &Emulator) -> HandlerEnv {
    HandlerEnv::managed_identity(emulator)
        .set("APPLICATIONINSIGHTS_CONNECTION_STRING", emulator.connection_string())
        .set("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "Authorization=AAD")
        .set("WEBSITE_SITE_NAME", SITE)
        .set("WEBSITE_INSTANCE_ID", INSTANCE)
        .set("OTEL_BSP_SCHEDULE_DELAY", "100")
        .unset("OTEL_SDK_DISABLED")
        .unset("OTEL_SERVICE_NAME")
        .unset("OTEL_RESOURCE_ATTRIBUTES")
}

/// Export keeping every trace (the distros' documented opt-out of the rate limit), for tests
/// that follow several traces: which of several quick traces the rate limit keeps depends on
/// timing.
fn exporting(emulator: &Emulator) -> HandlerEnv {
    exporting_by_default(emulator)
        .set("OTEL_TRACES_SAMPLER", "microsoft.fixed_percentage")
        .set("OTEL_TRACES_SAMPLER_ARG", "1.0")
}

fn traceparent(trace: &str) -> String {
    format!("00-{trace}-{CALLER_SPAN}-01")
}

/// A summarize call with the caller's `traceparent`; returns the answer.
async fn summarize(handler: &HandlerProcess, trace: &str) -> Value {
    let parent = traceparent(trace);
    let headers = [("content-type", "application/json"), ("traceparent", parent.as_str())];
    let body = json!({"text": ARTICLE}).to_string().into_bytes();
    let (status, answer) =
        read(handler.forward(reqwest::Method::POST, "/api/summarize", &headers, Some(body)).await).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// A queue job delivered with the host's `traceparent`; returns the invocation response.
async fn queue_job(handler: &HandlerProcess, trace: &str, id: &str) -> Value {
    let message = json!({"id": id, "task": "summarize", "input": {"text": ARTICLE}}).to_string();
    let (data, metadata) = emulator::host::queue_invocation(
        "job",
        &message,
        1,
        "6a1e0c1e-0000-4000-8000-00000000a1a1",
        &[("existing_result", None)],
    );
    let response = reqwest::Client::new()
        .post(format!("{}/process_job", handler.base_url()))
        .header("content-type", "application/json")
        .header("x-azure-functions-invocationid", "0d5a7a4e-1111-4000-8000-00000000a1a1")
        .header("traceparent", traceparent(trace))
        .body(json!({"Data": data, "Metadata": metadata}).to_string())
        .send()
        .await
        .expect("the handler answers");
    let (status, body) = read(response).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn of_type<'a>(items: &'a [Value], base_type: &str, trace: &str) -> Vec<&'a Value> {
    items.iter().filter(|i| i["data"]["baseType"] == base_type && i["tags"]["ai.operation.id"] == trace).collect()
}

/// Waits (bounded) until the emulator accepted a request and a dependency in `trace`.
async fn wait_for_operation(emulator: &Emulator, trace: &str) -> (Value, Value) {
    for _ in 0..150 {
        let items = emulator.telemetry();
        let requests = of_type(&items, "RequestData", trace);
        let dependencies = of_type(&items, "RemoteDependencyData", trace);
        if let (Some(request), Some(dependency)) = (requests.first(), dependencies.first()) {
            assert_eq!((requests.len(), dependencies.len()), (1, 1), "one of each in {trace}");
            return ((*request).clone(), (*dependency).clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no request and dependency in {trace}; accepted: {:#}", json!(emulator.telemetry()));
}

/// Nothing of `trace` arrives, once what was batched with the kept trace has been sent.
async fn assert_never_exported(emulator: &Emulator, trace: &str) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let items = emulator.telemetry();
    assert!(
        !items.iter().any(|i| i["tags"]["ai.operation.id"] == trace),
        "the dropped trace was exported: {:#}",
        json!(items)
    );
}

fn assert_request(request: &Value, function: &str, name: &str) {
    assert_eq!(request["name"], "Microsoft.ApplicationInsights.Request", "{request:#}");
    let tags = &request["tags"];
    assert_eq!(tags["ai.operation.parentId"], CALLER_SPAN, "the host's request is the parent: {request:#}");
    assert_eq!(tags["ai.operation.name"], function, "{request:#}");
    assert_eq!(tags["ai.cloud.role"], SITE, "{request:#}");
    assert_eq!(tags["ai.cloud.roleInstance"], INSTANCE, "WEBSITE_INSTANCE_ID: {request:#}");
    assert_eq!(request["sampleRate"], 100.0, "every trace kept: {request:#}");
    let data = &request["data"]["baseData"];
    assert_eq!(data["name"], name, "{request:#}");
    assert_eq!(data["responseCode"], "200", "{request:#}");
    assert_eq!(data["success"], true, "{request:#}");
    assert_eq!(data["properties"]["faas.name"], function, "{request:#}");
    let dimensions = data["properties"].as_object().unwrap();
    for noise in ["code.file.path", "target", "telemetry.sdk.name", "http.request.method"] {
        assert!(!dimensions.contains_key(noise), "{noise} in {request:#}");
    }
}

fn assert_dependency(dependency: &Value, request: &Value, emulator: &Emulator, usage: &Value) {
    assert_eq!(dependency["name"], "Microsoft.ApplicationInsights.RemoteDependency");
    assert_eq!(dependency["tags"]["ai.operation.parentId"], request["data"]["baseData"]["id"], "{dependency:#}");
    assert_eq!(dependency["tags"]["ai.cloud.role"], SITE);
    assert_eq!(dependency["tags"]["ai.cloud.roleInstance"], INSTANCE, "{dependency:#}");
    let data = &dependency["data"]["baseData"];
    assert_eq!(data["type"], "HTTP", "{dependency:#}");
    let host = emulator.endpoint().trim_start_matches("http://").to_owned();
    assert_eq!(data["target"], host.as_str(), "the endpoint host (and its explicit port): {dependency:#}");
    assert_eq!(data["name"], format!("chat {DEPLOYMENT}"));
    assert_eq!(data["resultCode"], "200");
    assert_eq!(data["success"], true);
    let dimensions = &data["properties"];
    assert_eq!(dimensions["gen_ai.operation.name"], "chat", "{dependency:#}");
    assert_eq!(dimensions["gen_ai.request.model"], DEPLOYMENT);
    assert_eq!(dimensions["gen_ai.response.model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(dimensions["gen_ai.usage.input_tokens"], usage["prompt_tokens"].to_string(), "{dependency:#}");
    assert_eq!(dimensions["gen_ai.usage.output_tokens"], usage["completion_tokens"].to_string());
    assert!(dimensions["gen_ai.prompt.sha256"].as_str().is_some_and(|h| h.len() == 64), "{dependency:#}");
}

/// No bearer token, prompt sentence or completion anywhere in `text`.
fn assert_nothing_sensitive(text: &str, emulator: &Emulator, completions: &[String]) {
    for token in emulator.issued_tokens() {
        assert!(!text.contains(&token), "a bearer token was exported");
        assert!(!text.contains(token.rsplit('.').next().unwrap()), "a token signature was exported");
    }
    for piece in ARTICLE.split(". ").map(str::trim).filter(|s| s.len() > 20) {
        assert!(!text.contains(piece), "prompt text `{piece}` was exported");
    }
    for completion in completions {
        assert!(!text.contains(completion.as_str()), "a completion was exported");
    }
}

#[tokio::test]
async fn a_summary_and_a_queue_job_arrive_as_requests_and_dependencies_with_a_monitor_token() {
    let emulator = emulator().await;
    // Debug logs with content: none of it may reach Application Insights.
    let mut handler = exporting(&emulator).set("RUST_LOG", "debug").set("LOG_SENSITIVE_DATA", "true").spawn().await;
    let answer = summarize(&handler, HTTP_TRACE).await;
    let body = queue_job(&handler, QUEUE_TRACE, "ai-export-1").await;
    let result = written_result(&body);
    assert_eq!(result["status"], "succeeded", "{result}");

    let (request, dependency) = wait_for_operation(&emulator, HTTP_TRACE).await;
    assert_request(&request, "summarize", "POST /api/summarize");
    assert_dependency(&dependency, &request, &emulator, &answer["usage"]);
    let (request, dependency) = wait_for_operation(&emulator, QUEUE_TRACE).await;
    assert_request(&request, "process_job", "process_job");
    assert_eq!(request["data"]["baseData"]["properties"]["job.id"], "ai-export-1");
    assert_dependency(&dependency, &request, &emulator, &result["output"]["usage"]);

    // Metrics are flushed at shutdown (the reader's interval is a minute).
    handler.terminate(Duration::from_secs(10)).await.expect("exits after SIGTERM");
    let items = emulator.telemetry();
    let metric = |name: &str| {
        items
            .iter()
            .find(|i| i["data"]["baseType"] == "MetricData" && i["data"]["baseData"]["metrics"][0]["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {:#}", json!(items)))
    };
    assert_eq!(metric("gen_ai.client.token.usage")["tags"]["ai.cloud.role"], SITE);
    metric("gen_ai.client.operation.duration");

    // Every batch went to /v2.1/track, gzip, with a monitor-audience token the emulator issued
    // to the app's (system-assigned) identity.
    let tracks = emulator.track_requests();
    assert!(!tracks.is_empty());
    for track in &tracks {
        assert_eq!(track.path, "/v2.1/track");
        assert_eq!(track.status, 200, "{track:?}");
        assert_eq!(track.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(track.audience.as_deref(), Some(MONITOR), "never the instrumentation key alone");
        let claims = emulator::decode_claims(track.bearer.as_deref().unwrap()).unwrap();
        assert_eq!(claims["oid"], "5a1f0c5e-0000-4000-8000-00000000a11d");
    }
    let monitor_fetches = emulator
        .identity_requests()
        .iter()
        .filter(|r| r.query.iter().any(|(k, v)| k == "resource" && v.starts_with(MONITOR)))
        .count();
    assert_eq!(monitor_fetches, 1, "one token served every batch");

    let completions =
        vec![answer["summary"].as_str().unwrap().to_owned(), result["output"]["summary"].as_str().unwrap().to_owned()];
    let sent: Vec<Value> = tracks.iter().flat_map(|t| t.items.clone()).collect();
    assert_nothing_sensitive(&json!(sent).to_string(), &emulator, &completions);
    // The export's own lines stay out of the invocation's `Logs`.
    assert!(!body["Logs"].to_string().contains("Application Insights"), "{}", body["Logs"]);
}

#[tokio::test]
async fn a_sampled_trace_carries_the_sample_rate_and_a_dropped_one_sends_nothing() {
    // traceidratio decides on the trace id's low 64 bits (shifted right by one) against
    // ratio * 2^63: low bits 0 are kept at any ratio above 0, all ones are dropped below 1.
    const KEPT: &str = "4bf92f3577b34da60000000000000001";
    const DROPPED: &str = "4bf92f3577b34da6ffffffffffffffff";
    let emulator = emulator().await;
    let handler = exporting(&emulator)
        .set("OTEL_TRACES_SAMPLER", "traceidratio")
        .set("OTEL_TRACES_SAMPLER_ARG", "0.25")
        .spawn()
        .await;
    summarize(&handler, DROPPED).await;
    summarize(&handler, KEPT).await;
    let (request, dependency) = wait_for_operation(&emulator, KEPT).await;
    // The portal counts each kept item as 1 / 0.25 = 4.
    assert_eq!(request["sampleRate"], 25.0, "{request:#}");
    assert_eq!(dependency["sampleRate"], 25.0, "{dependency:#}");
    assert_never_exported(&emulator, DROPPED).await;
}

#[tokio::test]
async fn by_default_the_first_trace_is_kept_whole_and_a_zero_rate_keeps_none() {
    let emulator = emulator().await;
    let handler = exporting_by_default(&emulator).spawn().await;
    let answer = summarize(&handler, HTTP_TRACE).await;
    assert!(handler.output().contains("traces_sampled=microsoft.rate_limited 5/s"), "{}", handler.output());
    let (request, dependency) = wait_for_operation(&emulator, HTTP_TRACE).await;
    assert_request(&request, "summarize", "POST /api/summarize");
    assert_dependency(&dependency, &request, &emulator, &answer["usage"]);
    for item in [&request, &dependency] {
        assert_eq!(item["sampleRate"], 100.0, "{item:#}");
        assert!(item["data"]["baseData"]["properties"].get("microsoft.sample_rate").is_none(), "{item:#}");
    }
    drop(handler);

    // No traces at all, but the job and the metrics are unaffected.
    let emulator = common::emulator().await;
    let mut handler = exporting_by_default(&emulator)
        .set("OTEL_TRACES_SAMPLER", "microsoft.rate_limited")
        .set("OTEL_TRACES_SAMPLER_ARG", "0")
        .set("RUST_LOG", "debug")
        .set("LOG_SENSITIVE_DATA", "true")
        .spawn()
        .await;
    summarize(&handler, HTTP_TRACE).await;
    handler.terminate(Duration::from_secs(10)).await.expect("exits after SIGTERM");
    // A call without a span still logs its content when asked to (stdout only).
    for event in ["gen_ai.content.prompt", "gen_ai.content.completion"] {
        assert!(handler.output().contains(event), "{event}: {}", handler.output());
    }
    let items = emulator.telemetry();
    // Metrics are not sampled: the call's tokens are counted.
    let tokens = items.iter().find(|i| i["data"]["baseData"]["metrics"][0]["name"] == "gen_ai.client.token.usage");
    assert!(tokens.is_some(), "{:#}", json!(items));
    assert!(items.iter().all(|i| i["data"]["baseType"] == "MetricData"), "{:#}", json!(items));
    // The caller's trace still reaches Azure OpenAI, marked not sampled.
    let chat = emulator.requests().into_iter().find(|r| r.path.ends_with("/chat/completions")).expect("a chat call");
    let sent = chat.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("traceparent")).map(|(_, v)| v.clone());
    let sent = sent.unwrap_or_else(|| panic!("no traceparent: {:?}", chat.headers));
    assert!(sent.starts_with(&format!("00-{HTTP_TRACE}-")) && sent.ends_with("-00"), "{sent}");
}

#[tokio::test]
async fn a_fixed_percentage_keeps_by_application_insights_score_whatever_the_callers_flag() {
    // Application Insights' DJB2 scores of these trace ids: 0.023 and 0.620.
    const KEPT: &str = "00000000000000000000000000000001";
    const DROPPED: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let emulator = emulator().await;
    let handler = exporting(&emulator).set("OTEL_TRACES_SAMPLER_ARG", "0.6").spawn().await;
    summarize(&handler, DROPPED).await;
    // The caller did not sample this trace: its flag does not say at what rate, so it is
    // decided here again.
    let parent = format!("00-{KEPT}-{CALLER_SPAN}-00");
    let headers = [("content-type", "application/json"), ("traceparent", parent.as_str())];
    let body = json!({"text": ARTICLE}).to_string().into_bytes();
    let (status, answer) =
        read(handler.forward(reqwest::Method::POST, "/api/summarize", &headers, Some(body)).await).await;
    assert_eq!(status, 200, "{answer}");
    let (request, dependency) = wait_for_operation(&emulator, KEPT).await;
    // The portal counts each kept item as 100 / 60.
    for item in [&request, &dependency] {
        assert_eq!(item["sampleRate"], 60.0, "{item:#}");
        assert!(item["data"]["baseData"]["properties"].get("microsoft.sample_rate").is_none(), "{item:#}");
    }
    assert_never_exported(&emulator, DROPPED).await;
}

#[tokio::test]
async fn a_sampler_ratio_out_of_range_fails_start_up_naming_the_setting() {
    let emulator = emulator().await;
    let output = exporting(&emulator)
        .set("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
        .set("OTEL_TRACES_SAMPLER_ARG", "25%")
        .try_spawn()
        .await
        .err()
        .expect("start-up fails");
    assert!(output.contains("configuration error: OTEL_TRACES_SAMPLER_ARG: must be a number in 0..=1"), "{output}");
}

#[tokio::test]
async fn a_403_is_reported_once_jobs_succeed_and_the_batch_is_retried_until_the_role_is_granted() {
    let emulator = emulator().await;
    emulator.set_monitoring_role_assigned(false);
    let mut handler = exporting(&emulator).spawn().await;
    let answer = summarize(&handler, HTTP_TRACE).await;
    let body = queue_job(&handler, QUEUE_TRACE, "ai-export-403").await;
    assert_eq!(written_result(&body)["status"], "succeeded");
    for _ in 0..3 {
        summarize(&handler, "6d1e0c1e0000400080000000000000aa").await;
    }
    // Refused at least twice: the batch is being retried.
    for _ in 0..200 {
        if emulator.track_requests().iter().filter(|t| t.status == 403).count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        emulator.track_requests().iter().filter(|t| t.status == 403).count() >= 2,
        "{:?}",
        emulator.track_requests()
    );
    assert!(!body["Logs"].to_string().contains("Application Insights"), "not in the job's Logs: {}", body["Logs"]);

    // Granted: the retried batch gets through, with the first call's operation.
    emulator.set_monitoring_role_assigned(true);
    let (request, dependency) = wait_for_operation(&emulator, HTTP_TRACE).await;
    assert_request(&request, "summarize", "POST /api/summarize");
    assert_dependency(&dependency, &request, &emulator, &answer["usage"]);

    handler.terminate(Duration::from_secs(10)).await.expect("exits after SIGTERM");
    let output = handler.output();
    let reports: Vec<&str> = output.lines().filter(|l| l.contains("Monitoring Metrics Publisher")).collect();
    assert_eq!(reports.len(), 1, "reported once:\n{output}");
    assert!(reports[0].contains("5a1f0c5e-0000-4000-8000-00000000a11d"), "names the identity: {}", reports[0]);
    assert!(reports[0].contains("az role assignment create"), "with the fix: {}", reports[0]);
    assert!(output.contains("Application Insights export recovered"), "{output}");
    assert!(
        !output.contains("ExportError") && !output.contains("ExportFailed"),
        "the SDK logs nothing per batch:\n{output}"
    );
}

#[tokio::test]
async fn a_partial_success_resends_only_the_refused_items() {
    let emulator = emulator().await;
    emulator.set_ingestion_fault(Some(emulator::IngestionFault::PartiallyThrottled));
    let handler = exporting(&emulator).spawn().await;
    summarize(&handler, HTTP_TRACE).await;
    let (request, dependency) = wait_for_operation(&emulator, HTTP_TRACE).await;
    assert_eq!(request["tags"]["ai.operation.id"], dependency["tags"]["ai.operation.id"]);
    let spans: Vec<_> = emulator
        .track_requests()
        .into_iter()
        .filter(|t| t.items.iter().all(|i| i["data"]["baseType"] != "MetricData"))
        .collect();
    // Each answer accepts the first item and refuses the rest: each resend is exactly the items
    // refused before, until a one-item batch is accepted whole.
    let sent = spans[0].items.len();
    assert!(sent >= 2, "a request and a dependency (and error answers) in one batch: {spans:#?}");
    let shape: Vec<(u16, usize)> = spans.iter().map(|t| (t.status, t.items.len())).collect();
    let expected: Vec<(u16, usize)> = (1..=sent).rev().map(|n| (if n == 1 { 200 } else { 206 }, n)).collect();
    assert_eq!(shape, expected, "{spans:#?}");
    for pair in spans.windows(2) {
        assert_eq!(pair[1].items[..], pair[0].items[1..], "only the refused items are sent again");
    }
    assert_eq!(emulator.telemetry().len(), sent, "nothing accepted twice");
}

#[tokio::test]
async fn without_the_authentication_string_the_key_alone_is_refused_and_the_fix_is_named() {
    let emulator = emulator().await;
    let mut handler = exporting(&emulator).unset("APPLICATIONINSIGHTS_AUTHENTICATION_STRING").spawn().await;
    summarize(&handler, HTTP_TRACE).await;
    for _ in 0..100 {
        if !emulator.track_requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handler.terminate(Duration::from_secs(10)).await.expect("exits after SIGTERM");
    let tracks = emulator.track_requests();
    assert!(!tracks.is_empty());
    assert!(tracks.iter().all(|t| t.bearer.is_none() && t.status == 401), "{tracks:?}");
    let output = handler.output();
    let reports: Vec<&str> =
        output.lines().filter(|l| l.contains("APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD")).collect();
    assert_eq!(reports.len(), 1, "{output}");
}

#[tokio::test]
async fn without_a_connection_string_nothing_is_sent_or_fetched() {
    let (emulator, mut handler) = started().await;
    summarize(&handler, HTTP_TRACE).await;
    handler.terminate(Duration::from_secs(10)).await.expect("exits after SIGTERM");
    assert!(emulator.track_requests().is_empty());
    let resources: Vec<String> = emulator
        .identity_requests()
        .iter()
        .flat_map(|r| r.query.iter().filter(|(k, _)| k == "resource").map(|(_, v)| v.clone()))
        .collect();
    assert!(resources.iter().all(|r| !r.contains("monitor")), "{resources:?}");
    assert!(!handler.output().contains("exporting telemetry"), "{}", handler.output());
}

/// `handler doctor` with the managed-identity environment and export settings.
async fn doctor(emulator: &Emulator) -> (i32, String) {
    let mut command = tokio::process::Command::new(handler_bin());
    command.arg("doctor");
    command.env("AZURE_OPENAI_ENDPOINT", emulator.endpoint()).env("AZURE_OPENAI_DEPLOYMENT", DEPLOYMENT);
    command.env("IDENTITY_ENDPOINT", emulator.identity_endpoint()).env("IDENTITY_HEADER", emulator.identity_header());
    command.env("NO_PROXY", "127.0.0.1,localhost");
    command.env("APPLICATIONINSIGHTS_CONNECTION_STRING", emulator.connection_string());
    command.env("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "Authorization=AAD");
    for name in ["AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_TOKEN_CREDENTIALS", "AZURE_OPENAI_API_VERSION"] {
        command.env_remove(name);
    }
    let output = command.output().await.expect("doctor runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn doctor_checks_the_export_with_a_monitor_token_and_one_test_item() {
    let emulator = emulator().await;
    let (code, out) = doctor(&emulator).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("✔ export") && out.contains("accepted a test item"), "{out}");
    assert!(out.contains(MONITOR), "names the audience:\n{out}");
    let items = emulator.telemetry();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["data"]["baseData"]["message"], "keyless-jobs doctor: export check");
    assert_eq!(emulator.track_requests()[0].audience.as_deref(), Some(MONITOR));

    emulator.set_monitoring_role_assigned(false);
    let (code, out) = doctor(&emulator).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("✘ export") && out.contains("403"), "{out}");
    assert!(out.contains("Monitoring Metrics Publisher"), "names the role:\n{out}");
    assert!(!out.contains("eyJ"), "no JWT in the output:\n{out}");
}
