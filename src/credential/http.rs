//! What the backends that talk to authorization servers share about HTTP.

use std::time::Instant;

use crate::telemetry::metrics::metrics;
use crate::telemetry::trace;

/// Sends `request` to an authorization server of `backend` (`introspection`, `jwks`,
/// `discovery`) for `issuer` (configured, so a bounded label), once more if the first attempt
/// failed before any answer (typically a pooled connection the server had closed, as after a
/// restart); never after a timeout. A client span and the backend metrics record it; the span
/// shows the URL without its query (the body, which may carry a token, never); integers are
/// `i64`, as OpenTelemetry's conventions have them.
pub(crate) async fn send(
    backend: &'static str,
    issuer: &str,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, reqwest::Error> {
    let (client, request) = request.build_split();
    let request = request?;
    let span = trace::Span::child(request.method().as_str().to_owned(), trace::Kind::Client, || {
        let url = request.url();
        let mut full = url.clone();
        full.set_query(None);
        let _ = full.set_password(None);
        let _ = full.set_username("");
        vec![
            trace::attribute("http.request.method", request.method().as_str().to_owned()),
            trace::attribute("server.address", url.host_str().unwrap_or_default().to_owned()),
            trace::attribute("server.port", i64::from(url.port_or_known_default().unwrap_or_default())),
            trace::attribute("url.full", full.to_string()),
            trace::attribute("cedargate.backend", backend),
        ]
    });
    let started = Instant::now();
    let retry = request.try_clone();
    let answer = async {
        match client.execute(request).await {
            Err(error) if !error.is_timeout() => match retry {
                Some(retry) => client.execute(retry).await,
                None => Err(error),
            },
            answer => answer,
        }
    };
    let answer = span.run(answer).await;
    let ok = answer.as_ref().is_ok_and(|response| response.status().is_success());
    metrics().backend_request(backend, issuer, ok, started.elapsed());
    if let Ok(response) = &answer {
        span.set("http.response.status_code", i64::from(response.status().as_u16()));
    }
    answer
}

/// A reqwest error with its causes, without the URL (the URL is config; the token is only ever
/// in the body, which errors never show).
pub(crate) fn describe(error: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(error);
    while let Some(current) = cause {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&current.to_string());
        cause = current.source();
    }
    if text.is_empty() {
        text = "request failed".to_owned();
    }
    text
}
