//! Finished spans, batched off the request path for one exporter (OTLP or Application Insights).
//!
//! A request only pushes its finished spans onto a bounded queue (a mutex and a vector); the
//! export task on the tokio runtime is woken when a whole batch is waiting or when the schedule
//! delay has passed, and then exports everything queued, a batch at a time.
//!
//! Why not the SDK's tokio `BatchSpanProcessor`: it sends every span through a channel to its
//! task, so every span end wakes that task (and often a parked worker thread); measured, those
//! wake-ups cost more than writing the span's item (BENCHMARKS.md, "Application Insights
//! export"). Here one wake-up serves a batch.
//!
//! The standard variables apply, as they do to the SDK's processor: `OTEL_BSP_SCHEDULE_DELAY`
//! (ms, default 5000), `OTEL_BSP_MAX_QUEUE_SIZE` (2048; spans beyond it are dropped and counted)
//! and `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512). A value that is not a positive whole number is
//! ignored, as the SDK ignores it.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::Notify;

/// How spans are batched (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    pub delay: Duration,
    pub max_queue: usize,
    pub max_batch: usize,
}

impl BatchSettings {
    /// From `OTEL_BSP_*`, through `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let whole = |name: &str, default: u64| {
            get(name).and_then(|v| v.trim().parse::<u64>().ok()).filter(|n| *n > 0).unwrap_or(default)
        };
        let max_queue = usize::try_from(whole("OTEL_BSP_MAX_QUEUE_SIZE", 2048)).unwrap_or(2048);
        let max_batch = usize::try_from(whole("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)).unwrap_or(512);
        Self {
            delay: Duration::from_millis(whole("OTEL_BSP_SCHEDULE_DELAY", 5000)),
            max_queue,
            // A batch never exceeds the queue (the SDK's rule).
            max_batch: max_batch.min(max_queue),
        }
    }

    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

struct Shared {
    queue: Mutex<Vec<SpanData>>,
    wake: Notify,
    stopping: AtomicBool,
    dropped: AtomicU64,
    settings: BatchSettings,
}

/// The span processor; see the module documentation.
pub struct Batcher {
    shared: Arc<Shared>,
    /// Signalled by the task when it has exported the last spans and stopped.
    stopped: Mutex<Option<mpsc::Receiver<()>>>,
}

impl fmt::Debug for Batcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher").field("settings", &self.shared.settings).finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts the export task for `exporter` (its resource already set) on the current tokio
    /// runtime. `name` says which exporter a drop report is about.
    pub fn start<E: SpanExporter + 'static>(exporter: E, settings: BatchSettings, name: &'static str) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Vec::with_capacity(settings.max_batch)),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            settings,
        });
        let (done, stopped) = mpsc::channel();
        tokio::spawn(export_task(shared.clone(), exporter, done, name));
        Self { shared, stopped: Mutex::new(Some(stopped)) }
    }
}

async fn export_task<E: SpanExporter>(shared: Arc<Shared>, exporter: E, done: mpsc::Sender<()>, name: &'static str) {
    let settings = shared.settings;
    let mut reported_drops = false;
    loop {
        if !shared.stopping.load(Ordering::Acquire) {
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(settings.delay) => {}
            }
        }
        let stopping = shared.stopping.load(Ordering::Acquire);
        loop {
            let batch: Vec<SpanData> = {
                let mut queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                let take = queue.len().min(settings.max_batch);
                queue.drain(..take).collect()
            };
            if batch.is_empty() {
                break;
            }
            // Failures are the exporter's to report (Application Insights' reports its own,
            // once); the batch is gone either way.
            let _ = exporter.export(batch).await;
        }
        if !reported_drops && shared.dropped.load(Ordering::Relaxed) > 0 {
            reported_drops = true;
            tracing::warn!(
                exporter = name,
                max_queue = settings.max_queue,
                "spans were dropped: the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE); later drops are not logged"
            );
        }
        if stopping {
            let _ = exporter.shutdown();
            let _ = done.send(());
            return;
        }
    }
}

