//! An MCP exchange seen whole, request and response, as Envoy's external processing filter
//! shows it: list answers trimmed to what the caller could use, and sessions bound to the
//! caller that opened them.
//!
//! Wire-neutral: `api::ext_proc` feeds an [`Exchange`] each part of one HTTP exchange as it
//! arrives and does what it answers.

use std::sync::Arc;

use serde_json::Value;

use super::listing::{self, Answer, ListKind, Trimmed};
use super::mcp_sessions::{self, Owner, Standing};
use super::{facts, jsonrpc_error, mcp, Gateway, GatewayRequest};
use crate::engine::Authentication;
use crate::model::{AuthInfo, Extra, Scheme};
use crate::telemetry::metrics::metrics;

/// JSON-RPC code of an answer withheld because it could not be trimmed (internal error).
const WITHHELD: i64 = -32603;

/// The reason of a 503 when the store of session bindings (shared by replicas) cannot answer.
const BINDINGS_UNAVAILABLE: &str = "the MCP session store is temporarily unavailable; retry later";

/// What the proxy must answer the client with instead of going on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl Reply {
    fn jsonrpc(status: u16, id: &Value, code: i64, message: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: jsonrpc_error(id, code, message, None),
        }
    }
}

/// What cedargate's ext_authz filter decided the same request with, as far as the proxy
/// passed it on (its dynamic metadata): a list entry is decided as a call of it would be, with
/// the facts only ext_authz sees (the route's context extensions, the peer certificate) and
/// the server the route names.
#[derive(Debug, Clone)]
pub struct Decided {
    /// The caller; `None` for one without a credential.
    pub auth: Option<Arc<AuthInfo>>,
    /// The request facts.
    pub facts: Extra,
    /// The MCP server.
    pub server: Option<String>,
}

/// How much of the exchange cedargate needs to see after the request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Nothing: not an MCP endpoint.
    None,
    /// The request body (if any) and the response headers.
    Exchange,
}

/// How much of a response body cedargate needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// None of it.
    Unwanted,
    /// All of it: its length is known and small enough, so the trimmed body gets its own.
    Whole,
    /// As much as the proxy buffers, at most this many bytes: an answer of unknown length (an
    /// event stream, chunked JSON) that arrives unfinished is withheld.
    UpTo(usize),
}

/// One HTTP exchange with an MCP endpoint.
#[derive(Debug)]
pub struct Exchange {
    gateway: Arc<Gateway>,
    request: GatewayRequest,
    server: String,
    authentication: Option<Authentication>,
    method: Option<String>,
    id: Value,
    list: Option<ListKind>,
    response: Option<(bool, String)>,
    /// What ext_authz decided the request with, once known.
    decided: Option<Decided>,
}

impl Gateway {
    /// An exchange starting with `request`'s headers.
    pub fn exchange(self: &Arc<Self>, request: GatewayRequest) -> Exchange {
        Exchange {
            gateway: Arc::clone(self),
            request,
            server: String::new(),
            authentication: None,
            method: None,
            id: Value::Null,
            list: None,
            response: None,
            decided: None,
        }
    }
}

