//! What the backends that talk to authorization servers share about HTTP.

/// Sends `request`, once more if the first attempt failed before any answer (typically a
/// pooled connection the server had closed, as after a restart); never after a timeout.
pub(crate) async fn send_once_more_on_reset(
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, reqwest::Error> {
    let retry = request.try_clone();
    match request.send().await {
        Err(error) if !error.is_timeout() => match retry {
            Some(retry) => retry.send().await,
            None => Err(error),
        },
        answer => answer,
    }
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
