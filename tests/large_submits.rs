//! Issue 12, item 6: bounded memory per request. The largest valid batch (1 000 jobs) still goes
//! through end to end; an invocation over the body limit is refused naming the limit, nothing stored; and
//! large invocations share a memory budget: one that does not fit waits its turn, and gives up
//! with 503 `server_busy` naming the setting when its deadline comes first. (The memory figures
//! themselves are measured by `scripts/bench --memory`, not asserted here.)

mod common;

use common::*;
use emulator::host::{HandlerProcess, http_invocation};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The invocation envelope of `POST /api/jobs` with `body`, as the host sends it.
fn submit_envelope(body: &Value) -> String {
    let text = body.to_string();
    let (data, metadata) = http_invocation("POST", "http://localhost:7071/api/jobs", &[], Some(&text), &[]);
    json!({"Data": data, "Metadata": metadata}).to_string()
}

/// A valid batch of `jobs` summaries of `chars` characters each.
fn batch(jobs: usize, chars: usize) -> Value {
    let text: String =
        "The invoice was charged twice. \"Refund it\", the customer wrote.\n".chars().cycle().take(chars).collect();
    let jobs: Vec<Value> =
        (0..jobs).map(|i| json!({"id": format!("job-{i}"), "task": "summarize", "input": {"text": text}})).collect();
    json!({"jobs": jobs})
}

/// An invocation sent by hand: the headers and `sent` bytes of the body now, the rest later.
struct HeldInvocation {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl HeldInvocation {
    /// Half of `envelope` now.
    async fn start(handler: &HandlerProcess, envelope: &str) -> Self {
        let (now, later) = envelope.as_bytes().split_at(envelope.len() / 2);
        Self::start_declared(handler, envelope.len(), now, later).await
    }

    /// Headers saying `Content-Length: declared`, then `now`; `later` on [`Self::finish`].
    async fn start_declared(handler: &HandlerProcess, declared: usize, now: &[u8], later: &[u8]) -> Self {
        let address = handler.base_url().trim_start_matches("http://").to_owned();
        let mut stream = TcpStream::connect(address).await.unwrap();
        let head = format!(
            "POST /submit_jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(now).await.unwrap();
        stream.flush().await.unwrap();
        Self { stream, rest: later.to_vec() }
    }

    /// Sends the rest of the body; the HTTP status and the invocation's JSON answer.
    async fn finish(mut self) -> (u16, Value) {
        self.stream.write_all(&self.rest).await.unwrap();
        let mut answer = Vec::new();
        self.stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8(answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
        (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:.300}")))
    }
}

/// The caller's status and body in an invocation's `res`.
fn res(invocation: &Value) -> (u16, Value, Value) {
    let res = &invocation["Outputs"]["res"];
    let status = res["statusCode"].as_u64().unwrap_or_else(|| panic!("no res: {invocation:.300}")) as u16;
    let body = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
    (status, body, res["headers"].clone())
}

/// `POST /submit_jobs` with `envelope`, as the host sends it.
async fn submit(base_url: String, envelope: String) -> (u16, Value) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let request = client.post(format!("{base_url}/submit_jobs")).header("content-type", "application/json");
    read(request.body(envelope).send().await.unwrap()).await
}

#[tokio::test]
async fn the_largest_batch_goes_through_end_to_end() {
    let (_emulator, handler) = started().await;
    // 1 000 jobs, ten of them at the 48 KiB message limit.
    let mut body = batch(1000, 600);
    let long: String = "x".repeat(48 * 1024 - 200);
    for i in 0..10 {
        body["jobs"][i * 100]["input"]["text"] = json!(long);
    }
    let (status, invocation) = submit(handler.base_url(), submit_envelope(&body)).await;
    assert_eq!(status, 200, "{invocation:.300}");
    let (status, answer, _) = res(&invocation);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["count"], 1000);
    let messages = invocation["Outputs"]["outjobs"].as_array().expect("one queue message per job");
    assert_eq!(messages.len(), 1000);
    for (i, message) in messages.iter().enumerate() {
        let message: Value = serde_json::from_str(message.as_str().unwrap()).unwrap();
        assert_eq!(message, body["jobs"][i], "message {i} is the job as sent");
    }
    // A message runs like any other.
    let (status, result) = invoke_job(&handler, messages[100].as_str().unwrap(), 1, None).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(written_result(&result)["status"], "succeeded");
}

#[tokio::test]
async fn an_invocation_over_the_body_limit_is_refused_naming_the_limit() {
    let (_emulator, handler) = started().await;
    let limit = handler::functions::INVOCATION_BODY_LIMIT;
    // Refused from its Content-Length: what follows is read and dropped, nothing stored.
    let mut held = HeldInvocation::start_declared(&handler, limit + 1, b"", b"").await;
    let chunk = vec![b' '; 1024 * 1024];
    let mut left = limit + 1;
    while left > 0 {
        let n = left.min(chunk.len());
        if held.stream.write_all(&chunk[..n]).await.is_err() {
            break; // answered already
        }
        left -= n;
    }
    let (status, invocation) = held.finish().await;
    assert_eq!(status, 200, "the caller gets the answer, not a failed invocation: {invocation}");
    let (status, answer, _) = res(&invocation);
    assert_eq!(status, 413, "{answer}");
    assert_error(&answer, "payload_too_large");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains(&limit.to_string()) && message.contains("1000 jobs"), "{message}");
    assert!(invocation["Outputs"]["outjobs"].is_null());
}

