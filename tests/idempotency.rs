//! Job ids are not a way to get someone else's answer (issue 12, item 5): every Result records
//! the digest of the input it answers; a redelivery of the same input is idempotent (its Result
//! re-emitted, Azure OpenAI not called again), a different input under a used id is a permanent
//! `conflict` written to the results queue only, and `POST /api/jobs` / `PUT /api/jobs/{id}`
//! answer 409 for an id whose Result (or stored job) belongs to another input. The real binary,
//! driven with the host's bindings (`emulator::host::Storage`) and against the emulator's Blob
//! service for the submit's check.

mod common;

use std::path::Path;

use common::*;
use emulator::Faults;
use emulator::host::{Function, HandlerProcess, Storage};
use serde_json::{Value, json};

fn function(name: &str) -> Function {
    Function::load(Path::new(env!("CARGO_MANIFEST_DIR")), name).unwrap()
}

fn job(id: &str, text: &str) -> String {
    json!({"id": id, "task": "summarize", "input": {"text": text, "max_words": 20}}).to_string()
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

async fn deliver(storage: &Storage, handler: &HandlerProcess, message: &str, delivery: u32) -> Value {
    let (status, invocation) =
        storage.invoke_queue(handler, &function("process_job"), message, delivery).await.unwrap();
    assert_eq!(status, 200, "{invocation}");
    invocation
}

#[tokio::test]
async fn a_reused_id_with_another_input_is_a_conflict_and_the_first_result_is_kept() {
    let (emulator, handler) = started().await;
    let storage = Storage::default();
    deliver(&storage, &handler, &job("r1", ARTICLE), 1).await;
    let first = storage.blob("results/r1.json").expect("the first Result");
    let first_result = parse(&first);
    assert_eq!(first_result["status"], "succeeded");
    let digest = first_result["digest"].as_str().expect("a digest in the Result").to_owned();
    assert_eq!(digest.len(), 64, "{first_result}");
    let calls = emulator.stats().chat_requests;

    let invocation = deliver(&storage, &handler, &job("r1", "A different document altogether."), 1).await;
    let outputs = invocation["Outputs"].as_object().unwrap();
    assert!(outputs.get("result_blob").is_none(), "the other input's blob is never overwritten: {invocation}");
    let conflict = parse(outputs["result_queue"].as_str().expect("a Result on the queue"));
    assert_eq!((conflict["status"].as_str(), conflict["error"]["code"].as_str()), (Some("failed"), Some("conflict")));
    assert_eq!(conflict["id"], "r1");
    assert_ne!(conflict["digest"], first_result["digest"], "{conflict}");
    assert_eq!(storage.blob("results/r1.json").as_deref(), Some(first.as_str()), "the first Result is kept");
    assert_eq!(emulator.stats().chat_requests, calls, "a conflict calls nobody");

    // Permanent: the last delivery or the first, the same answer; still no call.
    let again = deliver(&storage, &handler, &job("r1", "A different document altogether."), 5).await;
    assert_eq!(parse(again["Outputs"]["result_queue"].as_str().unwrap())["error"]["code"], "conflict");
    assert_eq!(emulator.stats().chat_requests, calls);
}

#[tokio::test]
async fn the_same_input_redelivered_is_idempotent_with_no_second_upstream_call() {
    let (emulator, handler) = started().await;
    let storage = Storage::default();
    // Key order and whitespace do not change the digest.
    deliver(&storage, &handler, &job("same", ARTICLE), 1).await;
    let stored = storage.blob("results/same.json").unwrap();
    let calls = emulator.stats().chat_requests;
    let reordered =
        format!(r#"{{ "input": {{"max_words": 20, "text": {}}}, "task": "summarize", "id": "same" }}"#, json!(ARTICLE));
    let invocation = deliver(&storage, &handler, &reordered, 2).await;
    let outputs = invocation["Outputs"].as_object().unwrap();
    assert!(outputs.get("result_blob").is_none(), "{invocation}");
    assert_eq!(outputs["result_queue"].as_str(), Some(stored.as_str()), "the same Result is re-emitted");
    assert_eq!(emulator.stats().chat_requests, calls, "Azure OpenAI is not called again");
    assert_eq!(storage.messages("results").len(), 2, "one Result per delivery on the queue");
}

/// Two messages with one id on one instance: the in-process ledger makes the second wait for the
/// first (same input: its Result, one upstream call) or conflict (another input), whether they
/// overlap or not, since neither saw the other's Result through its blob input binding.
#[tokio::test]
async fn concurrent_messages_with_one_id_never_give_two_different_succeeded_results() {
    let (emulator, handler) = started().await;
    emulator.set_faults(Faults { latency_ms: 300, ..Faults::default() });
    let storage = Storage::default();
    let (first, second) = (job("twin", ARTICLE), job("twin", "Another article about the harbour."));
    let process = function("process_job");
    let (a, b) = tokio::join!(
        storage.invoke_queue(&handler, &process, &first, 1),
        storage.invoke_queue(&handler, &process, &second, 1)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.0, b.0), (200, 200), "{} {}", a.1, b.1);
    let results: Vec<Value> =
        [&a.1, &b.1].iter().map(|i| parse(i["Outputs"]["result_queue"].as_str().unwrap())).collect();
    let succeeded = results.iter().filter(|r| r["status"] == "succeeded").count();
    let conflicts = results.iter().filter(|r| r["error"]["code"] == "conflict").count();
    assert_eq!((succeeded, conflicts), (1, 1), "{results:?}");
    let blob = parse(&storage.blob("results/twin.json").unwrap());
    assert_eq!(blob["status"], "succeeded", "the blob holds the succeeded one: {blob}");

    // The same input twice at once: one upstream call, the same Result twice.
    let storage = Storage::default();
    let calls = emulator.stats().chat_ok;
    let message = job("twin2", ARTICLE);
    let (x, y) = tokio::join!(
        storage.invoke_queue(&handler, &process, &message, 1),
        storage.invoke_queue(&handler, &process, &message, 1)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!((x.0, y.0), (200, 200));
    assert_eq!(x.1["Outputs"]["result_queue"], y.1["Outputs"]["result_queue"], "one Result, emitted twice");
    assert_eq!(emulator.stats().chat_ok - calls, 1, "one call to Azure OpenAI");
}

/// Two instances (two handler processes) sharing the storage account: neither sees the other's
/// Result through its blob input binding nor its in-process ledger, so only the claim in
/// `claims/{id}` (create-only Put Blob) decides. Another input: exactly one succeeded Result and
/// one `conflict`, never two succeeded; the same input: both succeed with the same digest.
#[tokio::test]
async fn two_instances_with_one_id_agree_through_the_claim() {
    let emulator = emulator().await;
    emulator.set_faults(Faults { latency_ms: 300, ..Faults::default() });
    let env =
        HandlerEnv::managed_identity(&emulator).set("AzureWebJobsStorage__blobServiceUri", emulator.blob_service_uri());
    let (one, two) = (env.spawn().await, env.spawn().await);
    assert!(one.output().contains("claims each id in claims/{id}"), "{}", one.output());
    let storage = Storage::default();
    let process = function("process_job");
    let claim = |id: &str| emulator.blob(&format!("claims/{id}")).map(|b| String::from_utf8(b).unwrap());

    let (first, second) = (job("both", ARTICLE), job("both", "Another article about the harbour."));
    let (a, b) =
        tokio::join!(storage.invoke_queue(&one, &process, &first, 1), storage.invoke_queue(&two, &process, &second, 1));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.0, b.0), (200, 200), "{} {}", a.1, b.1);
    let results: Vec<Value> =
        [&a.1, &b.1].iter().map(|i| parse(i["Outputs"]["result_queue"].as_str().unwrap())).collect();
    let succeeded: Vec<&Value> = results.iter().filter(|r| r["status"] == "succeeded").collect();
    let conflicts = results.iter().filter(|r| r["error"]["code"] == "conflict").count();
    assert_eq!((succeeded.len(), conflicts), (1, 1), "{results:?}");
    let owner = claim("both").expect("the claim blob");
    assert_eq!(succeeded[0]["digest"], owner.as_str(), "the claim holds the winner's digest");
    let blob = parse(&storage.blob("results/both.json").unwrap());
    assert_eq!((blob["status"].as_str(), &blob["digest"]), (Some("succeeded"), &succeeded[0]["digest"]), "{blob}");
    let loser = if results[0]["status"] == "succeeded" { &b.1 } else { &a.1 };
    assert!(loser["Outputs"].get("result_blob").is_none(), "the loser never writes the blob: {loser}");

    // The same input on both at once: a twin, not a conflict; both succeed with one digest.
    let message = job("same-both", ARTICLE);
    let (x, y) = tokio::join!(
        storage.invoke_queue(&one, &process, &message, 1),
        storage.invoke_queue(&two, &process, &message, 1)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let (x, y) = (
        parse(x.1["Outputs"]["result_queue"].as_str().unwrap()),
        parse(y.1["Outputs"]["result_queue"].as_str().unwrap()),
    );
    assert_eq!((x["status"].as_str(), y["status"].as_str()), (Some("succeeded"), Some("succeeded")), "{x} {y}");
    assert_eq!(x["digest"], y["digest"]);
    assert_eq!(claim("same-both").as_deref(), x["digest"].as_str());

    // An invalid job claims its id as well (its failed Result answers the id). A valid job under
    // that id on the other instance, before the failed Result is visible to it (a fresh binding
    // view), is a `conflict` through the claim alone and writes no blob.
    let invalid = json!({"id": "bad", "task": "summarize", "input": {}}).to_string();
    let failed = parse(deliver(&storage, &two, &invalid, 1).await["Outputs"]["result_queue"].as_str().unwrap());
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(claim("bad").as_deref(), failed["digest"].as_str());
    let elsewhere = Storage::default();
    let calls = emulator.stats().chat_requests;
    let late = deliver(&elsewhere, &one, &job("bad", ARTICLE), 1).await;
    let late_result = parse(late["Outputs"]["result_queue"].as_str().unwrap());
    assert_eq!(late_result["error"]["code"], "conflict", "{late_result}");
    assert!(late["Outputs"].get("result_blob").is_none(), "{late}");
    assert_eq!(emulator.stats().chat_requests, calls, "a conflict calls nobody");
}

/// The claim cannot be made (no data role on the account): the message is handed back for
/// redelivery, Azure OpenAI is not called, and the last delivery's failed Result goes to the
/// queue only (the blob may belong to another input).
#[tokio::test]
async fn a_claim_that_cannot_be_made_is_a_transient_failure_not_a_skip() {
    let emulator = emulator().await;
    let handler = HandlerEnv::managed_identity(&emulator)
        .set("AzureWebJobsStorage__blobServiceUri", emulator.blob_service_uri())
        .spawn()
        .await;
    emulator.set_storage_role_assigned(false);
    let storage = Storage::default();
    let process = function("process_job");
    let (status, invocation) = storage.invoke_queue(&handler, &process, &job("c1", ARTICLE), 1).await.unwrap();
    assert_eq!(status, 500, "redelivered: {invocation}");
    assert_eq!(emulator.stats().chat_requests, 0, "no upstream call without the claim");
    let (status, invocation) = storage.invoke_queue(&handler, &process, &job("c1", ARTICLE), 5).await.unwrap();
    assert_eq!(status, 200, "{invocation}");
    let result = parse(invocation["Outputs"]["result_queue"].as_str().unwrap());
    assert_eq!(result["error"]["code"], "upstream_permission_denied", "{result}");
    assert!(invocation["Outputs"].get("result_blob").is_none(), "{invocation}");
    assert!(storage.blob("results/c1.json").is_none());
    assert_eq!(emulator.stats().chat_requests, 0);

    // Storage forgets the app's token: the claim gets 401, fetches a new token and goes on.
    emulator.set_storage_role_assigned(true);
    emulator.forget_tokens();
    let invocation = deliver(&storage, &handler, &job("c2", ARTICLE), 1).await;
    let result = parse(invocation["Outputs"]["result_queue"].as_str().unwrap());
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(emulator.blob("claims/c2").map(String::from_utf8).unwrap().unwrap(), result["digest"].as_str().unwrap());
}

async fn submit(storage: &Storage, handler: &HandlerProcess, body: &Value) -> (u16, Value) {
    let outcome = storage
        .invoke_http(
            handler,
            &function("submit_jobs"),
            "POST",
            "http://localhost:7071/api/jobs",
            &[],
            Some(&body.to_string()),
        )
        .await
        .unwrap();
    assert_eq!(outcome.invocation_status, 200, "{}", outcome.invocation);
    (outcome.status, outcome.body)
}

#[tokio::test]
async fn submit_answers_409_for_an_id_whose_result_has_another_digest() {
    let emulator = emulator().await;
    let handler = HandlerEnv::managed_identity(&emulator)
        .set("AzureWebJobsStorage__blobServiceUri", emulator.blob_service_uri())
        .spawn()
        .await;
    assert!(handler.output().contains("checks each id against results/{id}.json"), "{}", handler.output());
    let storage = Storage::default();
    let original = json!({"id": "s1", "task": "summarize", "input": {"text": ARTICLE}});
    let (status, body) = submit(&storage, &handler, &original).await;
    assert_eq!(status, 202, "{body}");
    let digest = body["accepted"][0]["digest"].as_str().expect("each accepted job's digest").to_owned();
    // The worker runs it; its Result lands in the account's blob `results/s1.json`.
    deliver(&storage, &handler, &storage.pop("jobs").unwrap(), 1).await;
    let result = storage.blob("results/s1.json").unwrap();
    assert_eq!(parse(&result)["digest"], digest.as_str(), "the Result answers the submitted input");
    emulator.put_blob("results/s1.json", result);

    // The same input again: accepted (the worker re-emits the Result).
    let (status, body) = submit(&storage, &handler, &original).await;
    assert_eq!((status, body["accepted"][0]["digest"].as_str()), (202, Some(digest.as_str())), "{body}");
    // Another input under that id: 409, naming the job; nothing of the batch is enqueued.
    let queued = storage.messages("jobs").len();
    let other = json!({"jobs": [
        {"id": "fresh", "task": "summarize", "input": {"text": ARTICLE}},
        {"id": "s1", "task": "summarize", "input": {"text": "Something else entirely."}},
    ]});
    let (status, body) = submit(&storage, &handler, &other).await;
    assert_eq!(status, 409, "{body}");
    assert_error(&body, "conflict");
    assert_eq!(body["error"]["index"], 1, "{body}");
    assert_eq!(storage.messages("jobs").len(), queued, "nothing enqueued");
    assert!(emulator.stats().blob_requests >= 3);

    // Ids the handler generates are fresh UUIDs: no Result can exist, so nothing is read.
    let reads = emulator.stats().blob_requests;
    let unnamed = json!({"jobs": [{"task": "summarize", "input": {"text": "t"}}, {"task": "classify", "input": {"text": "t", "labels": ["a", "b"]}}]});
    let (status, body) = submit(&storage, &handler, &unnamed).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(emulator.stats().blob_requests, reads, "no blob read for generated ids");

    // Storage forgets the app's token (as after a key rotation): the read gets 401, drops the
    // token, fetches a new one and answers; the refused token is not sent again.
    let fetched = emulator.stats().identity_requests;
    emulator.forget_tokens();
    let (status, body) = submit(&storage, &handler, &original).await;
    assert_eq!(status, 202, "{body}");
    assert!(emulator.stats().identity_requests > fetched, "a new token was fetched");
    let queued = storage.messages("jobs").len();

    // No role to read Results: the submit fails naming the role, never enqueues unchecked.
    emulator.set_storage_role_assigned(false);
    let (status, body) =
        submit(&storage, &handler, &json!({"id": "n1", "task": "summarize", "input": {"text": "t"}})).await;
    assert_eq!(status, 502, "{body}");
    assert_error(&body, "upstream_permission_denied");
    assert!(body["error"]["message"].as_str().unwrap().contains("Storage Blob Data Reader"), "{body}");
    assert_eq!(storage.messages("jobs").len(), queued);
}

#[tokio::test]
async fn without_a_storage_connection_the_submit_check_is_skipped_and_said_once() {
    let (_emulator, handler) = started().await;
    let log = handler.output();
    assert_eq!(log.matches("does not check ids against stored Results").count(), 1, "{log}");
    let storage = Storage::default();
    let (status, body) =
        submit(&storage, &handler, &json!({"id": "s1", "task": "summarize", "input": {"text": "t"}})).await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn put_answers_409_for_an_id_stored_or_answered_for_another_input() {
    let (emulator, handler) = started().await;
    let storage = Storage::default();
    let put = |body: String| {
        let storage = &storage;
        let handler = &handler;
        async move {
            let url = "http://localhost:7071/api/jobs/p1";
            let outcome = storage
                .invoke_http(handler, &function("put_job"), "PUT", url, &[("id", "p1")], Some(&body))
                .await
                .unwrap();
            (outcome.status, outcome.body)
        }
    };
    let mine = json!({"task": "summarize", "input": {"text": ARTICLE}}).to_string();
    let theirs = json!({"task": "summarize", "input": {"text": "Not my document."}}).to_string();
    let (status, body) = put(mine.clone()).await;
    assert_eq!(status, 202, "{body}");
    // Stored, not yet run: another input under the id is refused; the same one is accepted.
    let (status, body) = put(theirs.clone()).await;
    assert_eq!(status, 409, "{body}");
    assert_error(&body, "conflict");
    assert_eq!(parse(&storage.blob("inputs/p1.json").unwrap())["input"]["text"], ARTICLE, "the stored job is kept");
    assert_eq!(put(mine.clone()).await.0, 202);
    // Run: the Result answers `mine`; `theirs` is still refused, `mine` gets the Result.
    let message = storage.pop("jobs").unwrap();
    deliver(&storage, &handler, &message, 1).await;
    let calls = emulator.stats().chat_requests;
    assert_eq!(put(theirs).await.0, 409);
    let (status, body) = put(mine).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("succeeded")), "{body}");
    assert_eq!(emulator.stats().chat_requests, calls);
}
