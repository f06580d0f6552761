//! `listen.grpc_unix` through the real binary: the gRPC services on a Unix domain socket
//! (Envoy's `pipe` address; `tests/envoy.rs` runs the seed scenarios through a real Envoy over
//! one), owner and group only, a stale socket replaced, anything else refused, removed at
//! shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use cedargate::api::proto::authorizer_client::AuthorizerClient;
use cedargate::api::proto::Outcome;
use common::served::Served;
use common::{check_request, route};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

fn config(dir: &Path, socket: &str) -> PathBuf {
    let demo = cedargate::config::DEMO_YAML
        .replacen("grpc: 127.0.0.1:50051", "grpc: 127.0.0.1:0", 1)
        .replacen("http: 127.0.0.1:8080", &format!("http: 127.0.0.1:0\n  grpc_unix: {socket}"), 1);
    assert!(demo.contains("grpc_unix"), "the demo config no longer listens where this test expects");
    let path = dir.join("cedargate.yaml");
    std::fs::write(&path, demo).unwrap();
    path
}

async fn unix_channel(socket: PathBuf) -> Channel {
    Endpoint::from_static("http://cedargate")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { tokio::net::UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grpc_services_answer_on_a_unix_socket_that_is_owner_and_group_only() {
    let dir = tempfile::tempdir().unwrap();
    // Relative to the config file, and a stale socket of an earlier run is there already.
    let socket = dir.path().join("cedargate.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let mut served = Served::start(&config(dir.path(), "cedargate.sock"));
    let mut log = Vec::new();
    let serving = tokio::task::block_in_place(|| {
        served.wait_for(|event| event["message"] == "cedargate serving", &mut log)
    });
    assert_eq!(serving["grpc_unix"], socket.display().to_string());

    let metadata = std::fs::symlink_metadata(&socket).unwrap();
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.permissions().mode() & 0o777, 0o660);
    // Bound under a hidden name and renamed into place: nothing else is left beside it.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["cedargate.sock", "cedargate.yaml"]);

    let mut client = AuthorizerClient::new(unix_channel(socket.clone()).await);
    let allowed =
        client.check(check_request("Bearer user-token-123", route("GET", "/user/profile"))).await.unwrap();
    assert_eq!(allowed.into_inner().outcome(), Outcome::Allowed);
    let forbidden =
        client.check(check_request("Bearer user-token-123", route("GET", "/admin/users"))).await.unwrap();
    assert_eq!(forbidden.into_inner().outcome(), Outcome::Forbidden);

    // A second server on the same socket is refused: something listens there.
    let second = dir.path().join("second.yaml");
    std::fs::copy(dir.path().join("cedargate.yaml"), &second).unwrap();
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_cedargate"))
        .args(["--config", second.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("another process is listening on it"), "{stderr}");

    drop(client);
    let status = tokio::task::block_in_place(|| served.stop(&mut log));
    assert!(status.success(), "{}", log.join("\n"));
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

#[test]
fn a_file_that_is_not_a_socket_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("important.txt");
    std::fs::write(&path, "keep me").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cedargate"))
        .args(["--config", config(dir.path(), "important.txt").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("exists and is not a socket; refusing to replace it"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
}
