use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse("test.yaml", text)
}

const DIGEST: &str = "420d40c543017845583490814854cccf7da250a34643507af18f3e8a6feba7a5";

#[test]
fn the_embedded_demo_parses_and_reproduces_the_seed() {
    let config = Config::demo().unwrap();
    assert_eq!(config.listen.grpc.to_string(), "127.0.0.1:50051");
    assert_eq!(config.listen.http.to_string(), "127.0.0.1:8080");
    assert_eq!(config.credentials.static_tokens.len(), 2);
    assert_eq!(config.credentials.api_keys[0].digest(), Some(SecretDigest::of(b"api-key-789")));
    assert_eq!(config.sessions.users[0].username, "alice");
    assert!(config.policy_dir().is_none(), "the demo uses the embedded policies");
}

#[test]
fn an_empty_file_means_all_defaults() {
    let config = parse("{}").unwrap();
    assert_eq!(config.limits.max_authorization_bytes, 8192);
    assert_eq!(config.sessions.login_rate_limit.per_username.max_failures, 5);
    assert_eq!(config.sessions.access_ttl.0, Duration::from_secs(3600));
}

#[test]
fn unknown_fields_are_refused_with_line_and_path() {
    let error = parse("listen:\n  grpc: 127.0.0.1:1\n  htp: 127.0.0.1:2\n").unwrap_err();
    let ConfigError::Parse { line, message, .. } = &error else { panic!("{error:?}") };
    assert_eq!(*line, 3, "{error}");
    assert!(message.contains("listen") && message.contains("htp"), "{message}");
    assert!(error.to_string().starts_with("test.yaml:3:"), "{error}");
}

#[test]
fn bad_values_name_their_field_and_line() {
    let table = [
        ("listen:\n  grpc: nowhere\n", 2, "listen.grpc"),
        ("credentials:\n  api_keys:\n    - sha256: abc\n      subject: s\n", 3, "sha256"),
        ("sessions:\n  access_ttl: soon\n", 2, "access_ttl"),
        ("sessions:\n  users:\n    - username: a\n      password_hash: plain\n", 4, "password_hash"),
        (
            "credentials:\n  static_tokens:\n    - value: x\n      subject: s\n      expires_at: tomorrow\n",
            5,
            "expires_at",
        ),
    ];
    for (text, expected_line, field) in table {
        let error = parse(text).unwrap_err();
        let ConfigError::Parse { line, message, .. } = &error else { panic!("{error:?}") };
        assert_eq!(*line, expected_line, "{error}");
        assert!(message.contains(field), "{field}: {message}");
    }
}

#[test]
fn cross_field_problems_are_all_reported() {
    let text = format!(
        "credentials:\n  static_tokens:\n    - sha256: {DIGEST}\n      subject: one\n    - sha256: {DIGEST}\n      subject: two\n  api_keys:\n    - value: plain-key\n      subject: svc\nsessions:\n  access_ttl: 2h\n  refresh_ttl: 1h\n"
    );
    let ConfigError::Invalid { problems } = parse(&text).unwrap_err() else { panic!() };
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems
        .iter()
        .any(|p| p.starts_with("test.yaml:6: credentials.static_tokens[1]:") && p.contains("twice")));
    assert!(problems.iter().any(|p| p.starts_with("test.yaml:9: credentials.api_keys[0].value:")));
    assert!(problems.iter().any(|p| p.starts_with("test.yaml:12: sessions.refresh_ttl:")));
}

#[test]
fn environment_variables_fill_secret_fields() {
    let lookup = |name: &str| (name == "TOKEN").then(|| "s3cret".to_owned());
    assert_eq!(expand_env("${TOKEN}", lookup).unwrap(), "s3cret");
    assert_eq!(expand_env("a-${TOKEN}-b", lookup).unwrap(), "a-s3cret-b");
    assert_eq!(expand_env("$${TOKEN} $x", lookup).unwrap(), "${TOKEN} $x");
    assert!(expand_env("${MISSING}", lookup).unwrap_err().contains("`MISSING` is not set"));
    assert!(expand_env("${TOKEN", lookup).is_err());
    assert!(expand_env("${A B}", lookup).is_err());

    let error = parse(
        "credentials:\n  static_tokens:\n    - value: ${CEDARGATE_TEST_SURELY_UNSET}\n      subject: s\n",
    )
    .unwrap_err();
    assert!(error.to_string().contains("CEDARGATE_TEST_SURELY_UNSET"), "{error}");
    assert!(error.to_string().starts_with("test.yaml:3:"), "{error}");
}

