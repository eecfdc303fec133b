//! A local stand-in for Azure OpenAI's data plane, the App Service managed-identity endpoint,
//! Application Insights' ingestion endpoint and Blob Storage's Get/Put Blob, plus a driver that runs the handler binary the way
//! the Azure Functions host does.
//!
//! Used by the project's integration tests, the `demo` binary and the benchmarks; never by the
//! handler itself. Everything binds 127.0.0.1.

mod blob;
mod chat;
mod clock;
mod config;
mod content;
mod control;
mod errors;
mod faults;
pub mod fixtures;
pub mod host;
mod identity;
mod ingestion;
mod labels;
pub mod models;
mod params;
mod query;
mod quota;
mod server;
mod state;
mod stats;
mod stream;
mod strict_schema;
mod tokens;
mod tpm;

pub use config::{DEFAULT_CONTEXT_TOKENS, EmulatorConfig};
pub use faults::{Fault, Faults};
pub use ingestion::IngestionFault;
pub use models::{Effort, ModelProfile};
pub use server::Emulator;
pub use stats::{RecordedIdentityRequest, RecordedRequest, RecordedTrack, Stats};
pub use tokens::decode_claims;
