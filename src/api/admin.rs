//! The admin token check both wires use: `cedargate.v1.Admin` over gRPC and
//! `GET /policies/status` over HTTP.

use crate::model::{Scheme, SecretDigest};

/// Longest `Authorization` value read for an admin call.
const MAX_ADMIN_AUTHORIZATION_BYTES: usize = 1024;

/// Why an admin call is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminRefusal {
    /// No admin token is configured.
    #[error("the admin API is off: set admin.token_sha256")]
    Off,
    /// The call carries no admin token, or another one.
    #[error("admin calls need the admin bearer token")]
    Unauthenticated,
}

/// Accepts `authorization` (the header or metadata value) when it is `Bearer <token>` with the
/// token whose digest is `expected`; compares in constant time.
///
/// Fails when no token is configured or the value is absent, malformed or another token.
pub fn check_admin(expected: Option<SecretDigest>, authorization: Option<&str>) -> Result<(), AdminRefusal> {
    let Some(expected) = expected else { return Err(AdminRefusal::Off) };
    let presented = authorization
        .and_then(|value| {
            crate::credential::parse_authorization(value, MAX_ADMIN_AUTHORIZATION_BYTES).ok().flatten()
        })
        .filter(|credential| credential.scheme == Scheme::Bearer);
    match presented {
        Some(credential) if credential.digest.ct_eq(&expected) => Ok(()),
        _ => Err(AdminRefusal::Unauthenticated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_admin_bearer_token_passes() {
        let expected = Some(SecretDigest::of(b"admin-secret"));
        let cases = [
            (expected, Some("Bearer admin-secret"), Ok(())),
            (expected, Some("Bearer other"), Err(AdminRefusal::Unauthenticated)),
            (expected, Some("ApiKey admin-secret"), Err(AdminRefusal::Unauthenticated)),
            (expected, Some("admin-secret"), Err(AdminRefusal::Unauthenticated)),
            (expected, None, Err(AdminRefusal::Unauthenticated)),
            (None, Some("Bearer admin-secret"), Err(AdminRefusal::Off)),
        ];
        for (expected, presented, answer) in cases {
            assert_eq!(check_admin(expected, presented), answer, "{presented:?}");
        }
    }
}
