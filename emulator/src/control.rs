//! The control API under `/_emulator/` for out-of-process users (demo, benchmarks): stats,
//! reset, faults, token lifetime, role assignment, identity-endpoint failures and hangs, forgetting
//! issued tokens, request records.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::faults::Faults;
use crate::state::Shared;
use crate::stats::{RecordedRequest, Stats};

type Answer = (StatusCode, Json<Value>);

fn ok() -> Answer {
    (StatusCode::OK, Json(json!({"ok": true})))
}

pub(crate) async fn stats(State(shared): State<Arc<Shared>>) -> Json<Stats> {
    Json(shared.lock().stats.clone())
}

pub(crate) async fn requests(State(shared): State<Arc<Shared>>) -> Json<Vec<RecordedRequest>> {
    Json(shared.lock().requests.clone())
}

pub(crate) async fn reset(State(shared): State<Arc<Shared>>) -> Answer {
    shared.reset_stats();
    ok()
}

pub(crate) async fn faults(State(shared): State<Arc<Shared>>, Json(faults): Json<Faults>) -> Answer {
    shared.set_faults(faults);
    ok()
}

pub(crate) async fn release_streams(State(shared): State<Arc<Shared>>) -> Answer {
    shared.release_streams();
    ok()
}

#[derive(Deserialize)]
pub(crate) struct Lifetime {
    seconds: f64,
}

pub(crate) async fn token_lifetime(State(shared): State<Arc<Shared>>, Json(body): Json<Lifetime>) -> Answer {
    match Duration::try_from_secs_f64(body.seconds) {
        Ok(lifetime) => {
            shared.lock().token_lifetime = lifetime;
            ok()
        }
        Err(e) => {
            (StatusCode::BAD_REQUEST, Json(json!({"error": {"code": "invalid_input", "message": e.to_string()}})))
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct Role {
    assigned: bool,
}

pub(crate) async fn role(State(shared): State<Arc<Shared>>, Json(body): Json<Role>) -> Answer {
    shared.lock().role_assigned = body.assigned;
    ok()
}

#[derive(Deserialize)]
pub(crate) struct IdentityFailure {
    status: Option<u16>,
}

pub(crate) async fn identity_failure(State(shared): State<Arc<Shared>>, Json(body): Json<IdentityFailure>) -> Answer {
    if body.status.is_some_and(|s| !(100..=999).contains(&s)) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"code": "invalid_input", "message": "status must be 100..=999"}})),
        );
    }
    shared.lock().identity_failure = body.status;
    ok()
}

#[derive(Deserialize)]
pub(crate) struct IdentityHang {
    hang: bool,
}

pub(crate) async fn identity_hang(State(shared): State<Arc<Shared>>, Json(body): Json<IdentityHang>) -> Answer {
    shared.lock().identity_hang = body.hang;
    ok()
}

pub(crate) async fn forget_tokens(State(shared): State<Arc<Shared>>) -> Answer {
    shared.lock().tokens.clear();
    ok()
}
