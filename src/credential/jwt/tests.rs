use super::*;
use crate::model::{unix_now, Scheme};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, EncodingKey};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "https://api.test";

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/keys/{name}.pem", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A signing key and its public JWK.
struct Signer {
    algorithm: Algorithm,
    kid: &'static str,
    key: EncodingKey,
}

impl Signer {
    fn new(algorithm: Algorithm, kid: &'static str, file: &str) -> Self {
        let key = match algorithm {
            Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(&pem(file)),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem(file)),
            _ => EncodingKey::from_ed_pem(&pem(file)),
        }
        .unwrap();
        Self { algorithm, kid, key }
    }

    fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.algorithm).unwrap();
        jwk.common.key_id = Some(self.kid.to_owned());
        jwk
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.to_owned());
        encode(&header, claims, &self.key).unwrap()
    }
}

fn claims() -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "client_id": "app",
        "scope": "read write", "roles": ["user"], "exp": unix_now() + 600, "iat": unix_now(),
        "jti": "j1"
    })
}

fn settings(keys: KeySource) -> IssuerSettings {
    IssuerSettings {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        algorithms: DEFAULT_ALGORITHMS.to_vec(),
        leeway: Duration::from_secs(5),
        strict_rfc9068: false,
        claims: ClaimMapping::default(),
        keys,
        refetch_interval: Duration::from_secs(60),
    }
}

fn resolver_for(signers: &[&Signer]) -> JwtResolver {
    let jwks = JwkSet { keys: signers.iter().map(|signer| signer.jwk()).collect() };
    JwtResolver::new(vec![settings(KeySource::Inline(jwks))], reqwest::Client::new())
}

async fn resolve(resolver: &JwtResolver, token: &str) -> Result<Resolution, CredentialError> {
    resolver.resolve(&Credential::new(Scheme::Bearer, token)).await
}

async fn subject(resolver: &JwtResolver, token: &str) -> Result<String, CredentialError> {
    match resolve(resolver, token).await? {
        Resolution::Resolved(auth) => Ok(auth.subject.clone()),
        Resolution::NotMine => Ok("<not mine>".into()),
    }
}

#[tokio::test]
async fn every_allowed_algorithm_verifies_and_maps_claims() {
    let signers = [
        Signer::new(Algorithm::RS256, "rs", "rsa"),
        Signer::new(Algorithm::PS256, "ps", "rsa-other"),
        Signer::new(Algorithm::ES256, "es", "ec256"),
        Signer::new(Algorithm::ES384, "es384", "ec384"),
        Signer::new(Algorithm::EdDSA, "ed", "ed25519"),
    ];
    let resolver = resolver_for(&signers.iter().collect::<Vec<_>>());
    for signer in &signers {
        let Resolution::Resolved(auth) = resolve(&resolver, &signer.sign(&claims())).await.unwrap() else {
            panic!("{:?} not resolved", signer.algorithm)
        };
        assert_eq!((auth.subject.as_str(), auth.client_id.as_str()), ("alice", "app"));
        assert_eq!(auth.scopes, ["read", "write"]);
        assert_eq!(auth.roles, ["user"]);
        assert_eq!(auth.kind, CredentialKind::Jwt);
        assert_eq!((auth.issuer.as_str(), auth.resource.as_str()), (ISSUER, AUDIENCE));
    }
}

#[tokio::test]
async fn opaque_tokens_are_not_mine_and_untrusted_jwts_are_refused() {
    let signer = Signer::new(Algorithm::ES256, "es", "ec256");
    let refusing = resolver_for(&[&signer]);
    let passing = resolver_for(&[&signer]).pass_on_untrusted(true);
    let mut foreign = claims();
    foreign["iss"] = json!("https://elsewhere.test");
    let mut anonymous = claims();
    anonymous.as_object_mut().unwrap().remove("iss");
    let untrusted = || Err(invalid("JWT issuer is not trusted"));
    let not_mine = || Ok("<not mine>".to_owned());
    // (label, token, refusing resolver, resolver passing untrusted JWTs on)
    let table = [
        ("opaque", "user-token-123".to_owned(), not_mine(), not_mine()),
        ("three segments, header not JSON", "a.b.c".to_owned(), not_mine(), not_mine()),
        ("two segments", "eyJhbGciOiJFUzI1NiJ9.e30".to_owned(), not_mine(), not_mine()),
        ("four segments", "eyJhbGciOiJFUzI1NiJ9.e30.e30.e30".to_owned(), not_mine(), not_mine()),
        ("another issuer", signer.sign(&foreign), untrusted(), not_mine()),
        ("no issuer", signer.sign(&anonymous), untrusted(), not_mine()),
    ];
    for (label, token, when_refusing, when_passing) in table {
        assert_eq!(subject(&refusing, &token).await, when_refusing, "{label}");
        assert_eq!(subject(&passing, &token).await, when_passing, "{label}, passed on");
    }
}

