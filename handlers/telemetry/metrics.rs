//! GenAI client metrics, recorded by [`super::genai::ChatSpan::finish`] from what the call
//! measured, for every call whatever `RUST_LOG` says and whether or not its trace is sampled
//! (metrics are never sampled). The Azure OpenAI client needs no metrics handle of its own: the
//! metrics sit in the subscriber, where the chat span finds them.
//!
//! Why not a layer reading the chat span's fields: measured, visiting every field of every chat
//! span cost more than the histograms themselves, and it forced a chat span to exist even in a
//! trace that is not exported.
//!
//! - `gen_ai.client.token.usage` (histogram, `{token}`, by `gen_ai.token.type` input/output);
//! - `gen_ai.client.operation.duration` (histogram, seconds, with `error.type` on failure);
//! - `gen_ai.client.operation.time_to_first_chunk` (histogram, seconds): streamed calls only,
//!   from the call's start to the first content passed on;
//! - `azure.openai.throttled_requests` (counter): every 429 answer, retried or not.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use tracing::Subscriber;
use tracing_subscriber::Layer;

use super::genai::PROVIDER;

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

/// What one finished chat call measured (see [`super::genai::ChatSpan::finish`]).
#[derive(Debug, Clone, Copy)]
pub struct ChatMeasure<'a> {
    pub request_model: &'a str,
    /// Set when the call was answered.
    pub response_model: Option<&'a str>,
    pub server: (&'a str, Option<u16>),
    /// Set when the call failed: the error's code.
    pub error_type: Option<&'a str>,
    /// From the call's start to its end, waits and retries included.
    pub duration: Duration,
    /// Streamed calls: seconds to the first content passed on.
    pub first_chunk: Option<f64>,
    /// 429 answers.
    pub throttled: u32,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

impl GenAiMetrics {
    /// Whether the metrics are installed (an exporter of metrics is configured).
    pub fn installed() -> bool {
        tracing::dispatcher::get_default(|dispatch| dispatch.is::<GenAiMetrics>())
    }

    /// Records one call into the installed metrics, if any.
    pub fn record(call: &ChatMeasure<'_>) {
        tracing::dispatcher::get_default(|dispatch| {
            if let Some(metrics) = dispatch.downcast_ref::<GenAiMetrics>() {
                metrics.measure(call);
            }
        });
    }

    fn measure(&self, call: &ChatMeasure<'_>) {
        let mut attributes = Vec::with_capacity(8);
        attributes.extend([
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.provider.name", PROVIDER),
            KeyValue::new("gen_ai.request.model", call.request_model.to_owned()),
            KeyValue::new("server.address", call.server.0.to_owned()),
        ]);
        if let Some(port) = call.server.1 {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        if let Some(model) = call.response_model {
            attributes.push(KeyValue::new("gen_ai.response.model", model.to_owned()));
        }
        if let Some(error) = call.error_type {
            attributes.push(KeyValue::new("error.type", error.to_owned()));
        }
        self.duration.record(call.duration.as_secs_f64(), &attributes);
        if let Some(seconds) = call.first_chunk {
            self.first_chunk.record(seconds, &attributes);
        }
        if call.throttled > 0 {
            self.throttled.add(u64::from(call.throttled), &attributes);
        }
        for (kind, count) in [("input", call.input_tokens), ("output", call.output_tokens)] {
            if let Some(count) = count {
                attributes.push(KeyValue::new("gen_ai.token.type", kind));
                self.tokens.record(count, &attributes);
                attributes.pop();
            }
        }
    }
}

/// A layer only so that [`GenAiMetrics::record`] finds the metrics through the subscriber (the
/// one global): it is installed under a filter that enables nothing, so it sees no span or event
/// and costs nothing per call.
impl<S: Subscriber> Layer<S> for GenAiMetrics {}
