//! The span recorder: the subscriber layer that turns the handler's `tracing` spans into
//! OpenTelemetry spans (`SpanData`) and hands each finished one to the span processors of
//! [`super::export`] (Application Insights, OTLP). It is the only place trace and span ids are
//! made, sampled and read, so both destinations see the same trace.
//!
//! Why not `tracing-opentelemetry` plus the SDK's tracer: measured, that pair cost more per
//! request than everything else telemetry does (a builder, a lock and a context per span, every
//! field through a generic visitor twice; BENCHMARKS.md, "Application Insights export"). Here a
//! span is one plain record in the registry's extensions, filled as fields are recorded and moved
//! out whole when the span closes.
//!
//! What a span becomes:
//! - name: `otel.name`, else the span's name; kind: `otel.kind` (`server`, `client`, `consumer`,
//!   `producer`, else internal); status: `otel.status_code` (`error`, `ok`), or error after an
//!   ERROR event inside it;
//! - every other field an attribute, with its type (u64 as i64 when it fits);
//! - events inside it (only when OTLP exports spans: Application Insights drops them): the
//!   `message` is the name, the other fields and `level` the attributes; [`add_event`] adds one
//!   directly.
//!
//! Ids and sampling: a root span gets a random trace id, or the caller's when made inside
//! [`continuing`], and is kept or not by [`super::sampler`] (with a parent-based sampler, by the
//! caller's sampled flag); a child inherits both. An unsampled span keeps its ids (its
//! `traceparent` says "not sampled") but records nothing. A
//! kept span below 100 % carries its trace's percentage as `microsoft.sample_rate`, as the Azure
//! Monitor distros' spans do.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks, SpanProcessor};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Level, Span, Subscriber};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::sampler::{Decision, Sampler};
use crate::config::TraceSampling;

/// The attribute that carries a kept span's sampling percentage (what Application Insights
/// calls `sampleRate`).
pub const SAMPLE_RATE: &str = "microsoft.sample_rate";

/// Where finished spans go: the export pipeline's processors.
pub type Processors = Arc<[Box<dyn SpanProcessor>]>;

/// The layer; see the module documentation.
pub struct Recorder {
    processors: Processors,
    sampler: Sampler,
    scope: InstrumentationScope,
    /// Log events inside spans become span events (OTLP only).
    events: bool,
}

impl Recorder {
    pub fn new(processors: Processors, sampling: TraceSampling, scope: InstrumentationScope, events: bool) -> Self {
        Self { processors, sampler: Sampler::new(sampling), scope, events }
    }
}

/// One span while it is open: in the registry's extensions.
struct Recording {
    context: SpanContext,
    parent: SpanId,
    parent_remote: bool,
    /// The percentage of its trace's kind that were kept (100: all).
    percent: f64,
    name: Cow<'static, str>,
    kind: SpanKind,
    status: Status,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    events: Vec<Event>,
}

impl Recording {
    fn sampled(&self) -> bool {
        self.context.is_sampled()
    }

    fn decision(&self) -> Decision {
        Decision { sampled: self.sampled(), percent: self.percent }
    }
}

fn random_span_id() -> SpanId {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return SpanId::from(id);
        }
    }
}

fn random_trace_id() -> TraceId {
    loop {
        let id = rand::random::<u128>();
        if id != 0 {
            return TraceId::from(id);
        }
    }
}

fn flags(sampled: bool) -> TraceFlags {
    if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() }
}

/// Where visited field values go: [`FieldValues`] turns each field into an OpenTelemetry value
/// (u64 as i64 when it fits, `Debug`/`Display` as text) and hands it over.
trait FieldSink {
    fn put(&mut self, name: &'static str, value: Value);
}

struct FieldValues<'a, T>(&'a mut T);

