//! A real Prometheus (`.tools/bin/prometheus`, bookworm's package unpacked by
//! `scripts/install-test-deps.sh`) scraping one target every second, queried over its HTTP API;
//! and `promtool check metrics`, Prometheus's own linter of the text exposition.
//!
//! Everything lives in a temporary directory (config and TSDB). Prometheus binds
//! `127.0.0.1:0` itself and logs the address it got (`msg="Listening on" address=…`), which is
//! read from its log, so no port is guessed.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

const STARTUP: Duration = Duration::from_secs(30);

fn tool(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin").join(name);
    assert!(path.exists(), "{} is missing: run scripts/install-test-deps.sh", path.display());
    path
}

/// A running Prometheus; killed and reaped when dropped, its directory removed.
pub struct Prometheus {
    pub addr: SocketAddr,
    /// The scrape job's name (`job` label).
    pub job: String,
    child: Child,
    /// Prometheus's log so far (stderr), for failure messages.
    log: mpsc::Receiver<String>,
    seen: Vec<String>,
    _dir: TempDir,
    client: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `http://{target}{metrics_path}` every second, and returns
    /// once it is ready and has scraped the target successfully at least once.
    pub async fn scraping(target: SocketAddr, metrics_path: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let job = "cedargate".to_owned();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: {job}\n    metrics_path: {metrics_path}\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg("--web.listen-address=127.0.0.1:0")
            .arg("--log.level=info")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let placeholder: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut prometheus = Self { addr: placeholder, job, child, log, seen: Vec::new(), _dir: dir, client };
        prometheus.addr = prometheus.listening_address();
        prometheus.wait_ready().await;
        prometheus.wait_target_up(target).await;
        prometheus
    }

    /// The address from `msg="Listening on" address=127.0.0.1:PORT`.
    fn listening_address(&mut self) -> SocketAddr {
        let deadline = Instant::now() + STARTUP;
        while let Ok(line) = self.log.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.seen.push(line.clone());
            if line.contains("msg=\"Listening on\"") {
                let address = line.split("address=").nth(1).and_then(|rest| rest.split_whitespace().next());
                if let Some(address) = address.and_then(|text| text.parse().ok()) {
                    return address;
                }
            }
        }
        panic!("Prometheus never said where it listens; its log:\n{}", self.seen.join("\n"));
    }

    fn drain_log(&mut self) {
        while let Ok(line) = self.log.try_recv() {
            self.seen.push(line);
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        self.drain_log();
        panic!("Prometheus: {what}; its log:\n{}", self.seen.join("\n"));
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Option<reqwest::Response> {
        self.client.get(format!("http://{}{path}", self.addr)).query(query).send().await.ok()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if let Some(response) = self.get("/-/ready", &[]).await {
                if response.status().is_success() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.fail(&format!("exited with {status} before it was ready"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.fail("not ready in time");
    }

    /// The target's entry in `/api/v1/targets`.
    async fn target(&self, target: SocketAddr) -> Option<Value> {
        let response = self.get("/api/v1/targets", &[("state", "active")]).await?;
        let body: Value = response.json().await.ok()?;
        body["data"]["activeTargets"]
            .as_array()?
            .iter()
            .find(|entry| entry["labels"]["instance"] == target.to_string())
            .cloned()
    }

    async fn wait_target_up(&mut self, target: SocketAddr) {
        let deadline = Instant::now() + STARTUP;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Some(entry) = self.target(target).await {
                if entry["health"] == "up" {
                    return;
                }
                last = entry;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.fail(&format!("target {target} never up; last seen: {last}"));
    }

    /// Waits until Prometheus has scraped the target after `after` (unix seconds), so a query
    /// sees everything the target exposed by then.
    pub async fn wait_scrape_after(&mut self, after: f64) {
        let deadline = Instant::now() + STARTUP;
        let expression = format!("timestamp(up{{job=\"{}\"}})", self.job);
        let mut last = Vec::new();
        while Instant::now() < deadline {
            last = self.query(&expression).await;
            if last.iter().any(|(_, scraped)| *scraped > after) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.fail(&format!("no scrape after {after}; last: {last:?}"));
    }

    /// Every metric name Prometheus has stored (`/api/v1/label/__name__/values`).
    pub async fn metric_names(&self) -> Vec<String> {
        let response = self.get("/api/v1/label/__name__/values", &[]).await.expect("Prometheus answers");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "success", "{body}");
        body["data"].as_array().unwrap().iter().filter_map(|name| name.as_str().map(str::to_owned)).collect()
    }

    /// An instant query: every series with its labels (`__name__` included when the
    /// expression keeps it) and value. Panics on an error answer, with Prometheus's message.
    pub async fn query(&self, expression: &str) -> Vec<(serde_json::Map<String, Value>, f64)> {
        let response = self.get("/api/v1/query", &[("query", expression)]).await.expect("Prometheus answers");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "success", "query `{expression}`: {body}");
        let result = &body["data"]["result"];
        match body["data"]["resultType"].as_str() {
            Some("vector") => result
                .as_array()
                .unwrap()
                .iter()
                .map(|series| {
                    let labels = series["metric"].as_object().cloned().unwrap_or_default();
                    (labels, sample(&series["value"]))
                })
                .collect(),
            Some("scalar") => vec![(serde_json::Map::new(), sample(result))],
            other => panic!("query `{expression}`: unexpected result type {other:?}: {body}"),
        }
    }
}

/// A sample `[timestamp, "value"]`'s value.
fn sample(pair: &Value) -> f64 {
    pair[1].as_str().and_then(|text| text.parse().ok()).unwrap_or(f64::NAN)
}

/// `promtool check metrics` on `exposition` (read from standard input): `Err` with its
/// output when it finds anything, even a lint that is only a warning.
pub fn promtool_check_metrics(exposition: &str) -> Result<(), String> {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics: {}: {said}", output.status))
    }
}

/// `promtool check rules` on a rules file holding `expressions` as recording rules (one per
/// expression): `Err` with its output when any expression is not valid PromQL.
pub fn promtool_check_expressions(expressions: &[String]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    let rules_file = serde_json::json!({
        "groups": [{
            "name": "dashboard",
            "rules": expressions
                .iter()
                .enumerate()
                .map(|(index, expression)| serde_json::json!({ "record": format!("dashboard:expr_{index}"), "expr": expression }))
                .collect::<Vec<_>>(),
        }]
    });
    let text = serde_yaml::to_string(&rules_file).unwrap();
    std::fs::write(&rules, text).unwrap();
    let output = Command::new(tool("promtool"))
        .args(["check", "rules", "--lint=none"])
        .arg(&rules)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool check rules: {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
