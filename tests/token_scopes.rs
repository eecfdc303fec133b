//! One credential, several scopes (Azure OpenAI and Azure Monitor), through the library API the
//! exporters use: each scope has its own single-flight cache, and invalidating one token leaves
//! the other scope's token alone. Its own test binary: managed identity reads the process env.

use std::sync::Arc;
use std::time::{Duration, Instant};

use emulator::{Emulator, EmulatorConfig, decode_claims};
use handler::config::{CredentialKind, IdentitySettings};
use handler::http_client::SharedHttpClient;
use handler::identity::{COGNITIVE_SERVICES_SCOPE, MONITOR_SCOPE, TokenProvider};

#[tokio::test]
async fn each_scope_has_its_own_single_flight_cache() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    // SAFETY: the only test of this binary; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var("IDENTITY_ENDPOINT", emulator.identity_endpoint());
        std::env::set_var("IDENTITY_HEADER", emulator.identity_header());
        std::env::set_var("NO_PROXY", "127.0.0.1,localhost");
    }
    let settings = IdentitySettings {
        credential: CredentialKind::ManagedIdentity,
        reason: "test".into(),
        client_id: None,
        tenant_id: None,
    };
    let tokens = Arc::new(TokenProvider::from_settings(&settings, SharedHttpClient::default()).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let tokens = tokens.clone();
            let scope = if i % 2 == 0 { COGNITIVE_SERVICES_SCOPE } else { MONITOR_SCOPE };
            tokio::spawn(async move { tokens.token_for(scope, deadline).await.unwrap() })
        })
        .collect();
    let mut got = Vec::new();
    for call in calls {
        got.push(call.await.unwrap());
    }
    assert_eq!(emulator.stats().identity_requests, 2, "one fetch per scope");
    let audience = |t: &handler::identity::BearerToken| decode_claims(t.secret()).unwrap()["aud"].clone();
    assert_eq!(audience(&got[0]), "https://cognitiveservices.azure.com");
    assert_eq!(audience(&got[1]), "https://monitor.azure.com");
    assert_eq!(got[1].scope(), MONITOR_SCOPE);

    // Refused: the monitor token is replaced by a new one; Azure OpenAI's stays cached.
    tokens.invalidate(&got[1]);
    let monitor = tokens.token_for(MONITOR_SCOPE, deadline).await.unwrap();
    assert_ne!(monitor.secret(), got[1].secret());
    let openai = tokens.token(deadline).await.unwrap();
    assert_eq!(openai.secret(), got[0].secret());
    assert_eq!(emulator.stats().identity_requests, 3);
}
