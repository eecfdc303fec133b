//! Two handler instances sharing one emulated deployment's quota (issue 14): the mechanism, not
//! a speed. One instance has a per-instance cap (`AOAI_TOKENS_PER_MINUTE`), the other paces
//! itself from the deployment's remaining-quota headers alone; both take jobs from one queue
//! as the Functions host feeds a queue trigger. The jobs ask for about twice what the
//! deployment admits per window, so without pacing the window fills and the emulator answers
//! 429s. Checked: every job ends with one succeeded Result, the capped instance stays within
//! its cap, and together they stay under the deployment's limit (almost no 429s).

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use emulator::EmulatorConfig;
use emulator::host::HandlerProcess;
use serde_json::{Value, json};

const TOKENS_PER_MINUTE: u64 = 60_000;
const WINDOW_SECONDS: u64 = 10;
const CAP: u64 = 15_000;
const JOBS: usize = 70;
const IN_FLIGHT: usize = 8;
const MAX_DEQUEUE: u32 = 5;

type Queue = Arc<Mutex<VecDeque<(String, String, u32)>>>;
type Results = Arc<Mutex<HashMap<String, Vec<Value>>>>;

/// One instance's share of the queue: IN_FLIGHT workers; returns how many jobs it completed.
async fn drain(handler: Arc<HandlerProcess>, queue: Queue, results: Results) -> usize {
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (handler, queue, results) = (handler.clone(), queue.clone(), results.clone());
            tokio::spawn(async move {
                let mut done = 0;
                loop {
                    let Some((id, message, delivery)) = queue.lock().unwrap().pop_front() else { break };
                    let (status, body) = invoke_job(&handler, &message, delivery, None).await;
                    if status == 200 {
                        results.lock().unwrap().entry(id).or_default().push(written_result(&body));
                        done += 1;
                    } else if delivery < MAX_DEQUEUE {
                        queue.lock().unwrap().push_back((id, message, delivery + 1));
                    } else {
                        panic!("job {id} failed its last delivery without a Result: {body}");
                    }
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for worker in workers {
        done += worker.await.unwrap();
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_quota_the_capped_one_within_its_cap() {
    let emulator = emulator_with(EmulatorConfig {
        tokens_per_minute: Some(TOKENS_PER_MINUTE),
        token_window: Duration::from_secs(WINDOW_SECONDS),
        ..EmulatorConfig::default()
    })
    .await;
    let base = || {
        HandlerEnv::managed_identity(&emulator)
            .set("AOAI_QUOTA_WINDOW_SECONDS", WINDOW_SECONDS.to_string())
            .set("AOAI_MAX_CONCURRENCY", IN_FLIGHT.to_string())
            .set("RUST_LOG", "warn")
    };
    let capped = Arc::new(base().set("AOAI_TOKENS_PER_MINUTE", CAP.to_string()).spawn().await);
    let free = Arc::new(base().spawn().await);
    let message = |i: usize| json!({"id": format!("fleet-{i}"), "task": "summarize", "input": {"text": ARTICLE, "max_words": 40}});
    let queue: Queue =
        Arc::new(Mutex::new((0..JOBS).map(|i| (format!("fleet-{i}"), message(i).to_string(), 1)).collect()));
    let results: Results = Arc::default();
    let started = Instant::now();
    let (by_capped, by_free) = tokio::join!(
        drain(capped.clone(), queue.clone(), results.clone()),
        drain(free.clone(), queue.clone(), results.clone())
    );
    let elapsed = started.elapsed();

    let results = results.lock().unwrap();
    assert_eq!(results.len(), JOBS, "every job has a Result");
    assert!(results.values().all(|r| r.len() == 1 && r[0]["status"] == "succeeded"), "one succeeded Result each");

    // Every job is one call of the same cost (the last request is a job's; the handler may
    // also probe the deployment once); the emulator admitted each exactly once.
    let requests = emulator.requests();
    let body = &requests.last().unwrap().body;
    let chars: usize =
        body["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap().chars().count()).sum();
    let cost =
        token_cost::estimated_tokens(chars, u32::try_from(body["max_completion_tokens"].as_u64().unwrap()).unwrap());
    let stats = emulator.stats();
    assert_eq!(stats.admitted_tokens, cost * JOBS as u64);
    let window_budget = TOKENS_PER_MINUTE * WINDOW_SECONDS / 60;
    assert!(stats.admitted_tokens > window_budget * 3 / 2, "the jobs must ask for more than one window admits");

    // The capped instance: its bucket starts empty and refills at 97.5 % of the cap, so over
    // the run it cannot have been admitted more than the cap's rate (plus one call that may
    // run into debt).
    let allowed = CAP as f64 * elapsed.as_secs_f64() / 60.0 + cost as f64;
    let capped_tokens = (by_capped as u64 * cost) as f64;
    assert!(capped_tokens <= allowed, "the capped instance got {capped_tokens} tokens, its cap allows {allowed:.0}");
    assert_eq!(by_capped + by_free, JOBS);

    // Together: the deployment refused (almost) nothing.
    let refused = stats.throttled_tokens + stats.throttled_requests;
    assert!(
        refused * 20 <= stats.chat_requests,
        "{refused} of {} calls were refused: the instances did not pace to the shared quota",
        stats.chat_requests
    );
    eprintln!(
        "{JOBS} jobs of {cost} tokens in {:.1} s: capped instance {by_capped}, free instance {by_free}, {refused} refused of {} calls",
        elapsed.as_secs_f64(),
        stats.chat_requests
    );
}
