//! The panic boundary: a panic while serving one request becomes that request's 500
//! `internal` answer and one ERROR log line; the process and every other in-flight invocation
//! carry on (a queue invocation answered 500 is redelivered by the host).
//!
//! Release builds unwind for this (`panic = "unwind"` in Cargo.toml): with `abort`, one panic
//! killed every in-flight invocation and their jobs got no Result. The cost, measured, is in
//! docs/reliability.md.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Middleware: runs the rest of the stack, turning a panic into a 500 `internal` answer.
pub async fn catch_panics(request: Request, next: Next) -> Response {
    match CatchUnwind(Box::pin(next.run(request))).await {
        Ok(response) => response,
        Err(panic) => {
            // The message comes from our own code, but may quote a value: escaped and bounded.
            let what = crate::echo::echo_n(panic_message(&*panic), 300);
            tracing::error!(panic = %what, "a request panicked (a bug): answered 500 internal; other requests are unaffected");
            ApiError::internal(
                "the handler failed unexpectedly (a bug) while serving this request; it was logged, and other requests are unaffected. Retry.",
            )
            .into_response()
        }
    }
}

/// A future whose panics, while polled, become `Err` (std's `catch_unwind` for futures).
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.get_mut().0.as_mut();
        // Unwind safety: a panicking request's state is dropped with it; shared state is
        // behind locks that recover from poisoning (`unwrap_or_else(into_inner)`).
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::Router;
    use axum::routing::get;
    use tokio::sync::Notify;

    use super::*;

    async fn boom() -> &'static str {
        panic!("boom at {}", "the test")
    }

    /// Issue 12, item 2: a panic in one request answers 500 and leaves a concurrent request
    /// (and the server) running.
    #[tokio::test]
    async fn a_panic_answers_500_and_spares_the_others() {
        let release = Arc::new(Notify::new());
        let waiting = release.clone();
        let app = Router::new()
            .route("/panic", get(boom))
            .route(
                "/slow",
                get(move || async move {
                    waiting.notified().await;
                    "done"
                }),
            )
            .layer(axum::middleware::from_fn(catch_panics));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        let slow = tokio::spawn(client.get(format!("{base}/slow")).send());

        let answer = client.get(format!("{base}/panic")).send().await.unwrap();
        assert_eq!(answer.status(), 500);
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "internal", "{body}");
        assert!(!body.to_string().contains("boom"), "the panic message stays in the log: {body}");

        release.notify_one();
        let slow = slow.await.unwrap().unwrap();
        assert_eq!((slow.status().as_u16(), slow.text().await.unwrap().as_str()), (200, "done"));
        let again = client.get(format!("{base}/panic")).send().await.unwrap();
        assert_eq!(again.status(), 500, "the server still answers after a panic");
    }
}