impl Exchange {
    /// The request headers: whether the exchange is cedargate's to follow, or the answer the
    /// client gets instead (a session id that is not the caller's).
    pub async fn request_headers(&mut self) -> Result<Interest, Reply> {
        let Some(server) = self.gateway.jsonrpc_endpoint(&self.request).map(str::to_owned) else {
            return Ok(Interest::None);
        };
        self.server = server;
        // A body-less request decided on its Mcp-Method header (`gateway.mcp_trust_headers`)
        // is a list request by it; a body must agree (ext_authz checks that).
        self.list = self.request.header("mcp-method").and_then(ListKind::of_method);
        // The caller as cedargate's ext_authz decided it for this request, when this filter
        // comes after it; else the credential is resolved again.
        let authentication = match self.decided.as_ref().and_then(|decided| decided.auth.clone()) {
            Some(auth) => authenticated(auth),
            None => match self.gateway.credential(&self.request) {
                // By the backends of the request's tenant too, as ext_authz resolved it.
                Ok(Some((value, _))) => {
                    let tenant = self.gateway.request_tenant(&self.request);
                    self.gateway.engine.authenticate_in(tenant, &value).await
                }
                Ok(None) => Authentication::Anonymous,
                // ext_authz refuses such a request before it gets here.
                Err(reason) => {
                    return Err(Reply::jsonrpc(400, &Value::Null, mcp::code::INVALID_REQUEST, reason))
                }
            },
        };
        // One session id: which of several a server takes (the first, the last, all joined)
        // varies, and it must be the one checked.
        let ids: Vec<&str> = self.request.header_values("mcp-session-id").collect();
        if ids.len() > 1 || ids.iter().any(|id| id.contains(',')) {
            return Err(Reply::jsonrpc(
                400,
                &Value::Null,
                mcp::code::INVALID_REQUEST,
                "send one Mcp-Session-Id header with one session id",
            ));
        }
        let session = self.gateway.sessions.as_ref().zip(ids.first().copied());
        if let (Some(_), Authentication::Failed { error, .. }) = (&session, &authentication) {
            // Refused as ext_authz refuses it, never taken for a caller without a credential
            // (whose answer would be "another caller's session").
            let (status, reason) = if matches!(error, crate::credential::CredentialError::Unavailable { .. })
            {
                (503, super::UNAVAILABLE_REASON)
            } else {
                (401, "the credential is not valid")
            };
            return Err(Reply::jsonrpc(status, &Value::Null, mcp::code::UNAUTHORIZED, reason));
        }
        if let Some((sessions, session_id)) = session {
            let (key, caller) = (mcp_sessions::session_key(session_id), owner(&authentication));
            match sessions.standing(&key, &caller).await {
                Err(reason) => {
                    tracing::warn!("MCP session binding unreadable: {reason}");
                    return Err(Reply::jsonrpc(
                        503,
                        &Value::Null,
                        mcp::code::UNAUTHORIZED,
                        BINDINGS_UNAVAILABLE,
                    ));
                }
                Ok(Standing::Owned) => {}
                Ok(Standing::Foreign) => {
                    metrics().mcp_session_refused("foreign");
                    return Err(Reply::jsonrpc(
                        403,
                        &Value::Null,
                        mcp::code::UNAUTHORIZED,
                        "the MCP session belongs to another caller",
                    ));
                }
                Ok(Standing::Unknown) => {
                    metrics().mcp_session_refused("unknown");
                    return Err(Reply::jsonrpc(
                        404,
                        &Value::Null,
                        mcp::code::INVALID_REQUEST,
                        "the MCP session is not known (expired or never issued here): start a new one",
                    ));
                }
            }
        }
        self.authentication = Some(authentication);
        Ok(Interest::Exchange)
    }

    /// Whether what ext_authz decided the request with is still to be learnt (it comes with
    /// the proxy's messages once ext_authz ran).
    pub fn awaits_ext_authz(&self) -> bool {
        self.decided.is_none()
    }

    /// Takes what ext_authz decided the request with; the first that comes stays.
    pub fn decided(&mut self, decided: Option<Decided>) -> &mut Self {
        if self.decided.is_none() {
            self.decided = decided;
        }
        self
    }

    /// Request headers the proxy must remove before the request goes on. `Last-Event-ID`
    /// asks the server to replay a stream's events from there, answers to list requests
    /// included, on a `GET` whose stream is never buffered to be trimmed: replay is refused by
    /// dropping the header, so the server opens a fresh stream instead.
    pub fn request_headers_to_remove(&self) -> Vec<String> {
        if self.request.header("last-event-id").is_none() {
            return Vec::new();
        }
        tracing::info!("Last-Event-ID removed from an MCP request: replayed answers cannot be trimmed");
        vec!["last-event-id".to_owned()]
    }

