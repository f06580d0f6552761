//! Spans, made with the OpenTelemetry SDK directly: W3C trace context from a caller, the
//! current span carried through the check by OpenTelemetry's `Context` (set while a future is
//! polled, or while a guard lives), and the ids a decision record carries.
//!
//! With tracing off no tracer is installed: a [`Span`] is `None`, and nothing is built (the
//! attributes are a closure, called only for a span that is made).

use std::borrow::Cow;
use std::future::Future;
use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{FutureExt as _, SpanKind, TraceContextExt, Tracer as _};
use opentelemetry::{Context, ContextGuard, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;

/// The tracer, installed by `telemetry::init_with_export` when spans are exported.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

pub(super) fn install(tracer: SdkTracer) {
    let _ = TRACER.set(tracer);
}

/// Whether spans are made at all.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// An attribute (`KeyValue`) for [`Span`]'s constructors.
pub fn attribute(key: &'static str, value: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(key, value)
}

/// What a span is, in OpenTelemetry's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The check as the wire received it.
    Server,
    /// A stage inside cedargate.
    Internal,
    /// A call cedargate makes (introspection, JWKS).
    Client,
}

/// A span being recorded, or nothing when tracing is off. It ends when the last handle to it
/// (this, or a future it runs) is dropped.
#[derive(Debug, Clone, Default)]
pub struct Span(Option<Context>);

impl Span {
    /// A server span, a child of the caller's trace when `header` finds a valid W3C
    /// `traceparent` (and `tracestate`); a missing or malformed one starts a new trace.
    pub fn server<'a>(
        name: impl Into<Cow<'static, str>>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
        header: impl Fn(&str) -> Option<&'a str>,
    ) -> Self {
        let Some(tracer) = TRACER.get() else { return Self(None) };
        let parent = match header("traceparent") {
            Some(traceparent) => {
                let carrier = Carrier { traceparent, tracestate: header("tracestate") };
                let parent = TraceContextPropagator::new().extract(&carrier);
                if parent.span().span_context().is_valid() {
                    parent
                } else {
                    Context::new()
                }
            }
            None => Context::new(),
        };
        Self::start(tracer, name.into(), SpanKind::Server, attributes(), &parent)
    }

    /// A span under the current one.
    pub fn child(
        name: impl Into<Cow<'static, str>>,
        kind: Kind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Self {
        let Some(tracer) = TRACER.get() else { return Self(None) };
        let kind = match kind {
            Kind::Server => SpanKind::Server,
            Kind::Internal => SpanKind::Internal,
            Kind::Client => SpanKind::Client,
        };
        Self::start(tracer, name.into(), kind, attributes(), &Context::current())
    }

    fn start(
        tracer: &SdkTracer,
        name: Cow<'static, str>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        parent: &Context,
    ) -> Self {
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, parent);
        Self(Some(parent.with_span(span)))
    }

    /// Whether this span is being made (tracing is on).
    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// Sets an attribute.
    pub fn set(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(context) = &self.0 {
            context.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Runs `future` with this span current.
    pub async fn run<F: Future>(&self, future: F) -> F::Output {
        match &self.0 {
            Some(context) => future.with_context(context.clone()).await,
            None => future.await,
        }
    }

    /// Makes this span current until the guard drops (synchronous code).
    #[must_use = "the span is current only while the guard lives"]
    pub fn enter(&self) -> Option<ContextGuard> {
        self.0.as_ref().map(|context| context.clone().attach())
    }
}

struct Carrier<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Sets an attribute on the current span, if one is being made.
pub fn record(key: &'static str, value: impl Into<opentelemetry::Value>) {
    if enabled() {
        Context::map_current(|context| context.span().set_attribute(KeyValue::new(key, value)));
    }
}

/// The trace and span id of the current span, when one is being made (hex, as W3C writes
/// them).
pub fn current_ids() -> Option<(String, String)> {
    current_context().map(|(trace_id, span_id)| (trace_id.to_string(), span_id.to_string()))
}

/// The current span's ids as OpenTelemetry types, for a log record's trace context.
pub(super) fn current_context() -> Option<(opentelemetry::trace::TraceId, opentelemetry::trace::SpanId)> {
    if !enabled() {
        return None;
    }
    Context::map_current(|context| {
        let span = context.span();
        let span_context = span.span_context();
        span_context.is_valid().then(|| (span_context.trace_id(), span_context.span_id()))
    })
}
