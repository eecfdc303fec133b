//! GenAI client metrics, read off the chat spans that [`super::genai`] opens: a layer sees each
//! span's fields as they are recorded and measures the call when the span closes, so the
//! Azure OpenAI client needs no metrics handle of its own.
//!
//! - `gen_ai.client.token.usage` (histogram, `{token}`, by `gen_ai.token.type` input/output);
//! - `gen_ai.client.operation.duration` (histogram, seconds, with `error.type` on failure);
//! - `gen_ai.client.operation.time_to_first_chunk` (histogram, seconds): streamed calls only,
//!   from the call's start to the first content passed on;
//! - `azure.openai.throttled_requests` (counter): every 429 answer, retried or not.

use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Subscriber, span};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Bucket boundaries the GenAI semantic conventions recommend.
const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];
const DURATION_BUCKETS: [f64; 14] =
    [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92];

pub struct GenAiMetrics {
    tokens: Histogram<u64>,
    duration: Histogram<f64>,
    first_chunk: Histogram<f64>,
    throttled: Counter<u64>,
}

impl GenAiMetrics {
    pub fn new(meter: &Meter) -> Self {
        Self {
            tokens: meter
                .u64_histogram("gen_ai.client.token.usage")
                .with_unit("{token}")
                .with_description("Number of input and output tokens used")
                .with_boundaries(TOKEN_BUCKETS.to_vec())
                .build(),
            duration: meter
                .f64_histogram("gen_ai.client.operation.duration")
                .with_unit("s")
                .with_description("GenAI operation duration, retries and waits included")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            first_chunk: meter
                .f64_histogram("gen_ai.client.operation.time_to_first_chunk")
                .with_unit("s")
                .with_description("Time to receive the first chunk of a streamed answer")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            throttled: meter
                .u64_counter("azure.openai.throttled_requests")
                .with_unit("{request}")
                .with_description("Azure OpenAI answers with status 429 (rate or quota limit)")
                .build(),
        }
    }
}

/// What one chat span has recorded so far (field names as in [`super::genai`]).
struct ChatCall {
    started: Instant,
    strings: Vec<(&'static str, String)>,
    port: Option<i64>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    /// 429 answers, recorded once when the call ends.
    throttled: i64,
    /// Streamed calls: seconds to the first content.
    first_chunk: Option<f64>,
}

/// The span fields that become metric attributes.
const ATTRIBUTES: [&str; 6] = [
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "server.address",
    "error.type",
];

impl ChatCall {
    fn attributes(&self) -> Vec<KeyValue> {
        let mut attributes: Vec<KeyValue> =
            self.strings.iter().map(|(k, v)| KeyValue::new(*k, v.clone())).collect::<Vec<_>>();
        if let Some(port) = self.port {
            attributes.push(KeyValue::new("server.port", port));
        }
        attributes
    }
}

impl Visit for ChatCall {
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(name) = ATTRIBUTES.iter().find(|n| **n == field.name()) {
            self.strings.retain(|(k, _)| k != name);
            self.strings.push((name, value.to_owned()));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        match field.name() {
            "server.port" => self.port = Some(value),
            "gen_ai.usage.input_tokens" => self.input_tokens = Some(value),
            "gen_ai.usage.output_tokens" => self.output_tokens = Some(value),
            "azure.openai.throttled_answers" => self.throttled = value,
            _ => {}
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "gen_ai.response.time_to_first_chunk" {
            self.first_chunk = Some(value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_i64(field, i64::try_from(value).unwrap_or(i64::MAX));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `%value` fields arrive here; strings are what this layer keeps.
        if ATTRIBUTES.contains(&field.name()) {
            self.record_str(field, &format!("{value:?}"));
        }
    }
}

impl<S> Layer<S> for GenAiMetrics
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut call = ChatCall {
            started: Instant::now(),
            strings: Vec::new(),
            port: None,
            input_tokens: None,
            output_tokens: None,
            throttled: 0,
            first_chunk: None,
        };
        attrs.record(&mut call);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(call);
        }
    }

    fn on_record(&self, id: &span::Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(call) = extensions.get_mut::<ChatCall>() {
            values.record(call);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(call) = span.extensions_mut().remove::<ChatCall>() else { return };
        let attributes = call.attributes();
        self.duration.record(call.started.elapsed().as_secs_f64(), &attributes);
        if let Some(seconds) = call.first_chunk {
            self.first_chunk.record(seconds, &attributes);
        }
        if let Ok(throttled) = u64::try_from(call.throttled)
            && throttled > 0
        {
            self.throttled.add(throttled, &attributes);
        }
        for (kind, count) in [("input", call.input_tokens), ("output", call.output_tokens)] {
            if let Some(count) = count.and_then(|c| u64::try_from(c).ok()) {
                let mut attributes = attributes.clone();
                attributes.push(KeyValue::new("gen_ai.token.type", kind));
                self.tokens.record(count, &attributes);
            }
        }
    }
}
