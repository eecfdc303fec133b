//! Token issuing over real HTTP: the App Service managed-identity protocol (system- and
//! user-assigned, header and resource checks, injected failures) and the `az` token shape.

use emulator::{Emulator, EmulatorConfig, decode_claims};
use serde_json::Value;

mod common;
use common::client;

const RESOURCE: &str = "resource=https%3A%2F%2Fcognitiveservices.azure.com";

async fn msi(emulator: &Emulator, query: &str, header: Option<&str>) -> (u16, Value) {
    let mut request = client().get(format!("{}?{query}", emulator.identity_endpoint())).header("metadata", "true");
    if let Some(header) = header {
        request = request.header("x-identity-header", header);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn system_and_user_assigned_tokens_have_the_app_service_shape() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let header = emulator.identity_header();
    let (status, body) = msi(&emulator, &format!("api-version=2019-08-01&{RESOURCE}"), Some(&header)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resource"], "https://cognitiveservices.azure.com");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["client_id"], "5a1f0c5e-0000-4000-8000-0000000c11d0");
    let expires_on: u64 = body["expires_on"].as_str().expect("expires_on is a string").parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!((now + 3590..=now + 3601).contains(&expires_on));
    assert_eq!(body["expires_in"], "3600");
    let token = body["access_token"].as_str().unwrap();
    let claims = decode_claims(token).unwrap();
    assert_eq!(claims["aud"], "https://cognitiveservices.azure.com");
    assert_eq!(claims["oid"], "5a1f0c5e-0000-4000-8000-00000000a11d");
    assert_eq!(claims["idtyp"], "app");
    assert_eq!(claims["tid"], "11111111-1111-1111-1111-111111111111");
    assert_eq!(claims["iss"], "https://sts.windows.net/11111111-1111-1111-1111-111111111111/");
    assert_eq!(claims["exp"].as_u64(), Some(expires_on));

    let (_, again) = msi(&emulator, &format!("api-version=2019-08-01&{RESOURCE}"), Some(&header)).await;
    assert_ne!(again["access_token"], body["access_token"], "tokens are unique per issue");

    let client_id = "0f6c3a52-9b9e-4c1a-8f43-2a6e1f0c9d11";
    let (status, body) =
        msi(&emulator, &format!("api-version=2019-08-01&{RESOURCE}&client_id={client_id}"), Some(&header)).await;
    assert_eq!((status, body["client_id"].as_str()), (200, Some(client_id)));
    let claims = decode_claims(body["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(claims["appid"], client_id);
    let (_, again) =
        msi(&emulator, &format!("api-version=2019-08-01&{RESOURCE}&client_id={client_id}"), Some(&header)).await;
    assert_eq!(decode_claims(again["access_token"].as_str().unwrap()).unwrap()["oid"], claims["oid"], "a stable oid");
    assert_ne!(claims["oid"], "5a1f0c5e-0000-4000-8000-00000000a11d");

    let recorded = emulator.identity_requests();
    assert_eq!(recorded.len(), 4);
    assert!(recorded[0].query.contains(&("resource".into(), "https://cognitiveservices.azure.com".into())));
    assert!(
        recorded[0].headers.contains(&"x-identity-header".to_owned())
            && recorded[0].headers.contains(&"metadata".to_owned())
    );
    assert!(recorded[2].query.iter().any(|(k, v)| k == "client_id" && v == client_id));
}

#[tokio::test]
async fn wrong_header_wrong_resource_and_injected_failures_are_json_errors() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let header = emulator.identity_header();
    let good = format!("api-version=2019-08-01&{RESOURCE}");
    assert_eq!(msi(&emulator, &good, None).await.0, 401);
    assert_eq!(msi(&emulator, &good, Some("wrong")).await.0, 401);
    assert_eq!(msi(&emulator, "api-version=2019-08-01&resource=https://vault.azure.net", Some(&header)).await.0, 400);
    emulator.set_identity_failure(Some(500));
    let (status, body) = msi(&emulator, &good, Some(&header)).await;
    assert_eq!(status, 500);
    assert!(body["error"]["message"].is_string());
    emulator.set_identity_failure(None);
    assert_eq!(msi(&emulator, &good, Some(&header)).await.0, 200);
    assert_eq!(emulator.stats().identity_requests, 5);
}

#[tokio::test]
async fn az_tokens_have_the_cli_shape_and_the_asked_tenant() {
    let emulator = Emulator::start(EmulatorConfig {
        cli_tenant: "99999999-9999-4999-8999-999999999999".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    for (query, tenant) in [
        ("?tenant=22222222-2222-2222-2222-222222222222", "22222222-2222-2222-2222-222222222222"),
        ("", "99999999-9999-4999-8999-999999999999"),
    ] {
        let body: Value =
            client().get(format!("{}{query}", emulator.az_token_url())).send().await.unwrap().json().await.unwrap();
        assert!(body["expires_on"].is_u64(), "expires_on is an integer: {body}");
        assert_eq!(body["tenant"], tenant);
        assert_eq!(body["tokenType"], "Bearer");
        assert_eq!(body["subscription"], "00000000-0000-0000-0000-000000000000");
        let expires = body["expiresOn"].as_str().unwrap();
        assert_eq!((expires.len(), &expires[10..11], &expires[19..20]), (26, " ", "."), "{expires}");
        let claims = decode_claims(body["accessToken"].as_str().unwrap()).unwrap();
        assert_eq!(
            (claims["tid"].as_str(), claims["upn"].as_str(), claims["idtyp"].as_str()),
            (Some(tenant), Some("dev@contoso.example"), Some("user"))
        );
        assert_eq!(claims["oid"], "de5e1000-0000-4000-8000-000000000d3f");
    }
    assert_eq!(emulator.stats().az_token_requests, 2);
}
