//! Observability: the span tree and GenAI attributes exported over OTLP/HTTP (to a collector
//! inside the test), trace context continued from the caller into Azure OpenAI, GenAI metrics
//! flushed at shutdown, queue invocations' `Logs`, and no secret or content in any output.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::*;
use emulator::host::{HandlerProcess, http_invocation};
use emulator::{Emulator, Fault, Faults};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::{Value, json};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01")
}

/// An OTLP/HTTP receiver: keeps every protobuf export request it is sent.
#[derive(Clone, Default)]
struct Collector {
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    endpoint: String,
}

impl Collector {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port for the collector");
        let endpoint = format!("http://{}", listener.local_addr().expect("an address"));
        let collector = Collector { endpoint, ..Default::default() };
        let app = Router::new()
            .route("/v1/traces", post(receive_traces))
            .route("/v1/metrics", post(receive_metrics))
            .with_state(collector.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.expect("the collector serves") });
        collector
    }

    fn spans(&self) -> Vec<Span> {
        let traces = self.traces.lock().unwrap();
        traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }

    /// Waits (bounded) until `done` holds for the spans received so far.
    async fn wait_for_spans(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        for _ in 0..100 {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for {what}; spans received: {:#?}", summary(&self.spans()));
    }

    fn service_names(&self) -> Vec<String> {
        let traces = self.traces.lock().unwrap();
        traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .filter_map(|r| r.resource.as_ref())
            .filter_map(|r| text(&r.attributes, "service.name"))
            .collect()
    }

    fn metrics(&self) -> Vec<Metric> {
        let metrics = self.metrics.lock().unwrap();
        metrics
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| s.metrics.clone())
            .collect()
    }
}

async fn receive_traces(
    State(collector): State<Collector>,
    body: Bytes,
) -> ([(&'static str, &'static str); 1], Vec<u8>) {
    let request = ExportTraceServiceRequest::decode(body).expect("a protobuf ExportTraceServiceRequest");
    collector.traces.lock().unwrap().push(request);
    ([("content-type", "application/x-protobuf")], Vec::new())
}

async fn receive_metrics(
    State(collector): State<Collector>,
    body: Bytes,
) -> ([(&'static str, &'static str); 1], Vec<u8>) {
    let request = ExportMetricsServiceRequest::decode(body).expect("a protobuf ExportMetricsServiceRequest");
    collector.metrics.lock().unwrap().push(request);
    ([("content-type", "application/x-protobuf")], Vec::new())
}

/// A handler exporting to `collector`, spans every 100 ms.
async fn exporting(emulator: &Emulator, collector: &Collector) -> HandlerProcess {
    exporting_env(emulator, collector).spawn().await
}

fn exporting_env(emulator: &Emulator, collector: &Collector) -> HandlerEnv {
    HandlerEnv::managed_identity(emulator)
        .set("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.clone())
        .set("OTEL_BSP_SCHEDULE_DELAY", "100")
        .unset("OTEL_SERVICE_NAME")
        .unset("OTEL_RESOURCE_ATTRIBUTES")
        .unset("OTEL_SDK_DISABLED")
        .unset("OTEL_TRACES_EXPORTER")
        .unset("OTEL_METRICS_EXPORTER")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value(attributes: &[KeyValue], key: &str) -> Option<any_value::Value> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()).and_then(|v: AnyValue| v.value)
}

fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    match value(attributes, key)? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match value(attributes, key)? {
        any_value::Value::IntValue(n) => Some(n),
        _ => None,
    }
}

fn summary(spans: &[Span]) -> Vec<String> {
    spans
        .iter()
        .map(|s| {
            format!("{} trace={} id={} parent={}", s.name, hex(&s.trace_id), hex(&s.span_id), hex(&s.parent_span_id))
        })
        .collect()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Every attribute and event attribute of `span`, as text, for "appears nowhere" checks.
fn span_text(span: &Span) -> String {
    let mut all = format!("{:?}", span.attributes);
    for event in &span.events {
        all.push_str(&format!("{} {:?}", event.name, event.attributes));
    }
    all
}

/// The invocation span and its chat child in `trace_id`.
fn invocation_and_chat(spans: &[Span], trace_id: &str) -> (Span, Span) {
    let in_trace: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == trace_id).collect();
    let chat = in_trace.iter().find(|s| s.name.starts_with("chat ")).unwrap_or_else(|| panic!("{:#?}", summary(spans)));
    let parent = in_trace
        .iter()
        .find(|s| s.span_id == chat.parent_span_id)
        .unwrap_or_else(|| panic!("the chat span's parent is exported: {:#?}", summary(spans)));
    ((*parent).clone(), (*chat).clone())
}

