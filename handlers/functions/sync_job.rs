//! The forwarded HTTP functions (`enableForwardingHttpRequest`), one per job kind
//! (`POST /api/<task>`): the host relays the caller's request as-is and our response back
//! as-is. One generic handler serves every kind of the registry (`jobs::job_kinds!`).

use axum::Json;
use axum::extract::State;

use super::body::{API_BODY_LIMIT, JsonBody};
use super::state::AppState;
use crate::error::ApiError;
use crate::jobs::JobKind;

pub async fn run<K: JobKind>(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<API_BODY_LIMIT>,
) -> Result<Json<K::Output>, ApiError> {
    let request = K::parse(&body)?;
    Ok(Json(request.run(&app.client, app.http_deadline()).await?))
}
