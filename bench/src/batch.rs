//! The simulated queue: jobs through `process_job` as the Functions host drives a queue
//! trigger, on one or several handler instances sharing one queue.
//!
//! Each instance gets `in_flight` invocations at once (host.json batchSize +
//! newBatchThreshold); a non-2xx answer makes the message visible again after
//! `visibilityTimeout` with DequeueCount + 1, and one that fails its `maxDequeueCount`-th
//! delivery goes to the poison queue; a 200 stores its `Outputs` (`result_blob` in a blob
//! store passed back as the `existing_result` input, as the binding does; `result_queue` in the
//! results queue).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::http::{Connection, request};

pub struct Plan {
    pub in_flight: usize,
    pub visibility: Duration,
    pub max_dequeue: u32,
    /// The run is abandoned past this.
    pub time_limit: Duration,
}

/// One sample of the emulator's counters.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub chat_ok: u64,
    pub throttled: u64,
    pub tokens_used: u64,
    pub results: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub duration_s: f64,
    pub invocations: u64,
    pub non_2xx: u64,
    pub io_errors: u64,
    pub redeliveries: u64,
    /// Messages whose last allowed delivery failed without a Result.
    pub poisoned: u64,
    /// Result documents written to the results queue, per job id.
    pub results: HashMap<String, Vec<Value>>,
    /// Per job with a Result: ms from its first delivery to the delivery that wrote it.
    pub job_latency_ms: Vec<f64>,
    /// When the queue handed out its last new message (s from the start): from then on it only
    /// redelivers, and instances whose invocations finish find no work.
    pub drained_s: f64,
    pub abandoned: bool,
    pub samples: Vec<Sample>,
}

struct Message {
    job_id: String,
    message_id: String,
    text: String,
    dequeue_count: u32,
    first_delivery: Option<Instant>,
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<Message>,
    delayed: Vec<(Instant, Message)>,
    in_flight: usize,
}

impl Queue {
    fn promote(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.delayed.len() {
            if self.delayed[i].0 <= now {
                let (_, message) = self.delayed.swap_remove(i);
                self.ready.push_back(message);
            } else {
                i += 1;
            }
        }
    }
}

