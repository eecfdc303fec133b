//! The token-lifetime proof: 2 000 requests with 100 in flight across several short token
//! lifetimes: no failure, no expired token sent, one identity-endpoint call per refresh interval
//! (three quarters of a lifetime).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::sync::Semaphore;

const REQUESTS: usize = 2000;
const IN_FLIGHT: usize = 100;
// 8 s, not shorter: `expires_on` is whole seconds rounded down, so the handler can see up to a
// second less; with short tokens that alone adds a fetch.
const LIFETIME: Duration = Duration::from_secs(8);
const RUN: Duration = Duration::from_secs(32);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_requests_across_four_lifetimes() {
    let emulator = emulator_with(emulator::EmulatorConfig { token_lifetime: LIFETIME, ..Default::default() }).await;
    let handler = Arc::new(
        HandlerEnv::managed_identity(&emulator)
            .set("AOAI_MAX_CONCURRENCY", "100")
            .set("RUST_LOG", "warn")
            .spawn()
            .await,
    );
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let mut calls = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        // Spread the requests evenly over the run so that they span every lifetime.
        tokio::time::sleep_until((started + RUN.mul_f64(i as f64 / REQUESTS as f64)).into()).await;
        let permit = slots.clone().acquire_owned().await.unwrap();
        let handler = handler.clone();
        calls.push(tokio::spawn(async move {
            let body = json!({"text": "the invoice is wrong", "labels": ["billing", "sales"]});
            let result = post_json(&handler, "/api/classify", &body).await;
            drop(permit);
            result
        }));
    }
    let mut failures = Vec::new();
    for call in calls {
        let (status, body) = call.await.unwrap();
        if status != 200 {
            failures.push(body);
        }
    }
    let lifetimes = started.elapsed().as_secs_f64() / LIFETIME.as_secs_f64();
    let stats = emulator.stats();
    assert!(failures.is_empty(), "{} failures, first: {}", failures.len(), failures[0]);
    assert_eq!(stats.expired_tokens, 0, "{stats:?}");
    assert_eq!(stats.unauthorized, 0, "{stats:?}");
    assert_eq!(stats.chat_ok as usize, REQUESTS);
    // A token is refreshed (in the background) with a quarter of its life left, and the handler
    // sees 7-8 s of it (`expires_on` is whole seconds): one fetch per 5.25-6 s, never per request.
    let elapsed = started.elapsed().as_secs_f64();
    let fewest = (elapsed / (0.75 * LIFETIME.as_secs_f64())).floor();
    let most = (elapsed / (0.75 * (LIFETIME.as_secs_f64() - 1.0))).ceil() + 1.0;
    let fetches = stats.identity_requests as f64;
    assert!(
        (fewest..=most).contains(&fetches),
        "{fetches} identity calls over {lifetimes:.2} lifetimes (expected {fewest}..={most}): {stats:?}"
    );
    println!(
        "{REQUESTS} requests, {IN_FLIGHT} in flight, {lifetimes:.2} lifetimes of {LIFETIME:?}: {fetches} identity calls, 0 failures, 0 expired tokens"
    );
}
