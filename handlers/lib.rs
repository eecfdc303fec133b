//! keyless-jobs: an Azure Functions custom handler that runs summarise and classify jobs on
//! Azure OpenAI with Microsoft Entra tokens only (managed identity in Azure, the Azure CLI
//! locally), never an API key.
//!
//! Data flows one way: host request ([`functions`], [`host`])
//! → [`jobs`] → [`openai`] (→ [`identity`]; both over [`http_client`]) → result → encoded
//! response. [`storage`] reads stored Results (with [`identity`]) for the submit's id check. [`config`] is read once at start-up; [`error`] is the one place errors become
//! statuses and JSON.

pub mod config;
pub mod doctor;
pub mod echo;
pub mod error;
pub mod functions;
pub mod host;
pub mod http_client;
pub mod identity;
pub mod jobs;
pub mod openai;
pub mod panic_guard;
pub mod storage;
pub mod telemetry;
