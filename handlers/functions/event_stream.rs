//! A streamed answer (`POST /api/summarize` with `"stream": true` or `Accept: text/event-stream`;
//! any kind with `JobKind::STREAMS`): `200 text/event-stream`, an `event: delta` per piece of
//! text as the model writes it, a `: keep-alive` comment after `STREAM_KEEP_ALIVE_SECONDS`
//! (15 s) without anything else, and a final `event: done` carrying exactly the plain call's
//! 200 body.
//!
//! The answer is held back until its first byte is due: the first text, or the first keep-alive
//! comment when the model (or a long document's map step, or pacing) has been silent for the
//! whole interval. Until then every failure is the plain call's JSON error with its status.
//! After it, a failure is an `event: error` with the error shape, and the stream ends: the
//! status is already on the wire, and without the comment Azure's front end would close a
//! response idle for 230 s. Upstream retries stay allowed until the first text, a comment
//! carries nothing the caller would read twice.
//!
//! The job runs in its own task, so the keep-alive timer runs while the model thinks. The task
//! is aborted when the response body is dropped: a caller that goes away (the host's proxy
//! closes the connection) releases the Azure OpenAI request at once.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::error::{ApiError, envelope_json};
use crate::jobs::JobKind;
use crate::openai::OpenAiClient;

/// Whether the caller asked for a stream; takes `stream` out of `body` (it is not a job field).
/// `"stream"` in the body decides; without it, `Accept: text/event-stream` does.
pub fn wants_stream(headers: &HeaderMap, body: &mut Value) -> Result<bool, ApiError> {
    let asked = match body.as_object_mut().and_then(|object| object.remove("stream")) {
        None => None,
        Some(Value::Bool(stream)) => Some(stream),
        Some(other) => {
            return Err(ApiError::invalid("stream", format!("stream must be true or false (got {other})")));
        }
    };
    let accepts =
        || {
            headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
                |media| media.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("text/event-stream"),
            )
        };
    Ok(asked.unwrap_or_else(accepts))
}

/// Runs `request` streamed and answers as described at the top of this module; `keep_alive` is
/// the longest silence (well under the 230 s after which Azure's front end drops an idle
/// response, and YARP's 240 s activity timeout).
pub async fn run<K: JobKind>(
    client: std::sync::Arc<OpenAiClient>,
    request: K,
    deadline: Instant,
    keep_alive: Duration,
) -> Response {
    let (deltas, mut texts) = mpsc::channel::<String>(64);
    let (done_tx, done) = oneshot::channel();
    let job = tokio::spawn(
        async move {
            let result = request.run_streaming(&client, deadline, &deltas).await;
            drop(deltas);
            // Encoded here: the final event carries exactly what the plain answer's body would.
            let _ = done_tx.send(result.and_then(|answer| {
                serde_json::to_string(&answer)
                    .map_err(|e| ApiError::internal(format!("could not encode the answer: {e}")))
            }));
        }
        .instrument(tracing::Span::current()),
    );
    let job = AbortOnDrop(job);
    let first = match tokio::time::timeout(keep_alive, texts.recv()).await {
        Ok(Some(text)) => delta(&text),
        Ok(None) => match done.await {
            Ok(Err(error)) => return error.into_response(),
            Ok(Ok(answer)) => return stream_response(Events::finished(answer, job, keep_alive)),
            Err(_) => return ApiError::internal("the job stopped without an answer").into_response(),
        },
        // Silent for the whole interval: the 200 goes out now, with a comment.
        Err(_) => keep_alive_comment(),
    };
    stream_response(Events { first: Some(first), texts, done: Some(done), _job: job, keep_alive, finished: false })
}

fn stream_response(events: Events) -> Response {
    let body = futures_util::stream::unfold(events, |mut events| async move {
        let bytes = events.next().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(bytes), events))
    });
    let mut response = Body::from_stream(body).into_response();
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies that buffer by default (nginx) pass events on at once with this.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Aborts the job when the response (or the handler, before it) is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The plain answer's JSON, or the failure.
type Outcome = Result<String, ApiError>;