impl<T: FieldSink> Visit for FieldValues<'_, T> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.put(field.name(), Value::from(value.to_owned()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `%value` fields arrive here too, formatted with Display.
        self.0.put(field.name(), Value::from(format!("{value:?}")));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.put(field.name(), Value::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let value = i64::try_from(value).map_or_else(|_| Value::from(value.to_string()), Value::I64);
        self.0.put(field.name(), value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.put(field.name(), Value::F64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.put(field.name(), Value::Bool(value));
    }
}

/// Span fields: `otel.*` set name, kind and status, the rest are attributes.
impl FieldSink for Recording {
    fn put(&mut self, name: &'static str, value: Value) {
        let text = || value.as_str();
        match name {
            "otel.name" => self.name = Cow::Owned(text().into_owned()),
            "otel.kind" => {
                self.kind = match text().as_ref() {
                    "server" => SpanKind::Server,
                    "client" => SpanKind::Client,
                    "consumer" => SpanKind::Consumer,
                    "producer" => SpanKind::Producer,
                    _ => SpanKind::Internal,
                }
            }
            "otel.status_code" => {
                let code = text();
                if code.eq_ignore_ascii_case("error") {
                    self.status = Status::error("");
                } else if code.eq_ignore_ascii_case("ok") {
                    self.status = Status::Ok;
                }
            }
            "otel.status_description" => {
                if let Status::Error { .. } = self.status {
                    self.status = Status::error(text().into_owned());
                }
            }
            _ => self.attributes.push(KeyValue::new(name, value)),
        }
    }
}

/// Event fields: `message` names the event, `log.*` (from the `log` bridge) is left out.
impl FieldSink for Event {
    fn put(&mut self, name: &'static str, value: Value) {
        match name {
            "message" => self.name = Cow::Owned(value.as_str().into_owned()),
            name if name.starts_with("log.") => {}
            name => self.attributes.push(KeyValue::new(name, value)),
        }
    }
}

impl<S> Layer<S> for Recorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        // The nearest recorded ancestor (spans this layer filters out are skipped).
        let parent = span.parent().and_then(|parent| {
            let extensions = parent.extensions();
            extensions
                .get::<Recording>()
                .map(|p| (p.context.trace_id(), p.context.span_id(), p.decision(), p.context.trace_state().clone()))
        });
        let caller = if parent.is_none() { CALLER.with(|caller| caller.borrow_mut().take()) } else { None };
        let (trace_id, parent_id, decision, state) = match (parent, &caller) {
            (Some((trace_id, parent_id, decision, state)), _) => (trace_id, parent_id, decision, state),
            (None, Some(caller)) => {
                let decision = self.sampler.continued(caller, self.sampler.new_trace(caller.trace_id()));
                (caller.trace_id(), caller.span_id(), decision, caller.trace_state().clone())
            }
            (None, None) => {
                let trace_id = random_trace_id();
                (trace_id, SpanId::INVALID, self.sampler.new_trace(trace_id), TraceState::NONE)
            }
        };
        let sampled = decision.sampled;
        let mut recording = Recording {
            context: SpanContext::new(trace_id, random_span_id(), flags(sampled), false, state),
            parent: parent_id,
            parent_remote: caller.is_some(),
            percent: decision.percent,
            name: Cow::Borrowed(attrs.metadata().name()),
            kind: SpanKind::Internal,
            status: Status::Unset,
            start: SystemTime::now(),
            attributes: Vec::new(),
            events: Vec::new(),
        };
        if sampled {
            recording.attributes.reserve(attrs.fields().len());
            attrs.record(&mut FieldValues(&mut recording));
        }
        span.extensions_mut().insert(recording);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(recording) = extensions.get_mut::<Recording>().filter(|r| r.sampled()) {
            values.record(&mut FieldValues(recording));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if !self.events {
            return;
        }
        let span = match event.parent() {
            Some(id) => ctx.span(id),
            None if event.is_contextual() => ctx.lookup_current(),
            None => None,
        };
        let Some(span) = span else { return };
        let mut extensions = span.extensions_mut();
        let Some(recording) = extensions.get_mut::<Recording>().filter(|r| r.sampled()) else { return };
        let meta = event.metadata();
        let level = KeyValue::new("level", meta.level().as_str());
        let mut span_event = Event::new(meta.name(), SystemTime::now(), vec![level], 0);
        event.record(&mut FieldValues(&mut span_event));
        if *meta.level() == Level::ERROR && recording.status == Status::Unset {
            recording.status = Status::error("");
        }
        recording.events.push(span_event);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(mut recording) = span.extensions_mut().remove::<Recording>() else { return };
        if !recording.sampled() || self.processors.is_empty() {
            return;
        }
        if recording.percent < 100.0 {
            recording.attributes.push(KeyValue::new(SAMPLE_RATE, recording.percent));
        }
        let mut events = SpanEvents::default();
        events.events = recording.events;
        let data = SpanData {
            span_context: recording.context,
            parent_span_id: recording.parent,
            parent_span_is_remote: recording.parent_remote,
            span_kind: recording.kind,
            name: recording.name,
            start_time: recording.start,
            end_time: SystemTime::now(),
            attributes: recording.attributes,
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: recording.status,
            instrumentation_scope: self.scope.clone(),
        };
        let (last, others) = self.processors.split_last().expect("not empty");
        for processor in others {
            processor.on_end(data.clone());
        }
        last.on_end(data);
    }
}