fn has_chat_span_in(trace_id: &str) -> impl Fn(&[Span]) -> bool + '_ {
    move |spans| {
        spans.iter().any(|s| s.name.starts_with("chat ") && hex(&s.trace_id) == trace_id)
            && spans.iter().filter(|s| hex(&s.trace_id) == trace_id).count() >= 2
    }
}

/// Each attribute once: a key recorded twice is exported twice, and backends pick either.
fn assert_unique_keys(span: &Span) {
    let mut keys: Vec<&str> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
    keys.sort_unstable();
    let before = keys.len();
    keys.dedup();
    assert_eq!(before, keys.len(), "{}: duplicate attributes in {:?}", span.name, span.attributes);
}

/// The GenAI attributes every successful chat span carries.
fn assert_chat_attributes(chat: &Span, usage: &Value) {
    assert_unique_keys(chat);
    let a = &chat.attributes;
    assert_eq!(chat.name, format!("chat {DEPLOYMENT}"));
    assert_eq!(chat.kind, SpanKind::Client as i32);
    assert_eq!(text(a, "gen_ai.operation.name").as_deref(), Some("chat"));
    assert_eq!(text(a, "gen_ai.provider.name").as_deref(), Some("azure.ai.openai"));
    assert_eq!(text(a, "gen_ai.system").as_deref(), Some("azure.ai.openai"));
    assert_eq!(text(a, "gen_ai.request.model").as_deref(), Some(DEPLOYMENT));
    assert_eq!(text(a, "gen_ai.response.model").as_deref(), Some("gpt-4o-mini-2024-07-18"));
    assert!(text(a, "gen_ai.response.id").is_some_and(|id| !id.is_empty()), "{a:?}");
    assert!(int(a, "gen_ai.request.max_tokens").is_some_and(|n| n > 0), "{a:?}");
    assert_eq!(int(a, "gen_ai.usage.input_tokens"), usage["prompt_tokens"].as_i64(), "{a:?}");
    assert_eq!(int(a, "gen_ai.usage.output_tokens"), usage["completion_tokens"].as_i64(), "{a:?}");
    assert_eq!(text(a, "server.address").as_deref(), Some("127.0.0.1"));
    assert!(int(a, "server.port").is_some(), "{a:?}");
    assert_eq!(int(a, "http.response.status_code"), Some(200));
    assert!(text(a, "azure.apim_request_id").is_some_and(|id| !id.is_empty()), "{a:?}");
    assert_eq!(text(a, "azure.credential").as_deref(), Some("ManagedIdentityCredential (system-assigned)"));
    assert!(int(a, "gen_ai.prompt.length").is_some_and(|n| n > 0), "{a:?}");
    assert!(text(a, "gen_ai.prompt.sha256").is_some_and(|h| h.len() == 64), "{a:?}");
    assert!(text(a, "gen_ai.completion.sha256").is_some_and(|h| h.len() == 64), "{a:?}");
    assert!(text(a, "error.type").is_none(), "{a:?}");
}

/// The emulator saw `traceparent` from the chat span of the caller's trace.
fn assert_sent_traceparent(emulator: &Emulator, chat: &Span) {
    let requests = emulator.requests();
    let chat_requests: Vec<_> = requests.iter().filter(|r| r.path.ends_with("/chat/completions")).collect();
    assert!(!chat_requests.is_empty());
    for request in chat_requests {
        let sent = header(&request.headers, "traceparent").unwrap_or_else(|| panic!("{:?}", request.headers));
        assert_eq!(sent, format!("00-{TRACE_ID}-{}-01", hex(&chat.span_id)), "sent from inside the chat span");
    }
}

