//! Issue 12, items 2 and 9: a hostile Azure OpenAI (a tiny server in this test, since no real
//! service sends these answers) cannot crash the handler or stall it past its deadline. Before
//! the fix, `retry-after: 1e300` and friends panicked in `Duration::from_secs_f64`, and with
//! `panic = "abort"` took every in-flight invocation down with the process.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::{ARTICLE, HandlerEnv, emulator, post_json, post_json_response};
use serde_json::{Value, json};

/// One scripted answer: status, headers, body.
type Answer = (u16, Vec<(&'static str, String)>, String);

#[derive(Clone, Default)]
struct Hostile {
    script: Arc<Mutex<VecDeque<Answer>>>,
    requests: Arc<Mutex<usize>>,
}

impl Hostile {
    async fn start() -> (Self, String) {
        let hostile = Self::default();
        let state = hostile.clone();
        let app = Router::new().fallback(move || {
            let state = state.clone();
            async move { state.answer() }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (hostile, url)
    }

    fn push(&self, answer: Answer) {
        self.script.lock().unwrap().push_back(answer);
    }

    fn requests(&self) -> usize {
        *self.requests.lock().unwrap()
    }

    fn answer(&self) -> Response {
        *self.requests.lock().unwrap() += 1;
        let (status, headers, body) = self.script.lock().unwrap().pop_front().unwrap_or_else(|| ok(json!(usage(1, 1))));
        let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
        response.headers_mut().insert("content-type", "application/json".parse().unwrap());
        for (name, value) in headers {
            response.headers_mut().insert(name, value.parse().unwrap());
        }
        response
    }
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt.wrapping_add(completion)})
}

fn ok(usage: Value) -> Answer {
    let body = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "A summary."}}],
        "usage": usage,
    });
    (200, vec![], body.to_string())
}

fn throttled(header: &'static str, value: &str) -> Answer {
    let body = json!({"error": {"code": "429", "message": "Rate limit is exceeded."}});
    (429, vec![(header, value.to_owned())], body.to_string())
}

#[tokio::test]
async fn hostile_numbers_never_crash_the_handler() {
    let emulator = emulator().await;
    let (hostile, url) = Hostile::start().await;
    let handler = HandlerEnv::managed_identity(&emulator)
        .set("AZURE_OPENAI_ENDPOINT", &url)
        .set("AOAI_MAX_RETRY_WAIT_SECONDS", "1")
        // The adaptive pacer would slow every call after these 429s (no quota headers follow);
        // this test is about parsing, not pacing.
        .set("AOAI_ADAPTIVE_PACING", "false")
        .spawn()
        .await;
    let huge = "m".repeat(1_000_000);
    let answers = [
        throttled("retry-after", "1e300"),
        throttled("retry-after", "18446744073709551616"),
        throttled("retry-after-ms", "1e30"),
        throttled("x-ms-retry-after-ms", "1.7976931348623157e308"),
        throttled("x-ratelimit-reset-tokens", "99999999999999999999h"),
        throttled("x-ratelimit-reset-requests", "1e300"),
        throttled("x-ratelimit-remaining-tokens", "-99999999999999999999999"),
        throttled("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"),
        // A 1 MB error message: quoted capped, never whole.
        (503, vec![], json!({"error": {"code": huge, "message": huge}}).to_string()),
        // Usage at the edge of u64: summed and exported without overflow.
        ok(usage(u64::MAX, u64::MAX)),
    ];
    for (i, answer) in answers.into_iter().enumerate() {
        let last = i == 9;
        hostile.push(answer);
        let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": ARTICLE})).await;
        assert_eq!(status, 200, "answer {i}: {body}");
        assert_eq!(body["summary"], "A summary.", "answer {i}");
        if last {
            assert_eq!(body["usage"]["prompt_tokens"], u64::MAX);
        }
    }
    // A 200 with numbers no u64 holds: an unreadable answer (not resent: a 200 was charged).
    let body = json!({"id": "x", "choices": [{"message": {"content": "s"}}], "usage": {"prompt_tokens": 1e300}});
    hostile.push((200, vec![], body.to_string()));
    let before = hostile.requests();
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": ARTICLE})).await;
    assert_eq!((status, hostile.requests() - before), (500, 1), "{body}");
    // A 1 MB model name: cut in the output.
    let body = json!({"id": "x", "model": huge, "choices": [{"message": {"content": "s"}}]});
    hostile.push((200, vec![], body.to_string()));
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": ARTICLE})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["model"].as_str().unwrap().len() < 200, "the model name is capped");
    // Still the same process, still serving; the 1 MB texts never reached the log whole.
    assert_eq!(handler.output().lines().filter(|l| l.contains("panicked")).count(), 0, "{}", handler.output());
    assert!(handler.output().lines().all(|l| l.len() < 10_000), "a log line was not bounded");
}

/// Issue 12, item 9: the tokens-per-minute refusal said "retry after 1 s" when the real wait
/// was minutes, and the client then retried (sleeping) although no retry could fit.
#[tokio::test]
async fn the_budget_refusal_reports_the_real_wait_and_is_not_retried() {
    let emulator = emulator().await;
    let (hostile, url) = Hostile::start().await;
    let handler = HandlerEnv::managed_identity(&emulator)
        .set("AZURE_OPENAI_ENDPOINT", &url)
        .set("AOAI_TOKENS_PER_MINUTE", "60")
        .spawn()
        .await;
    // The first call goes once the 1.5 s burst has filled, leaving ~500 tokens of debt.
    let (status, body) = post_json(&handler, "/api/summarize", &json!({"text": ARTICLE})).await;
    assert_eq!(status, 200, "{body}");
    let response = post_json_response(&handler, "/api/summarize", &json!({"text": ARTICLE})).await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after > 200, "the real wait (~8 minutes), not 1 s: {retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_throttled", "{body}");
    assert_eq!(hostile.requests(), 1, "the refused call was never sent");
    assert!(!handler.output().contains("retrying Azure OpenAI"), "{}", handler.output());
}
