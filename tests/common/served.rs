//! The real `cedargate` binary, served from a config file, with its JSON log read line by line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `cedargate serve` process; killed if the test fails midway.
pub struct Served {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    pub fn start(config: &Path) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cedargate"));
        command.args(["--config", config.to_str().unwrap(), "--log-format", "json"]);
        Self::spawn(command)
    }

    /// As `start`, with these environment variables and none of the `OTEL_*` ones the test
    /// process has, so the OpenTelemetry set-up is exactly what the test asks for.
    pub fn start_with_env(config: &Path, env: &[(&str, String)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cedargate"));
        command.args(["--config", config.to_str().unwrap(), "--log-format", "json"]);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("OTEL_") {
                command.env_remove(name);
            }
        }
        command.envs(env.iter().map(|(name, value)| (name, value)));
        Self::spawn(command)
    }

    /// As `start`, with at most `open_files` file descriptors (`ulimit -n`).
    pub fn start_with_open_files(config: &Path, open_files: u32) -> Self {
        let mut command = Command::new("sh");
        command.args([
            "-c",
            "ulimit -n \"$0\" && exec \"$@\"",
            &open_files.to_string(),
            env!("CARGO_BIN_EXE_cedargate"),
            "--config",
            config.to_str().unwrap(),
            "--log-format",
            "json",
        ]);
        Self::spawn(command)
    }

    fn spawn(mut command: Command) -> Self {
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next log event matching `wanted`, waiting at most 30 s.
    pub fn wait_for(&self, wanted: impl Fn(&Value) -> bool, seen: &mut Vec<String>) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            seen.push(line.clone());
            if let Ok(event) = serde_json::from_str::<Value>(&line) {
                if wanted(&event) {
                    return event;
                }
            }
        }
        panic!("log event not seen; log so far:\n{}", seen.join("\n"));
    }

    /// Waits for the "cedargate serving" event and returns the gRPC and HTTP addresses it
    /// names.
    pub fn addresses(&self, seen: &mut Vec<String>) -> (SocketAddr, SocketAddr) {
        let serving = self.wait_for(|event| event["message"] == "cedargate serving", seen);
        let address = |name: &str| serving[name].as_str().unwrap().parse::<SocketAddr>().unwrap();
        (address("grpc"), address("http"))
    }

    /// Stops the process with SIGTERM (SIGKILL after 20 s), appends every line it wrote that
    /// was not read yet to `seen` (up to the end of its stderr), and returns its exit status.
    pub fn stop(&mut self, seen: &mut Vec<String>) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at the end of stderr, which closes the channel.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            seen.push(line);
        }
        status
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args(["-s", name, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// CPU time the process has used so far (Linux `/proc/<pid>/stat`: user + system).
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let output = Command::new("getconf").arg("CLK_TCK").output().unwrap();
        let per_second: u64 = String::from_utf8(output.stdout).unwrap().trim().parse().unwrap();
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// The process's resident set size, in bytes (Linux `VmRSS`).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }
}