#[tokio::test]
async fn rfc_8725_attacks_and_bad_claims_are_refused() {
    let signer = Signer::new(Algorithm::RS256, "rs", "rsa");
    let impostor = Signer::new(Algorithm::RS256, "rs", "rsa-other");
    let resolver = resolver_for(&[&signer]);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = claims();
        change(&mut claims);
        signer.sign(&claims)
    };
    let b64 = |value: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    };
    let good = signer.sign(&claims());
    let (head, rest) = good.split_once('.').unwrap();
    let signature = rest.split_once('.').unwrap().1;

    // alg=none: an unsigned token.
    let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims()));
    // Algorithm confusion: HS256 keyed with the issuer's public key.
    let public_pem = {
        let jwk = signer.jwk();
        serde_json::to_vec(&jwk).unwrap()
    };
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("rs".into());
    let confused = encode(&hs_header, &claims(), &EncodingKey::from_secret(&public_pem)).unwrap();
    // A token carrying its own key, signed with the impostor key.
    let mut embedded = Header::new(Algorithm::RS256);
    embedded.kid = Some("rs".into());
    embedded.jwk = Some(impostor.jwk());
    let self_keyed = encode(&embedded, &claims(), &impostor.key).unwrap();
    // kid injection.
    let mut injected = Header::new(Algorithm::RS256);
    injected.kid = Some("../../../dev/null\"; DROP TABLE keys".into());
    let injected = encode(&injected, &claims(), &signer.key).unwrap();
    // Tampered payload, original signature.
    let mut elevated = claims();
    elevated["roles"] = json!(["admin"]);
    let tampered = format!("{head}.{}.{signature}", b64(&elevated));
    // Critical extensions cedargate does not understand, well signed otherwise.
    let critical = |names: &[&str]| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rs".into());
        header.crit = Some(names.iter().map(|name| (*name).to_owned()).collect());
        header.extras.insert("urn:example:ext", true);
        encode(&header, &claims(), &signer.key).unwrap()
    };
    let crit_refused = || invalid("JWT header has `crit`: cedargate understands no critical extension");

    let table: Vec<(&str, String, CredentialError)> = vec![
        ("alg none", none, invalid("JWT header is malformed")),
        (
            "HS256 with the public key",
            confused,
            invalid("JWT algorithm `HS256` is not allowed for this issuer"),
        ),
        ("embedded jwk", self_keyed, invalid("JWT signature does not verify")),
        ("wrong key, same kid", impostor.sign(&claims()), invalid("JWT signature does not verify")),
        ("tampered payload", tampered, invalid("JWT signature does not verify")),
        ("crit naming an extension", critical(&["urn:example:ext"]), crit_refused()),
        ("crit naming a registered header", critical(&["kid"]), crit_refused()),
        ("empty crit", critical(&[]), crit_refused()),
        (
            "kid injection",
            injected,
            CredentialError::UnknownKey(
                "JWT is signed with an unknown key `../../../dev/null\\\"; DROP TABLE keys`".into(),
            ),
        ),
        (
            "other audience",
            with(&|c| c["aud"] = json!("https://other.test")),
            invalid("JWT audience is not this resource"),
        ),
        ("expired", with(&|c| c["exp"] = json!(unix_now() - 60)), CredentialError::Expired),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(unix_now() + 600)),
            invalid("JWT is not valid yet (`nbf`)"),
        ),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            invalid("JWT lacks the `exp` claim"),
        ),
        (
            "no aud",
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            invalid("JWT lacks the `aud` claim"),
        ),
    ];
    for (label, token, expected) in table {
        assert_eq!(resolve(&resolver, &token).await.unwrap_err(), expected, "{label}");
    }
    assert_eq!(
        subject(&resolver, &with(&|c| c["exp"] = json!(unix_now() - 2))).await.unwrap(),
        "alice",
        "within leeway"
    );
}

#[tokio::test]
async fn a_key_pinned_to_an_algorithm_verifies_only_that_one() {
    let rs = Signer::new(Algorithm::RS256, "rs", "rsa");
    let resolver = resolver_for(&[&rs]);
    let ps = Signer {
        algorithm: Algorithm::PS256,
        kid: "rs",
        key: EncodingKey::from_rsa_pem(&pem("rsa")).unwrap(),
    };
    assert_eq!(
        resolve(&resolver, &ps.sign(&claims())).await.unwrap_err(),
        invalid("JWT algorithm does not match its key")
    );
    let ec = Signer::new(Algorithm::ES256, "rs", "ec256");
    assert_eq!(
        resolve(&resolver, &ec.sign(&claims())).await.unwrap_err(),
        invalid("JWT algorithm does not match its key")
    );
}

