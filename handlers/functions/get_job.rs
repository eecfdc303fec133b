//! `get_job` (GET /api/jobs/{id}): returns the stored Result read through the
//! `results/{id}.json` blob input binding. An HTTP trigger in payload mode (it has other
//! bindings), so the request and response travel inside invocations.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::body::RawBody;
use super::state::AppState;
use crate::error::{ApiError, envelope_json};
use crate::host::Invocation;
use crate::host::InvocationResponse;
use crate::jobs::is_job_id;

pub async fn get_job(State(_app): State<AppState>, RawBody(body): RawBody) -> Response {
    let (invocation, request) =
        match Invocation::parse(&body).and_then(|mut inv| inv.take_http_trigger("req").map(|req| (inv, req))) {
            Ok(parts) => parts,
            Err(e) => return e.into_response(),
        };
    let mut response = InvocationResponse::default();
    let id = request.param("id").unwrap_or_default();
    let stored = invocation.blob_text("result");
    let (status, body) = if !is_job_id(&id) {
        let error = ApiError::invalid(
            "id",
            format!("`{}` is not a job id (1..=128 of letters, digits, `-`, `_`, `.`)", crate::echo::echo(&id)),
        );
        (error.status().as_u16(), envelope_json(&error.body()))
    } else {
        match stored.map(|text| serde_json::from_str::<Value>(&text).map(|v| (text, v))) {
            Some(Ok((text, Value::Object(_)))) => (200, text),
            Some(_) => {
                let error = ApiError::internal(format!("the stored Result of job {id} is not a JSON document"));
                (500, envelope_json(&error.body()))
            }
            None => {
                let error = ApiError::NotFound {
                    message: format!("no Result for job `{id}` yet: it is queued or running, or the id is unknown"),
                };
                (404, envelope_json(&error.body()))
            }
        }
    };
    response.http_response(status, body);
    response.into_response()
}