#[tokio::test]
async fn an_http_call_continues_the_callers_trace_into_azure_openai() {
    let collector = Collector::start().await;
    let emulator = emulator().await;
    let handler = exporting(&emulator, &collector).await;
    let body = json!({"text": ARTICLE}).to_string().into_bytes();
    let parent = traceparent();
    let headers = [("content-type", "application/json"), ("traceparent", parent.as_str())];
    let (status, answer) =
        read(handler.forward(reqwest::Method::POST, "/api/summarize", &headers, Some(body)).await).await;
    assert_eq!(status, 200, "{answer}");

    let spans = collector.wait_for_spans("the HTTP call's spans", has_chat_span_in(TRACE_ID)).await;
    let (invocation, chat) = invocation_and_chat(&spans, TRACE_ID);
    assert_eq!(hex(&invocation.parent_span_id), CALLER_SPAN_ID, "the caller's span is the parent");
    assert_eq!(invocation.name, "POST /api/summarize");
    assert_eq!(invocation.kind, SpanKind::Server as i32);
    assert_eq!(text(&invocation.attributes, "faas.name").as_deref(), Some("summarize"));
    assert_eq!(text(&invocation.attributes, "faas.trigger").as_deref(), Some("http"));
    assert_eq!(int(&invocation.attributes, "http.response.status_code"), Some(200));
    assert_unique_keys(&invocation);
    assert_chat_attributes(&chat, &answer["usage"]);
    assert_sent_traceparent(&emulator, &chat);
    assert_eq!(collector.service_names().first().map(String::as_str), Some("keyless-jobs"));
    // Content never enters a span: lengths and hashes only.
    for span in &spans {
        let all = span_text(span);
        assert!(!all.contains("three new libraries"), "the prompt leaked into {}: {all}", span.name);
        assert!(!all.contains(answer["summary"].as_str().unwrap()), "the completion leaked into {}", span.name);
    }
}

