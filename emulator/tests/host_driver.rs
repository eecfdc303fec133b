//! The Functions-host driver: payload encoding as the host does it, and process handling
//! (start-up failure, readiness, forwarding with host headers, SIGTERM) with stand-in handlers.

use std::path::Path;
use std::time::Duration;

use emulator::host::{HandlerProcess, http_invocation, queue_invocation};
use serde_json::{Value, json};

#[test]
fn a_queue_message_is_encoded_twice_and_merged_into_metadata() {
    let message = r#"{"id":"job-7","task":"summarize","input":{"text":"hi"},"attempt":2}"#;
    let (data, metadata) = queue_invocation(
        "job",
        message,
        3,
        "3f2a0c1e-0000-4000-8000-000000000001",
        &[("existing_result", None), ("blob", Some("{\"a\":1}"))],
    );
    let once: String = serde_json::from_value(data["job"].clone()).unwrap();
    assert!(once.starts_with('"'), "the wire holds a JSON string literal: {once}");
    let twice: String = serde_json::from_str(&once).unwrap();
    assert_eq!(twice, message);
    // A missing blob: the host serialises null, so the wire holds the string `null`.
    assert_eq!(data["existing_result"], Value::String("null".into()));
    let blob: String = serde_json::from_str(data["blob"].as_str().unwrap()).unwrap();
    assert_eq!(blob, "{\"a\":1}");

    assert_eq!(metadata["DequeueCount"], "3");
    assert_eq!(metadata["PopReceipt"].as_str().unwrap().chars().next(), Some('"'));
    assert!(metadata["InsertionTime"].as_str().unwrap().ends_with("+00:00"));
    assert!(metadata["ExpirationTime"].is_string() && metadata["NextVisibleTime"].is_string());
    // Message properties overwrite same-named keys (case-insensitive), encoded the same way.
    assert_eq!(metadata["Id"], "\"job-7\"");
    assert!(metadata.get("id").is_none());
    assert_eq!(metadata["task"], "\"summarize\"");
    assert_eq!(metadata["attempt"], "2");
    assert_eq!(metadata["input"], json!({"text": "hi"}));
    let sys = &metadata["sys"];
    assert!(
        sys["UtcNow"].as_str().unwrap().ends_with('Z')
            && sys["RandGuid"].is_string()
            && sys.get("MethodName").is_some()
    );

    let (_, metadata) = queue_invocation("job", "plain text", 1, "m-1", &[]);
    assert_eq!(metadata["Id"], "\"m-1\"");
}

