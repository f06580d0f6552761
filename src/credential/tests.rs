use super::*;
use crate::model::{CredentialKind, SecretDigest};

/// A backend that answers the same for every credential, for chain-order tests.
#[derive(Debug)]
struct Fixed(Result<Option<&'static str>, CredentialError>);

#[async_trait]
impl CredentialResolver for Fixed {
    fn name(&self) -> &str {
        "fixed"
    }
    async fn resolve(&self, _credential: &Credential) -> Result<Resolution, CredentialError> {
        match &self.0 {
            Ok(Some(subject)) => {
                Ok(Resolution::Resolved(Arc::new(AuthInfo::new(CredentialKind::Static, *subject, vec![]))))
            }
            Ok(None) => Ok(Resolution::NotMine),
            Err(error) => Err(error.clone()),
        }
    }
}

fn chain(resolvers: Vec<Fixed>) -> CredentialChain {
    let mut chain = CredentialChain::default();
    for resolver in resolvers {
        chain.push(Scheme::Bearer, Arc::new(resolver));
    }
    chain
}

#[tokio::test]
async fn the_first_backend_that_knows_the_credential_decides() {
    let credential = Credential::new(Scheme::Bearer, "t");
    let found = chain(vec![Fixed(Ok(None)), Fixed(Ok(Some("second"))), Fixed(Ok(Some("third")))])
        .resolve(&credential, 0)
        .await
        .unwrap();
    assert_eq!(found.subject, "second");

    let refused =
        chain(vec![Fixed(Err(CredentialError::Invalid("revoked".into()))), Fixed(Ok(Some("later")))])
            .resolve(&credential, 0)
            .await;
    assert_eq!(refused.unwrap_err(), CredentialError::Invalid("revoked".into()));
}

#[tokio::test]
async fn nobody_knowing_it_or_another_scheme_is_unknown() {
    let bearer_chain = chain(vec![Fixed(Ok(Some("x")))]);
    assert_eq!(
        chain(vec![Fixed(Ok(None))]).resolve(&Credential::new(Scheme::Bearer, "t"), 0).await.unwrap_err(),
        CredentialError::Unknown("Bearer")
    );
    assert_eq!(
        bearer_chain.resolve(&Credential::new(Scheme::ApiKey, "t"), 0).await.unwrap_err(),
        CredentialError::Unknown("ApiKey")
    );
}

#[tokio::test]
async fn an_expired_identity_is_refused_whoever_resolved_it() {
    let mut auth = AuthInfo::new(CredentialKind::ApiKey, "svc", vec![]);
    auth.expires_at = Some(100);
    let table = DigestTable::new("api_key", [(SecretDigest::of(b"key"), auth)]).unwrap();
    let mut chain = CredentialChain::default();
    chain.push(Scheme::ApiKey, Arc::new(table));
    let credential = Credential::new(Scheme::ApiKey, "key");
    assert_eq!(chain.resolve(&credential, 99).await.unwrap().subject, "svc");
    assert_eq!(chain.resolve(&credential, 100).await.unwrap_err(), CredentialError::Expired);
}

#[tokio::test]
async fn digest_tables_find_only_exact_credentials() {
    let table = DigestTable::new(
        "static",
        [
            (SecretDigest::of(b"user-token-123"), AuthInfo::new(CredentialKind::Static, "u", vec![])),
            (SecretDigest::of(b"admin-token-456"), AuthInfo::new(CredentialKind::Static, "a", vec![])),
        ],
    )
    .unwrap();
    assert_eq!(table.len(), 2);
    let subject = |token: &str| {
        let credential = Credential::new(Scheme::Bearer, token);
        let table = &table;
        async move {
            match table.resolve(&credential).await.unwrap() {
                Resolution::Resolved(auth) => Some(auth.subject.clone()),
                Resolution::NotMine => None,
            }
        }
    };
    assert_eq!(subject("user-token-123").await.as_deref(), Some("u"));
    assert_eq!(subject("admin-token-456").await.as_deref(), Some("a"));
    assert_eq!(subject("user-token-12").await, None);
    assert_eq!(subject("user-token-1234").await, None);
}

#[test]
fn a_digest_configured_twice_is_refused() {
    let row = || (SecretDigest::of(b"same"), AuthInfo::new(CredentialKind::Static, "x", vec![]));
    let error = DigestTable::new("static", [row(), row()]).unwrap_err();
    assert!(error.contains("two entries"), "{error}");
    assert!(!error.contains("same"), "{error}");
}
