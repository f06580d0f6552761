//! Strict parsing of an `Authorization` header value (RFC 9110 §11.6.2).

use super::CredentialError;
use crate::model::{Credential, Scheme};

/// Parses `value` into a credential; `Ok(None)` when it is empty (no credential sent).
///
/// Fails on a value longer than `max_bytes`, a control or non-ASCII character, an unknown
/// scheme, an empty credential, or a credential that is not token68.
pub fn parse_authorization(value: &str, max_bytes: usize) -> Result<Option<Credential>, CredentialError> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > max_bytes {
        return Err(CredentialError::TooLong { max: max_bytes });
    }
    if value.bytes().any(|byte| byte.is_ascii_control() || !byte.is_ascii()) {
        return Err(CredentialError::BadCharacter);
    }
    let (scheme_text, token) = value.split_once(' ').unwrap_or((value, ""));
    if scheme_text.is_empty() || !scheme_text.bytes().all(is_tchar) {
        return Err(CredentialError::Malformed);
    }
    let scheme = if scheme_text.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme_text.eq_ignore_ascii_case("apikey") {
        Scheme::ApiKey
    } else {
        return Err(CredentialError::UnsupportedScheme);
    };
    let token = token.trim_start_matches(' ');
    if token.is_empty() {
        return Err(CredentialError::Empty(scheme.as_str()));
    }
    if !is_token68(token) {
        return Err(CredentialError::Syntax);
    }
    Ok(Some(Credential::new(scheme, token)))
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// `token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_token68(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-._~+/".contains(&byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: &str) -> Result<Option<(Scheme, String)>, CredentialError> {
        parse_authorization(value, 64)
            .map(|credential| credential.map(|c| (c.scheme, c.secret.expose().to_owned())))
    }

    #[test]
    fn accepts_the_known_schemes_in_any_case() {
        let table = [
            ("Bearer user-token-123", Scheme::Bearer, "user-token-123"),
            ("bearer abc", Scheme::Bearer, "abc"),
            ("BEARER  a.b.c", Scheme::Bearer, "a.b.c"),
            ("ApiKey api-key-789", Scheme::ApiKey, "api-key-789"),
            ("apikey k", Scheme::ApiKey, "k"),
            ("Bearer YWJj+/==", Scheme::Bearer, "YWJj+/=="),
        ];
        for (value, scheme, token) in table {
            assert_eq!(check(value), Ok(Some((scheme, token.to_owned()))), "{value}");
        }
    }

    #[test]
    fn empty_value_means_no_credential() {
        assert_eq!(check(""), Ok(None));
    }

    #[test]
    fn refuses_bad_values_with_a_precise_reason() {
        let table = [
            ("Basic dXNlcjpwYXNz", CredentialError::UnsupportedScheme),
            ("Bearer", CredentialError::Empty("Bearer")),
            ("Bearer    ", CredentialError::Empty("Bearer")),
            ("ApiKey ", CredentialError::Empty("ApiKey")),
            ("Bearer a b", CredentialError::Syntax),
            ("Bearer a\tb", CredentialError::BadCharacter),
            ("Bearer a\nb", CredentialError::BadCharacter),
            ("Bearer tökén", CredentialError::BadCharacter),
            ("Bearer ===", CredentialError::Syntax),
            ("Bearer a=b", CredentialError::Syntax),
            (" Bearer abc", CredentialError::Malformed),
            ("Bea(rer abc", CredentialError::Malformed),
            ("user-token-123", CredentialError::UnsupportedScheme),
        ];
        for (value, error) in table {
            assert_eq!(check(value), Err(error), "{value:?}");
        }
    }

    #[test]
    fn refuses_oversized_values_before_looking_at_them() {
        let value = format!("Bearer {}", "a".repeat(100));
        assert_eq!(check(&value), Err(CredentialError::TooLong { max: 64 }));
        let just_fits = format!("Bearer {}", "a".repeat(64 - 7));
        assert!(check(&just_fits).is_ok());
    }

    #[test]
    fn errors_never_echo_the_credential() {
        let value = "Bearer secret-value with-space";
        let error = parse_authorization(value, 1024).unwrap_err();
        assert!(!error.to_string().contains("secret-value"), "{error}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Any value: a credential, none, or an error; never a panic, and a credential is
            /// exactly the token after a known scheme.
            #[test]
            fn any_value_parses_or_is_refused(value in ".{0,80}") {
                if let Ok(Some(credential)) = parse_authorization(&value, 64) {
                    let (scheme, token) = value.split_once(' ').unwrap();
                    prop_assert!(scheme.eq_ignore_ascii_case(credential.scheme.as_str()));
                    prop_assert_eq!(token.trim_start_matches(' '), credential.secret.expose());
                }
            }

            /// Well-formed values always parse, whatever the case of the scheme.
            #[test]
            fn well_formed_values_parse(scheme in "[Bb][Ee][Aa][Rr][Ee][Rr]|[Aa][Pp][Ii][Kk][Ee][Yy]", token in "[A-Za-z0-9._~+/-]{1,40}=*") {
                let value = format!("{scheme} {token}");
                let parsed = parse_authorization(&value, 128).unwrap().unwrap();
                prop_assert_eq!(parsed.secret.expose(), token.as_str());
            }
        }
    }
}