#[test]
fn an_http_payload_has_the_request_object_and_route_params() {
    let (data, metadata) = http_invocation(
        "get",
        "http://localhost:7071/api/jobs/a1?verbose=true",
        &[("id", "a1")],
        None,
        &[("result", Some("{}"))],
    );
    let req = &data["req"];
    assert_eq!(req["Method"], "GET");
    assert_eq!(req["Url"], "http://localhost:7071/api/jobs/a1?verbose=true");
    assert_eq!(req["Query"], json!({"verbose": "true"}));
    assert_eq!(req["Params"], json!({"id": "a1"}));
    assert_eq!(req["Headers"]["Host"], json!(["localhost:7071"]));
    assert_eq!(req["Identities"], json!([]));
    assert!(req.get("Body").is_none());
    assert_eq!(data["result"], "\"{}\"");
    assert_eq!(metadata["id"], "\"a1\"");
    assert_eq!(metadata["Query"], json!({"verbose": "true"}));

    assert_eq!(metadata["verbose"], "\"true\"", "each query parameter is binding data");

    let (data, metadata) =
        http_invocation("POST", "http://localhost:7071/api/jobs", &[], Some(r#"{"jobs":[{"id":"a"}]}"#), &[]);
    assert_eq!(data["req"]["Body"], r#"{"jobs":[{"id":"a"}]}"#);
    assert_eq!(data["req"]["Headers"]["Content-Type"], json!(["application/json"]));
    assert!(metadata.get("jobs").is_none(), "arrays are not binding data: a batch is not sent twice");

    // A JSON object body's other top-level members are binding data; route parameters win.
    let body = r#"{"id":"b","task":"summarize","input":{"text":"t"},"n":2,"ok":true,"none":null}"#;
    let (_, metadata) = http_invocation("PUT", "http://localhost:7071/api/jobs/a", &[("id", "a")], Some(body), &[]);
    assert_eq!(metadata["id"], "\"a\"");
    assert_eq!(metadata["task"], "\"summarize\"");
    assert_eq!(metadata["input"], json!({"text": "t"}));
    assert_eq!((&metadata["n"], &metadata["ok"]), (&json!("\"2\""), &json!("\"True\"")));
    assert!(metadata.get("none").is_none());
    assert!(metadata["Headers"].is_object() && metadata["Query"].is_object());
}

#[tokio::test]
async fn a_handler_that_exits_at_start_up_returns_its_output() {
    let dir = std::env::temp_dir().join(format!("emulator-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("failing-handler");
    std::fs::write(&bin, "#!/bin/sh\necho \"configuration error: AZURE_OPENAI_ENDPOINT is missing (port $FUNCTIONS_CUSTOMHANDLER_PORT)\" >&2\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = HandlerProcess::spawn(&bin, &[]).await.err().expect("start-up fails");
    assert!(err.contains("configuration error: AZURE_OPENAI_ENDPOINT is missing (port "), "{err}");
    assert!(err.contains("exited"), "{err}");
    let err = HandlerProcess::spawn(Path::new("/nonexistent/handler"), &[]).await.err().unwrap();
    assert!(err.contains("could not start"), "{err}");
}

/// A stand-in handler in Python: echoes the request line, host headers and env, exits 0 on SIGTERM.
const PY_HANDLER: &str = r#"
import http.server, json, os, signal, sys
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n).decode() if n else ""
        out = json.dumps({"method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                          "body": body, "worker": os.environ.get("FUNCTIONS_CUSTOMHANDLER_WORKER_ID"),
                          "demo": os.environ.get("DEMO_VAR"), "home_removed": "HOME" not in os.environ}).encode()
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out))); self.end_headers(); self.wfile.write(out)
    do_GET = do_POST = answer
    def log_message(self, *a): pass
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
print("listening", flush=True)
http.server.HTTPServer(("127.0.0.1", int(os.environ["FUNCTIONS_CUSTOMHANDLER_PORT"])), H).serve_forever()
"#;

#[tokio::test]
async fn a_running_handler_gets_host_headers_payloads_and_sigterm() {
    if std::process::Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 missing: skipped");
        return;
    }
    let dir = std::env::temp_dir().join(format!("emulator-host-py-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("py-handler");
    std::fs::write(&bin, format!("#!/usr/bin/env python3\n{PY_HANDLER}")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut handler = HandlerProcess::spawn(&bin, &[("DEMO_VAR", Some("x")), ("HOME", None)]).await.unwrap();
    assert!(handler.pid() > 0);
    let response = handler
        .forward(
            reqwest::Method::POST,
            "/api/summarize?a=1",
            &[("content-type", "application/json")],
            Some(b"{}".to_vec()),
        )
        .await;
    let echo: Value = response.json().await.unwrap();
    assert_eq!(
        (echo["method"].as_str(), echo["path"].as_str(), echo["body"].as_str()),
        (Some("POST"), Some("/api/summarize?a=1"), Some("{}"))
    );
    assert_eq!(echo["headers"]["x-azure-functions-hostversion"], "4.1037.0.0");
    assert_eq!(echo["headers"]["user-agent"], "Azure-Functions-Host/4.1037.0.0");
    assert_eq!(echo["headers"]["x-azure-functions-invocationid"].as_str().unwrap().len(), 36);
    assert!(echo["worker"].is_string());
    assert_eq!((echo["demo"].as_str(), echo["home_removed"].as_bool()), (Some("x"), Some(true)));

    let (data, metadata) = queue_invocation("job", "{\"id\":\"a\"}", 1, "m", &[]);
    let echo: Value = handler.invoke("process_job", data, metadata).await.json().await.unwrap();
    assert_eq!(echo["path"], "/process_job");
    let payload: Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
    assert_eq!(payload["Metadata"]["sys"]["MethodName"], "process_job");
    assert_eq!(payload["Data"]["job"], "\"{\\\"id\\\":\\\"a\\\"}\"");

    let status = handler.terminate(Duration::from_secs(5)).await.expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(handler.output().contains("listening"));
}
