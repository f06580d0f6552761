//! Credential resolution: parsing the `Authorization` value, the [`CredentialResolver`] trait
//! every backend implements, and the [`CredentialChain`] that routes a credential to them.

mod cache;
mod claims;
mod discovery;
mod header;
mod http;
mod introspection;
mod jwt;
mod table;

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;

use crate::model::{AuthInfo, Credential, Scheme};

pub use cache::{CacheSettings, CachedResolver, TokenCaches};
pub use claims::ClaimMapping;
pub use header::parse_authorization;
pub use introspection::{ClientAuth, Endpoint, IntrospectionResolver, IntrospectionSettings};
pub use jwt::{parse_algorithm, IssuerSettings, JwtResolver, KeySource, DEFAULT_ALGORITHMS};
pub use table::DigestTable;

/// Why a credential does not yield an identity. Messages never contain the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The value is longer than the configured cap.
    #[error("authorization value exceeds {max} bytes")]
    TooLong {
        /// The cap.
        max: usize,
    },
    /// A control or non-ASCII character.
    #[error("authorization value contains a control or non-ASCII character")]
    BadCharacter,
    /// Not `<scheme> <credential>`.
    #[error("authorization value is not `<scheme> <credential>`")]
    Malformed,
    /// A scheme no backend handles. The text is never quoted: a value without a scheme is
    /// the credential itself (`admin-token-456`), read as the scheme.
    #[error("unsupported authorization scheme: send `Bearer <token>` or `ApiKey <key>`")]
    UnsupportedScheme,
    /// The scheme came with nothing after it.
    #[error("empty credential after `{0}`")]
    Empty(&'static str),
    /// The credential is not token68 (RFC 9110 §11.2).
    #[error("credential is not valid token68 syntax")]
    Syntax,
    /// No backend knows the credential.
    #[error("unknown {0} credential")]
    Unknown(&'static str),
    /// A backend knows it and says it is not valid.
    #[error("{0}")]
    Invalid(String),
    /// A JWT names a key cedargate's copy of its issuer's keys lacks (or none, among several).
    /// A refusal that depends on that copy, which the next fetch can change (a key rotation),
    /// so unlike `Invalid` it is never cached.
    #[error("{0}")]
    UnknownKey(String),
    /// Known but past its expiry.
    #[error("credential expired")]
    Expired,
    /// A backend that must be asked could not answer; a closed door.
    #[error("credential backend `{backend}` is unavailable: {reason}")]
    Unavailable {
        /// Backend name.
        backend: String,
        /// What went wrong.
        reason: String,
    },
}

/// What a backend says about a credential it was offered.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// The credential is valid and belongs to this identity.
    Resolved(Arc<AuthInfo>),
    /// Not this backend's credential: the chain asks the next one.
    NotMine,
}

/// A credential backend.
#[async_trait]
pub trait CredentialResolver: Debug + Send + Sync {
    /// Short name for logs and errors.
    fn name(&self) -> &str;

    /// Resolves a credential this backend was routed.
    ///
    /// Returns `NotMine` for a credential it does not know, and an error when it knows the
    /// credential and it is not valid (expired, revoked) or the backend cannot answer.
    async fn resolve(&self, credential: &Credential) -> Result<Resolution, CredentialError>;
}

/// Backends in order, per scheme. The first that does not say `NotMine` decides.
#[derive(Debug, Default, Clone)]
pub struct CredentialChain {
    bearer: Vec<Arc<dyn CredentialResolver>>,
    api_key: Vec<Arc<dyn CredentialResolver>>,
}

impl CredentialChain {
    /// Appends a backend for `scheme`.
    pub fn push(&mut self, scheme: Scheme, resolver: Arc<dyn CredentialResolver>) {
        match scheme {
            Scheme::Bearer => self.bearer.push(resolver),
            Scheme::ApiKey => self.api_key.push(resolver),
        }
    }

    /// Appends `resolvers` for `scheme`, in order.
    pub fn extend(
        &mut self,
        scheme: Scheme,
        resolvers: impl IntoIterator<Item = Arc<dyn CredentialResolver>>,
    ) {
        for resolver in resolvers {
            self.push(scheme, resolver);
        }
    }

    /// Asks the backends for `credential.scheme` in order, and refuses an expired identity
    /// whichever backend produced it.
    ///
    /// Fails when no backend knows the credential or the one that does refuses it.
    pub async fn resolve(&self, credential: &Credential, now: i64) -> Result<Arc<AuthInfo>, CredentialError> {
        let resolvers = match credential.scheme {
            Scheme::Bearer => &self.bearer,
            Scheme::ApiKey => &self.api_key,
        };
        for resolver in resolvers {
            if let Resolution::Resolved(auth) = resolver.resolve(credential).await? {
                if auth.is_expired(now) {
                    return Err(CredentialError::Expired);
                }
                return Ok(auth);
            }
        }
        Err(CredentialError::Unknown(credential.scheme.as_str()))
    }
}

#[cfg(test)]
mod tests;
