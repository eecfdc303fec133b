//! Log lines on stdout, which the Functions host collects into its logs (and Application
//! Insights): compact text by default, one JSON object per line with `LOG_FORMAT=json`.

use std::fmt::Write as _;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing_subscriber::Layer;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, FormattedFields};

use super::BoxedLayer;

/// The stdout layer, unfiltered: [`super::init`] gives it and the `Logs` capture one filter
/// (`RUST_LOG`, and never the chat span, whose attributes are for traces and would otherwise
/// repeat on every line; its events still print, in the invocation's context). Colours only on
/// a terminal: the host stores the bytes as they are.
pub fn layer(json: bool) -> BoxedLayer {
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stdout)
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(false);
    if json {
        layer.json().flatten_event(true).with_current_span(true).with_span_list(false).boxed()
    } else {
        layer.compact().fmt_fields(TextFields).boxed()
    }
}

/// Longest field value printed in text mode (characters); the rest is counted, not printed.
pub(crate) const MAX_FIELD_CHARS: usize = 2000;

/// Text-mode fields: `message` bare, the rest `name=value`, and none of `otel.*` (they only
/// steer the exporter) or `log.*` (where a `log` record came from). Every value is escaped
/// (a newline in a client's field name cannot start a forged line) and bounded.
struct TextFields;

impl<'writer> FormatFields<'writer> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> std::fmt::Result {
        let mut visitor = TextVisitor { writer, first: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }

    /// A field recorded later: separated by a space, unless it is one that prints nothing.
    fn add_fields(&self, current: &'writer mut FormattedFields<Self>, fields: &Record<'_>) -> std::fmt::Result {
        let mut added = String::new();
        self.format_fields(Writer::new(&mut added), fields)?;
        if !added.is_empty() && !current.fields.is_empty() {
            current.fields.push(' ');
        }
        current.fields.push_str(&added);
        Ok(())
    }
}

struct TextVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: std::fmt::Result,
}

impl Visit for TextVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("otel.") || name.starts_with("log.") {
            return;
        }
        let separator = if std::mem::take(&mut self.first) { "" } else { " " };
        self.result = (|| {
            match name {
                "message" => self.writer.write_str(separator)?,
                _ => write!(self.writer, "{separator}{name}=")?,
            }
            let mut escaped = crate::echo::Escaper::new(&mut self.writer, MAX_FIELD_CHARS);
            write!(escaped, "{value:?}")?;
            escaped.finish()
        })();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Issue 12, item 8: a field name holding a newline forged an ERROR line, and a whole
    /// 1 MB input became one line.
    #[test]
    fn text_lines_cannot_be_forged_or_flooded() {
        let sink = Sink::default();
        let writer = sink.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_target(false)
            .compact()
            .fmt_fields(TextFields);
        let subscriber = tracing_subscriber::registry().with(layer);
        let huge = "z".repeat(1_000_000);
        tracing::subscriber::with_default(subscriber, || {
            let forged = "x\n2026-01-01T00:00:00Z ERROR forged";
            tracing::info!(field = forged, "unknown field `{forged}`");
            tracing::info!(code = %huge, "{huge}");
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text:.300}");
        assert!(lines[0].contains("unknown field `x\\n2026-01-01T00:00:00Z ERROR forged`"), "{}", lines[0]);
        assert!(!lines.iter().any(|l| l.contains(" ERROR ") && !l.contains("\\n")), "{text:.300}");
        assert!(lines[1].len() < 2 * MAX_FIELD_CHARS + 200, "{}", lines[1].len());
        assert!(lines[1].contains("characters)"), "the cut is noted");
    }
}