/// Runs `f` on `span`'s recording, if the recorder is installed and recorded it.
fn with_recording<R>(span: &Span, f: impl FnOnce(&Recorder, &mut Recording) -> R) -> Option<R> {
    span.with_subscriber(|(id, dispatch)| {
        let recorder = dispatch.downcast_ref::<Recorder>()?;
        let registry = dispatch.downcast_ref::<Registry>()?;
        let span = registry.span(id)?;
        let mut extensions = span.extensions_mut();
        extensions.get_mut::<Recording>().map(|recording| f(recorder, recording))
    })
    .flatten()
}

/// Whether spans are recorded (the recorder is installed).
pub fn active() -> bool {
    tracing::dispatcher::get_default(|dispatch| dispatch.is::<Recorder>())
}

/// Whether `span` is recorded and its trace kept: work that only an exported span reads (the
/// chat span's hashes) is skipped for the others.
pub fn sampled(span: &Span) -> bool {
    with_recording(span, |_, recording| recording.sampled()).unwrap_or(false)
}

/// Whether `span` is recorded but its trace is not kept: its children need not exist.
pub fn unsampled(span: &Span) -> bool {
    with_recording(span, |_, recording| !recording.sampled()).unwrap_or(false)
}

/// Runs `make`, which creates a root span, so that the span continues the caller's trace
/// `parent` (its `traceparent`/`tracestate`): the caller's trace id, its span as the parent, its
/// trace state, and one sampling decision on them (with a parent-based sampler, the caller's
/// flag). Deciding at creation means an unexported span records none of its fields. Without
/// the recorder (or without a parent), `make` runs as is.
pub fn continuing<T>(parent: Option<&SpanContext>, make: impl FnOnce() -> T) -> T {
    /// Clears what no root span took (no recorder, the span filtered out), even if `make`
    /// panics: the next root span on this thread must not join a stranger's trace.
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            CALLER.with(|caller| caller.borrow_mut().take());
        }
    }
    let Some(parent) = parent else { return make() };
    CALLER.with(|caller| *caller.borrow_mut() = Some(parent.clone()));
    let _clear = Clear;
    make()
}

thread_local! {
    /// The caller's context for the root span being made by [`continuing`] on this thread.
    static CALLER: RefCell<Option<SpanContext>> = const { RefCell::new(None) };
}

/// The span context of `span` (for an outgoing `traceparent`), if it is recorded.
pub fn span_context(span: &Span) -> Option<SpanContext> {
    with_recording(span, |_, recording| recording.context.clone())
}

