//! Log lines on stdout, which the Functions host collects into its logs (and Application
//! Insights): compact text by default, one JSON object per line with `LOG_FORMAT=json`.

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

/// Text-mode fields: `message` bare, the rest `name=value`, and none of `otel.*` (they only
/// steer the exporter) or `log.*` (where a `log` record came from).
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
        self.result = match name {
            "message" => write!(self.writer, "{separator}{value:?}"),
            _ => write!(self.writer, "{separator}{name}={value:?}"),
        };
    }
}
