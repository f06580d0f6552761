//! Value types of the config file: secrets expanded from the environment, SHA-256 digests,
//! password hashes, durations (`15m`) and timestamps, each parsed and checked when read.

#[allow(clippy::wildcard_imports)]
use super::*;

/// A string in which `${NAME}` is replaced by the environment variable `NAME` (`$${` is a
/// literal `${`). Its `Debug` is redacted, since such fields hold secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvString(pub String);

impl fmt::Debug for EnvString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvString(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        expand_env(&raw, |name| std::env::var(name).ok()).map(EnvString).map_err(D::Error::custom)
    }
}

/// Expands `${NAME}` with `lookup`.
///
/// Fails on an unset variable or an unterminated `${`.
pub fn expand_env(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body.find('}').ok_or_else(|| "unterminated `${` in value".to_owned())?;
            let name = &body[..end];
            if name.is_empty() || !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_') {
                return Err(format!("`${{{name}}}` is not a valid environment variable reference"));
            }
            let value = lookup(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A SHA-256 digest in hex (env-expanded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest(pub SecretDigest);

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = EnvString::deserialize(deserializer)?;
        SecretDigest::from_hex(&text.0).map(Digest).map_err(D::Error::custom)
    }
}

/// An argon2id PHC string (env-expanded), checked when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordHashString(pub String);

impl<'de> Deserialize<'de> for PasswordHashString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = EnvString::deserialize(deserializer)?;
        crate::session::check_password_hash(&text.0).map_err(D::Error::custom)?;
        Ok(Self(text.0))
    }
}

/// A duration written as `90s`, `15m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let ZeroOrDuration(duration) = ZeroOrDuration::deserialize(deserializer)?;
        if duration.is_zero() {
            return Err(D::Error::custom("duration must be greater than zero"));
        }
        Ok(Self(duration))
    }
}

/// A duration as [`HumanDuration`] is written, where `0s` (none) is allowed too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroOrDuration(pub Duration);

impl<'de> Deserialize<'de> for ZeroOrDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map(Self)
            .map_err(|error| D::Error::custom(format!("`{text}` is not a duration like `15m`: {error}")))
    }
}

/// An RFC 3339 instant, as unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub i64);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let instant = humantime::parse_rfc3339_weak(&text)
            .map_err(|error| D::Error::custom(format!("`{text}` is not an RFC 3339 time: {error}")))?;
        let seconds = instant
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| D::Error::custom("time is before 1970"))?
            .as_secs();
        Ok(Self(i64::try_from(seconds).unwrap_or(i64::MAX)))
    }
}
