//! Spans: W3C trace context from the caller, and the ids a decision record carries.
//!
//! Every span of cedargate has the target [`TARGET`]: only the OpenTelemetry layer sees them,
//! so with tracing off they are disabled at their call site and cost nothing.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The `tracing` target of cedargate's spans.
pub const TARGET: &str = "cedargate::trace";

/// Makes `span` a child of the caller's trace, from its `traceparent` and `tracestate`
/// (looked up by their lower-case names). A missing or malformed `traceparent` leaves the span
/// a new trace.
pub fn set_parent<'a>(span: &tracing::Span, header: impl Fn(&str) -> Option<&'a str>) {
    if span.is_disabled() {
        return;
    }
    let Some(traceparent) = header("traceparent") else { return };
    let carrier = Carrier { traceparent, tracestate: header("tracestate") };
    let context = TraceContextPropagator::new().extract(&carrier);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
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

/// The trace and span id of the current span, when one is being traced (hex, as W3C writes
/// them).
pub fn current_ids() -> Option<(String, String)> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| (span_context.trace_id().to_string(), span_context.span_id().to_string()))
}

/// Records `value` as the field `name` of the current span (declared `Empty` at its creation).
pub fn record(name: &'static str, value: &str) {
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record(name, value);
    }
}

/// The current span's ids as OpenTelemetry types, for a log record's trace context.
pub(super) fn current_context() -> Option<(opentelemetry::trace::TraceId, opentelemetry::trace::SpanId)> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| (span_context.trace_id(), span_context.span_id()))
}
