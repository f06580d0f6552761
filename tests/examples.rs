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

/// examples/kubernetes/cedargate.yaml, document by document.
fn kubernetes_documents() -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("examples/kubernetes/cedargate.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .collect()
}

fn find<'a>(documents: &'a [serde_yaml::Value], kind: &str, name: &str) -> &'a serde_yaml::Value {
    documents
        .iter()
        .find(|document| document["kind"] == kind && document["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the Kubernetes example"))
}

#[test]
fn the_kubernetes_example_runs_three_replicas_over_one_redis_behind_envoy() {
    let documents = kubernetes_documents();
    for document in &documents {
        for field in ["apiVersion", "kind"] {
            assert!(document[field].is_string(), "a document without {field}: {document:?}");
        }
        assert!(document["metadata"]["name"].is_string(), "a document without a name: {document:?}");
    }
    // The cedargate config loads with cedargate's own loader (the password comes from the
    // Secret through the environment) and keeps its state in the `redis` Service.
    let config_text =
        find(&documents, "ConfigMap", "cedargate-config")["data"]["cedargate.yaml"].as_str().unwrap();
    assert!(config_text.contains("${REDIS_PASSWORD}"), "the password is never in the ConfigMap");
    let config = cedargate::config::Config::parse(
        "cedargate.yaml",
        &config_text.replace("${REDIS_PASSWORD}", "secret"),
    )
    .unwrap();
    let redis = config.state.redis.as_ref().expect("state.redis is set");
    let redis_service = find(&documents, "Service", "redis");
    let redis_port = redis_service["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert!(redis.url.0.contains(&format!("@redis:{redis_port}/")), "the url names the redis Service");
    App::build(config.clone()).unwrap();

    let deployment = find(&documents, "Deployment", "cedargate");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let ports: Vec<u64> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|port| port["containerPort"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [u64::from(config.listen.grpc.port()), u64::from(config.listen.http.port())]);
    assert_eq!(container["env"][0]["valueFrom"]["secretKeyRef"]["name"], "cedargate-redis");
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let args: Vec<&str> =
        container["args"].as_sequence().unwrap().iter().map(|arg| arg.as_str().unwrap()).collect();
    assert!(args.windows(2).any(|pair| pair == ["--config", &format!("{mount}/cedargate.yaml")]), "{args:?}");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&find(&documents, "Service", "cedargate")["spec"]["selector"], labels);
    assert_eq!(
        &find(&documents, "PodDisruptionBudget", "cedargate")["spec"]["selector"]["matchLabels"],
        labels
    );
    find(&documents, "Deployment", "redis");
    find(&documents, "Deployment", "envoy");
    find(&documents, "Service", "envoy");
}

#[test]
fn the_kubernetes_example_envoy_config_passes_envoy_validation() {
    let documents = kubernetes_documents();
    let envoy_config = find(&documents, "ConfigMap", "envoy-config")["data"]["envoy.yaml"].as_str().unwrap();
    // It asks the cedargate Service on the gRPC port of the cedargate config.
    assert!(envoy_config.contains("address: cedargate, port_value: 50051"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, envoy_config).unwrap();
    let envoy = Path::new(ROOT).join(".tools/bin/envoy");
    assert!(envoy.exists(), "{} is missing: run scripts/install-test-deps.sh", envoy.display());
    let output = Command::new(envoy)
        .args(["--mode", "validate", "--disable-hot-restart", "-l", "warn", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "envoy refused the Kubernetes example: {stderr}");
    assert!(!stderr.contains("deprecated"), "the example uses deprecated fields: {stderr}");
}
