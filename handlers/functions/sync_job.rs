//! The forwarded HTTP functions (`enableForwardingHttpRequest`), one per job kind
//! (`POST /api/<task>`): the host relays the caller's request as-is and our response back
//! as-is. One generic handler serves every kind of the registry (`jobs::job_kinds!`).

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::body::{API_BODY_LIMIT, JsonBody};
use super::event_stream;
use super::state::AppState;
use crate::error::ApiError;
use crate::jobs::JobKind;

/// `POST /api/<TASK>`. A kind that streams ([`JobKind::STREAMS`]) answers with server-sent
/// events when asked (`"stream": true`, or `Accept: text/event-stream`; see [`event_stream`]);
/// otherwise, and for every other kind, one JSON answer (`stream` is then an unknown field).
pub async fn run<K: JobKind>(
    State(app): State<AppState>,
    headers: HeaderMap,
    JsonBody(mut body): JsonBody<API_BODY_LIMIT>,
) -> Result<Response, ApiError> {
    let stream = K::STREAMS && event_stream::wants_stream(&headers, &mut body)?;
    let request = K::parse(&body)?;
    if stream {
        let keep_alive = app.settings.stream_keep_alive;
        return Ok(event_stream::run(app.client.clone(), request, app.http_deadline(), keep_alive).await);
    }
    Ok(Json(request.run(&app.client, app.http_deadline()).await?).into_response())
}
