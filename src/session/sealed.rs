//! The tokens a rotation issued, sealed under the refresh token it retired, so that presenting
//! that refresh token again within the reuse grace answers with the same tokens.
//!
//! A client whose refresh reply was lost (a timeout, a dropped connection, a replica that
//! answered 503 after Redis had already rotated) retries with the token it still holds; without
//! this it would be refused and, past the grace, its whole session revoked as a theft. The store
//! keeps only the sealed box, and only for the grace: the key is derived from the retired
//! refresh token itself (HKDF SHA-256), which the store never sees, and every replica that is
//! handed the refresh token can open the box without a shared key. A reader of the store (or
//! of a copy of it) who also holds an old refresh token finds no box for it once the grace has
//! passed, so boxes never chain from an old token to the current ones.

use base64::Engine as _;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};
use serde::{Deserialize, Serialize};

use super::SessionTokens;
use crate::model::Secret;

/// Separates this use of the refresh token from any other.
const SALT: &[u8] = b"cedargate session rotation v1";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tokens {
    access_token: String,
    refresh_token: String,
    expires_at: i64,
    refresh_expires_at: i64,
}

/// `tokens`, encrypted and authenticated under a key derived from `retired`; base64url.
pub(super) fn seal(retired: &Secret, tokens: &SessionTokens) -> Result<String, String> {
    let mut text = serde_json::to_vec(&Tokens {
        access_token: tokens.access_token.expose().to_owned(),
        refresh_token: tokens.refresh_token.expose().to_owned(),
        expires_at: tokens.expires_at,
        refresh_expires_at: tokens.refresh_expires_at,
    })
    .map_err(|error| format!("sealing rotated tokens: {error}"))?;
    let mut nonce = [0u8; NONCE_LEN];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
    key(retired)?
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut text)
        .map_err(|_| "sealing rotated tokens failed".to_owned())?;
    let mut sealed = nonce.to_vec();
    sealed.append(&mut text);
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
}

/// The tokens `seal` sealed under `retired`.
///
/// Fails when `sealed` was not sealed under `retired` or was changed since.
pub(super) fn open(retired: &Secret, sealed: &str) -> Result<SessionTokens, String> {
    let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sealed)
        .map_err(|_| "sealed tokens are not base64url".to_owned())?;
    if bytes.len() < NONCE_LEN {
        return Err("sealed tokens are too short".to_owned());
    }
    let mut text = bytes.split_off(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| "bad nonce".to_owned())?;
    let opened = key(retired)?
        .open_in_place(nonce, Aad::empty(), &mut text)
        .map_err(|_| "sealed tokens do not open under this refresh token".to_owned())?;
    let tokens: Tokens =
        serde_json::from_slice(opened).map_err(|error| format!("sealed tokens do not parse: {error}"))?;
    Ok(SessionTokens {
        access_token: Secret::new(tokens.access_token),
        refresh_token: Secret::new(tokens.refresh_token),
        expires_at: tokens.expires_at,
        refresh_expires_at: tokens.refresh_expires_at,
    })
}

/// The sealing key of `retired`: HKDF-SHA256 of its 256 random bits.
fn key(retired: &Secret) -> Result<LessSafeKey, String> {
    let mut key = [0u8; 32];
    Salt::new(HKDF_SHA256, SALT)
        .extract(retired.expose().as_bytes())
        .expand(&[], &CHACHA20_POLY1305)
        .and_then(|okm| okm.fill(&mut key))
        .map_err(|_| "deriving the sealing key failed".to_owned())?;
    let key = UnboundKey::new(&aead::CHACHA20_POLY1305, &key).map_err(|_| "bad sealing key".to_owned())?;
    Ok(LessSafeKey::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> SessionTokens {
        SessionTokens {
            access_token: Secret::new("session-next"),
            refresh_token: Secret::new("refresh-next"),
            expires_at: 10,
            refresh_expires_at: 20,
        }
    }

    #[test]
    fn opens_under_the_retired_token_only() {
        let retired = Secret::new("refresh-old");
        let sealed = seal(&retired, &tokens()).unwrap();
        assert!(!sealed.contains("next"), "the tokens are not readable in the box");
        let opened = open(&retired, &sealed).unwrap();
        assert_eq!(opened.access_token.expose(), "session-next");
        assert_eq!(opened.refresh_token.expose(), "refresh-next");
        assert_eq!((opened.expires_at, opened.refresh_expires_at), (10, 20));
        assert!(open(&Secret::new("refresh-other"), &sealed).is_err());
    }

    #[test]
    fn a_changed_box_does_not_open() {
        let retired = Secret::new("refresh-old");
        let sealed = seal(&retired, &tokens()).unwrap();
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let changed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        assert!(open(&retired, &changed).is_err());
        assert!(open(&retired, "AAAA").is_err());
        assert!(open(&retired, "not base64!").is_err());
    }
}
