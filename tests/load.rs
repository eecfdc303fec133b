//! Load test (ignored by default; run with
//! `cargo test --release --test load -- --ignored --nocapture`): 2 000 queue jobs through the
//! real binary, driven like the Functions host drives a queue trigger (24 in flight =
//! batchSize + newBatchThreshold, a failed invocation redelivers the message with
//! DequeueCount + 1), against the emulator injecting 20 % 429 and 5 % 500. Checks that every
//! job ends with exactly one Result and that the Azure OpenAI call rate stays within the
//! configured tokens-per-minute budget.

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::*;
use emulator::Faults;
use serde_json::{Value, json};

const JOBS: usize = 2000;
const IN_FLIGHT: usize = 24;
const MAX_DEQUEUE: u32 = 5;
const TOKENS_PER_MINUTE: u64 = 1_500_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test: about a minute; run explicitly"]
async fn two_thousand_jobs_through_a_429_storm_each_end_with_one_result() {
    let emulator = emulator().await;
    emulator.set_faults(Faults {
        throttle_rate: 0.20,
        server_error_rate: 0.05,
        retry_after_ms: 200,
        ..Faults::default()
    });
    let handler = Arc::new(
        HandlerEnv::managed_identity(&emulator)
            .set("AOAI_TOKENS_PER_MINUTE", TOKENS_PER_MINUTE.to_string())
            .set("AOAI_MAX_CONCURRENCY", "24")
            .set("RUST_LOG", "warn")
            .spawn()
            .await,
    );
    let queue: Arc<Mutex<VecDeque<(String, String, u32)>>> = Arc::new(Mutex::new(
        (0..JOBS)
            .map(|i| {
                let task = if i % 2 == 0 {
                    json!({"id": format!("load-{i}"), "task": "summarize", "input": {"text": ARTICLE, "max_words": 30}})
                } else {
                    json!({"id": format!("load-{i}"), "task": "classify", "input": {"text": ARTICLE, "labels": ["politics", "sports", "weather"]}})
                };
                (format!("load-{i}"), task.to_string(), 1)
            })
            .collect(),
    ));
    let results: Arc<Mutex<HashMap<String, Vec<Value>>>> = Arc::default();
    let redeliveries = Arc::new(Mutex::new(0u32));
    let started = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (queue, results, redeliveries, handler) =
                (queue.clone(), results.clone(), redeliveries.clone(), handler.clone());
            tokio::spawn(async move {
                loop {
                    let Some((id, message, delivery)) = queue.lock().unwrap().pop_front() else { break };
                    let (status, body) = invoke_job(&handler, &message, delivery, None).await;
                    if status == 200 {
                        results.lock().unwrap().entry(id).or_default().push(written_result(&body));
                    } else if delivery < MAX_DEQUEUE {
                        *redeliveries.lock().unwrap() += 1;
                        queue.lock().unwrap().push_back((id, message, delivery + 1));
                    } else {
                        panic!("job {id} failed its last delivery without a Result: {body}");
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let elapsed = started.elapsed();
    let results = results.lock().unwrap();
    assert_eq!(results.len(), JOBS, "every job has a Result");
    assert!(results.values().all(|r| r.len() == 1), "exactly one Result per job");
    let failed: Vec<&Value> = results.values().flatten().filter(|r| r["status"] != "succeeded").collect();

    // The budget: every request the emulator saw, costed the way Azure OpenAI's limiter does.
    let requests = emulator.requests();
    let cost: u64 = requests
        .iter()
        .map(|r| {
            let chars: usize = r.body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["content"].as_str().unwrap().chars().count())
                .sum();
            let max_completion = u32::try_from(r.body["max_completion_tokens"].as_u64().unwrap()).unwrap();
            token_cost::estimated_tokens(chars, max_completion)
        })
        .sum();
    let per_minute = cost as f64 / elapsed.as_secs_f64() * 60.0;
    let stats = emulator.stats();
    println!(
        "{JOBS} jobs in {:.1} s: {} succeeded, {} failed; {} Azure OpenAI calls ({} throttled, {} 500s), {} redeliveries; \
         {:.0} tokens/min against a budget of {TOKENS_PER_MINUTE} ({:.1} %); {} identity calls",
        elapsed.as_secs_f64(),
        JOBS - failed.len(),
        failed.len(),
        stats.chat_requests,
        stats.throttled,
        stats.server_errors,
        redeliveries.lock().unwrap(),
        per_minute,
        100.0 * per_minute / TOKENS_PER_MINUTE as f64,
        stats.identity_requests,
    );
    assert!(failed.is_empty(), "transient failures were all retried: {:?}", failed.first());
    assert!(per_minute <= TOKENS_PER_MINUTE as f64 * 1.02, "{per_minute:.0} tokens/min over the budget");
    assert_eq!(stats.identity_requests, 1);
}
