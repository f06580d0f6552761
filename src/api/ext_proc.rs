//! Envoy's external processing API, `envoy.service.ext_proc.v3.ExternalProcessor/Process`, on
//! the gRPC port: the one mapping between Envoy's processing messages and a gateway
//! [`Exchange`].
//!
//! Envoy opens one stream per HTTP request and sends its parts as its `processing_mode` says;
//! the filter is configured to send the request headers and a buffered request body, and to
//! skip the response. cedargate answers each part in order, and asks for what it needs beyond
//! that per request (`mode_override`, which Envoy honours with `allow_mode_override`): nothing
//! more for a path that is not an MCP endpoint, else the response headers, and for a list
//! answer its body.
//!
//! The stream fails closed: a message out of order or a stream error ends it with a gRPC
//! error, and Envoy (with `failure_mode_allow: false`) answers the client with an error.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption, Metadata};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::{
    processing_mode::{BodySendMode, HeaderSendMode},
    ProcessingMode,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, external_processor_server::ExternalProcessor, processing_request,
    processing_response, BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse,
    HttpHeaders, ImmediateResponse, ProcessingRequest, ProcessingResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::Struct;
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::json::auth_info_from_record;
use crate::gateway::exchange::{Body, Decided, Exchange, Interest, Reply};
use crate::gateway::listing::Trimmed;
use crate::gateway::{Gateway, GatewayRequest, Wire};
use crate::model::Extra;
pub use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;

/// The dynamic metadata namespace cedargate's ext_authz answer fills (`api::ext_authz`).
const EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// `envoy.service.ext_proc.v3.ExternalProcessor`.
#[derive(Debug, Clone)]
pub struct ExtProcService {
    gateway: Arc<Gateway>,
}