/// The events still to send.
struct Events {
    /// The first event, already due (a delta or a keep-alive comment).
    first: Option<Bytes>,
    texts: mpsc::Receiver<String>,
    done: Option<oneshot::Receiver<Outcome>>,
    /// Held for its drop.
    _job: AbortOnDrop,
    keep_alive: Duration,
    finished: bool,
}

impl Events {
    /// A stream of the final event only (an answer that had no text to stream before it).
    fn finished(answer: String, job: AbortOnDrop, keep_alive: Duration) -> Self {
        let (_, texts) = mpsc::channel(1);
        let (tx, done) = oneshot::channel();
        let _ = tx.send(Ok(answer));
        Self { first: None, texts, done: Some(done), _job: job, keep_alive, finished: false }
    }

    async fn next(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        match tokio::time::timeout(self.keep_alive, self.texts.recv()).await {
            Ok(Some(text)) => return Some(delta(&text)),
            Err(_) => return Some(keep_alive_comment()),
            Ok(None) => {}
        }
        // The job has dropped its sender: its result follows at once.
        self.finished = true;
        Some(match self.done.take()?.await {
            Ok(Ok(answer)) => event("done", &answer),
            Ok(Err(error)) => {
                tracing::warn!(code = error.code(), "a streamed answer failed after its first event: {error}");
                event("error", &envelope_json(&error.body()))
            }
            Err(_) => {
                let error = ApiError::internal("the job stopped without an answer");
                event("error", &envelope_json(&error.body()))
            }
        })
    }
}

fn keep_alive_comment() -> Bytes {
    Bytes::from_static(b": keep-alive\n\n")
}

fn delta(text: &str) -> Bytes {
    event("delta", &serde_json::json!({ "text": text }).to_string())
}

/// One event; `data` is JSON on one line (serde_json escapes newlines), so one `data:` line.
fn event(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_body_decides_then_the_accept_header() {
        let accept = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
            headers
        };
        let mut body = json!({"text": "t", "stream": true});
        assert!(wants_stream(&HeaderMap::new(), &mut body).unwrap());
        assert_eq!(body, json!({"text": "t"}), "stream is not a job field");
        assert!(!wants_stream(&accept("text/event-stream"), &mut json!({"text": "t", "stream": false})).unwrap());
        assert!(
            wants_stream(&accept("application/json, Text/Event-Stream; q=0.5"), &mut json!({"text": "t"})).unwrap()
        );
        assert!(!wants_stream(&accept("application/json"), &mut json!({"text": "t"})).unwrap());
        let err = wants_stream(&HeaderMap::new(), &mut json!({"text": "t", "stream": 1})).unwrap_err();
        assert_eq!(err.field(), Some("stream"));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_becomes_keep_alive_comments_and_a_late_failure_an_error_event() {
        let (texts_tx, texts) = mpsc::channel(4);
        let (done_tx, done) = oneshot::channel();
        let job = AbortOnDrop(tokio::spawn(async {}));
        let keep_alive = Duration::from_secs(15);
        let mut events =
            Events { first: Some(delta("Hello")), texts, done: Some(done), _job: job, keep_alive, finished: false };
        assert_eq!(events.next().await.unwrap(), "event: delta\ndata: {\"text\":\"Hello\"}\n\n");
        let started = tokio::time::Instant::now();
        assert_eq!(events.next().await.unwrap(), ": keep-alive\n\n");
        assert_eq!(started.elapsed(), keep_alive);
        texts_tx.send(" world".into()).await.unwrap();
        assert_eq!(events.next().await.unwrap(), "event: delta\ndata: {\"text\":\" world\"}\n\n");
        drop(texts_tx);
        let _ = done_tx.send(Err(ApiError::UpstreamUnavailable { message: "cut".into() }));
        let error = events.next().await.unwrap();
        assert_eq!(
            error,
            "event: error\ndata: {\"error\":{\"code\":\"upstream_unavailable\",\"message\":\"cut\"}}\n\n"
        );
        assert!(events.next().await.is_none());
    }
}
