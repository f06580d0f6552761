//! The shipped examples stay valid: the cedargate config loads and serves, and the Envoy
//! config passes the real Envoy's own validation.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use cedargate::config::Config;
use cedargate::App;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[tokio::test]
async fn the_envoy_example_cedargate_config_builds_and_challenges_with_its_metadata() {
    let config = Config::load(&Path::new(ROOT).join("examples/envoy/cedargate.yaml")).unwrap();
    assert!(config.gateway.strip_authorization);
    let app = App::build(config).unwrap();
    let target = cedargate::model::Target::Route(cedargate::model::RouteRequest {
        method: "GET".into(),
        path: "/user/profile".into(),
        template: None,
    });
    let decision =
        app.engine().check(cedargate::model::Wire::Grpc, "", &target, &Default::default()).await.unwrap();
    assert_eq!(
        decision.www_authenticate.as_deref(),
        Some(
            "Bearer realm=\"cedargate\", \
             resource_metadata=\"http://localhost:10000/.well-known/oauth-protected-resource/mcp\""
        )
    );
}

#[test]
fn the_envoy_example_passes_envoy_validation() {
    let envoy = Path::new(ROOT).join(".tools/bin/envoy");
    assert!(envoy.exists(), "{} is missing: run scripts/install-test-deps.sh", envoy.display());
    let output = Command::new(envoy)
        .args(["--mode", "validate", "--disable-hot-restart", "-l", "warn", "-c"])
        .arg(Path::new(ROOT).join("examples/envoy/envoy.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "envoy refused the example: {stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("OK"));
    assert!(!stderr.contains("deprecated"), "the example uses deprecated fields: {stderr}");
}
