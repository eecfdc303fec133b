//! The Functions host's HTTP front door for HTTP-in/HTTP-out functions, in either of its two
//! custom-handler modes (azure-functions-host `DefaultHttpWorkerService.InvokeAsync`):
//!
//! - [`HttpMode::Proxy`] (`enableProxyingHttpRequest`, host 4.10xx): YARP forwards the request
//!   and streams the answer back as the handler writes it (here the request body, a small
//!   JSON document, is read whole first; the answer streams as with YARP). YARP's default
//!   transform copies the headers except hop-by-hop ones and `Host`, adds `X-Forwarded-For`,
//!   `-Proto`, `-Host`; the host sets `X-Azure-Functions-HostVersion`,
//!   `X-Azure-Functions-InvocationId` and `x-ms-invocation-id`. An answer idle for 240 s
//!   (YARP's `ActivityTimeout`) is cut, and a caller that goes away cancels the proxied request.
//! - [`HttpMode::Forward`] (`enableForwardingHttpRequest`): the host rebuilds the request,
//!   sends it with `HttpClient.SendAsync` (which reads the whole answer first) and only then
//!   answers: nothing reaches the caller before the handler has finished.
//!
//! The path (with the `/api` prefix) and the query string reach the handler unchanged in both.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::HOST_VERSION;

/// YARP's `ForwarderRequestConfig.ActivityTimeout` in the host's `DefaultHttpProxyService`.
pub const PROXY_ACTIVITY_TIMEOUT: Duration = Duration::from_secs(240);

/// How the host hands HTTP requests to the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpMode {
    /// `enableProxyingHttpRequest`: streamed both ways (YARP).
    Proxy,
    /// `enableForwardingHttpRequest`: the whole answer is read before the caller gets any of it.
    Forward,
}

#[derive(Clone)]
struct Door {
    handler: String,
    mode: HttpMode,
    client: reqwest::Client,
}

/// A running front door on 127.0.0.1 in front of a handler; stops when dropped.
pub struct FrontDoor {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and `Host`, which neither mode passes on.
const NOT_FORWARDED: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

impl FrontDoor {
    /// Listens on a free 127.0.0.1 port and passes `/api/...` requests to `handler_base_url`
    /// (`http://127.0.0.1:PORT` of the handler) in `mode`.
    pub async fn start(handler_base_url: &str, mode: HttpMode) -> std::io::Result<FrontDoor> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let client = reqwest::Client::builder().no_proxy().build().map_err(std::io::Error::other)?;
        let door = Door { handler: handler_base_url.trim_end_matches('/').to_owned(), mode, client };
        let app = Router::new().fallback(pass).with_state(door);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(FrontDoor { addr, stop: Some(stop), task: Some(task) })
    }

    /// `http://127.0.0.1:PORT`: what a caller would use as the function app's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FrontDoor {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn pass(State(door): State<Door>, request: Request) -> Response {
    let path_and_query = request.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    if !request.uri().path().starts_with("/api/") {
        return (StatusCode::NOT_FOUND, "no function at this route").into_response();
    }
    let invocation = uuid::Uuid::new_v4().to_string();
    let mut headers = HeaderMap::new();
    for (name, value) in request.headers() {
        if !NOT_FORWARDED.contains(&name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    let host = request.headers().get(header::HOST).cloned();
    let set = |headers: &mut HeaderMap, name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set(&mut headers, "x-azure-functions-hostversion", HOST_VERSION);
    set(&mut headers, "x-azure-functions-invocationid", &invocation);
    match door.mode {
        HttpMode::Proxy => {
            set(&mut headers, "x-ms-invocation-id", &invocation);
            set(&mut headers, "x-forwarded-for", "127.0.0.1");
            set(&mut headers, "x-forwarded-proto", "http");
            if let Some(host) = host.and_then(|h| h.to_str().ok().map(str::to_owned)) {
                set(&mut headers, "x-forwarded-host", &host);
            }
        }
        HttpMode::Forward => {
            set(&mut headers, "user-agent", &format!("Azure-Functions-Host/{HOST_VERSION}"));
        }
    }
    let method = request.method().clone();
    let body = match axum::body::to_bytes(request.into_body(), 64 * 1024 * 1024).await {
        Ok(body) => body,
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response(),
    };
    let sent = door
        .client
        .request(method, format!("{}{path_and_query}", door.handler))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let upstream = match sent {
        Ok(upstream) => upstream,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("the handler did not answer: {e}")).into_response(),
    };
    let status = upstream.status();
    let mut answer_headers = HeaderMap::new();
    for (name, value) in upstream.headers() {
        if !NOT_FORWARDED.contains(&name.as_str()) {
            answer_headers.append(name.clone(), value.clone());
        }
    }
    let body = match door.mode {
        HttpMode::Forward => match upstream.bytes().await {
            Ok(bytes) => Body::from(bytes),
            Err(e) => {
                return (StatusCode::BAD_GATEWAY, format!("reading the handler's answer failed: {e}")).into_response();
            }
        },
        HttpMode::Proxy => Body::from_stream(futures_util::stream::unfold(Some(upstream), |upstream| async move {
            let mut upstream = upstream?;
            match tokio::time::timeout(PROXY_ACTIVITY_TIMEOUT, upstream.chunk()).await {
                Ok(Ok(Some(chunk))) => Some((Ok::<Bytes, std::io::Error>(chunk), Some(upstream))),
                Ok(Ok(None)) => None,
                Ok(Err(e)) => Some((Err(std::io::Error::other(e)), None)),
                Err(_) => Some((Err(std::io::Error::other("no data for 240 s (YARP ActivityTimeout)")), None)),
            }
        })),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = answer_headers;
    response
}