    /// The request body: which method is asked, and so whether its answer needs trimming.
    ///
    /// Fails, as ext_authz does, on a body that is not one JSON-RPC object with a string
    /// method (or none, a response): a list request cedargate could not read would have its
    /// answer passed untrimmed.
    pub fn request_body(&mut self, body: &[u8]) -> Result<(), Reply> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let unreadable = |reason: &str| Reply::jsonrpc(400, &Value::Null, mcp::code::INVALID_REQUEST, reason);
        let Ok(Value::Object(message)) = serde_json::from_slice::<Value>(body) else {
            return Err(unreadable("the MCP request body is not one JSON-RPC object"));
        };
        self.id = message.get("id").cloned().unwrap_or(Value::Null);
        match message.get("method") {
            Some(Value::String(method)) => {
                self.list = ListKind::of_method(method);
                self.method = Some(method.clone());
            }
            None => {}
            Some(_) => return Err(unreadable("`method` must be a string")),
        }
        Ok(())
    }

    /// The response headers: sessions are bound and ended here. Whether and how the response
    /// body is needed (a list answer to trim), or the reply that replaces an answer too large
    /// to trim.
    pub async fn response_headers(
        &mut self,
        status: u16,
        headers: &[(String, String)],
    ) -> Result<Body, Reply> {
        let header = |name: &str| {
            headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
        };
        let success = (200..300).contains(&status);
        if let (Some(sessions), Some(authentication)) = (&self.gateway.sessions, &self.authentication) {
            if success && self.method.as_deref() == Some("initialize") {
                // One clean id, as a request must send it: two, a list or an empty one would
                // bind one id while the client used another.
                let issued: Vec<&str> = headers
                    .iter()
                    .filter(|(key, _)| key.eq_ignore_ascii_case("mcp-session-id"))
                    .map(|(_, value)| value.as_str())
                    .collect();
                if issued.len() > 1 || issued.iter().any(|id| id.is_empty() || id.contains(',')) {
                    tracing::warn!(
                        "an MCP server's initialize answer did not carry one session id: withheld"
                    );
                    return Err(Reply::jsonrpc(
                        502,
                        &self.id,
                        WITHHELD,
                        "the MCP server's answer does not carry one session id",
                    ));
                }
                if let Some(session_id) = issued.first().copied() {
                    // A session is someone's: one issued to a caller without a credential is
                    // not bound, and so unknown (404) from its next request on. Bound to "no
                    // one", any caller without a credential could use it, and a proxy that
                    // lost every caller's credential (ext_proc after ext_authz, metadata not
                    // forwarded) would hand each caller everyone's sessions.
                    match authentication {
                        Authentication::Authenticated { auth, .. } => {
                            let key = mcp_sessions::session_key(session_id);
                            match sessions.bind(&key, &Owner::of(Some(auth))).await {
                                Ok(true) => {}
                                Ok(false) => {
                                    tracing::warn!(
                                        "an MCP server issued a session id bound to another caller: withheld"
                                    );
                                    return Err(Reply::jsonrpc(
                                        502,
                                        &self.id,
                                        WITHHELD,
                                        "the MCP server issued a session id of another caller",
                                    ));
                                }
                                // Unbound, the session would be refused from its next request
                                // on: the client is told to retry now instead.
                                Err(reason) => {
                                    tracing::warn!("MCP session not bound: {reason}");
                                    return Err(Reply::jsonrpc(
                                        503,
                                        &self.id,
                                        mcp::code::UNAUTHORIZED,
                                        BINDINGS_UNAVAILABLE,
                                    ));
                                }
                            }
                        }
                        Authentication::Anonymous | Authentication::Failed { .. } => {
                            tracing::info!(
                                "an MCP session issued to a caller without a credential is not bound"
                            );
                        }
                    }
                }
            }
            if success && self.request.method.eq_ignore_ascii_case("DELETE") {
                if let Some(session_id) = self.request.header("mcp-session-id") {
                    if let Err(reason) = sessions.end(&mcp_sessions::session_key(session_id)).await {
                        // The session is over upstream; its binding expires with its TTL.
                        tracing::warn!("MCP session binding not removed: {reason}");
                    }
                }
            }
        }
        let Some(kind) = self.list else {
            return Ok(Body::Unwanted);
        };
        self.response = Some((success, header("content-type").unwrap_or_default().to_owned()));
        let max = self.gateway.settings.max_list_bytes;
        match header("content-length").map(|length| length.trim().parse::<u64>()) {
            Some(Ok(length)) if usize::try_from(length).is_ok_and(|length| length <= max) => Ok(Body::Whole),
            Some(Ok(_)) => Err(self.withhold(
                kind,
                &format!("the answer exceeds {max} bytes (gateway.mcp_exchange.max_list_bytes)"),
            )),
            Some(Err(_)) => Err(self.withhold(kind, "the answer's content-length is not a number")),
            None => Ok(Body::UpTo(max)),
        }
    }

    /// The response body of a list request (`complete` unless the proxy stopped buffering it
    /// at its limit): what to pass on, or the error that replaces an answer that cannot be
    /// trimmed.
    pub fn response_body(&mut self, body: &[u8], complete: bool) -> Result<Trimmed, Reply> {
        let Some(kind) = self.list else {
            return Ok(Trimmed::Unchanged);
        };
        let Some(authentication) = &self.authentication else {
            return Err(self.withhold(kind, "the request's headers were not seen"));
        };
        if !complete {
            return Err(self.withhold(kind, "the answer is larger than the proxy buffers for cedargate"));
        }
        let Some((success, content_type)) = self.response.clone() else {
            return Err(self.withhold(kind, "the answer's body came before its headers"));
        };
        // As a call of the entry would be decided: with ext_authz's facts, server and caller
        // when the proxy passed them on, else with what this filter saw.
        let decided = self.decided.as_ref();
        let mut facts = decided.map_or_else(|| facts(&self.request, None), |decided| decided.facts.clone());
        facts.insert("mcp_method".to_owned(), Value::from(kind.call_method()));
        let server = decided.and_then(|decided| decided.server.as_deref()).unwrap_or(&self.server);
        let answer = Answer {
            kind,
            server,
            content_type: &content_type,
            success,
            max_bytes: self.gateway.settings.max_list_bytes,
        };
        let decided_as;
        let authentication = match decided.and_then(|decided| decided.auth.clone()) {
            Some(auth) => {
                decided_as = authenticated(auth);
                &decided_as
            }
            None => authentication,
        };
        // By the set a call would be decided by: the tenant of the request's header, or of
        // the context extension ext_authz saw (a fact by now).
        let mut request = self.request.clone();
        if let Some(name) = &self.gateway.settings.tenant_extension {
            if let Some(Value::String(tenant)) = facts.get(name) {
                request.extensions.push((name.clone(), tenant.clone()));
            }
        }
        let tenant = self.gateway.request_tenant(&request);
        let engine = &self.gateway.engine;
        let mut decide = |targets: &[_]| engine.could_use_in(tenant, authentication, targets, &facts);
        match listing::trim(answer, body, &mut decide) {
            Ok((trimmed, counts)) => {
                metrics().mcp_list_entries(kind.method(), counts.kept, counts.removed);
                Ok(trimmed)
            }
            Err(reason) => Err(self.withhold(kind, &reason)),
        }
    }

    /// The reply that replaces a list answer that cannot be trimmed.
    fn withhold(&self, kind: ListKind, reason: &str) -> Reply {
        tracing::warn!(method = kind.method(), reason, "MCP list answer withheld");
        metrics().mcp_list_withheld(kind.method());
        let message = format!("cedargate withheld the MCP server's {} answer: {reason}", kind.method());
        Reply::jsonrpc(502, &self.id, WITHHELD, &message)
    }
}

/// A caller ext_authz established.
fn authenticated(auth: Arc<AuthInfo>) -> Authentication {
    Authentication::Authenticated { auth, scheme: Scheme::Bearer, fingerprint: String::new() }
}

fn owner(authentication: &Authentication) -> Owner {
    match authentication {
        Authentication::Authenticated { auth, .. } => Owner::of(Some(auth)),
        Authentication::Anonymous | Authentication::Failed { .. } => Owner::of(None),
    }
}

#[cfg(test)]
mod tests;
