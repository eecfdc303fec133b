//! Token issuers: the App Service managed-identity endpoint (`/msi/token`) and the endpoint the
//! fake `az` calls (`/_emulator/az-token`), answering in exactly the real shapes.

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
use crate::tokens::{self, Principal, SYSTEM_APPID, SYSTEM_OID, audience_of, derived_guid};

/// `GET /msi/token?api-version=2019-08-01&resource=...[&client_id|object_id|principal_id|mi_res_id]`.
pub(crate) async fn msi(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let query = query.unwrap_or_default();
    let failure = {
        let mut inner = shared.lock();
        inner.stats.identity_requests += 1;
        let names = headers.keys().map(|n| n.as_str().to_owned()).collect();
        inner.identity_requests.push(RecordedIdentityRequest { query: pairs(&query), headers: names });
        inner.identity_failure
    };
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
    let Some(audience) = audience_of(&resource) else {
        return json_response(400, invalid_resource(&resource), &[]);
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

/// `GET /_emulator/az-token?tenant=<t>&scope=<s>`: what `az account get-access-token -o json`
/// prints. Without a scope, Azure OpenAI's (older fake `az` scripts pass none).
pub(crate) async fn az_token(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    let tenant = param(&query, "tenant").filter(|t| !t.is_empty()).unwrap_or_else(|| shared.config.cli_tenant.clone());
    let scope = param(&query, "scope").filter(|s| !s.is_empty());
    let audience = match scope.as_deref().map(audience_of) {
        None => tokens::AUDIENCE,
        Some(Some(audience)) => audience,
        Some(None) => return json_response(400, invalid_resource(scope.as_deref().unwrap_or_default()), &[]),
    };
    shared.lock().stats.az_token_requests += 1;
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

/// Entra's answer for a resource it does not know.
fn invalid_resource(resource: &str) -> serde_json::Value {
    json!({"error": "invalid_resource", "error_description": format!("AADSTS500011: The resource principal named {resource} was not found in the tenant.")})
}