#[tokio::test]
async fn strict_rfc_9068_wants_an_access_token() {
    let signer = Signer::new(Algorithm::ES256, "es", "ec256");
    let mut strict = settings(KeySource::Inline(JwkSet { keys: vec![signer.jwk()] }));
    strict.strict_rfc9068 = true;
    let resolver = JwtResolver::new(vec![strict], reqwest::Client::new());
    assert_eq!(
        resolve(&resolver, &signer.sign(&claims())).await.unwrap_err(),
        invalid("JWT is not an access token (`typ` must be `at+jwt`)")
    );
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("es".into());
    header.typ = Some("at+jwt".into());
    let access_token = encode(&header, &claims(), &signer.key).unwrap();
    assert_eq!(subject(&resolver, &access_token).await.unwrap(), "alice");
    let mut no_jti = claims();
    no_jti.as_object_mut().unwrap().remove("jti");
    let token = encode(&header, &no_jti, &signer.key).unwrap();
    assert_eq!(resolve(&resolver, &token).await.unwrap_err(), invalid("JWT lacks the `jti` claim"));
}

#[test]
fn configured_algorithms_must_be_asymmetric() {
    assert_eq!(parse_algorithm("ES256"), Ok(Algorithm::ES256));
    assert!(parse_algorithm("HS256").unwrap_err().contains("symmetric"));
    assert!(parse_algorithm("none").is_err());
}

