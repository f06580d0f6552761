//! Policy slicing through the real binary: a set of per-tool rules decides the same whether
//! its slices are cached or the cache is too small for them, and a full cache says so, in the
//! log once and in `cedargate_policy_slice_cache_resets_total` each time it starts over.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;

use cedargate::api::json::extra_to_struct;
use cedargate::api::proto::target::Kind;
use cedargate::api::proto::{Outcome, Target, Tool};
use cedargate::model::Extra;
use common::served::Served;
use common::{check_request, tool};
use serde_json::Value;
use tonic::transport::Channel;

const TOOLS: usize = 10;

/// For each tool, a grant to one role and a forbid of one argument: slices of two policies.
fn per_tool_policies() -> String {
    let mut text = String::new();
    for n in 0..TOOLS {
        let _ = write!(
            text,
            "@id(\"grant-{n}\")\npermit (principal in Role::\"user\", action == Action::\"call\", resource == Tool::\"tool{n}\");\n\
             @id(\"no-etc-{n}\")\nforbid (principal, action == Action::\"call\", resource == Tool::\"tool{n}\")\n\
             when {{ resource.hasTag(\"path\") && resource.getTag(\"path\") like \"/etc/*\" }};\n"
        );
    }
    text
}

struct Gate {
    served: Served,
    grpc: SocketAddr,
    http: SocketAddr,
    log: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Gate {
    fn start(slice_cache_max_policies: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(policies.join("schema.cedarschema"), cedargate::policy::SCHEMA).unwrap();
        std::fs::write(policies.join("tools.cedar"), per_tool_policies()).unwrap();
        let yaml = format!(
            "listen: {{ grpc: 127.0.0.1:0, http: 127.0.0.1:0 }}\n\
             policies: {{ dir: policies, watch: false, slice_cache_max_policies: {slice_cache_max_policies} }}\n\
             credentials:\n  static_tokens:\n    # Bearer user-token-123\n    \
             - {{ sha256: 420d40c543017845583490814854cccf7da250a34643507af18f3e8a6feba7a5, subject: u, roles: [user] }}\n\
             decision_log: {{ to: off }}\n"
        );
        let config = dir.path().join("cedargate.yaml");
        std::fs::write(&config, yaml).unwrap();
        let served = Served::start(&config);
        let mut log = Vec::new();
        let (grpc, http) = served.addresses(&mut log);
        Self { grpc, http, served, log, _dir: dir }
    }

    /// Each tool called without arguments (allowed) and with a forbidden one (denied), twice.
    async fn decide_every_tool(&self) {
        let channel = Channel::from_shared(format!("http://{}", self.grpc)).unwrap().connect().await.unwrap();
        let mut client = cedargate::api::proto::authorizer_client::AuthorizerClient::new(channel);
        for _ in 0..2 {
            for n in 0..TOOLS {
                let name = format!("tool{n}");
                let answer = client.check(check_request("Bearer user-token-123", tool(&name))).await.unwrap();
                let answer = answer.into_inner();
                assert_eq!(answer.outcome(), Outcome::Allowed, "{name}");
                assert_eq!(answer.policy_ids, [format!("grant-{n}")]);

                let arguments = Extra::from([("path".to_owned(), Value::from("/etc/passwd"))]);
                let target = Target {
                    kind: Some(Kind::Tool(Tool {
                        name: name.clone(),
                        server: String::new(),
                        arguments: Some(extra_to_struct(&arguments)),
                    })),
                };
                let answer = client.check(check_request("Bearer user-token-123", target)).await.unwrap();
                let answer = answer.into_inner();
                assert_eq!(answer.outcome(), Outcome::Forbidden, "{name} /etc/passwd");
                assert_eq!(answer.policy_ids, [format!("no-etc-{n}")]);
            }
        }
        // A tool no rule names: no slice at all, no policy.
        let answer = client.check(check_request("Bearer user-token-123", tool("elsewhere"))).await.unwrap();
        assert_eq!(answer.into_inner().outcome(), Outcome::Forbidden);
    }

    async fn resets(&self) -> u64 {
        common::metric_value(self.http, "cedargate_policy_slice_cache_resets_total").await as u64
    }

    /// The warnings of a full cache logged so far (the log is written every 50 ms at most).
    fn warnings_of_a_full_cache(&mut self) -> usize {
        std::thread::sleep(std::time::Duration::from_millis(300));
        while let Ok(line) = self.served.lines.try_recv() {
            self.log.push(line);
        }
        self.log
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| {
                event["message"]
                    .as_str()
                    .is_some_and(|message| message.starts_with("the policy slice cache is full"))
            })
            .count()
    }
}

#[tokio::test]
async fn sliced_decisions_are_the_whole_sets_and_a_full_cache_says_so() {
    // Room for every slice: no reset, nothing logged.
    let mut roomy = Gate::start(100_000);
    roomy.decide_every_tool().await;
    assert_eq!(roomy.resets().await, 0);
    assert_eq!(roomy.warnings_of_a_full_cache(), 0);

    // Room for three policies, one slice of two: tool0's is cached, then each other tool's
    // slice finds the cache full and starts it over (its two calls share it). Tools 1 to 9 in
    // the first round, all ten in the second: 19 resets, one warning, the same decisions.
    let mut crowded = Gate::start(3);
    crowded.decide_every_tool().await;
    assert_eq!(crowded.resets().await, 19);
    assert_eq!(crowded.warnings_of_a_full_cache(), 1, "log:\n{}", crowded.log.join("\n"));
}
