//! The emulator's shared mutable state: settings changeable at run time, issued tokens, each
//! deployment's quota, counters and request records, all behind one mutex (never held across an await).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::config::EmulatorConfig;
use crate::faults::{Fault, Faults};
use crate::ingestion::IngestionFault;
use crate::quota::Quota;
use crate::stats::{RecordedIdentityRequest, RecordedRequest, RecordedTrack, Stats};
use crate::tokens::Claims;

pub(crate) struct Shared {
    pub config: EmulatorConfig,
    inner: Mutex<Inner>,
    in_flight: AtomicU64,
    /// Incremented by each release of held streams.
    release: tokio::sync::watch::Sender<u64>,
}

pub(crate) struct Inner {
    pub token_lifetime: Duration,
    pub role_assigned: bool,
    pub identity_failure: Option<u16>,
    /// The identity endpoint accepts requests and never answers.
    pub identity_hang: bool,
    pub faults: Faults,
    pub script: VecDeque<Fault>,
    pub tokens: HashMap<String, Claims>,
    /// Each deployment's quota, created on its first request.
    pub quotas: HashMap<String, Quota>,
    pub requests: Vec<RecordedRequest>,
    pub identity_requests: Vec<RecordedIdentityRequest>,
    pub stats: Stats,
    /// Whether the app's identity holds Monitoring Metrics Publisher on the Application Insights resource.
    pub monitoring_role_assigned: bool,
    pub ingestion_fault: Option<IngestionFault>,
    /// Every track request, oldest first.
    pub tracks: Vec<RecordedTrack>,
    /// Every telemetry item accepted, oldest first.
    pub telemetry: Vec<serde_json::Value>,
    /// The Blob service's blobs, by `container/name`.
    pub blobs: HashMap<String, Vec<u8>>,
    /// Whether the app's identity holds a Storage Blob Data role that can read blobs.
    pub storage_role_assigned: bool,
}

impl Shared {
    pub fn new(config: EmulatorConfig) -> Self {
        let inner = Inner {
            token_lifetime: config.token_lifetime,
            role_assigned: true,
            identity_failure: None,
            identity_hang: false,
            faults: Faults::default(),
            script: VecDeque::new(),
            tokens: HashMap::new(),
            quotas: HashMap::new(),
            requests: Vec::new(),
            identity_requests: Vec::new(),
            stats: Stats::default(),
            monitoring_role_assigned: true,
            ingestion_fault: None,
            tracks: Vec::new(),
            telemetry: Vec::new(),
            blobs: HashMap::new(),
            storage_role_assigned: true,
        };
        let (release, _) = tokio::sync::watch::channel(0);
        Self { config, inner: Mutex::new(inner), in_flight: AtomicU64::new(0), release }
    }

    /// The state; a poisoned lock (a panicking test thread) is taken over, not propagated.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_faults(&self, faults: Faults) {
        let mut inner = self.lock();
        inner.script = faults.script.iter().cloned().collect();
        inner.faults = faults;
    }

    pub fn reset_stats(&self) {
        let mut inner = self.lock();
        inner.stats = Stats::default();
        inner.requests.clear();
        inner.identity_requests.clear();
        inner.tracks.clear();
        inner.telemetry.clear();
    }

    /// The release count now (a stream remembers it when it begins).
    pub fn release_generation(&self) -> u64 {
        *self.release.borrow()
    }

    /// Lets every held stream that began before now go on.
    pub fn release_streams(&self) {
        self.release.send_modify(|generation| *generation += 1);
    }

    /// Waits until a release after `began` (the generation when the stream began).
    pub async fn wait_release(&self, began: u64) {
        let mut receiver = self.release.subscribe();
        let _ = receiver.wait_for(|generation| *generation > began).await;
    }

    /// Counts a chat request in flight until the guard drops, tracking the peak.
    pub fn enter_chat(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let mut inner = self.lock();
        inner.stats.max_concurrent_chat = inner.stats.max_concurrent_chat.max(now);
        InFlight(&self.in_flight)
    }
}

pub(crate) struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
