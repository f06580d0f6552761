//! Envoy's external authorization API, `envoy.service.auth.v3.Authorization/Check`, on the
//! gRPC port: the one mapping between Envoy's `CheckRequest`/`CheckResponse` and
//! [`GatewayRequest`]/[`GatewayAnswer`].
//!
//! The RPC itself always succeeds: the decision travels in `CheckResponse.status` and the
//! HTTP response Envoy should give, as Envoy expects. A gRPC error would only make Envoy fall
//! back on its own `status_on_error`.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue,
    HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use crate::gateway::{Gateway, GatewayAnswer, GatewayRequest, Wire};

use crate::model::Decision;
use crate::telemetry::trace;
pub use envoy_types::ext_authz::v3::pb::AuthorizationServer;

/// `envoy.service.auth.v3.Authorization`.
#[derive(Debug, Clone)]
pub struct ExtAuthzService {
    gateway: Arc<Gateway>,
}

impl ExtAuthzService {
    /// Answers Envoy with `gateway`'s decisions.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let request = gateway_request(message);
        let attributes = || {
            vec![
                trace::attribute("rpc.system", "grpc"),
                trace::attribute("rpc.service", "envoy.service.auth.v3.Authorization"),
                trace::attribute("rpc.method", "Check"),
                trace::attribute("rpc.grpc.status_code", 0_i64),
            ]
        };
        const NAME: &str = "envoy.service.auth.v3.Authorization/Check";
        // The client's trace, as Envoy forwards its headers; else the one of Envoy's own call.
        let span = if request.header("traceparent").is_some() {
            trace::Span::server(NAME, attributes, |name| request.header(name))
        } else {
            trace::Span::server(NAME, attributes, |name| {
                metadata.get(name).and_then(|value| value.to_str().ok())
            })
        };
        let answer = span.run(self.gateway.check(&request)).await;
        // Only an MCP exchange is followed by cedargate's ext_proc filter.
        let identity = self.gateway.is_mcp_exchange(&request);
        Ok(Response::new(check_response(answer, identity)))
    }
}

fn gateway_request(request: CheckRequest) -> GatewayRequest {
    let attributes = request.attributes.unwrap_or_default();
    let http = attributes.request.and_then(|request| request.http).unwrap_or_default();
    // Envoy sends either the `headers` map or, with `encode_raw_headers`, the `header_map`.
    let headers: Vec<(String, String)> = if http.headers.is_empty() {
        http.header_map
            .map(|map| {
                map.headers
                    .into_iter()
                    .map(|header| {
                        let value = if header.raw_value.is_empty() {
                            header.value
                        } else {
                            String::from_utf8(header.raw_value).unwrap_or_else(|error| {
                                String::from_utf8_lossy(error.as_bytes()).into_owned()
                            })
                        };
                        (lowercase(header.key), value)
                    })
                    .collect()
            })
            .unwrap_or_default()
    } else {
        http.headers.into_iter().map(|(key, value)| (lowercase(key), value)).collect()
    };
    let body = if http.raw_body.is_empty() { http.body.into_bytes() } else { http.raw_body };
    let source = attributes.source.unwrap_or_default();
    let source_ip = match source.address.and_then(|address| address.address) {
        Some(Address::SocketAddress(socket)) => socket.address,
        _ => String::new(),
    };
    let mut extensions: Vec<(String, String)> = attributes.context_extensions.into_iter().collect();
    extensions.sort();
    GatewayRequest {
        method: http.method,
        path: http.path,
        host: http.host,
        headers,
        body,
        source_ip,
        source_principal: source.principal,
        extensions,
        wire: Wire::EnvoyGrpc,
        // Envoy itself is the caller of the gRPC port; the tenant header it forwards is
        // believed as any header it sets (docs/security.md: it must overwrite it).
        from_trusted_proxy: true,
    }
}

/// `name` in lower case, in place: Envoy already sends names in lower case, so this usually
/// changes nothing and never allocates.
fn lowercase(mut name: String) -> String {
    name.make_ascii_lowercase();
    name
}

/// The answer to Envoy; `identity` adds the caller's whole identity to the metadata.
fn check_response(answer: GatewayAnswer, identity: bool) -> CheckResponse {
    match answer {
        GatewayAnswer::Allow { set_headers, remove_headers, remove_query, decision, mcp } => CheckResponse {
            status: Some(rpc::Status { code: tonic::Code::Ok as i32, ..Default::default() }),
            dynamic_metadata: Some(metadata(&decision, mcp.as_deref().filter(|_| identity))),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: set_headers.into_iter().map(overwrite).collect(),
                headers_to_remove: remove_headers,
                query_parameters_to_remove: remove_query,
                ..Default::default()
            })),
        },
        GatewayAnswer::Deny { refusal, headers, body, decision } => {
            let code = super::grpc::code_of(refusal);
            CheckResponse {
                status: Some(rpc::Status { code: code as i32, ..Default::default() }),
                dynamic_metadata: decision.as_deref().map(|decision| metadata(decision, None)),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: i32::from(refusal.http_status()) }),
                    headers: headers.into_iter().map(overwrite).collect(),
                    body,
                })),
            }
        }
    }
}

fn overwrite((key, value): (String, String)) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key, value, ..Default::default() }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..Default::default()
    }
}

