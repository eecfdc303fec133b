//! The state every function shares: the settings, the Azure OpenAI client and the memory
//! budget of large invocations, and the deadlines of an invocation started now.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::budget::MemoryBudget;
use crate::config::Settings;
use crate::openai::OpenAiClient;

/// Longest a synchronous HTTP call may take: Azure's front end closes requests at 230 s.
const HTTP_DEADLINE: Duration = Duration::from_secs(200);

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub client: Arc<OpenAiClient>,
    /// Shared by the large invocations (`budget.rs`).
    pub memory: MemoryBudget,
}

impl AppState {
    pub fn new(settings: Settings, client: OpenAiClient) -> Self {
        let memory = MemoryBudget::new(settings.invocation_memory_budget_bytes);
        Self { settings: Arc::new(settings), client: Arc::new(client), memory }
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
