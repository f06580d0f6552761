//! The last line of defence at each server boundary: a panic in a handler becomes a
//! fail-closed answer (gRPC `INTERNAL`, HTTP 500), never a reset stream or an open door. The
//! process's panic hook (`telemetry::init`) writes the one log line.

use std::any::Any;

use axum::http::{header, HeaderValue, Response, StatusCode};
use tower_http::catch_panic::CatchPanicLayer;

/// What a panicking handler answers.
pub type PanicResponse = fn(Box<dyn Any + Send + 'static>) -> Response<String>;

/// For the gRPC server: a trailers-only `INTERNAL` answer. Envoy treats it as an ext_authz
/// failure (`failure_mode_allow: false`: denied); gRPC callers see an error, never an allow.
pub fn grpc_layer() -> CatchPanicLayer<PanicResponse> {
    CatchPanicLayer::custom(grpc_response as PanicResponse)
}

/// For the HTTP server: a 500 with a JSON body; nginx and Envoy deny on it.
pub fn http_layer() -> CatchPanicLayer<PanicResponse> {
    CatchPanicLayer::custom(http_response as PanicResponse)
}

fn grpc_response(_panic: Box<dyn Any + Send + 'static>) -> Response<String> {
    let mut response = Response::new(String::new());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static("13"));
    headers.insert("grpc-message", HeaderValue::from_static("internal%20error"));
    response
}

fn http_response(_panic: Box<dyn Any + Send + 'static>) -> Response<String> {
    let body = r#"{"error":"server_error","reason":"internal error"}"#.to_owned();
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::body::Body;
    use axum::http::Request;
    use tower::{Layer, Service, ServiceExt};

    use super::*;

    fn handler_bug(_: Request<Body>) -> std::future::Ready<Result<Response<Body>, Infallible>> {
        panic!("a handler bug")
    }

    async fn answer(layer: CatchPanicLayer<PanicResponse>) -> Response<axum::body::Body> {
        let mut service = layer.layer(tower::service_fn(handler_bug));
        let response = service.ready().await.unwrap().call(Request::new(Body::empty())).await.unwrap();
        response.map(Body::new)
    }

    #[tokio::test]
    async fn a_panicking_grpc_handler_answers_internal() {
        let response = answer(grpc_layer()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "13");
        assert_eq!(response.headers()["content-type"], "application/grpc");
    }

    #[tokio::test]
    async fn a_panicking_http_handler_answers_500_in_json() {
        let response = answer(http_layer()).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "server_error");
    }
}
