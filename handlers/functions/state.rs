//! The state every function shares: the settings, the Azure OpenAI client, the jobs ledger, the
//! memory budget of large invocations, and the deadlines of an invocation started now.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::budget::MemoryBudget;
use super::ledger::Ledger;
use crate::config::Settings;
use crate::openai::OpenAiClient;
use crate::storage::ResultStore;

/// Longest a synchronous HTTP call may take: Azure's front end closes requests at 230 s.
const HTTP_DEADLINE: Duration = Duration::from_secs(200);

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub client: Arc<OpenAiClient>,
    /// Jobs running or just finished on this instance, by id and input digest.
    pub ledger: Arc<Ledger>,
    /// Results in Blob Storage, for `POST /api/jobs`' conflict check; `None` without an
    /// identity-based storage connection (the check is skipped).
    pub results: Option<Arc<ResultStore>>,
    /// Shared by the large invocations (`budget.rs`).
    pub memory: MemoryBudget,
}

impl AppState {
    pub fn new(settings: Settings, client: OpenAiClient) -> Self {
        let results = settings
            .blob_endpoint
            .clone()
            .map(|endpoint| Arc::new(ResultStore::new(endpoint, client.tokens().clone(), client.http())));
        let memory = MemoryBudget::new(settings.invocation_memory_budget_bytes);
        Self { settings: Arc::new(settings), client: Arc::new(client), ledger: Arc::default(), results, memory }
    }

    /// Deadline of a synchronous HTTP call started now.
    pub fn http_deadline(&self) -> Instant {
        Instant::now() + self.settings.host.invocation_budget().min(HTTP_DEADLINE)
    }

    /// Deadline of a queue invocation started now.
    pub fn invocation_deadline(&self) -> Instant {
        Instant::now() + self.settings.host.invocation_budget()
    }
}