#[test]
fn secret_values_never_show_in_debug_output() {
    let config =
        parse("credentials:\n  static_tokens:\n    - value: do-not-print\n      subject: s\n").unwrap();
    assert!(!format!("{config:?}").contains("do-not-print"));
}

#[test]
fn a_relative_policy_dir_is_relative_to_the_config_file() {
    let mut config = parse("policies:\n  dir: rules\n").unwrap();
    config.source = "/etc/cedargate/config.yaml".into();
    assert_eq!(config.policy_dir(), Some(PathBuf::from("/etc/cedargate/rules")));
}

#[test]
fn a_policy_dir_is_watched_unless_turned_off() {
    assert!(parse("{}").unwrap().policies.watch, "on by default");
    assert!(parse("policies:\n  dir: rules\n").unwrap().policies.watch);
    assert!(!parse("policies:\n  dir: rules\n  watch: false\n").unwrap().policies.watch);
}

#[test]
fn gateway_defaults_serve_the_demo_mcp_endpoints_and_identity_headers() {
    let config = parse("{}").unwrap();
    let endpoints: Vec<_> =
        config.gateway.mcp.iter().map(|endpoint| (endpoint.path.as_str(), endpoint.shape)).collect();
    assert_eq!(endpoints, [("/mcp", McpShape::Jsonrpc), ("/mcp/invoke", McpShape::Invoke)]);
    assert_eq!(config.gateway.identity_headers.subject, "x-auth-subject");
    assert!(!config.gateway.strip_authorization);
    assert!(config.protected_resource.is_none());
}

#[test]
fn the_resource_metadata_url_follows_rfc_9728_path_insertion() {
    let config =
        parse("protected_resource:\n  resource: https://mcp.example.com/tools/mcp/\n  resource_name: x\n")
            .unwrap();
    let resource = config.protected_resource.unwrap();
    assert_eq!(
        resource.metadata_url(),
        "https://mcp.example.com/.well-known/oauth-protected-resource/tools/mcp"
    );
    let config = parse("protected_resource:\n  resource: https://mcp.example.com\n").unwrap();
    assert_eq!(
        config.protected_resource.unwrap().metadata_url(),
        "https://mcp.example.com/.well-known/oauth-protected-resource"
    );
}

#[test]
fn bad_gateway_settings_name_their_field() {
    let table = [
        ("gateway:\n  identity_headers:\n    subject: \"x auth\"\n", "gateway.identity_headers.subject"),
        ("gateway:\n  api_key:\n    header: \"a:b\"\n", "gateway.api_key.header"),
        ("gateway:\n  mcp:\n    - path: /mcp/../x\n", "gateway.mcp[0].path"),
        ("protected_resource:\n  resource: ftp://x/y\n", "protected_resource.resource"),
        ("protected_resource:\n  resource: https://x/#f\n", "protected_resource.resource"),
        (
            "protected_resource:\n  resource: https://x/\n  authorization_servers: [not a url]\n",
            "protected_resource.authorization_servers[0]",
        ),
    ];
    for (text, field) in table {
        let error = parse(text).unwrap_err().to_string();
        assert!(error.contains(field), "{text}: {error}");
    }
}

#[test]
fn jwks_refetches_are_bounded_and_keep_the_two_second_promise() {
    let issuer = "credentials:\n  jwt:\n    - issuer: https://as.test\n      audiences: [https://api.test]\n      jwks_url: https://as.test/jwks\n";
    let config = parse(issuer).unwrap();
    let interval = config.credentials.jwt[0].refetch_interval.0;
    // A new key is accepted from refetch_interval after its publication on.
    assert!(interval <= Duration::from_secs(2), "{interval:?}");
    assert!(interval >= MIN_REFETCH_INTERVAL, "{interval:?}");
    let ConfigError::Invalid { problems } =
        parse(&format!("{issuer}      refetch_interval: 10ms\n")).unwrap_err()
    else {
        panic!("a 10ms refetch interval must be refused")
    };
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].starts_with("test.yaml:3: credentials.jwt[0].refetch_interval:"), "{problems:#?}");
}

