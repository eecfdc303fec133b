//! The memory budget of large invocations: a batch submit of 1 000 jobs arrives as one body of
//! up to ~100 MB and holds about twice its size while it is read, parsed and answered, so ten
//! at once would take a 2 GB instance down. A large body (over [`LARGE_BODY`]) takes its share
//! of the budget (`INVOCATION_MEMORY_BUDGET_MB`) from its `Content-Length` *before* it is read,
//! and keeps it until its answer has been sent; when the budget is spent, it waits its turn
//! (first come, first served) within its deadline, then gets 503 `server_busy` naming the
//! setting. Small bodies (queue messages, polls) never wait.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::body::{INVOCATION_BODY_LIMIT, content_length};
use super::state::AppState;
use crate::error::ApiError;
use crate::host::InvocationResponse;

/// Bodies up to this size skip the budget.
pub const LARGE_BODY: u64 = 1024 * 1024;
/// A large request holds this many times its body while it runs (the measured peak is ~2.1x).
const COST_PER_BODY_BYTE: u64 = 2;
/// Permits count KiB (a semaphore counts in `u32`).
const UNIT: u64 = 1024;
/// Time left for the work itself once the budget is granted: a waiting request gives up this
/// long before its deadline.
const WORK_RESERVE: Duration = Duration::from_secs(5);
/// `Retry-After` of a refusal.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// The budget, shared by every request of the process.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    /// The whole budget, in [`UNIT`]s.
    total: u32,
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> Self {
        let total = u32::try_from((bytes / UNIT).max(1)).unwrap_or(u32::MAX).min(Semaphore::MAX_PERMITS as u32);
        Self { permits: Arc::new(Semaphore::new(total as usize)), total }
    }

    /// The share of a body of `length` bytes (unknown: the largest a body may be); one larger
    /// than the whole budget takes the whole budget, so it runs alone rather than never.
    fn cost(&self, length: Option<u64>) -> u32 {
        let length = length.unwrap_or(INVOCATION_BODY_LIMIT as u64).min(INVOCATION_BODY_LIMIT as u64);
        let units = (length * COST_PER_BODY_BYTE).div_ceil(UNIT);
        u32::try_from(units).unwrap_or(u32::MAX).clamp(1, self.total)
    }

    /// The share for a body of `length` bytes, waiting for it until `give_up`.
    pub async fn acquire(&self, length: Option<u64>, give_up: Instant) -> Result<OwnedSemaphorePermit, ApiError> {
        let cost = self.cost(length);
        if let Ok(permit) = self.permits.clone().try_acquire_many_owned(cost) {
            return Ok(permit);
        }
        tracing::info!(
            body_bytes = length,
            "waiting for INVOCATION_MEMORY_BUDGET_MB: other large invocations hold the budget"
        );
        match tokio::time::timeout_at(give_up.into(), self.permits.clone().acquire_many_owned(cost)).await {
            Ok(Ok(permit)) => Ok(permit),
            // Timed out (the semaphore is never closed).
            _ => Err(ApiError::ServerBusy {
                message: format!(
                    "too many large requests at once: this one ({} bytes) needs {} MiB of the {} MiB memory budget (INVOCATION_MEMORY_BUDGET_MB), which other requests held until its deadline; retry later, or send smaller batches",
                    length.map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
                    (u64::from(cost) * UNIT).div_ceil(1024 * 1024),
                    u64::from(self.total) * UNIT / (1024 * 1024)
                ),
                retry_after: RETRY_AFTER,
            }),
        }
    }
}

/// Middleware on the payload-mode HTTP functions that take large bodies (`submit_jobs`,
/// `put_job`): a large request runs only with its share of the budget, held until its response
/// body has been sent; a refusal is the function's HTTP answer (503 in `res`).
pub async fn within_budget(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let length = declared_length(request.headers());
    // Small ones run at once; ones over the body limit are refused without being read.
    if length.is_some_and(|n| n <= LARGE_BODY || n > INVOCATION_BODY_LIMIT as u64) {
        return next.run(request).await;
    }
    let give_up = app.http_deadline().checked_sub(WORK_RESERVE).unwrap_or_else(Instant::now);
    match app.memory.acquire(length, give_up).await {
        Ok(permit) => {
            let (parts, body) = next.run(request).await.into_parts();
            Response::from_parts(parts, Body::new(Holding { body, _permit: permit }))
        }
        Err(error) => InvocationResponse::for_http_error(&error),
    }
}

/// `Content-Length`; `None` (the largest a body may be) for a chunked body.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    content_length(headers)
}

/// A response body that holds the request's share of the budget until it is dropped (sent, or
/// the connection gone).
struct Holding {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Holding {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cost_is_twice_the_body_within_the_budget() {
        let budget = MemoryBudget::new(512 * 1024 * 1024);
        assert_eq!(budget.cost(Some(10 * 1024 * 1024)), 20 * 1024);
        assert_eq!(budget.cost(None), budget.cost(Some(INVOCATION_BODY_LIMIT as u64)));
        assert_eq!(budget.cost(Some(u64::MAX)), budget.cost(None));
        let small = MemoryBudget::new(16 * 1024 * 1024);
        assert_eq!(small.cost(Some(50 * 1024 * 1024)), small.total, "a body over the budget takes all of it");
        assert_eq!(small.cost(Some(0)), 1);
    }

    #[tokio::test]
    async fn a_request_waits_its_turn_then_gives_up_at_its_deadline() {
        let budget = MemoryBudget::new(64 * 1024 * 1024);
        let first = budget.acquire(Some(20 * 1024 * 1024), Instant::now()).await.unwrap();
        // 40 MiB of 64 held: a second 20 MiB body (40 MiB) does not fit and gives up.
        let refused = budget.acquire(Some(20 * 1024 * 1024), Instant::now()).await.unwrap_err();
        assert_eq!((refused.code(), refused.status().as_u16()), ("server_busy", 503));
        assert!(refused.to_string().contains("INVOCATION_MEMORY_BUDGET_MB"), "{refused}");
        assert!(refused.to_string().contains("64 MiB"), "{refused}");
        assert_eq!(refused.retry_after_secs(), Some(30));
        // A waiting one gets its share as soon as the first is done.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(Some(20 * 1024 * 1024), Instant::now() + Duration::from_secs(600)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        assert!(waiting.await.unwrap().is_ok());
    }
}
