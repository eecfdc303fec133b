//! Token issuers: the App Service managed-identity endpoint (`/msi/token`) and the endpoint the
//! fake `az` calls (`/_emulator/az-token`), answering in exactly the real shapes, for Azure
//! OpenAI's audience and Azure Monitor's. The managed-identity endpoint can be made to fail
//! with a status or to hang (never answer), as a real one does in an outage.

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::json;
use std::sync::Arc;

use crate::clock::{az_format, unix_secs};
use crate::errors::json_response;
use crate::query::{pairs, param};
use crate::state::Shared;
use crate::stats::RecordedIdentityRequest;
use crate::tokens::{self, AUDIENCE, Principal, SYSTEM_APPID, SYSTEM_OID, derived_guid};

/// `AADSTS500011` for a resource the emulator does not know.
fn unknown_resource(resource: &str) -> Response {
    let body = json!({"error": "invalid_resource", "error_description": format!("AADSTS500011: The resource principal named {resource} was not found in the tenant.")});
    json_response(400, body, &[])
}

/// `GET /msi/token?api-version=2019-08-01&resource=...[&client_id|object_id|principal_id|mi_res_id]`.
pub(crate) async fn msi(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let query = query.unwrap_or_default();
    let (failure, hang) = {
        let mut inner = shared.lock();
        inner.stats.identity_requests += 1;
        let names = headers.keys().map(|n| n.as_str().to_owned()).collect();
        inner.identity_requests.push(RecordedIdentityRequest { query: pairs(&query), headers: names });
        (inner.identity_failure, inner.identity_hang)
    };
    if hang {
        // An endpoint that accepted the connection and never answers.
        std::future::pending::<()>().await;
    }
    if let Some(status) = failure {
        let body = json!({"error": {"code": "EmulatedFailure", "message": format!("The identity endpoint is failing with {status} (injected).")}});
        return json_response(status, body, &[]);
    }
    let secret = headers.get("x-identity-header").and_then(|v| v.to_str().ok());
    if secret != Some(shared.config.identity_header.as_str()) {
        let body = json!({"error": {"code": "UnauthorizedRequest", "message": "The X-IDENTITY-HEADER header is missing or wrong."}});
        return json_response(401, body, &[]);
    }
    if param(&query, "api-version").is_none() {
        let body = json!({"error": "invalid_request", "error_description": "The api-version parameter is required."});
        return json_response(400, body, &[]);
    }
    let resource = param(&query, "resource").unwrap_or_default();
    // A scope (`.../.default`) is not a resource: the App Service protocol wants the resource.
    let Some(audience) = tokens::audience_of(&resource).filter(|_| !resource.ends_with("/.default")) else {
        return unknown_resource(&resource);
    };
    let (oid, appid) = if let Some(client_id) = param(&query, "client_id") {
        (derived_guid(&format!("oid:{client_id}")), client_id)
    } else if let Some(oid) = param(&query, "object_id").or_else(|| param(&query, "principal_id")) {
        let appid = derived_guid(&format!("appid:{oid}"));
        (oid, appid)
    } else if let Some(id) = param(&query, "mi_res_id").or_else(|| param(&query, "msi_res_id")) {
        (derived_guid(&format!("oid:{id}")), derived_guid(&format!("appid:{id}")))
    } else {
        (SYSTEM_OID.to_owned(), SYSTEM_APPID.to_owned())
    };
    let tenant = shared.config.resource_tenant.clone();
    let issued = tokens::issue(&shared, &Principal::App { oid, appid: appid.clone() }, &tenant, audience);
    let body = json!({
        "access_token": issued.token,
        "expires_on": unix_secs(issued.exp).to_string(),
        "resource": audience,
        "token_type": "Bearer",
        "client_id": appid,
        "expires_in": issued.lifetime.as_secs().to_string(),
    });
    json_response(200, body, &[])
}

/// `GET /_emulator/az-token?tenant=<t>&resource=<r>`: what `az account get-access-token -o json`
/// prints (`resource` is the `--scope` or `--resource` given to `az`; Azure OpenAI's by default).
pub(crate) async fn az_token(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    let tenant = param(&query, "tenant").filter(|t| !t.is_empty()).unwrap_or_else(|| shared.config.cli_tenant.clone());
    shared.lock().stats.az_token_requests += 1;
    let resource = param(&query, "resource").filter(|r| !r.is_empty()).unwrap_or_else(|| AUDIENCE.to_owned());
    let Some(audience) = tokens::audience_of(&resource) else {
        return unknown_resource(&resource);
    };
    let issued = tokens::issue(&shared, &Principal::User, &tenant, audience);
    // `expiresOn` is local time in the real CLI; the emulator's clock is UTC.
    let expires_on = unix_secs(issued.exp);
    let body = json!({
        "accessToken": issued.token,
        "expiresOn": az_format(issued.exp),
        "expires_on": expires_on,
        "subscription": "00000000-0000-0000-0000-000000000000",
        "tenant": tenant,
        "tokenType": "Bearer",
    });
    json_response(200, body, &[])
}
