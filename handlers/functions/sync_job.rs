//! The forwarded HTTP functions (`enableForwardingHttpRequest`): the host relays the caller's
//! request to `/api/<route>` as-is and our response back as-is.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::{API_BODY_LIMIT, AppState, JsonBody, event_stream};
use crate::error::ApiError;
use crate::jobs::classify::{ClassifyRequest, ClassifyResponse};
use crate::jobs::summarize::SummarizeRequest;

/// `"stream": true` (or `Accept: text/event-stream`) answers with server-sent events
/// ([`event_stream`]); otherwise one JSON answer.
pub async fn summarize(
    State(app): State<AppState>,
    headers: HeaderMap,
    JsonBody(mut body): JsonBody<API_BODY_LIMIT>,
) -> Result<Response, ApiError> {
    let stream = event_stream::wants_stream(&headers, &mut body)?;
    let request = SummarizeRequest::parse(&body)?;
    if stream {
        return Ok(event_stream::summarize(app.client.clone(), request, app.http_deadline()).await);
    }
    Ok(Json(request.run(&app.client, app.http_deadline()).await?).into_response())
}

pub async fn classify(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<API_BODY_LIMIT>,
) -> Result<Json<ClassifyResponse>, ApiError> {
    let request = ClassifyRequest::parse(&body)?;
    Ok(Json(request.run(&app.client, app.http_deadline()).await?))
}
