//! The accept loop: HTTP/1.1 (what the Functions host speaks to a custom handler) with a
//! header read timeout, so a peer that sends half a request (slowloris) is cut off instead of
//! holding a connection forever; the body's own timeout is in `body.rs`.
//! Graceful: on shutdown, stop accepting and let in-flight requests finish.
//!
//! hyper's header timer also runs while a kept-alive connection is idle, so an idle connection
//! is closed after the same time; HTTP clients (the host's included) expect servers to close
//! idle connections and open a new one.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// How long a peer may take to send a request's headers, then its body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` resolves, then waits for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(read_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait, rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Issue 12, item 9: a peer that sends half a request's headers (slowloris) is cut off
    /// after the read timeout; a whole request is still served.
    #[tokio::test]
    async fn half_sent_headers_are_cut_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "ok" }));
        tokio::spawn(serve(listener, app, Duration::from_millis(300), std::future::pending()));

        let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
        slow.write_all(b"POST /process_job HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        // Closed by the server (a test-side bound only so that a failure does not hang).
        let read = tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the half-sent request was not cut off");
        assert!(started.elapsed() < Duration::from_secs(20));

        let mut whole = tokio::net::TcpStream::connect(address).await.unwrap();
        whole.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        whole.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
    }

    /// A body that stops half way answers 408 `request_timeout`.
    #[tokio::test]
    async fn a_stalled_body_times_out() {
        let first = futures_stream();
        let body = axum::body::Body::from_stream(first);
        let error = super::super::body::read_body(body, 1024, None, Duration::from_millis(200)).await.unwrap_err();
        assert_eq!((error.code(), error.status().as_u16()), ("request_timeout", 408));
    }

    /// One chunk, then nothing, forever.
    fn futures_stream() -> impl futures_core::Stream<Item = Result<axum::body::Bytes, std::io::Error>> {
        struct Stalled(bool);
        impl futures_core::Stream for Stalled {
            type Item = Result<axum::body::Bytes, std::io::Error>;
            fn poll_next(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Self::Item>> {
                if std::mem::replace(&mut self.0, true) {
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(Some(Ok(axum::body::Bytes::from_static(b"{\"Data\":"))))
                }
            }
        }
        Stalled(false)
    }
}
