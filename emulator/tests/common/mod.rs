//! What every emulator test starts with: a client that never goes through a proxy, and a token
//! from the emulator's managed-identity endpoint for a given audience, fetched as the App
//! Service identity protocol asks (`api-version=2019-08-01`, the `x-identity-header` secret).

// Each test file is its own crate and uses only some of these helpers.
#![allow(dead_code)]

use emulator::Emulator;
use serde_json::Value;

/// The Azure OpenAI audience, URL-encoded as a query value.
pub const OPENAI_RESOURCE: &str = "https%3A%2F%2Fcognitiveservices.azure.com";

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A token for `resource` from the emulator's managed-identity endpoint.
pub async fn token(emulator: &Emulator, resource: &str) -> String {
    let url = format!("{}?api-version=2019-08-01&resource={resource}", emulator.identity_endpoint());
    let body: Value = client()
        .get(url)
        .header("x-identity-header", emulator.identity_header())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"].as_str().expect("a token").to_owned()
}

/// An `Authorization` value carrying an Azure OpenAI token.
pub async fn openai_bearer(emulator: &Emulator) -> String {
    format!("Bearer {}", token(emulator, OPENAI_RESOURCE).await)
}
