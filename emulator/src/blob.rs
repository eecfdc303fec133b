//! Azure Blob Storage's data plane, the two operations the handler needs: Get Blob and Put Blob
//! (block blobs), path-style at `/blob/{container}/{name}` (the emulator's blob service URI is
//! `http://127.0.0.1:PORT/blob/`).
//!
//! The account behaves like the project's Bicep makes it: shared-key access disabled, so every
//! request needs a Microsoft Entra bearer token for `https://storage.azure.com` and an
//! `x-ms-version`; the containers are `results`, `inputs` and `claims`. Checks and answers, in the
//! service's order (error bodies are the service's XML, `<Error><Code>..</Code><Message>..
//! RequestId:..\nTime:..</Message></Error>`, with the code also in `x-ms-error-code`):
//! - no `Authorization`: 401 `NoAuthenticationInformation`;
//! - an unknown, expired or wrong-audience token: 401 `InvalidAuthenticationInfo` (plus the
//!   reason line the service adds, e.g. "Audience validation failed. Audience did not match.")
//!   with `WWW-Authenticate: Bearer authorization_uri=... resource_id=https://storage.azure.com`;
//! - no `x-ms-version`: 400 `MissingRequiredHeader`;
//! - no data role: 403 `AuthorizationPermissionMismatch`;
//! - an unknown container: 404 `ContainerNotFound`; a missing blob: 404 `BlobNotFound`;
//! - Put Blob without `x-ms-blob-type: BlockBlob`: 400 `MissingRequiredHeader`;
//! - Put Blob with `If-None-Match: *` (create only) of a blob that exists: 409
//!   `BlobAlreadyExists` "The specified blob already exists." (the service's answer to a
//!   conditional create; 412 `ConditionNotMet` is for an ETag that does not match, which the
//!   emulator does not model). The check and the write are one step under the lock, so of two
//!   racing creates exactly one gets 201.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::clock::utc_now_format;
use crate::state::Shared;
use crate::tokens::{self, Invalid, STORAGE_AUDIENCE};

/// The containers the Bicep creates (besides the deployment package's).
pub(crate) const CONTAINERS: [&str; 3] = ["results", "inputs", "claims"];

pub(crate) async fn get_blob(
    State(shared): State<Arc<Shared>>,
    Path((container, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admit(&shared, &headers, &container) {
        return refused;
    }
    let blob = shared.lock().blobs.get(&format!("{container}/{name}")).cloned();
    match blob {
        Some(content) => {
            let mut response = (StatusCode::OK, content).into_response();
            let headers = response.headers_mut();
            headers.insert("content-type", HeaderValue::from_static("application/octet-stream"));
            headers.insert("x-ms-blob-type", HeaderValue::from_static("BlockBlob"));
            common_headers(headers);
            response
        }
        None => error(404, "BlobNotFound", "The specified blob does not exist.", &[]),
    }
}

pub(crate) async fn put_blob(
    State(shared): State<Arc<Shared>>,
    Path((container, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = admit(&shared, &headers, &container) {
        return refused;
    }
    if headers.get("x-ms-blob-type").and_then(|v| v.to_str().ok()) != Some("BlockBlob") {
        return missing_header("x-ms-blob-type");
    }
    let create_only = headers.get("if-none-match").and_then(|v| v.to_str().ok()).map(str::trim) == Some("*");
    {
        let mut state = shared.lock();
        let key = format!("{container}/{name}");
        if create_only && state.blobs.contains_key(&key) {
            drop(state);
            return error(409, "BlobAlreadyExists", "The specified blob already exists.", &[]);
        }
        state.blobs.insert(key, body.to_vec());
    }
    let mut response = StatusCode::CREATED.into_response();
    common_headers(response.headers_mut());
    response
}

/// Authentication, version, authorization and container checks shared by both operations: the
/// refusal, if any.
fn admit(shared: &Shared, headers: &HeaderMap, container: &str) -> Option<Response> {
    shared.lock().stats.blob_requests += 1;
    let Some(authorization) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Some(error(
            401,
            "NoAuthenticationInformation",
            "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.",
            &[www_authenticate(shared)],
        ));
    };
    let token = authorization
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or_default();
    let reason = match tokens::validate(shared, token) {
        Err(Invalid::Unknown) => Some("Signature validation failed. Signature verification failed."),
        Err(Invalid::Expired) => Some("Lifetime validation failed. The token is expired."),
        Ok(claims) if claims.aud != STORAGE_AUDIENCE => Some("Audience validation failed. Audience did not match."),
        Ok(_) => None,
    };
    if let Some(reason) = reason {
        let message = "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.";
        let mut response = error(401, "InvalidAuthenticationInfo", message, &[www_authenticate(shared)]);
        // The service appends the reason after the RequestId/Time lines as a separate element.
        *response.body_mut() = xml_body("InvalidAuthenticationInfo", message, Some(reason)).into();
        return Some(response);
    }
    if !headers.contains_key("x-ms-version") {
        return Some(missing_header("x-ms-version"));
    }
    if !shared.lock().storage_role_assigned {
        return Some(error(
            403,
            "AuthorizationPermissionMismatch",
            "This request is not authorized to perform this operation using this permission.",
            &[],
        ));
    }
    if !CONTAINERS.contains(&container) {
        return Some(error(404, "ContainerNotFound", "The specified container does not exist.", &[]));
    }
    None
}

fn www_authenticate(shared: &Shared) -> (&'static str, String) {
    let tenant = &shared.config.resource_tenant;
    (
        "www-authenticate",
        format!(
            "Bearer authorization_uri=https://login.microsoftonline.com/{tenant}/oauth2/authorize resource_id={STORAGE_AUDIENCE}"
        ),
    )
}

fn missing_header(name: &str) -> Response {
    let mut response =
        error(400, "MissingRequiredHeader", "An HTTP header that's mandatory for this request is not specified.", &[]);
    let body =
        xml_body("MissingRequiredHeader", "An HTTP header that's mandatory for this request is not specified.", None)
            .replace("</Error>", &format!("<HeaderName>{name}</HeaderName></Error>"));
    *response.body_mut() = body.into();
    response
}

fn xml_body(code: &str, message: &str, detail: Option<&str>) -> String {
    let request_id = uuid::Uuid::new_v4();
    let time = utc_now_format(SystemTime::now());
    let detail =
        detail.map(|d| format!("<AuthenticationErrorDetail>{d}</AuthenticationErrorDetail>")).unwrap_or_default();
    format!(
        "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}\nRequestId:{request_id}\nTime:{time}</Message>{detail}</Error>"
    )
}

fn error(status: u16, code: &'static str, message: &str, extra: &[(&'static str, String)]) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, xml_body(code, message, None)).into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/xml"));
    headers.insert("x-ms-error-code", HeaderValue::from_static(code));
    common_headers(headers);
    for (name, value) in extra {
        if let Ok(value) = HeaderValue::try_from(value.as_str()) {
            headers.insert(*name, value);
        }
    }
    response
}

fn common_headers(headers: &mut HeaderMap) {
    if let Ok(id) = HeaderValue::try_from(uuid::Uuid::new_v4().to_string()) {
        headers.insert("x-ms-request-id", id);
    }
    headers.insert("x-ms-version", HeaderValue::from_static("2025-11-05"));
    headers.insert("server", HeaderValue::from_static("Windows-Azure-Blob/1.0 Microsoft-HTTPAPI/2.0"));
}
