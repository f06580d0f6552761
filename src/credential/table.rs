//! Credentials known in advance (static bearer tokens, API keys), held only as SHA-256
//! digests.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{CredentialError, CredentialResolver, Resolution};
use crate::model::{AuthInfo, Credential, SecretDigest};

/// A table from credential digest to identity.
///
/// Lookups hash the digest, never the raw secret, so a lookup's timing says nothing useful
/// about the secret; the stored digest is then compared in constant time.
#[derive(Debug)]
pub struct DigestTable {
    name: &'static str,
    entries: HashMap<SecretDigest, Arc<AuthInfo>>,
}

impl DigestTable {
    /// Builds a table called `name` (used in logs).
    ///
    /// Fails when two entries share a digest.
    pub fn new(
        name: &'static str,
        entries: impl IntoIterator<Item = (SecretDigest, AuthInfo)>,
    ) -> Result<Self, String> {
        let mut table = HashMap::new();
        for (digest, auth) in entries {
            if table.insert(digest, Arc::new(auth)).is_some() {
                return Err(format!("{name}: two entries have the digest {}", digest.fingerprint()));
            }
        }
        Ok(Self { name, entries: table })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[async_trait]
impl CredentialResolver for DigestTable {
    fn name(&self) -> &str {
        self.name
    }

    async fn resolve(&self, credential: &Credential) -> Result<Resolution, CredentialError> {
        match self.entries.get_key_value(&credential.digest) {
            Some((stored, auth)) if stored.ct_eq(&credential.digest) => {
                Ok(Resolution::Resolved(Arc::clone(auth)))
            }
            _ => Ok(Resolution::NotMine),
        }
    }
}