#[test]
fn connection_limits_have_defaults_and_refuse_zero() {
    let listen = parse("{}").unwrap().listen;
    assert_eq!(listen.header_read_timeout.0, Duration::from_secs(10));
    assert_eq!(listen.http_idle_timeout.0, Duration::from_secs(120));
    assert_eq!(listen.request_timeout.0, Duration::from_secs(15));
    assert_eq!((listen.http_max_connections, listen.grpc_max_connections), (512, 256));
    assert_eq!(listen.grpc_max_concurrent_streams, 200);
    assert_eq!(listen.grpc_keepalive_interval.0, Duration::from_secs(30));
    assert_eq!(listen.grpc_keepalive_timeout.0, Duration::from_secs(10));

    let text = "listen:\n  http_max_connections: 0\n  grpc_max_concurrent_streams: 0\n";
    let ConfigError::Invalid { problems } = parse(text).unwrap_err() else { panic!() };
    assert_eq!(
        problems,
        [
            "test.yaml:2: listen.http_max_connections: must be at least 1",
            "test.yaml:3: listen.grpc_max_concurrent_streams: must be at least 1",
        ]
    );
}

#[test]
fn a_missing_config_file_says_what_to_do() {
    let error = Config::load(Path::new("/nonexistent/cedargate.yaml")).unwrap_err();
    assert!(matches!(error, ConfigError::NotFound { .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("cedargate init /nonexistent` ") && !text.contains("os error"), "{text}");
    let bare = Config::load(Path::new("missing.yaml")).unwrap_err().to_string();
    assert!(bare.contains("cedargate init .` "), "{bare}");
}

#[test]
fn the_mcp_exchange_settings_have_defaults_and_refuse_zero() {
    let exchange = parse("").unwrap().gateway.mcp_exchange;
    assert_eq!(
        (exchange.max_list_bytes, exchange.bind_sessions, exchange.max_sessions),
        (1 << 20, true, 100_000)
    );
    assert_eq!(exchange.session_ttl.0, Duration::from_secs(24 * 3600));
    let text = "gateway:\n  mcp_exchange:\n    max_list_bytes: 0\n    max_sessions: 0\n";
    let error = parse(text).unwrap_err();
    let ConfigError::Invalid { problems } = error else { panic!("{error:?}") };
    assert_eq!(
        problems,
        [
            "test.yaml:3: gateway.mcp_exchange.max_list_bytes: must be at least 1",
            "test.yaml:4: gateway.mcp_exchange.max_sessions: must be at least 1",
        ]
    );
    let error = parse("gateway:\n  mcp_exchange: { session_ttl: 0s }\n").unwrap_err();
    assert!(error.to_string().contains("session_ttl: duration must be greater than zero"), "{error}");
}

#[test]
fn shared_state_is_memory_unless_redis_is_set_and_its_settings_are_checked() {
    assert!(parse("").unwrap().state.redis.is_none());
    let redis = parse("state:\n  redis:\n    url: redis://:pw@redis:6379/0\n").unwrap().state.redis.unwrap();
    let settings = redis.settings(Path::to_path_buf).unwrap();
    assert_eq!(
        (settings.key_prefix.as_str(), settings.command_timeout, settings.local_cache_ttl),
        ("cedargate:", Duration::from_millis(250), Duration::from_secs(1))
    );
    assert!(!format!("{redis:?}{settings:?}").contains("pw"), "the url's password never shows");

    let text = "state:\n  redis:\n    url: http://:hunter2@redis:6379\n    key_prefix: \"a b\"\n    tls: { ca_file: ca.pem }\n    local_cache: { ttl: 5s }\n";
    let ConfigError::Invalid { problems } = parse(text).unwrap_err() else { panic!("refused") };
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems.iter().any(|p| p.starts_with("test.yaml:3: state.redis.url: must start with redis://")));
    assert!(problems.iter().any(|p| p.starts_with("test.yaml:4: state.redis.key_prefix:")));
    assert!(problems
        .iter()
        .any(|p| p.starts_with("test.yaml:6: state.redis.local_cache.ttl: must be at most 1s")));
    assert!(!problems.concat().contains("hunter2"), "{problems:#?}");
    let ConfigError::Invalid { problems } =
        parse("state:\n  redis:\n    url: redis://redis\n    tls: { ca_file: ca.pem }\n").unwrap_err()
    else {
        panic!("tls without rediss:// is refused")
    };
    assert!(
        problems[0].starts_with("test.yaml:4: state.redis.tls: needs a `rediss://` url"),
        "{problems:#?}"
    );
    // `0s` turns the local copies off; an unset variable in the url is an error, not a guess.
    let redis = parse("state:\n  redis:\n    url: redis://redis\n    local_cache: { ttl: 0s }\n")
        .unwrap()
        .state
        .redis;
    assert!(redis.unwrap().local_cache.ttl.0.is_zero());
    assert!(parse("state:\n  redis:\n    url: redis://:${CEDARGATE_TEST_UNSET_VARIABLE}@redis\n").is_err());
}

const TENANTS: &str = "\
tenants:
  header: x-tenant
  acme:
    jwt:
      - issuer: https://acme.example
        audiences: [https://api.example/acme]
        jwks: { keys: [] }
    protected_resource:
      resource: https://api.example/acme/mcp
  globex: {}
  initech:
";

#[test]
fn tenants_hold_settings_and_one_entry_per_tenant() {
    let config = parse(TENANTS).unwrap();
    let tenants = &config.tenants;
    assert!(tenants.enabled());
    assert_eq!(tenants.header.as_deref(), Some("x-tenant"));
    assert_eq!(tenants.context_extension, "tenant", "the default");
    assert_eq!(tenants.tenants.keys().collect::<Vec<_>>(), ["acme", "globex", "initech"]);
    assert_eq!(tenants.tenants["acme"].jwt[0].issuer, "https://acme.example");
    assert!(tenants.tenants["initech"].jwt.is_empty(), "a tenant with nothing under it");
    let off = parse("{}").unwrap();
    assert!(!off.tenants.enabled());
    assert_eq!(off.tenants.context_extension, "tenant");
}

#[test]
fn tenant_mistakes_are_refused_at_file_line_and_field() {
    let table: [(String, usize, &str); 7] = [
        ("tenants:\n  Acme: {}\n".into(), 2, "tenants.Acme: a tenant name must match"),
        ("tenants:\n  ok: {}\n  ../etc: {}\n".into(), 3, "tenants.../etc: a tenant name must match"),
        ("tenants:\n  header: x-tenant\n".into(), 2, "tenants.header: declare at least one tenant"),
        ("tenants:\n  header: \"x tenant\"\n  a: {}\n".into(), 2, "tenants.header: `x tenant` is not an HTTP header name"),
        (
            "tenants:\n  a: {}\ncredentials:\n  static_tokens:\n    - value: t\n      subject: s\n      tenant: b\n".into(),
            6,
            "credentials.static_tokens[0].tenant: `b` is not a declared tenant",
        ),
        (
            format!("{TENANTS}  umbrella:\n    jwt:\n      - issuer: https://acme.example\n        audiences: [x]\n        jwks: {{ keys: [] }}\n"),
            5,
            "tenants.umbrella.jwt[0].issuer: the same issuer is configured twice",
        ),
        (
            format!("{TENANTS}  hooli:\n    protected_resource:\n      resource: https://other.example/acme/mcp\n"),
            14,
            "tenants.hooli.protected_resource.resource: has the same path as",
        ),
    ];
    for (text, line, expected) in table {
        let error = parse(&text).unwrap_err();
        let ConfigError::Invalid { problems } = &error else { panic!("{text}: {error:?}") };
        let wanted = format!("test.yaml:{line}: {expected}");
        assert!(problems.iter().any(|problem| problem.starts_with(&wanted)), "{wanted}\nin {problems:#?}");
    }
    // A field a tenant does not have is a parse error at its line.
    let error = parse("tenants:\n  acme:\n    policies: x\n").unwrap_err();
    let ConfigError::Parse { line, message, .. } = &error else { panic!("{error:?}") };
    assert_eq!((*line, message.contains("tenants.acme")), (3, true), "{error}");
}

#[test]
fn sessions_per_user_default_to_100_and_refuse_zero() {
    assert_eq!(parse("").unwrap().sessions.max_per_user, 100);
    assert_eq!(parse("").unwrap().sessions.max_rotations, 1000);
    for text in ["sessions:\n  max_rotations: 0\n", "sessions:\n  max_rotations: 10001\n"] {
        let ConfigError::Invalid { problems } = parse(text).unwrap_err() else { panic!() };
        assert_eq!(
            problems,
            ["test.yaml:2: sessions.max_rotations: must be 1 to 10000: each is a few hundred bytes kept for a refresh lifetime"]
        );
    }
    let ConfigError::Invalid { problems } = parse("sessions:\n  max_per_user: 0\n").unwrap_err() else {
        panic!()
    };
    assert_eq!(
        problems,
        ["test.yaml:2: sessions.max_per_user: must be 1 to 10000: it bounds what logins in a loop can store"]
    );
    let ConfigError::Invalid { problems } = parse("sessions:\n  refresh_reuse_grace: 61s\n").unwrap_err()
    else {
        panic!()
    };
    assert_eq!(
        problems,
        ["test.yaml:2: sessions.refresh_reuse_grace: must be at most 60s: within it, a refresh token presented again gets live tokens"]
    );
}