/// Adds an event to `span` (kept spans only).
pub fn add_event(span: &Span, name: &'static str, attributes: Vec<KeyValue>) {
    with_recording(span, |_, recording| {
        if recording.sampled() {
            recording.events.push(Event::new(name, SystemTime::now(), attributes, 0));
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry_sdk::error::OTelSdkResult;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Keeps the finished spans.
    #[derive(Debug, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Kept {
        fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    /// Runs `f` under a subscriber with the recorder; returns the finished spans.
    fn record(sampling: TraceSampling, f: impl FnOnce()) -> Vec<SpanData> {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let processors: Processors = Arc::from(vec![Box::new(Kept(kept.clone())) as Box<dyn SpanProcessor>]);
        let scope = InstrumentationScope::builder("test").build();
        let subscriber = Registry::default().with(Recorder::new(processors, sampling, scope, true));
        tracing::subscriber::with_default(subscriber, f);
        kept.lock().unwrap().drain(..).collect()
    }

    fn caller(sampled: bool) -> SpanContext {
        SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            flags(sampled),
            true,
            TraceState::from_key_value([("congo", "t61rcWkgMzE")]).unwrap(),
        )
    }

    #[test]
    fn a_span_continues_the_callers_trace_and_its_child_follows() {
        let mut sent = None;
        let spans = record(TraceSampling::default(), || {
            let root = continuing(Some(&caller(true)), || {
                tracing::info_span!("invocation", otel.name = "POST /api/x", otel.kind = "server", n = 3_u64)
            });
            root.in_scope(|| {
                let chat = tracing::info_span!("chat", otel.kind = "client", otel.status_code = tracing::field::Empty);
                chat.record("otel.status_code", "error");
                add_event(&chat, "azure.openai.error_response", vec![KeyValue::new("http.response.status_code", 429)]);
                chat.in_scope(|| tracing::info!(attempt = 2, "retrying"));
                sent = span_context(&chat);
            });
        });
        let [chat, root] = &spans[..] else { panic!("two spans: {spans:#?}") };
        assert_eq!(root.name, "POST /api/x");
        assert_eq!(root.span_kind, SpanKind::Server);
        assert_eq!(root.span_context.trace_id(), caller(true).trace_id());
        assert_eq!((root.parent_span_id, root.parent_span_is_remote), (caller(true).span_id(), true));
        assert!(root.attributes.contains(&KeyValue::new("n", 3_i64)), "{:?}", root.attributes);
        assert_eq!(chat.span_context.trace_id(), caller(true).trace_id());
        assert_eq!(chat.parent_span_id, root.span_context.span_id());
        assert_eq!(chat.status, Status::error(""));
        let events: Vec<&str> = chat.events.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(events, ["azure.openai.error_response", "retrying"]);
        assert_eq!(sent.as_ref().map(SpanContext::span_id), Some(chat.span_context.span_id()));
        // The caller's trace state goes on with the trace, to the child and what it sends.
        assert_eq!(chat.span_context.trace_state().header(), "congo=t61rcWkgMzE");
        assert_eq!(sent.map(|s| s.trace_state().header()).as_deref(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn a_kept_trace_below_all_carries_its_percentage_on_every_span() {
        // Application Insights' score of this trace id is 0.023: kept at 60 %.
        let kept = SpanContext::new(
            TraceId::from_hex("00000000000000000000000000000001").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::default(),
            true,
            TraceState::NONE,
        );
        let spans = record(TraceSampling::FixedPercentage { ratio: 0.6 }, || {
            let root = continuing(Some(&kept), || tracing::info_span!("invocation"));
            root.in_scope(|| drop(tracing::info_span!("chat")));
        });
        assert_eq!(spans.len(), 2, "the caller's unsampled flag is not followed: {spans:#?}");
        for span in &spans {
            assert!(span.attributes.contains(&KeyValue::new(SAMPLE_RATE, 60.0)), "{:?}", span.attributes);
        }
        // At 100 % nothing is added.
        let spans = record(TraceSampling::default(), || drop(tracing::info_span!("invocation")));
        assert!(spans[0].attributes.iter().all(|kv| kv.key.as_str() != SAMPLE_RATE), "{:?}", spans[0].attributes);
    }

    #[test]
    fn an_unsampled_caller_exports_nothing_but_propagates_its_trace() {
        let mut sent = None;
        let spans = record(TraceSampling::default(), || {
            let root = continuing(Some(&caller(false)), || tracing::info_span!("invocation"));
            root.in_scope(|| sent = span_context(&tracing::info_span!("chat")));
        });
        assert!(spans.is_empty(), "{spans:#?}");
        let sent = sent.expect("a context to send");
        assert_eq!((sent.trace_id(), sent.is_sampled()), (caller(false).trace_id(), false));
        // A ratio sampler that is not parent-based decides on the caller's trace id itself.
        let spans = record(TraceSampling::Ratio { parent_based: false, ratio: 1.0 }, || {
            let _root = continuing(Some(&caller(false)), || tracing::info_span!("invocation"));
        });
        assert_eq!(spans.len(), 1);
    }

    #[test]
    fn a_caller_not_taken_by_a_span_is_not_left_for_the_next_one() {
        let spans = record(TraceSampling::default(), || {
            continuing(Some(&caller(true)), || ());
            drop(tracing::info_span!("invocation"));
        });
        assert_ne!(spans[0].span_context.trace_id(), caller(true).trace_id(), "a trace of its own");
        assert_eq!(spans[0].parent_span_id, SpanId::INVALID);
    }
}
