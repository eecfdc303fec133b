//! The log lines of one invocation, for the `Logs` of its response (the host logs them against
//! that invocation, so they reach Application Insights with its invocation id).
//!
//! The invocation middleware runs each payload-mode invocation inside [`scope`], which gives
//! its task a buffer; this layer appends every event that task emits (as filtered by
//! `RUST_LOG`) and [`take_invocation_logs`] hands them to the handler. A task-local rather
//! than a span extension: the handler reads the buffer without reaching into the subscriber.
//! Events of other tasks (e.g. a shared token refresh) are not captured.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Bounds, so a chatty invocation cannot grow its response without limit.
const MAX_LINES: usize = 200;
const MAX_LINE_CHARS: usize = 2000;

#[derive(Default)]
struct Buffer {
    lines: Vec<String>,
    dropped: usize,
}

tokio::task_local! {
    static BUFFER: RefCell<Buffer>;
}

/// Runs `future` with a log buffer of its own.
pub async fn scope<F: Future>(future: F) -> F::Output {
    BUFFER.scope(RefCell::new(Buffer::default()), future).await
}

/// The lines captured so far in this invocation (and clears them); empty outside [`scope`].
pub fn take_invocation_logs() -> Vec<String> {
    BUFFER
        .try_with(|buffer| {
            let Buffer { mut lines, dropped } = std::mem::take(&mut *buffer.borrow_mut());
            if dropped > 0 {
                lines.push(format!("({dropped} more log lines not included)"));
            }
            lines
        })
        .unwrap_or_default()
}

pub fn layer() -> CaptureLayer {
    CaptureLayer
}

pub struct CaptureLayer;

impl<S: Subscriber> Layer<S> for CaptureLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        // Outside an invocation scope this is one failed task-local lookup.
        let _ = BUFFER.try_with(|buffer| {
            let Ok(mut buffer) = buffer.try_borrow_mut() else { return };
            if buffer.lines.len() >= MAX_LINES {
                buffer.dropped += 1;
                return;
            }
            let mut line = Line { message: String::new(), fields: String::new() };
            event.record(&mut line);
            let mut text = format!("{} {}{}", event.metadata().level(), line.message, line.fields);
            if text.chars().count() > MAX_LINE_CHARS {
                text = text.chars().take(MAX_LINE_CHARS).chain(['…']).collect();
            }
            buffer.lines.push(text);
        });
    }
}

/// One event as `LEVEL message key=value ...`.
struct Line {
    message: String,
    fields: String,
}

/// Values are escaped like the stdout text (one entry is one line) and bounded by the line cap.
impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let out = if field.name() == "message" {
            &mut self.message
        } else {
            let _ = write!(self.fields, " {}=", field.name());
            &mut self.fields
        };
        let mut escaped = crate::echo::Escaper::new(out, MAX_LINE_CHARS);
        let _ = write!(escaped, "{value:?}");
        let _ = escaped.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[tokio::test]
    async fn events_inside_the_scope_are_captured_in_order() {
        let subscriber = tracing_subscriber::registry().with(layer());
        let _guard = tracing::subscriber::set_default(subscriber);
        tracing::info!("outside");
        let lines = scope(async {
            tracing::info!(attempt = 1, code = "upstream_throttled", "retrying");
            tracing::warn!("second");
            take_invocation_logs()
        })
        .await;
        assert_eq!(lines, ["INFO retrying attempt=1 code=upstream_throttled", "WARN second"]);
        assert!(take_invocation_logs().is_empty());
    }

    #[tokio::test]
    async fn the_buffer_is_bounded() {
        let subscriber = tracing_subscriber::registry().with(layer());
        let _guard = tracing::subscriber::set_default(subscriber);
        let lines = scope(async {
            for i in 0..MAX_LINES + 5 {
                tracing::info!(i, "line");
            }
            take_invocation_logs()
        })
        .await;
        assert_eq!(lines.len(), MAX_LINES + 1);
        assert_eq!(lines.last().map(String::as_str), Some("(5 more log lines not included)"));
    }

    /// Issue 12, item 8: one entry stays one line, and bounded.
    #[tokio::test]
    async fn values_are_escaped_and_bounded() {
        let subscriber = tracing_subscriber::registry().with(layer());
        let _guard = tracing::subscriber::set_default(subscriber);
        let huge = "y".repeat(1_000_000);
        let lines = scope(async {
            tracing::info!(field = "a\nERROR forged", "unknown field `x\nERROR forged`");
            tracing::info!(value = %huge, "{huge}");
            take_invocation_logs()
        })
        .await;
        assert_eq!(lines[0], "INFO unknown field `x\\nERROR forged` field=a\\nERROR forged");
        assert!(lines.iter().all(|l| !l.contains('\n') && l.chars().count() <= MAX_LINE_CHARS + 1), "{lines:?}");
    }
}
