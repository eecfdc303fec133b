//! The forwarded HTTP functions (`enableForwardingHttpRequest`): the host relays the caller's
//! request to `/api/<route>` as-is and our response back as-is.

use axum::Json;
use axum::extract::State;

use super::{API_BODY_LIMIT, AppState, JsonBody};
use crate::error::ApiError;
use crate::jobs::classify::{ClassifyRequest, ClassifyResponse};
use crate::jobs::summarize::{SummarizeRequest, SummarizeResponse};

pub async fn summarize(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<API_BODY_LIMIT>,
) -> Result<Json<SummarizeResponse>, ApiError> {
    let request = SummarizeRequest::parse(&body)?;
    Ok(Json(request.run(&app.client, app.http_deadline()).await?))
}

pub async fn classify(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<API_BODY_LIMIT>,
) -> Result<Json<ClassifyResponse>, ApiError> {
    let request = ClassifyRequest::parse(&body)?;
    Ok(Json(request.run(&app.client, app.http_deadline()).await?))
}
