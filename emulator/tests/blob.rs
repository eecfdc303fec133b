//! The Blob service over real HTTP: only a storage-audience bearer token with `x-ms-version`, the
//! data-role check, Get and Put Blob, and the service's XML errors with `x-ms-error-code`.

use emulator::{Emulator, EmulatorConfig};

mod common;
use common::{client, token};

async fn get(emulator: &Emulator, path: &str, token: Option<&str>, version: bool) -> (u16, String, String) {
    let mut request = client().get(format!("{}{path}", emulator.blob_service_uri()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if version {
        request = request.header("x-ms-version", "2023-11-03");
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let code = response.headers().get("x-ms-error-code").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, code, response.text().await.unwrap())
}

#[tokio::test]
async fn get_and_put_blob_with_a_storage_token() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let storage = token(&emulator, "https://storage.azure.com").await;
    let (status, code, body) = get(&emulator, "results/a.json", Some(&storage), true).await;
    assert_eq!((status, code.as_str()), (404, "BlobNotFound"), "{body}");
    assert!(
        body.contains("<Code>BlobNotFound</Code><Message>The specified blob does not exist.\nRequestId:"),
        "{body}"
    );

    let put = client()
        .put(format!("{}results/a.json", emulator.blob_service_uri()))
        .bearer_auth(&storage)
        .header("x-ms-version", "2023-11-03")
        .header("x-ms-blob-type", "BlockBlob")
        .body("{\"id\":\"a\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201);
    assert_eq!(get(&emulator, "results/a.json", Some(&storage), true).await.2, "{\"id\":\"a\"}");
    assert_eq!(emulator.blob("results/a.json").as_deref(), Some(&b"{\"id\":\"a\"}"[..]));
    let (status, code, _) = get(&emulator, "nope/a.json", Some(&storage), true).await;
    assert_eq!((status, code.as_str()), (404, "ContainerNotFound"));
    assert_eq!(emulator.stats().blob_requests, 4);
}

#[tokio::test]
async fn the_service_refuses_what_the_real_one_refuses() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    emulator.put_blob("results/a.json", "{}");
    let (status, code, _) = get(&emulator, "results/a.json", None, true).await;
    assert_eq!((status, code.as_str()), (401, "NoAuthenticationInformation"));
    // A token for Azure OpenAI is not one for Storage.
    let openai = token(&emulator, "https://cognitiveservices.azure.com").await;
    let (status, code, body) = get(&emulator, "results/a.json", Some(&openai), true).await;
    assert_eq!((status, code.as_str()), (401, "InvalidAuthenticationInfo"), "{body}");
    assert!(body.contains("Audience validation failed"), "{body}");
    let storage = token(&emulator, "https://storage.azure.com").await;
    let (status, code, _) = get(&emulator, "results/a.json", Some(&storage), false).await;
    assert_eq!((status, code.as_str()), (400, "MissingRequiredHeader"));
    emulator.set_storage_role_assigned(false);
    let (status, code, body) = get(&emulator, "results/a.json", Some(&storage), true).await;
    assert_eq!((status, code.as_str()), (403, "AuthorizationPermissionMismatch"), "{body}");
    assert!(body.contains("not authorized to perform this operation using this permission"), "{body}");
}

/// `If-None-Match: *` makes Put Blob a create: 201 the first time, then 409 `BlobAlreadyExists`
/// with the service's XML body, and the first content is kept.
#[tokio::test]
async fn a_conditional_create_of_an_existing_blob_is_409_blob_already_exists() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let storage = token(&emulator, "https://storage.azure.com").await;
    let create = |body: &'static str| {
        client()
            .put(format!("{}claims/c1", emulator.blob_service_uri()))
            .bearer_auth(&storage)
            .header("x-ms-version", "2023-11-03")
            .header("x-ms-blob-type", "BlockBlob")
            .header("if-none-match", "*")
            .body(body)
            .send()
    };
    assert_eq!(create("first").await.unwrap().status().as_u16(), 201);
    let again = create("second").await.unwrap();
    assert_eq!(again.status().as_u16(), 409);
    assert_eq!(again.headers()["x-ms-error-code"], "BlobAlreadyExists");
    let body = again.text().await.unwrap();
    assert!(
        body.contains("<Code>BlobAlreadyExists</Code><Message>The specified blob already exists.\nRequestId:"),
        "{body}"
    );
    assert_eq!(emulator.blob("claims/c1").as_deref(), Some(&b"first"[..]), "the first content is kept");
}