/// Runs `messages` (job id, queue message text) through `process_job` at `addrs` (one shared
/// queue, `in_flight` invocations per instance); `sample` reads (chat_ok, throttled,
/// tokens_used) from the emulator.
pub async fn run(
    addrs: &[SocketAddr],
    plan: &Plan,
    messages: Vec<(String, String)>,
    sample: Rc<dyn Fn() -> (u64, u64, u64)>,
) -> Outcome {
    let queue = Rc::new(RefCell::new(Queue::default()));
    for (job_id, text) in messages {
        let message_id = uuid::Uuid::new_v4().to_string();
        queue.borrow_mut().ready.push_back(Message {
            job_id,
            message_id,
            text,
            dequeue_count: 1,
            first_delivery: None,
        });
    }
    let outcome = Rc::new(RefCell::new(Outcome::default()));
    let blobs: Rc<RefCell<HashMap<String, String>>> = Rc::default();
    let started = Instant::now();
    let deadline = started + plan.time_limit;
    let done = Rc::new(std::cell::Cell::new(false));

    let sampler = {
        let (outcome, done, sample) = (outcome.clone(), done.clone(), sample.clone());
        tokio::task::spawn_local(async move {
            loop {
                let (chat_ok, throttled, tokens_used) = sample();
                let results = outcome.borrow().results.len();
                let t_s = started.elapsed().as_secs_f64();
                outcome.borrow_mut().samples.push(Sample { t_s, chat_ok, throttled, tokens_used, results });
                if done.get() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let shared = Rc::new(Shared { queue: queue.clone(), outcome: outcome.clone(), blobs, started, deadline });
    let workers: Vec<_> = (0..plan.in_flight * addrs.len())
        .map(|worker| {
            let addr = addrs[worker / plan.in_flight];
            tokio::task::spawn_local(work(addr, shared.clone(), plan.visibility, plan.max_dequeue))
        })
        .collect();
    for worker in workers {
        worker.await.expect("a queue worker panicked");
    }
    outcome.borrow_mut().duration_s = started.elapsed().as_secs_f64();
    done.set(true);
    sampler.await.expect("the sampler panicked");
    std::mem::take(&mut *outcome.borrow_mut())
}

/// What every worker of a run shares.
struct Shared {
    queue: Rc<RefCell<Queue>>,
    outcome: Rc<RefCell<Outcome>>,
    blobs: Rc<RefCell<HashMap<String, String>>>,
    started: Instant,
    deadline: Instant,
}

/// One invocation slot of one instance: takes the next visible message, invokes, and either
/// stores the Result or makes the message visible again later.
async fn work(addr: SocketAddr, shared: Rc<Shared>, visibility: Duration, max_dequeue: u32) {
    let Shared { queue, outcome, blobs, started, deadline } = &*shared;
    let deadline = *deadline;

    let mut connection: Option<Connection> = None;
    loop {
        if Instant::now() > deadline {
            outcome.borrow_mut().abandoned = true;
            break;
        }
        let next = {
            let mut q = queue.borrow_mut();
            q.promote(Instant::now());
            let next = q.ready.pop_front();
            if next.is_some() {
                q.in_flight += 1;
            }
            next
        };
        let Some(mut message) = next else {
            let finished = {
                let q = queue.borrow();
                q.delayed.is_empty() && q.in_flight == 0
            };
            if finished {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        if message.first_delivery.is_none() {
            let t = started.elapsed().as_secs_f64();
            let mut out = outcome.borrow_mut();
            out.drained_s = out.drained_s.max(t);
        }
        let first_delivery = *message.first_delivery.get_or_insert_with(Instant::now);
        let existing = blobs.borrow().get(&message.job_id).cloned();
        let bytes = invocation(&message, existing.as_deref());
        if connection.is_none() {
            connection = Connection::open(addr).await.ok();
        }
        let answer = match connection.as_mut() {
            Some(c) => c.send(&bytes).await.ok(),
            None => None,
        };
        if answer.is_none() {
            connection = None;
        }
        let ok = record(&mut outcome.borrow_mut(), blobs, &message.job_id, answer.as_ref(), first_delivery);
        let mut q = queue.borrow_mut();
        q.in_flight -= 1;
        if !ok {
            if message.dequeue_count >= max_dequeue {
                outcome.borrow_mut().poisoned += 1;
            } else {
                outcome.borrow_mut().redeliveries += 1;
                let again = Message { dequeue_count: message.dequeue_count + 1, ..message };
                q.delayed.push((Instant::now() + visibility, again));
            }
        }
    }
}

/// The `process_job` invocation of a delivery of `message`, as the host sends it.
fn invocation(message: &Message, existing: Option<&str>) -> Vec<u8> {
    let (data, mut metadata) = emulator::host::queue_invocation(
        "job",
        &message.text,
        message.dequeue_count,
        &message.message_id,
        &[("existing_result", existing)],
    );
    if let Some(sys) = metadata.get_mut("sys").and_then(Value::as_object_mut) {
        sys.insert("MethodName".into(), json!("process_job"));
    }
    let body = json!({"Data": data, "Metadata": metadata}).to_string();
    request("POST", "/process_job", &host_headers(&uuid::Uuid::new_v4().to_string()), body.as_bytes())
}

/// Counts an answer (None: no answer) and stores its outputs; whether it was a success.
fn record(
    out: &mut Outcome,
    blobs: &RefCell<HashMap<String, String>>,
    job_id: &str,
    answer: Option<&crate::http::Response>,
    first_delivery: Instant,
) -> bool {
    out.invocations += 1;
    match answer {
        Some(r) if (200..300).contains(&r.status) => {
            let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            let outputs = &body["Outputs"];
            if let Some(blob) = outputs["result_blob"].as_str() {
                blobs.borrow_mut().insert(job_id.to_owned(), blob.to_owned());
            }
            if let Some(result) = outputs["result_queue"].as_str() {
                let result = serde_json::from_str(result).unwrap_or(Value::String(result.into()));
                out.results.entry(job_id.to_owned()).or_default().push(result);
                out.job_latency_ms.push(first_delivery.elapsed().as_secs_f64() * 1000.0);
            }
            true
        }
        Some(_) => {
            out.non_2xx += 1;
            false
        }
        None => {
            out.io_errors += 1;
            false
        }
    }
}

/// The headers the Functions host sends with an invocation.
pub fn host_headers(invocation_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", "application/json".into()),
        ("x-azure-functions-invocationid", invocation_id.to_owned()),
        ("x-azure-functions-hostversion", emulator::host::HOST_VERSION.into()),
        ("User-Agent", format!("Azure-Functions-Host/{}", emulator::host::HOST_VERSION)),
    ]
}

/// What the Results say.
#[derive(Debug, Default, Serialize)]
pub struct Tally {
    pub jobs: usize,
    pub with_one_result: usize,
    pub with_no_result: usize,
    pub with_several_results: usize,
    pub succeeded: usize,
    /// Failed Results by error code.
    pub failed: BTreeMap<String, usize>,
}

pub fn tally(job_ids: &[String], results: &HashMap<String, Vec<Value>>) -> Tally {
    let mut tally = Tally { jobs: job_ids.len(), ..Tally::default() };
    for id in job_ids {
        match results.get(id).map(Vec::len).unwrap_or(0) {
            0 => tally.with_no_result += 1,
            1 => tally.with_one_result += 1,
            _ => tally.with_several_results += 1,
        }
        for result in results.get(id).into_iter().flatten() {
            if result["status"] == "succeeded" {
                tally.succeeded += 1;
            } else {
                let code = result["error"]["code"].as_str().unwrap_or("unknown").to_owned();
                *tally.failed.entry(code).or_default() += 1;
            }
        }
    }
    tally
}