impl ExtProcService {
    /// Follows exchanges for `gateway`.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

type Answers = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = Answers;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut messages = request.into_inner();
        // One answer per message, in order: Envoy waits for each before sending the next.
        let (answers, rx) = mpsc::channel(1);
        let gateway = Arc::clone(&self.gateway);
        tokio::spawn(async move {
            let mut exchange: Option<Exchange> = None;
            loop {
                let message = match messages.message().await {
                    Ok(Some(message)) => message,
                    // Envoy ended the stream: the exchange is over.
                    Ok(None) => break,
                    // It broke, or a message was too large to read: Envoy must not take the
                    // end of the stream for a go-ahead.
                    Err(status) => {
                        let _ = answers.send(Err(status)).await;
                        break;
                    }
                };
                let answer = answer(&gateway, &mut exchange, message).await;
                let last = answer.as_ref().map_or(true, |answer| {
                    matches!(answer.response, Some(processing_response::Response::ImmediateResponse(_)))
                });
                if answers.send(answer).await.is_err() || last {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The answer to one processing message.
async fn answer(
    gateway: &Arc<Gateway>,
    exchange: &mut Option<Exchange>,
    message: ProcessingRequest,
) -> Result<ProcessingResponse, Status> {
    use processing_request::Request as Part;
    use processing_response::Response as Answer;
    // Read once: the first message that carries it (the request headers when this filter
    // comes after ext_authz, the response headers when before).
    let awaited = exchange.as_ref().is_none_or(Exchange::awaits_ext_authz);
    let decided = if awaited { ext_authz_view(message.metadata_context.as_ref()) } else { None };
    match message.request {
        Some(Part::RequestHeaders(headers)) => {
            let request = gateway_request(&headers, source_ip(&message.attributes));
            let started = exchange.insert(gateway.exchange(request));
            started.decided(decided);
            match started.request_headers().await {
                Ok(Interest::Exchange) => Ok(ProcessingResponse {
                    response: Some(Answer::RequestHeaders(HeadersResponse {
                        response: Some(CommonResponse {
                            header_mutation: Some(HeaderMutation {
                                remove_headers: started.request_headers_to_remove(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                    })),
                    // The response headers too. Asked for here, not in the filter's
                    // configuration: a reply Envoy makes before this filter saw the request
                    // (a malformed request) then never waits on cedargate.
                    mode_override: Some(ProcessingMode {
                        request_body_mode: BodySendMode::Buffered.into(),
                        response_header_mode: HeaderSendMode::Send.into(),
                        response_body_mode: BodySendMode::None.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                Ok(Interest::None) => {
                    Ok(ProcessingResponse {
                        response: Some(Answer::RequestHeaders(HeadersResponse::default())),
                        // Nothing more of this exchange is cedargate's.
                        mode_override: Some(ProcessingMode {
                            request_body_mode: BodySendMode::None.into(),
                            response_header_mode: HeaderSendMode::Skip.into(),
                            response_body_mode: BodySendMode::None.into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                }
                Err(reply) => Ok(immediate(reply)),
            }
        }
        Some(Part::RequestBody(body)) => {
            if let Some(exchange) = exchange.as_mut() {
                if let Err(reply) = exchange.decided(decided).request_body(&body.body) {
                    return Ok(immediate(reply));
                }
            }
            Ok(ProcessingResponse {
                response: Some(Answer::RequestBody(BodyResponse::default())),
                ..Default::default()
            })
        }
        Some(Part::ResponseHeaders(headers)) => {
            // Without request headers first, this is a reply Envoy made itself (an ext_authz
            // denial, a local error): nothing of it is cedargate's.
            let (status, headers) = response_headers(headers.headers.as_ref());
            let body = match exchange.as_mut() {
                Some(exchange) => match exchange.decided(decided).response_headers(status, &headers).await {
                    Ok(body) => body,
                    Err(reply) => return Ok(immediate(reply)),
                },
                None => Body::Unwanted,
            };
            let response_body_mode = match body {
                Body::Unwanted => None,
                // The trimmed body's length replaces the answer's (Envoy applies header
                // changes with a body only when it buffered the whole of it).
                Body::Whole => Some(BodySendMode::Buffered),
                // Without a length, buffered up to Envoy's limit: a larger answer comes
                // unfinished and is withheld, instead of Envoy holding it for ever.
                Body::UpTo(_) => Some(BodySendMode::BufferedPartial),
            };
            Ok(ProcessingResponse {
                response: Some(Answer::ResponseHeaders(HeadersResponse::default())),
                // Restating the response headers' mode: left at DEFAULT, it would fall back to
                // the filter's configuration (SKIP), and Envoy would then refuse the trimmed
                // body's length with it.
                mode_override: response_body_mode.map(|mode| ProcessingMode {
                    response_header_mode: HeaderSendMode::Send.into(),
                    response_body_mode: mode.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }
        Some(Part::ResponseBody(body)) => {
            // Asked for only after the response headers of an exchange.
            let exchange = exchange.as_mut().ok_or_else(out_of_order)?;
            match exchange.decided(decided).response_body(&body.body, body.end_of_stream) {
                Ok(Trimmed::Unchanged) => Ok(ProcessingResponse {
                    response: Some(Answer::ResponseBody(BodyResponse::default())),
                    ..Default::default()
                }),
                Ok(Trimmed::Replaced(trimmed)) => {
                    let length = trimmed.len().to_string();
                    Ok(ProcessingResponse {
                        response: Some(Answer::ResponseBody(BodyResponse {
                            response: Some(CommonResponse {
                                // Buffered, the headers have not left yet: the length is the new
                                // body's.
                                header_mutation: Some(HeaderMutation {
                                    set_headers: vec![header("content-length", &length)],
                                    ..Default::default()
                                }),
                                body_mutation: Some(BodyMutation { mutation: Some(Mutation::Body(trimmed)) }),
                                ..Default::default()
                            }),
                        })),
                        ..Default::default()
                    })
                }
                Err(reply) => Ok(immediate(reply)),
            }
        }
        Some(Part::RequestTrailers(_)) => Ok(ProcessingResponse {
            response: Some(Answer::RequestTrailers(Default::default())),
            ..Default::default()
        }),
        Some(Part::ResponseTrailers(_)) => Ok(ProcessingResponse {
            response: Some(Answer::ResponseTrailers(Default::default())),
            ..Default::default()
        }),
        None => Err(Status::invalid_argument("a processing request without a part")),
    }
}

fn out_of_order() -> Status {
    Status::failed_precondition("a response body before the request headers")
}

/// What cedargate's ext_authz filter decided this request with, when the proxy forwards its
/// metadata namespace to this filter and ext_authz has run: the caller (`auth_info`, absent
/// for one without a credential), the facts and the server. `None` until then (the facts are
/// written for every MCP exchange).
fn ext_authz_view(metadata: Option<&Metadata>) -> Option<Decided> {
    let fields = &metadata?.filter_metadata.get(EXT_AUTHZ_NAMESPACE)?.fields;
    let text = |name: &str| match fields.get(name).and_then(|value| value.kind.as_ref()) {
        Some(Kind::StringValue(text)) => Some(text.as_str()),
        _ => None,
    };
    let facts = match serde_json::from_str::<Extra>(text("facts")?) {
        Ok(facts) => facts,
        Err(error) => {
            tracing::warn!(%error, "the ext_authz metadata's facts do not read; cedargate's own are used");
            return None;
        }
    };
    let auth = match text("auth_info").map(auth_info_from_record) {
        None => None,
        Some(Ok(auth)) => Some(Arc::new(auth)),
        Some(Err(error)) => {
            // Not taken for a caller without a credential: this view is not used at all.
            tracing::warn!(%error, "the ext_authz metadata's auth_info does not read; the credential is resolved again");
            return None;
        }
    };
    Some(Decided { auth, facts, server: text("server").map(str::to_owned) })
}

/// The client's address from the `source.address` attribute, without its port; "" without it.
fn source_ip(attributes: &HashMap<String, Struct>) -> String {
    attributes
        .values()
        .find_map(|attributes| attributes.fields.get("source.address"))
        .and_then(|value| match &value.kind {
            Some(Kind::StringValue(address)) => Some(host_of(address).to_owned()),
            _ => None,
        })
        .unwrap_or_default()
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => address,
    }
}

/// Each header as (lower-case name, value); Envoy sends values in `raw_value`.
fn headers(map: Option<&HeaderMap>) -> Vec<(String, String)> {
    map.map(|map| {
        map.headers
            .iter()
            .map(|header| {
                let value = if header.raw_value.is_empty() {
                    header.value.clone()
                } else {
                    String::from_utf8_lossy(&header.raw_value).into_owned()
                };
                (header.key.to_ascii_lowercase(), value)
            })
            .collect()
    })
    .unwrap_or_default()
}

fn gateway_request(message: &HttpHeaders, source_ip: String) -> GatewayRequest {
    let mut all = headers(message.headers.as_ref());
    let pseudo = |all: &[(String, String)], name: &str| {
        all.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone()).unwrap_or_default()
    };
    let (method, path, host) = (pseudo(&all, ":method"), pseudo(&all, ":path"), pseudo(&all, ":authority"));
    all.retain(|(key, _)| !key.starts_with(':'));
    GatewayRequest {
        method,
        path,
        host,
        headers: all,
        source_ip,
        wire: Wire::EnvoyGrpc,
        ..Default::default()
    }
}

fn response_headers(map: Option<&HeaderMap>) -> (u16, Vec<(String, String)>) {
    let all = headers(map);
    let status =
        all.iter().find(|(key, _)| key == ":status").and_then(|(_, value)| value.parse().ok()).unwrap_or(0);
    (status, all)
}

/// A header that replaces any of its name.
fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            raw_value: value.as_bytes().to_vec(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..Default::default()
    }
}

fn immediate(reply: Reply) -> ProcessingResponse {
    let headers = reply.headers.iter().map(|(key, value)| header(key, value)).collect();
    ProcessingResponse {
        response: Some(processing_response::Response::ImmediateResponse(ImmediateResponse {
            status: Some(HttpStatus { code: i32::from(reply.status) }),
            headers: Some(HeaderMutation { set_headers: headers, ..Default::default() }),
            body: reply.body.into_bytes(),
            details: "cedargate".to_owned(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_address_is_read_without_its_port() {
        assert_eq!(host_of("10.0.0.1:4242"), "10.0.0.1");
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
    }
}
