//! The jobs this instance is running or has just finished, by id and input digest.
//!
//! The `existing_result` blob input binding shows `process_job` a Result that was written before
//! the invocation started. It cannot show a job with the same id that is running right now on
//! this instance (two messages with one id in one batch), nor one whose Result the host is still
//! writing. The ledger covers both on one instance:
//! - a second message with the **same digest** waits for the first one; if that succeeded, it
//!   re-emits its Result instead of calling Azure OpenAI again; if it failed, it runs itself;
//! - a message with **another digest** is a `conflict` at once.
//!
//! Finished jobs are remembered (their digest, and a succeeded Result's text) for the most recent
//! [`MAX_DONE`] ids within [`MAX_DONE_BYTES`] of Result text. Across instances the ledger cannot
//! help: see docs/reliability.md.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::error::ApiError;

/// Finished jobs remembered.
pub const MAX_DONE: usize = 10_000;
/// Result text of finished jobs remembered (a Result is at most 64 KiB).
pub const MAX_DONE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Finished ids, oldest first (an id may appear more than once; see `evict`).
    done: VecDeque<String>,
    done_bytes: usize,
}

enum Entry {
    Running { digest: String, finished: watch::Receiver<()> },
    Done { digest: String, succeeded: Option<Arc<str>> },
}

/// What a message with an id and a digest may do.
pub enum Claim {
    /// Nobody here holds the id: run the job, then [`Running::finish`].
    Run(Running),
    /// The same input already succeeded here: its Result document.
    Done(Arc<str>),
    /// Another input holds the id here (running or finished): its digest.
    Conflict(String),
}

/// The right to run job `id`; dropped without [`Running::finish`] (a transient failure handed
/// back to the queue, a panic), it leaves no trace and waiters run the job themselves.
pub struct Running {
    ledger: Arc<Ledger>,
    id: String,
    digest: String,
    // Dropping it wakes every waiter.
    _finished: watch::Sender<()>,
    recorded: bool,
}

