//! The process's one HTTP client: Azure OpenAI calls and the managed identity's token requests
//! share its connection pool and its TLS roots.
//!
//! It is built on first use, not at start-up: loading the platform's CA certificates is almost all
//! of the handler's start-up work (twice when azure_core built a client of its own), and the host
//! only waits for `GET /` to answer. Measured in `BENCHMARKS.md` (spawn → ready 7.1 → 2.5 ms with the other
//! changes of that table).

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use azure_core::error::ErrorKind;
use azure_core::http::{AsyncRawResponse, HttpClient, Request};

/// A cheap handle to the shared client; clones share one pool.
#[derive(Clone, Default)]
pub struct SharedHttpClient {
    client: Arc<OnceLock<Result<reqwest::Client, String>>>,
}

impl fmt::Debug for SharedHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedHttpClient").field("built", &self.client.get().is_some()).finish()
    }
}

impl SharedHttpClient {
    /// The client, built now if this is the first use. The error is the builder's, kept so
    /// every caller reports the same cause.
    pub fn get(&self) -> Result<&reqwest::Client, &str> {
        self.client.get_or_init(build).as_ref().map_err(String::as_str)
    }
}

fn build() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        // Neither Azure OpenAI nor the identity endpoints redirect; a redirect is an error to see.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("keyless-jobs/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("could not build the HTTP client: {e}"))
}

/// azure_core's transport: the credential's requests go through the shared client.
#[async_trait::async_trait]
impl HttpClient for SharedHttpClient {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let client = self.get().map_err(|e| azure_core::Error::with_message(ErrorKind::Other, e.to_owned()))?;
        client.execute_request(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_client_built_on_first_use() {
        let shared = SharedHttpClient::default();
        let clone = shared.clone();
        assert!(format!("{shared:?}").contains("built: false"));
        let first: *const reqwest::Client = clone.get().unwrap();
        let second: *const reqwest::Client = shared.get().unwrap();
        assert_eq!(first, second);
        assert!(format!("{shared:?}").contains("built: true"));
    }
}
