//! A real cedargate server on `127.0.0.1:0` for scenario tests, and clients for it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod blackhole;
pub mod envoy;
pub mod nginx;
pub mod otlp;
pub mod prometheus;
pub mod redis;
pub mod served;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use cedargate::api::proto::authorizer_client::AuthorizerClient;
use cedargate::api::proto::sessions_client::SessionsClient;
use cedargate::api::proto::{self, target::Kind};
use cedargate::config::Config;
use cedargate::{App, AppError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The value of the unlabelled sample `name` on the `/metrics` page of the HTTP port `http`.
pub async fn metric_value(http: SocketAddr, name: &str) -> f64 {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let text = client.get(format!("http://{http}/metrics")).send().await.unwrap().text().await.unwrap();
    let line = text
        .lines()
        .find(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ')))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A served App; stops when dropped or on `stop()`.
pub struct TestServer {
    pub app: Arc<App>,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), AppError>>>,
    /// The Unix socket of `start_with_unix`, removed on drop.
    unix: Option<std::path::PathBuf>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        Self::serve(config, None).await
    }

    /// As `start`, with the gRPC services also on a Unix domain socket at `unix`.
    pub async fn start_with_unix(config: Config, unix: &std::path::Path) -> Self {
        Self::serve(config, Some(unix)).await
    }

    async fn serve(config: Config, unix: Option<&std::path::Path>) -> Self {
        let app = Arc::new(App::build(config).expect("app builds"));
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let unix_listener =
            unix.map(|path| (tokio::net::UnixListener::bind(path).unwrap(), path.to_path_buf()));
        let grpc = grpc_listener.local_addr().unwrap();
        let http = http_listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = Arc::clone(&app);
        let task = tokio::spawn(async move {
            served
                .serve_with_unix(grpc_listener, unix_listener, http_listener, async {
                    let _ = stopped.await;
                })
                .await
        });
        let unix = unix.map(std::path::Path::to_path_buf);
        Self { app, grpc, http, stop: Some(stop), task: Some(task), unix }
    }

    pub async fn demo() -> Self {
        Self::start(Config::demo().unwrap()).await
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc)).unwrap().connect().await.unwrap()
    }

    pub async fn authorizer(&self) -> AuthorizerClient<Channel> {
        AuthorizerClient::new(self.channel().await)
    }

    pub async fn sessions(&self) -> SessionsClient<Channel> {
        SessionsClient::new(self.channel().await)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Signals shutdown and waits for the servers to finish.
    pub async fn stop(mut self) -> Result<(), AppError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(unix) = &self.unix {
            let _ = std::fs::remove_file(unix);
        }
    }
}

pub fn route(method: &str, path: &str) -> proto::Target {
    proto::Target {
        kind: Some(Kind::Route(proto::Route {
            method: method.into(),
            path: path.into(),
            ..Default::default()
        })),
    }
}

pub fn tool(name: &str) -> proto::Target {
    proto::Target { kind: Some(Kind::Tool(proto::Tool { name: name.into(), ..Default::default() })) }
}

pub fn check_request(authorization: &str, target: proto::Target) -> proto::CheckRequest {
    proto::CheckRequest { authorization: authorization.into(), target: Some(target), ..Default::default() }
}

pub async fn check(
    client: &mut AuthorizerClient<Channel>,
    authorization: &str,
    target: proto::Target,
) -> proto::CheckResponse {
    client.check(check_request(authorization, target)).await.expect("Check answers").into_inner()
}

/// Logs in over HTTP as the seed does and returns the JSON answer.
pub async fn http_login(server: &TestServer, username: &str, password: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.http_url("/auth/login"))
        .json(&serde_json::json!({ "username": username, "password": password }))
        .send()
        .await
        .unwrap()
}