/// The identity and decision for other Envoy filters (rate limits, access logs), found under
/// the ext_authz filter's namespace, `envoy.filters.http.ext_authz`. For an MCP exchange
/// (`mcp`: the facts and server it was decided with), also what cedargate's ext_proc filter
/// decides the exchange's list entries with: the whole identity (`auth_info`), the facts
/// (`facts`) and the server (`server`), as JSON.
fn metadata(decision: &Decision, mcp: Option<&(crate::model::Extra, String)>) -> Struct {
    let string = |text: &str| Value { kind: Some(Kind::StringValue(text.to_owned())) };
    let list = |items: &[String]| Value {
        kind: Some(Kind::ListValue(ListValue { values: items.iter().map(|item| string(item)).collect() })),
    };
    let mut fields = HashMap::with_capacity(8);
    fields.insert("decision_id".to_owned(), string(&decision.decision_id));
    fields.insert("policy_ids".to_owned(), list(&decision.policy_ids));
    if let Some(auth) = decision.auth_info.as_deref() {
        fields.insert("subject".to_owned(), string(&auth.subject));
        fields.insert("client_id".to_owned(), string(&auth.client_id));
        fields.insert("scopes".to_owned(), list(&auth.scopes));
        fields.insert("roles".to_owned(), list(&auth.roles));
        fields.insert("tenant".to_owned(), string(&auth.tenant));
        fields.insert("credential_kind".to_owned(), string(auth.kind.as_str()));
        if mcp.is_some() {
            match super::json::auth_info_json(auth) {
                Ok(json) => {
                    fields.insert("auth_info".to_owned(), string(&json));
                }
                Err(error) => tracing::error!(%error, "the identity could not be written for ext_proc"),
            }
        }
    }
    // For cedargate's ext_proc filter on the same request, which may no longer see the
    // credential (removed on the way upstream), and never sees the route's context extensions.
    if let Some((facts, server)) = mcp {
        let facts: serde_json::Map<String, serde_json::Value> = facts.clone().into_iter().collect();
        fields.insert("facts".to_owned(), string(&serde_json::Value::Object(facts).to_string()));
        fields.insert("server".to_owned(), string(server));
    }
    Struct { fields }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{self as core, socket_address::PortSpecifier};
    use envoy_types::pb::envoy::service::auth::v3::{attribute_context, AttributeContext};

    use super::*;
    use crate::model::Refusal;

    fn check_request(http: attribute_context::HttpRequest) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(attribute_context::Peer {
                    address: Some(core::Address {
                        address: Some(Address::SocketAddress(core::SocketAddress {
                            address: "10.1.2.3".into(),
                            port_specifier: Some(PortSpecifier::PortValue(4242)),
                            ..Default::default()
                        })),
                    }),
                    principal: "spiffe://example.org/client".into(),
                    ..Default::default()
                }),
                request: Some(attribute_context::Request { http: Some(http), ..Default::default() }),
                context_extensions: [("tool".to_owned(), "echo".to_owned())].into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn header_map_raw_values_source_and_extensions_are_read() {
        let http = attribute_context::HttpRequest {
            method: "POST".into(),
            path: "/mcp?x=1".into(),
            host: "api.example".into(),
            header_map: Some(core::HeaderMap {
                headers: vec![
                    HeaderValue {
                        key: "Authorization".into(),
                        raw_value: b"Bearer t".to_vec(),
                        ..Default::default()
                    },
                    HeaderValue { key: "x-plain".into(), value: "v".into(), ..Default::default() },
                ],
            }),
            raw_body: b"{}".to_vec(),
            ..Default::default()
        };
        let request = gateway_request(check_request(http));
        assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/mcp?x=1"));
        assert_eq!(request.header("authorization"), Some("Bearer t"));
        assert_eq!(request.header("x-plain"), Some("v"));
        assert_eq!(request.body, b"{}");
        assert_eq!(request.source_ip, "10.1.2.3");
        assert_eq!(request.source_principal, "spiffe://example.org/client");
        assert_eq!(request.extensions, [("tool".to_owned(), "echo".to_owned())]);
    }

    #[test]
    fn the_headers_map_and_a_text_body_are_read_too() {
        let http = attribute_context::HttpRequest {
            headers: [("Authorization".to_owned(), "Bearer u".to_owned())].into(),
            body: "text".into(),
            ..Default::default()
        };
        let request = gateway_request(check_request(http));
        assert_eq!(request.header("authorization"), Some("Bearer u"));
        assert_eq!(request.body, b"text");
    }

    #[test]
    fn denials_map_onto_grpc_codes_and_an_http_response() {
        for (refusal, status, code) in [
            (Refusal::InvalidRequest, 400, tonic::Code::InvalidArgument),
            (Refusal::Unauthenticated, 401, tonic::Code::Unauthenticated),
            (Refusal::Forbidden, 403, tonic::Code::PermissionDenied),
            (Refusal::Unavailable, 503, tonic::Code::Unavailable),
        ] {
            let answer = GatewayAnswer::Deny {
                refusal,
                headers: vec![("www-authenticate".into(), "Bearer realm=\"x\"".into())],
                body: "{}".into(),
                decision: None,
            };
            let response = check_response(answer, false);
            assert_eq!(response.status.unwrap().code, code as i32);
            let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else { panic!() };
            assert_eq!(denied.status.unwrap().code, status);
            assert_eq!(denied.headers[0].header.as_ref().unwrap().key, "www-authenticate");
            assert_eq!(denied.body, "{}");
        }
    }
}