#[tokio::test]
async fn a_queue_job_continues_the_trace_returns_its_logs_and_flushes_metrics_at_shutdown() {
    let collector = Collector::start().await;
    let emulator = emulator().await;
    let mut handler = exporting_env(&emulator, &collector).set("OTEL_SERVICE_NAME", "jobs-under-test").spawn().await;
    // One 429 first: a retry, a wait, a throttling count.
    emulator.set_faults(Faults { script: vec![Fault::Throttle { retry_after_ms: 50 }], ..Faults::default() });

    let message = json!({"id": "traced-1", "task": "summarize", "input": {"text": ARTICLE}}).to_string();
    let (data, metadata) = emulator::host::queue_invocation(
        "job",
        &message,
        1,
        "6a1e0c1e-0000-4000-8000-000000000002",
        &[("existing_result", None)],
    );
    let response = reqwest::Client::new()
        .post(format!("{}/process_job", handler.base_url()))
        .header("content-type", "application/json")
        .header("x-azure-functions-invocationid", "0d5a7a4e-1111-4000-8000-000000000003")
        .header("traceparent", traceparent())
        .body(json!({"Data": data, "Metadata": metadata}).to_string())
        .send()
        .await
        .expect("the handler answers");
    let (status, body) = read(response).await;
    assert_eq!(status, 200, "{body}");
    let result = written_result(&body);
    assert_eq!(result["status"], "succeeded", "{result}");

    // The invocation's own log lines come back in `Logs`, then the summary line.
    let logs: Vec<&str> = body["Logs"].as_array().expect("Logs").iter().filter_map(Value::as_str).collect();
    assert!(logs.iter().any(|l| l.starts_with("INFO retrying Azure OpenAI")), "{logs:#?}");
    assert!(logs.last().is_some_and(|l| l.contains("job traced-1 succeeded")), "{logs:#?}");

    let spans = collector.wait_for_spans("the queue job's spans", has_chat_span_in(TRACE_ID)).await;
    let (invocation, chat) = invocation_and_chat(&spans, TRACE_ID);
    assert_eq!(hex(&invocation.parent_span_id), CALLER_SPAN_ID);
    assert_eq!(invocation.name, "process_job");
    assert_eq!(invocation.kind, SpanKind::Consumer as i32);
    let a = &invocation.attributes;
    assert_eq!(text(a, "faas.trigger").as_deref(), Some("pubsub"));
    assert_eq!(text(a, "faas.invocation_id").as_deref(), Some("0d5a7a4e-1111-4000-8000-000000000003"));
    assert_eq!(text(a, "job.id").as_deref(), Some("traced-1"));
    assert_chat_attributes(&chat, &result["output"]["usage"]);
    assert_eq!(int(&chat.attributes, "azure.openai.attempts"), Some(2));
    assert_eq!(int(&chat.attributes, "azure.openai.throttled_answers"), Some(1));
    assert_unique_keys(&invocation);
    let events: Vec<&str> = chat.events.iter().map(|e| e.name.as_str()).collect();
    assert!(events.contains(&"retrying Azure OpenAI"), "the retry and its wait are span events: {events:?}");
    // Error answers are events: the 429, and the 400 of the process's one reasoning_effort probe.
    let refused: Vec<Option<i64>> = chat
        .events
        .iter()
        .filter(|e| e.name == "azure.openai.error_response")
        .map(|e| int(&e.attributes, "http.response.status_code"))
        .collect();
    assert!(refused.contains(&Some(429)), "the 429 is an event: {refused:?}");
    assert_sent_traceparent(&emulator, &chat);
    assert!(collector.service_names().iter().all(|n| n == "jobs-under-test"), "{:?}", collector.service_names());

    // Metrics are exported when the handler stops (the periodic reader's interval is a minute).
    handler.terminate(Duration::from_secs(10)).await.expect("exits after SIGTERM");
    let metrics = collector.metrics();
    let find = |name: &str| metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name} in {metrics:#?}"));
    let Some(metric::Data::Histogram(tokens)) = &find("gen_ai.client.token.usage").data else { panic!("a histogram") };
    for (kind, expected) in [
        ("input", &result["output"]["usage"]["prompt_tokens"]),
        ("output", &result["output"]["usage"]["completion_tokens"]),
    ] {
        let point = tokens
            .data_points
            .iter()
            .find(|p| text(&p.attributes, "gen_ai.token.type").as_deref() == Some(kind))
            .unwrap_or_else(|| panic!("{kind} tokens: {tokens:?}"));
        assert_eq!((point.count, point.sum), (1, expected.as_f64()), "{kind}");
        assert_eq!(text(&point.attributes, "gen_ai.request.model").as_deref(), Some(DEPLOYMENT));
    }
    let Some(metric::Data::Histogram(duration)) = &find("gen_ai.client.operation.duration").data else { panic!() };
    assert_eq!(duration.data_points.iter().map(|p| p.count).sum::<u64>(), 1);
    assert_eq!(find("gen_ai.client.operation.duration").unit, "s");
    let Some(metric::Data::Sum(throttled)) = &find("azure.openai.throttled_requests").data else { panic!("a counter") };
    let count: i64 = throttled
        .data_points
        .iter()
        .map(|p| match p.value {
            Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(n)) => n,
            _ => 0,
        })
        .sum();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn a_streamed_call_records_its_time_to_first_chunk_as_span_attribute_and_metric() {
    let collector = Collector::start().await;
    let emulator = emulator().await;
    let mut handler = exporting(&emulator, &collector).await;
    // A plain call first (its own trace): it counts in the duration, not in the first-chunk metric.
    let body = json!({"text": ARTICLE}).to_string().into_bytes();
    let headers = [("content-type", "application/json")];
    let (status, _) = read(handler.forward(reqwest::Method::POST, "/api/summarize", &headers, Some(body)).await).await;
    assert_eq!(status, 200);
    let body = json!({"text": ARTICLE, "stream": true}).to_string().into_bytes();
    let parent = traceparent();
    let headers = [("content-type", "application/json"), ("traceparent", parent.as_str())];
    let response = handler.forward(reqwest::Method::POST, "/api/summarize", &headers, Some(body)).await;
    assert_eq!(response.status(), 200);
    let events = response.text().await.unwrap();
    assert!(events.contains("event: done"), "{events}");

    let spans = collector.wait_for_spans("the streamed call's spans", has_chat_span_in(TRACE_ID)).await;
    let (_, chat) = invocation_and_chat(&spans, TRACE_ID);
    let Some(any_value::Value::DoubleValue(first)) = value(&chat.attributes, "gen_ai.response.time_to_first_chunk")
    else {
        panic!("a time to first chunk on the streamed chat span: {:?}", chat.attributes);
    };
    let span_seconds = chat.end_time_unix_nano.saturating_sub(chat.start_time_unix_nano) as f64 / 1e9;
    assert!(first > 0.0 && first <= span_seconds, "{first} s within the span's {span_seconds} s");
    let plain_chat = spans.iter().find(|s| s.name.starts_with("chat ") && hex(&s.trace_id) != TRACE_ID).unwrap();
    assert!(value(&plain_chat.attributes, "gen_ai.response.time_to_first_chunk").is_none(), "plain calls have none");

    handler.terminate(Duration::from_secs(10)).await.expect("exits after SIGTERM");
    let metrics = collector.metrics();
    let find = |name: &str| metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name} in {metrics:#?}"));
    let ttfc = find("gen_ai.client.operation.time_to_first_chunk");
    assert_eq!(ttfc.unit, "s");
    let Some(metric::Data::Histogram(histogram)) = &ttfc.data else { panic!("a histogram") };
    let count: u64 = histogram.data_points.iter().map(|p| p.count).sum();
    assert_eq!(count, 1, "the streamed call only");
    let sum: f64 = histogram.data_points.iter().filter_map(|p| p.sum).sum();
    assert!((sum - first).abs() < 1e-6, "the metric records the span's value: {sum} vs {first}");
    let Some(metric::Data::Histogram(duration)) = &find("gen_ai.client.operation.duration").data else { panic!() };
    assert_eq!(duration.data_points.iter().map(|p| p.count).sum::<u64>(), 2);
}