/// A JWKS endpoint on 127.0.0.1:0 under the test's control: what it publishes, whether it
/// answers 500 instead, and how often it was asked.
struct JwksServer {
    url: String,
    published: Arc<ArcSwap<JwkSet>>,
    failing: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: Vec<Jwk>) -> Self {
        let published = Arc::new(ArcSwap::from_pointee(JwkSet { keys }));
        let failing = Arc::new(AtomicBool::new(false));
        let fetches = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get({
                let (published, failing, fetches) =
                    (Arc::clone(&published), Arc::clone(&failing), Arc::clone(&fetches));
                move || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    if failing.load(Ordering::SeqCst) {
                        return Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                    }
                    Ok(axum::Json(serde_json::to_value(&**published.load()).unwrap()))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, published, failing, fetches }
    }

    fn publish(&self, keys: Vec<Jwk>) {
        self.published.store(Arc::new(JwkSet { keys }));
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A URL on 127.0.0.1 where nothing listens.
async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[tokio::test]
async fn keys_that_cannot_be_fetched_are_an_outage_never_a_cached_refusal() {
    use crate::credential::{CacheSettings, CachedResolver};
    let signer = Signer::new(Algorithm::ES256, "k", "ec256");
    let jwks = JwksServer::start(vec![signer.jwk()]).await;
    jwks.failing.store(true, Ordering::SeqCst);
    let resolver =
        Arc::new(JwtResolver::new(vec![settings(KeySource::Url(jwks.url.clone()))], reqwest::Client::new()));
    let negative_ttl = Duration::from_secs(60);
    let cache =
        CachedResolver::new(Arc::clone(&resolver) as _, CacheSettings { negative_ttl, ..Default::default() });
    let token = Credential::new(Scheme::Bearer, signer.sign(&claims()));
    let outage = |issuer: &str| CredentialError::Unavailable {
        backend: "jwt".into(),
        reason: format!("the keys of `{issuer}` could not be fetched"),
    };
    for round in 0..3 {
        assert_eq!(cache.resolve(&token).await.unwrap_err(), outage(ISSUER), "round {round}");
    }
    assert_eq!(jwks.fetches(), 1, "a down issuer is asked once per refetch interval");

    // The issuer is back: once a fetch is due, the same token is accepted; nothing was cached.
    jwks.failing.store(false, Ordering::SeqCst);
    resolver.let_refetch_interval_pass().await;
    assert!(matches!(cache.resolve(&token).await, Ok(Resolution::Resolved(_))));
    assert_eq!(jwks.fetches(), 2);

    // Unreachable keys and unreachable metadata alike.
    let down = closed_port().await;
    let mut by_url = settings(KeySource::Url(format!("{down}/jwks")));
    by_url.issuer = down.clone();
    let mut by_discovery = settings(KeySource::Discovery);
    by_discovery.issuer = down.clone();
    let mut own_claims = claims();
    own_claims["iss"] = json!(down);
    for (label, issuer) in [("jwks_url", by_url), ("discovery", by_discovery)] {
        let resolver = JwtResolver::new(vec![issuer], reqwest::Client::new());
        assert_eq!(
            resolve(&resolver, &signer.sign(&own_claims)).await.unwrap_err(),
            outage(&down),
            "{label}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_cost_one_fetch_per_interval_and_a_new_key_is_accepted_once_one_is_due() {
    use crate::credential::{CacheSettings, CachedResolver};
    let old = Signer::new(Algorithm::ES256, "old", "ec256");
    let new = Signer::new(Algorithm::EdDSA, "new", "ed25519");
    let jwks = JwksServer::start(vec![old.jwk()]).await;
    // refetch_interval 60 s: nothing here waits for it, so the fetch counts are exact.
    let resolver =
        Arc::new(JwtResolver::new(vec![settings(KeySource::Url(jwks.url.clone()))], reqwest::Client::new()));
    let negative_ttl = Duration::from_secs(60);
    let cache = Arc::new(CachedResolver::new(
        Arc::clone(&resolver) as _,
        CacheSettings { negative_ttl, ..Default::default() },
    ));
    // An attacker's tokens: well formed, each with a `kid` the issuer never published.
    let probe = |index: usize| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(format!("probe-{index}"));
        Credential::new(Scheme::Bearer, encode(&header, &claims(), &old.key).unwrap())
    };
    let unknown =
        |kid: &str| CredentialError::UnknownKey(format!("JWT is signed with an unknown key `{kid}`"));

    // Cold: 50 concurrent probes and a good token share one fetch.
    let mut probes = tokio::task::JoinSet::new();
    for index in 0..50 {
        let (cache, credential) = (Arc::clone(&cache), probe(index));
        probes.spawn(async move { (index, cache.resolve(&credential).await) });
    }
    let good = Credential::new(Scheme::Bearer, old.sign(&claims()));
    assert!(matches!(cache.resolve(&good).await, Ok(Resolution::Resolved(_))));
    while let Some(joined) = probes.join_next().await {
        let (index, answer) = joined.unwrap();
        assert_eq!(answer.unwrap_err(), unknown(&format!("probe-{index}")));
    }
    assert_eq!(jwks.fetches(), 1, "50 concurrent unknown kids");
    // 50 more, one after another, within the interval: no fetch at all.
    for index in 50..100 {
        assert_eq!(cache.resolve(&probe(index)).await.unwrap_err(), unknown(&format!("probe-{index}")));
    }
    assert_eq!(jwks.fetches(), 1, "100 unknown kids within one interval");

    // The issuer publishes a new key. Its first token, before a fetch is due, is refused...
    jwks.publish(vec![new.jwk(), old.jwk()]);
    let rotated = Credential::new(Scheme::Bearer, new.sign(&claims()));
    assert_eq!(cache.resolve(&rotated).await.unwrap_err(), unknown("new"));
    assert_eq!(jwks.fetches(), 1);
    // ... but that refusal is not cached: once the interval since the last fetch has passed,
    // the same token, through the same cache, is accepted.
    resolver.let_refetch_interval_pass().await;
    assert_eq!(
        cache.resolve(&rotated).await.map(|answer| matches!(answer, Resolution::Resolved(_))),
        Ok(true)
    );
    assert_eq!(jwks.fetches(), 2);
    for index in 100..150 {
        assert!(cache.resolve(&probe(index)).await.is_err());
    }
    assert_eq!(jwks.fetches(), 2, "and the next interval starts with that fetch");
}

#[tokio::test]
async fn the_issuers_leeway_holds_wherever_expiry_is_checked() {
    use crate::credential::{CacheSettings, CachedResolver, CredentialChain};
    let signer = Signer::new(Algorithm::ES256, "es", "ec256");
    let mut lenient = settings(KeySource::Inline(JwkSet { keys: vec![signer.jwk()] }));
    lenient.leeway = Duration::from_secs(30);
    let resolver = Arc::new(JwtResolver::new(vec![lenient], reqwest::Client::new()));
    // As app.rs builds it: the chain checks expiry again, behind a cache that bounds by it.
    let mut chain = CredentialChain::default();
    chain.push(Scheme::Bearer, Arc::new(CachedResolver::new(resolver, CacheSettings::default())));
    let with = |claim: &str, offset: i64| {
        let mut claims = claims();
        claims[claim] = json!(unix_now() + offset);
        signer.sign(&claims)
    };
    let table = [
        ("expired 10 s ago", with("exp", -10), Ok("alice".to_owned())),
        ("valid from 10 s ahead", with("nbf", 10), Ok("alice".to_owned())),
        ("expired 40 s ago", with("exp", -40), Err(CredentialError::Expired)),
        ("valid from 40 s ahead", with("nbf", 40), Err(invalid("JWT is not valid yet (`nbf`)"))),
    ];
    for (label, token, expected) in table {
        let credential = Credential::new(Scheme::Bearer, token);
        // Twice: the second answer comes from the cache.
        for round in ["first", "cached"] {
            let answer = chain.resolve(&credential, unix_now()).await.map(|auth| auth.subject.clone());
            assert_eq!(answer, expected, "{label}, {round}");
        }
    }
}