impl SpanProcessor for Batcher {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let settings = self.shared.settings;
        let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= settings.max_queue {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.push(span);
        // One wake-up per batch (a permit is kept if the task is busy exporting).
        if queue.len() == settings.max_batch {
            drop(queue);
            self.shared.wake.notify_one();
        }
    }

    /// Asks for an export of everything queued now; does not wait for it.
    fn force_flush(&self) -> OTelSdkResult {
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Exports what is queued and stops the task, waiting at most `timeout` (from a thread that
    /// may block: the task runs on the runtime's workers).
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let Some(stopped) = self.stopped.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Err(OTelSdkError::AlreadyShutdown);
        };
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        match stopped.recv_timeout(timeout) {
            Ok(()) => Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(OTelSdkError::InternalFailure("the export task ended".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[test]
    fn settings_follow_the_standard_variables_and_ignore_nonsense() {
        let read = |pairs: &'static [(&'static str, &'static str)]| {
            BatchSettings::from_lookup(|name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned()))
        };
        assert_eq!(read(&[]), BatchSettings { delay: Duration::from_secs(5), max_queue: 2048, max_batch: 512 });
        let set = read(&[
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "500"),
        ]);
        assert_eq!(set, BatchSettings { delay: Duration::from_millis(250), max_queue: 100, max_batch: 100 });
        let nonsense = read(&[("OTEL_BSP_SCHEDULE_DELAY", "-1"), ("OTEL_BSP_MAX_QUEUE_SIZE", "0")]);
        assert_eq!(nonsense, read(&[]));
    }

    /// Counts the spans of each export; the second export waits for `gate`.
    #[derive(Debug, Clone)]
    struct Counting(Arc<(AtomicUsize, Mutex<Vec<usize>>, tokio::sync::Semaphore)>);

    impl SpanExporter for Counting {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.0.fetch_add(batch.len(), Ordering::SeqCst);
            let exports = {
                let mut sizes = self.0.1.lock().unwrap();
                sizes.push(batch.len());
                sizes.len()
            };
            if exports == 2 {
                let _ = self.0.2.acquire().await;
            }
            Ok(())
        }
    }

    fn span() -> SpanData {
        use opentelemetry::trace::{SpanContext, SpanKind, Status};
        use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
        SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: opentelemetry::trace::SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "s".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    async fn wait_for(counting: &Counting, spans: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while counting.0.0.load(Ordering::SeqCst) < spans {
            assert!(std::time::Instant::now() < deadline, "{spans} spans were not exported");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_batch_is_exported_at_once_the_rest_at_shutdown_and_overflow_is_dropped() {
        let counting =
            Counting(Arc::new((AtomicUsize::new(0), Mutex::new(Vec::new()), tokio::sync::Semaphore::new(0))));
        let settings = BatchSettings { delay: Duration::from_secs(3600), max_queue: 8, max_batch: 4 };
        let batcher = Batcher::start(counting.clone(), settings, "test");
        // A completed batch is exported without waiting for the (hour-long) delay, twice.
        for _ in 0..4 {
            batcher.on_end(span());
        }
        wait_for(&counting, 4).await;
        for _ in 0..4 {
            batcher.on_end(span());
        }
        wait_for(&counting, 8).await;
        // The second export is stuck: the queue takes 8 more, and drops what is beyond.
        for _ in 0..10 {
            batcher.on_end(span());
        }
        assert_eq!(batcher.shared.dropped.load(Ordering::Relaxed), 2, "8 fit in the queue, 2 did not");
        counting.0.2.add_permits(1);
        let outcome =
            tokio::task::spawn_blocking(move || batcher.shutdown_with_timeout(Duration::from_secs(10))).await.unwrap();
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(counting.0.0.load(Ordering::SeqCst), 16, "the queued 8 were exported at shutdown");
        assert_eq!(*counting.0.1.lock().unwrap(), vec![4, 4, 4, 4], "batches of at most 4");
    }
}
