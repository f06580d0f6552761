//! The HTTP listener: login, refresh and logout as in the seed example, `/healthz` and
//! `/readyz`, and the one mapping of session errors onto HTTP.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::model::Secret;
use crate::session::{SessionError, SessionManager, SessionTokens};

/// Largest request body accepted, in bytes.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Sessions.
    pub sessions: Arc<SessionManager>,
    /// False until serving and again once shutdown starts.
    pub ready: Arc<AtomicBool>,
}

/// The HTTP routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogoutBody {
    token: Option<String>,
}

/// An error answer: `{ "error": code, "reason": text }`.
fn error_response(status: StatusCode, code: &str, reason: &str) -> Response {
    (status, Json(json!({ "error": code, "reason": reason }))).into_response()
}

/// Parses a JSON body; on failure, the 400 answer naming the field and position.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|error| {
        Box::new(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("request body: {error}"),
        ))
    })
}

fn session_error_response(error: &SessionError) -> Response {
    match error {
        SessionError::InvalidLogin => {
            error_response(StatusCode::UNAUTHORIZED, "invalid_credentials", &error.to_string())
        }
        SessionError::InvalidRefresh => {
            error_response(StatusCode::UNAUTHORIZED, "invalid_grant", &error.to_string())
        }
        SessionError::BadField { .. } => {
            error_response(StatusCode::BAD_REQUEST, "invalid_request", &error.to_string())
        }
        SessionError::RateLimited { retry_after } => {
            let mut response =
                error_response(StatusCode::TOO_MANY_REQUESTS, "rate_limited", &error.to_string());
            if let Ok(value) = HeaderValue::from_str(&retry_after.as_secs().to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        SessionError::Internal(_) => {
            tracing::error!("session operation failed: {error}");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "session service failed")
        }
    }
}

fn tokens_response(tokens: &SessionTokens) -> Response {
    let expires_in = tokens.expires_at.saturating_sub(crate::model::unix_now()).max(0);
    let mut response = Json(json!({
        "token": tokens.access_token.expose(),
        "access_token": tokens.access_token.expose(),
        "token_type": "Bearer",
        "expires_in": expires_in,
        "expires_at": tokens.expires_at,
        "refresh_token": tokens.refresh_token.expose(),
        "refresh_expires_at": tokens.refresh_expires_at,
    }))
    .into_response();
    // RFC 6749 §5.1: token responses must not be cached.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn login(
    State(state): State<HttpState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let body: LoginBody = match parse_body(&body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    match state.sessions.login(&body.username, &Secret::new(body.password), Some(client.ip())).await {
        Ok(tokens) => tokens_response(&tokens),
        Err(error) => session_error_response(&error),
    }
}

async fn refresh(State(state): State<HttpState>, body: Bytes) -> Response {
    let body: RefreshBody = match parse_body(&body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    match state.sessions.refresh(&Secret::new(body.refresh_token)).await {
        Ok(tokens) => tokens_response(&tokens),
        Err(error) => session_error_response(&error),
    }
}

/// Revokes the session of the `token` in the body, or else of the bearer token in
/// `Authorization`.
async fn logout(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let from_body = if body.is_empty() {
        None
    } else {
        match parse_body::<LogoutBody>(&body) {
            Ok(body) => body.token,
            Err(response) => return *response,
        }
    };
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| crate::credential::parse_authorization(value, MAX_BODY_BYTES).ok().flatten())
        .map(|credential| credential.secret.expose().to_owned());
    let Some(token) = from_body.or(from_header) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send `token` in the body or a bearer token",
        );
    };
    match state.sessions.logout(&Secret::new(token)).await {
        Ok(revoked) => Json(json!({ "revoked": revoked })).into_response(),
        Err(error) => session_error_response(&error),
    }
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}