#[tokio::test]
async fn a_payload_mode_http_trigger_continues_the_trace_in_data_req_headers() {
    let collector = Collector::start().await;
    let emulator = emulator().await;
    let handler = exporting(&emulator, &collector).await;
    let job = json!({"task": "summarize", "input": {"text": ARTICLE}}).to_string();
    let (mut data, metadata) = http_invocation("POST", "http://localhost:7071/api/jobs", &[], Some(&job), &[]);
    let parent = traceparent();
    let add_header = |req: &mut Value| req["Headers"]["traceparent"] = json!([parent]);
    match &mut data["req"] {
        Value::String(encoded) => {
            let mut req: Value = serde_json::from_str(encoded).unwrap();
            add_header(&mut req);
            *encoded = req.to_string();
        }
        req => add_header(req),
    }
    let (status, invocation) = read(handler.invoke("submit_jobs", data, metadata).await).await;
    assert_eq!(status, 200, "{invocation}");
    let spans = collector
        .wait_for_spans("the submit_jobs span", |spans| spans.iter().any(|s| hex(&s.trace_id) == TRACE_ID))
        .await;
    let span = spans.iter().find(|s| hex(&s.trace_id) == TRACE_ID).unwrap();
    assert_eq!(span.name, "submit_jobs");
    assert_eq!(hex(&span.parent_span_id), CALLER_SPAN_ID);
    assert_eq!(text(&span.attributes, "faas.trigger").as_deref(), Some("http"));
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_or_propagated() {
    let (emulator, handler) = started().await;
    let body = json!({"text": ARTICLE}).to_string().into_bytes();
    let parent = traceparent();
    let headers = [("content-type", "application/json"), ("traceparent", parent.as_str())];
    let (status, answer) =
        read(handler.forward(reqwest::Method::POST, "/api/summarize", &headers, Some(body)).await).await;
    assert_eq!(status, 200, "{answer}");
    let request = emulator.requests().pop().unwrap();
    assert!(header(&request.headers, "traceparent").is_none(), "{:?}", request.headers);
}

/// Runs a summarize call and a queue job; returns (the completions, the job's `Logs` lines).
async fn run_calls(handler: &HandlerProcess) -> (Vec<String>, Vec<String>) {
    let (status, answer) = post_json(handler, "/api/summarize", &json!({"text": ARTICLE})).await;
    assert_eq!(status, 200, "{answer}");
    let message = json!({"id": "secret-check", "task": "summarize", "input": {"text": ARTICLE}}).to_string();
    let (status, body) = invoke_job(handler, &message, 1, None).await;
    assert_eq!(status, 200, "{body}");
    let result = written_result(&body);
    let completions =
        vec![answer["summary"].as_str().unwrap().to_owned(), result["output"]["summary"].as_str().unwrap().to_owned()];
    let logs = body["Logs"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned()).collect();
    (completions, logs)
}

/// Distinctive pieces of the prompt: the article's sentences.
fn prompt_pieces() -> Vec<&'static str> {
    ARTICLE.split(". ").map(str::trim).filter(|s| s.len() > 20).collect()
}