/// Two 6 MB submits count 24 MB against a 16 MiB budget: the second cannot run beside the first.
async fn budgeted(function_timeout: &str) -> (emulator::Emulator, HandlerProcess) {
    let emulator = emulator().await;
    let handler = HandlerEnv::managed_identity(&emulator)
        .set("INVOCATION_MEMORY_BUDGET_MB", "16")
        .set("AzureFunctionsJobHost__functionTimeout", function_timeout)
        .spawn()
        .await;
    (emulator, handler)
}

#[tokio::test]
async fn a_large_submit_that_cannot_get_its_budget_in_time_gets_503_naming_the_setting() {
    // A 10 s function timeout: 8 s of budget, of which a waiting request leaves 5 s to the work.
    let (_emulator, handler) = budgeted("00:00:10").await;
    let envelope = submit_envelope(&batch(200, 30_000));
    // The first holds its share: its body is half sent.
    let first = HeldInvocation::start(&handler, &envelope).await;
    let (status, invocation) = submit(handler.base_url(), envelope.clone()).await;
    assert_eq!(status, 200, "{invocation}");
    let (status, answer, headers) = res(&invocation);
    assert_eq!(status, 503, "{answer}");
    assert_error(&answer, "server_busy");
    assert!(answer["error"]["message"].as_str().unwrap().contains("INVOCATION_MEMORY_BUDGET_MB"), "{answer}");
    assert_eq!(headers["Retry-After"], "30");
    assert!(invocation["Outputs"]["outjobs"].is_null(), "nothing enqueued");
    // The first one runs; then the budget is free again.
    let (status, invocation) = first.finish().await;
    assert_eq!((status, res(&invocation).0), (200, 202), "{invocation:.300}");
    let (status, invocation) = submit(handler.base_url(), envelope).await;
    assert_eq!((status, res(&invocation).0), (200, 202), "{invocation:.300}");
}

#[tokio::test]
async fn a_large_submit_waits_for_the_budget_then_runs() {
    let (_emulator, handler) = budgeted("00:02:00").await;
    let envelope = submit_envelope(&batch(200, 30_000));
    let first = HeldInvocation::start(&handler, &envelope).await;
    let second = tokio::spawn(submit(handler.base_url(), envelope.clone()));
    // While the first holds the budget, the second cannot have been answered.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "the second submit ran beside the first");
    let (status, invocation) = first.finish().await;
    assert_eq!((status, res(&invocation).0), (200, 202), "{invocation:.300}");
    let (status, invocation) = second.await.unwrap();
    assert_eq!((status, res(&invocation).0), (200, 202), "{invocation:.300}");
    assert_eq!(invocation["Outputs"]["outjobs"].as_array().map(Vec::len), Some(200));
}

#[tokio::test]
async fn small_invocations_never_wait_for_the_budget() {
    let (_emulator, handler) = budgeted("00:02:00").await;
    let envelope = submit_envelope(&batch(200, 30_000));
    let first = HeldInvocation::start(&handler, &envelope).await;
    // A small submit and a queue job run while the large one holds most of the budget.
    let (status, invocation) = submit(handler.base_url(), submit_envelope(&batch(2, 100))).await;
    assert_eq!((status, res(&invocation).0), (200, 202), "{invocation:.300}");
    let message = invocation["Outputs"]["outjobs"][0].as_str().unwrap().to_owned();
    let (status, result) = invoke_job(&handler, &message, 1, None).await;
    assert_eq!(status, 200, "{result}");
    let (status, invocation) = first.finish().await;
    assert_eq!((status, res(&invocation).0), (200, 202), "{invocation:.300}");
}