impl Ledger {
    /// Claims `id` for input `digest`, waiting (no later than `deadline`) while the same input
    /// runs here. Err: the wait reached the deadline (transient: the message is redelivered).
    pub async fn claim(self: &Arc<Self>, id: &str, digest: &str, deadline: Instant) -> Result<Claim, ApiError> {
        loop {
            let mut waiting = {
                let mut inner = self.lock();
                match inner.entries.get(id) {
                    Some(Entry::Running { digest: other, .. } | Entry::Done { digest: other, .. })
                        if other != digest =>
                    {
                        return Ok(Claim::Conflict(other.clone()));
                    }
                    None | Some(Entry::Done { succeeded: None, .. }) => {
                        let (sender, finished) = watch::channel(());
                        inner.entries.insert(id.to_owned(), Entry::Running { digest: digest.to_owned(), finished });
                        return Ok(Claim::Run(Running {
                            ledger: self.clone(),
                            id: id.to_owned(),
                            digest: digest.to_owned(),
                            _finished: sender,
                            recorded: false,
                        }));
                    }
                    Some(Entry::Done { succeeded: Some(result), .. }) => return Ok(Claim::Done(result.clone())),
                    Some(Entry::Running { finished, .. }) => finished.clone(),
                }
            };
            // The sender is dropped when the other delivery finishes, either way.
            let wait = tokio::time::timeout_at(deadline.into(), waiting.changed());
            if wait.await.is_err() {
                return Err(ApiError::UpstreamUnavailable {
                    message: format!(
                        "another delivery of job `{id}` with the same input is still running on this instance; the message is handed back to the queue"
                    ),
                });
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn remembered(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.done_bytes)
    }
}

impl Running {
    /// The job finished with a Result: remember its digest, and the Result when it succeeded
    /// (a later message with the same input re-emits it).
    pub fn finish(mut self, succeeded: Option<&str>) {
        self.recorded = true;
        let mut inner = self.ledger.lock();
        let succeeded: Option<Arc<str>> = succeeded.map(Arc::from);
        let bytes = succeeded.as_ref().map_or(0, |r| r.len());
        inner.entries.insert(self.id.clone(), Entry::Done { digest: self.digest.clone(), succeeded });
        inner.done.push_back(self.id.clone());
        inner.done_bytes += bytes;
        inner.evict();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.recorded {
            let mut inner = self.ledger.lock();
            if matches!(inner.entries.get(&self.id), Some(Entry::Running { digest, .. }) if *digest == self.digest) {
                inner.entries.remove(&self.id);
            }
        }
    }
}

impl Inner {
    /// Forgets the oldest finished jobs beyond the bounds. An id finished twice is listed twice;
    /// its first listing then forgets it a little early, which only costs a re-run's check.
    fn evict(&mut self) {
        while self.done.len() > MAX_DONE || self.done_bytes > MAX_DONE_BYTES {
            let Some(id) = self.done.pop_front() else { break };
            if let Some(Entry::Done { succeeded, .. }) = self.entries.get(&id) {
                self.done_bytes -= succeeded.as_ref().map_or(0, |r| r.len());
                self.entries.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn same_input_waits_then_reuses_another_input_conflicts() {
        let ledger = Arc::new(Ledger::default());
        let Claim::Run(first) = ledger.claim("a", "d1", soon()).await.unwrap() else { panic!("first runs") };
        assert!(matches!(ledger.claim("a", "d2", soon()).await.unwrap(), Claim::Conflict(d) if d == "d1"));
        let waiter = {
            let ledger = ledger.clone();
            tokio::spawn(async move { ledger.claim("a", "d1", soon()).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the same input waits for the running one");
        first.finish(Some("{\"status\":\"succeeded\"}"));
        assert!(matches!(waiter.await.unwrap().unwrap(), Claim::Done(r) if r.contains("succeeded")));
        assert!(matches!(ledger.claim("a", "d2", soon()).await.unwrap(), Claim::Conflict(_)), "also once done");
    }

    #[tokio::test]
    async fn a_failure_or_a_handed_back_message_lets_the_same_input_run_again() {
        let ledger = Arc::new(Ledger::default());
        let Claim::Run(first) = ledger.claim("a", "d1", soon()).await.unwrap() else { panic!() };
        drop(first);
        assert_eq!(ledger.remembered(), (0, 0), "a transient failure leaves no trace");
        let Claim::Run(second) = ledger.claim("a", "d1", soon()).await.unwrap() else { panic!() };
        second.finish(None);
        assert!(matches!(ledger.claim("a", "d1", soon()).await.unwrap(), Claim::Run(_)));
        assert!(matches!(ledger.claim("b", "d1", soon()).await.unwrap(), Claim::Run(_)));
    }

    #[tokio::test]
    async fn a_wait_ends_at_the_deadline() {
        let ledger = Arc::new(Ledger::default());
        let _first = ledger.claim("a", "d1", soon()).await.unwrap();
        let error = ledger.claim("a", "d1", Instant::now() + Duration::from_millis(20)).await.err().unwrap();
        assert_eq!(error.disposition(), crate::error::Disposition::Transient);
    }

    #[tokio::test]
    async fn memory_is_bounded() {
        let ledger = Arc::new(Ledger::default());
        let result = "x".repeat(64 * 1024);
        for i in 0..(MAX_DONE_BYTES / result.len() + 10) {
            let Claim::Run(run) = ledger.claim(&i.to_string(), "d", soon()).await.unwrap() else { panic!() };
            run.finish(Some(&result));
        }
        let (entries, bytes) = ledger.remembered();
        assert!(bytes <= MAX_DONE_BYTES && entries <= MAX_DONE, "{entries} entries, {bytes} bytes");
        assert!(matches!(ledger.claim("0", "other", soon()).await.unwrap(), Claim::Run(_)), "the oldest is forgotten");
    }
}