#[tokio::test]
async fn no_token_prompt_or_completion_reaches_stdout_logs_or_spans() {
    let collector = Collector::start().await;
    for format in ["text", "json"] {
        let emulator = emulator().await;
        let mut handler =
            exporting_env(&emulator, &collector).set("RUST_LOG", "debug").set("LOG_FORMAT", format).spawn().await;
        let (completions, logs) = run_calls(&handler).await;
        handler.terminate(Duration::from_secs(10)).await.expect("exits after SIGTERM");
        let output = handler.output();
        assert!(output.contains("invocation finished"), "debug logs were written ({format}):\n{output}");
        assert!(!output.contains("otel.name") || format == "json", "text lines leave out otel.* fields:\n{output}");
        if format == "json" {
            let lines = output.lines().filter(|l| l.starts_with('{'));
            assert!(lines.clone().count() > 3, "{output}");
            for line in lines {
                serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            }
        }
        let tokens = emulator.issued_tokens();
        assert!(!tokens.is_empty(), "the emulator issued a token");
        let spans: Vec<String> = collector.spans().iter().map(span_text).collect();
        let places = [("stdout", vec![output.clone()]), ("Logs", logs), ("spans", spans)];
        for (place, texts) in &places {
            for text in texts {
                for token in &tokens {
                    assert!(!text.contains(token.as_str()), "{format}: the bearer token is in {place}");
                    // A JWT's signature alone would identify it too.
                    let signature = token.rsplit('.').next().unwrap_or_default();
                    assert!(
                        signature.len() < 8 || !text.contains(signature),
                        "{format}: a token signature is in {place}"
                    );
                }
                for piece in prompt_pieces() {
                    assert!(!text.contains(piece), "{format}: prompt text `{piece}` is in {place}");
                }
                for completion in &completions {
                    assert!(!text.contains(completion.as_str()), "{format}: the completion is in {place}");
                }
            }
        }
    }
}

#[tokio::test]
async fn log_sensitive_data_adds_the_text_as_debug_span_events() {
    let collector = Collector::start().await;
    let emulator = emulator().await;
    let handler =
        exporting_env(&emulator, &collector).set("LOG_SENSITIVE_DATA", "true").set("RUST_LOG", "debug").spawn().await;
    let parent = traceparent();
    let body = json!({"text": ARTICLE}).to_string().into_bytes();
    let headers = [("content-type", "application/json"), ("traceparent", parent.as_str())];
    let (status, answer) =
        read(handler.forward(reqwest::Method::POST, "/api/summarize", &headers, Some(body)).await).await;
    assert_eq!(status, 200, "{answer}");
    let spans = collector.wait_for_spans("the spans", has_chat_span_in(TRACE_ID)).await;
    let (_, chat) = invocation_and_chat(&spans, TRACE_ID);
    let event = |name: &str| chat.events.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("{name}: {chat:?}"));
    let prompt = text(&event("gen_ai.content.prompt").attributes, "gen_ai.prompt").unwrap();
    assert!(prompt.contains("three new libraries"), "{prompt}");
    let completion = text(&event("gen_ai.content.completion").attributes, "gen_ai.completion").unwrap();
    assert_eq!(completion.trim(), answer["summary"].as_str().unwrap());
}
