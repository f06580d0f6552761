//! Live policy reload on a served app: the directory watcher (edits in place, atomic renames,
//! new and deleted files, the Kubernetes ConfigMap `..data` swap), `Admin/ReloadPolicies` and
//! `Admin/PolicyStatus` with `GET /policies/status`, refused sets that never serve, and a
//! reload storm under load where every check gets a whole answer from one set or the other.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cedargate::api::proto::admin_client::AdminClient;
use cedargate::api::proto::authorizer_client::AuthorizerClient;
use cedargate::api::proto::{Outcome, PolicyStatusRequest, PolicyStatusResponse, ReloadPoliciesRequest};
use cedargate::config::Config;
use cedargate::model::SecretDigest;
use common::{check_request, route, TestServer};
use tonic::transport::Channel;
use tonic::Request;

const SCHEMA: &str = include_str!("../policies/schema.cedarschema");
const ADMIN_TOKEN: &str = "admin-secret";
const OPEN: &str = "@id(\"open\") @reason(\"open\") permit (principal, action, resource);";
const CLOSED: &str = "@id(\"closed\") @reason(\"closed\") forbid (principal, action, resource);";
const BROKEN: &str = "permit (principal, action resource);";
/// A generous bound for "in force within 2 s" on a loaded machine; no test waits for it
/// unless something is broken.
const DEADLINE: Duration = Duration::from_secs(15);

/// A config in `root` serving the policies of `root/policies`, with the admin token set.
fn config(root: &Path, watch: bool) -> Config {
    let digest = SecretDigest::of(ADMIN_TOKEN.as_bytes()).to_hex();
    let text = format!("policies:\n  dir: policies\n  watch: {watch}\nadmin:\n  token_sha256: {digest}\n");
    std::fs::write(root.join("cedargate.yaml"), text).unwrap();
    Config::load(&root.join("cedargate.yaml")).unwrap()
}

/// `root/policies` with the schema and `rules.cedar`.
fn policy_dir(root: &Path, rules: &str) -> PathBuf {
    let dir = root.join("policies");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(dir.join("rules.cedar"), rules).unwrap();
    dir
}

/// Writes `path` elsewhere and renames it over: what deploy tools and careful editors do.
fn replace_atomically(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// The reason an anonymous `GET /x` is decided with ("open" or "closed" here).
async fn reason(client: &mut AuthorizerClient<Channel>) -> String {
    client.check(check_request("", route("GET", "/x"))).await.unwrap().into_inner().reason
}

/// Polls until `GET /x` is decided with `wanted`.
async fn in_force(client: &mut AuthorizerClient<Channel>, wanted: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let seen = reason(client).await;
        if seen == wanted {
            return;
        }
        assert!(Instant::now() < deadline, "`{wanted}` never came into force; still `{seen}`");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn admin<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {ADMIN_TOKEN}").parse().unwrap());
    request
}

async fn status(client: &mut AdminClient<Channel>) -> PolicyStatusResponse {
    client.policy_status(admin(PolicyStatusRequest {})).await.unwrap().into_inner()
}

/// Polls the status until `done` holds.
async fn status_when(
    client: &mut AdminClient<Channel>,
    done: impl Fn(&PolicyStatusResponse) -> bool,
) -> PolicyStatusResponse {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = status(client).await;
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "status never got there: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the directory is watched and the watcher's first reload (which reads what
/// changed before the watch began) is done, so what follows is seen by the watch alone.
async fn watched(server: &TestServer) -> PolicyStatusResponse {
    let mut client = AdminClient::new(server.channel().await);
    status_when(&mut client, |status| status.watching && status.reloads_succeeded >= 1).await
}

async fn http_status(server: &TestServer, authorization: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(server.http_url("/policies/status"));
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn an_edit_in_place_is_in_force_within_moments() {
    let root = tempfile::tempdir().unwrap();
    let dir = policy_dir(root.path(), OPEN);
    let server = TestServer::start(config(root.path(), true)).await;
    let mut client = server.authorizer().await;
    assert_eq!(reason(&mut client).await, "open");
    watched(&server).await;

    let inode = std::fs::metadata(dir.join("rules.cedar")).unwrap().ino();
    std::fs::write(dir.join("rules.cedar"), CLOSED).unwrap();
    assert_eq!(std::fs::metadata(dir.join("rules.cedar")).unwrap().ino(), inode, "edited in place");
    in_force(&mut client, "closed").await;
}

#[tokio::test]
async fn a_file_renamed_over_the_old_one_is_in_force() {
    let root = tempfile::tempdir().unwrap();
    let dir = policy_dir(root.path(), OPEN);
    let server = TestServer::start(config(root.path(), true)).await;
    let mut client = server.authorizer().await;
    assert_eq!(reason(&mut client).await, "open");
    watched(&server).await;

    let inode = std::fs::metadata(dir.join("rules.cedar")).unwrap().ino();
    replace_atomically(&dir.join("rules.cedar"), CLOSED);
    assert_ne!(std::fs::metadata(dir.join("rules.cedar")).unwrap().ino(), inode, "a new file");
    in_force(&mut client, "closed").await;
    replace_atomically(&dir.join("rules.cedar"), OPEN);
    in_force(&mut client, "open").await;
}

#[tokio::test]
async fn new_and_deleted_files_are_seen() {
    let root = tempfile::tempdir().unwrap();
    let dir = policy_dir(root.path(), OPEN);
    let server = TestServer::start(config(root.path(), true)).await;
    let mut client = server.authorizer().await;
    let mut admin_client = AdminClient::new(server.channel().await);
    assert_eq!(reason(&mut client).await, "open");
    watched(&server).await;

    std::fs::write(dir.join("closed.cedar"), CLOSED).unwrap();
    in_force(&mut client, "closed").await;
    let files = status(&mut admin_client).await.files;
    assert!(files.iter().any(|file| file.ends_with("closed.cedar")), "{files:?}");

    std::fs::remove_file(dir.join("closed.cedar")).unwrap();
    in_force(&mut client, "open").await;
    assert_eq!(status(&mut admin_client).await.policy_count, 1);
}

/// What kubelet's atomic writer does to a ConfigMap volume: the files live in a timestamped
/// directory, `..data` points at it, and each visible file points into `..data`. An update
/// writes a new timestamped directory, points `..data_tmp` at it, renames that over `..data`,
/// links files that are new and removes the old directory.
struct ConfigMapVolume {
    dir: PathBuf,
    generation: u32,
}

impl ConfigMapVolume {
    fn create(dir: PathBuf, files: &[(&str, &str)]) -> Self {
        std::fs::create_dir(&dir).unwrap();
        let mut volume = Self { dir, generation: 0 };
        volume.update(files);
        volume
    }

    fn timestamped(&self, generation: u32) -> String {
        format!("..2026_01_01_00_00_{generation:02}.{:09}", 123_456_789 + generation)
    }

    fn update(&mut self, files: &[(&str, &str)]) {
        let previous = (self.generation > 0).then(|| self.timestamped(self.generation));
        self.generation += 1;
        let name = self.timestamped(self.generation);
        std::fs::create_dir(self.dir.join(&name)).unwrap();
        for (file, text) in files {
            std::fs::write(self.dir.join(&name).join(file), text).unwrap();
        }
        symlink(&name, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        for (file, _) in files {
            let link = self.dir.join(file);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(Path::new("..data").join(file), link).unwrap();
            }
        }
        if let Some(previous) = previous {
            std::fs::remove_dir_all(self.dir.join(previous)).unwrap();
        }
    }
}

#[tokio::test]
async fn a_configmap_data_swap_is_in_force() {
    let root = tempfile::tempdir().unwrap();
    let mut volume = ConfigMapVolume::create(
        root.path().join("policies"),
        &[("schema.cedarschema", SCHEMA), ("rules.cedar", OPEN)],
    );
    assert!(std::fs::symlink_metadata(volume.dir.join("rules.cedar")).unwrap().file_type().is_symlink());
    let server = TestServer::start(config(root.path(), true)).await;
    let mut client = server.authorizer().await;
    let mut admin_client = AdminClient::new(server.channel().await);
    assert_eq!(reason(&mut client).await, "open");
    let first = watched(&server).await;

    volume.update(&[("schema.cedarschema", SCHEMA), ("rules.cedar", CLOSED)]);
    in_force(&mut client, "closed").await;
    // Again, and with a file the map did not have: the watch survives a swap.
    volume.update(&[("schema.cedarschema", SCHEMA), ("rules.cedar", CLOSED), ("zz-open.cedar", OPEN)]);
    let status = status_when(&mut admin_client, |status| status.policy_count == 2).await;
    assert_ne!(status.revision, first.revision);
    let mut names: Vec<String> = status
        .files
        .iter()
        .map(|file| Path::new(file).file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["rules.cedar", "schema.cedarschema", "zz-open.cedar"],
        "the visible names, not `..data`"
    );
    assert_eq!(reason(&mut client).await, "closed", "forbid wins over permit");
    assert!(status.last_error.is_none(), "{status:?}");
}

#[tokio::test]
async fn a_directory_swapped_for_another_is_watched_again() {
    let root = tempfile::tempdir().unwrap();
    let dir = policy_dir(root.path(), OPEN);
    let server = TestServer::start(config(root.path(), true)).await;
    let mut client = server.authorizer().await;
    watched(&server).await;

    let next = root.path().join("policies.next");
    std::fs::create_dir(&next).unwrap();
    std::fs::write(next.join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(next.join("rules.cedar"), CLOSED).unwrap();
    std::fs::rename(&dir, root.path().join("policies.old")).unwrap();
    std::fs::rename(&next, &dir).unwrap();
    in_force(&mut client, "closed").await;
    // The new directory is the one watched now.
    std::fs::write(dir.join("rules.cedar"), OPEN).unwrap();
    in_force(&mut client, "open").await;
}

#[tokio::test]
async fn a_broken_file_never_serves_and_the_status_names_it_until_fixed() {
    let root = tempfile::tempdir().unwrap();
    let dir = policy_dir(root.path(), OPEN);
    let server = TestServer::start(config(root.path(), true)).await;
    let mut client = server.authorizer().await;
    let mut admin_client = AdminClient::new(server.channel().await);
    let good = watched(&server).await;
    assert!(good.last_error.is_none());

    std::fs::write(dir.join("rules.cedar"), BROKEN).unwrap();
    let broken = status_when(&mut admin_client, |status| status.reloads_failed >= 1).await;
    let error = broken.last_error.clone().expect("the refusal is reported");
    assert!(
        error.diagnostics.iter().any(|line| line.contains("rules.cedar:1:")),
        "file and line: {:?}",
        error.diagnostics
    );
    assert!(error.at.is_some());
    assert_eq!((broken.revision.as_str(), broken.loaded_at), (good.revision.as_str(), good.loaded_at));
    for _ in 0..20 {
        assert_eq!(reason(&mut client).await, "open", "the last good set serves");
    }

    // The same over HTTP, in the protobuf JSON mapping.
    let answer = http_status(&server, Some(&format!("Bearer {ADMIN_TOKEN}"))).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["cache-control"], "no-store");
    let json: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(json["revision"], good.revision.as_str());
    assert_eq!(json["lastError"]["diagnostics"], serde_json::json!(error.diagnostics));
    let at = json["lastError"]["at"].as_str().unwrap();
    assert!(at.starts_with("20") && at.ends_with('Z'), "RFC 3339: {at}");
    assert!(json["reloadsFailed"].as_u64().unwrap() >= 1, "{json}");
    assert_eq!(json["watching"], true);

    std::fs::write(dir.join("rules.cedar"), CLOSED).unwrap();
    in_force(&mut client, "closed").await;
    let fixed = status(&mut admin_client).await;
    assert!(fixed.last_error.is_none(), "a good reload clears the error: {fixed:?}");
    assert_ne!(fixed.revision, good.revision);
    assert_ne!(fixed.loaded_at, good.loaded_at);
}

#[tokio::test]
async fn reload_policies_needs_the_admin_token_and_answers_with_the_outcome() {
    let root = tempfile::tempdir().unwrap();
    let dir = policy_dir(root.path(), OPEN);
    let server = TestServer::start(config(root.path(), false)).await;
    let mut client = server.authorizer().await;
    let mut admin_client = AdminClient::new(server.channel().await);

    let anonymous = admin_client.reload_policies(ReloadPoliciesRequest {}).await.unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
    let mut wrong = Request::new(ReloadPoliciesRequest {});
    wrong.metadata_mut().insert("authorization", "Bearer not-the-admin".parse().unwrap());
    assert_eq!(admin_client.reload_policies(wrong).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let status_anonymous = admin_client.policy_status(PolicyStatusRequest {}).await.unwrap_err();
    assert_eq!(status_anonymous.code(), tonic::Code::Unauthenticated);
    for authorization in [None, Some("Bearer not-the-admin"), Some(ADMIN_TOKEN)] {
        let answer = http_status(&server, authorization).await;
        assert_eq!(answer.status(), 401, "{authorization:?}");
        assert_eq!(answer.headers()["www-authenticate"], "Bearer");
    }

    let before = status(&mut admin_client).await;
    assert!(!before.watching, "policies.watch: false");
    std::fs::write(dir.join("rules.cedar"), CLOSED).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(reason(&mut client).await, "open", "not watched: nothing changes by itself");

    let reloaded = admin_client.reload_policies(admin(ReloadPoliciesRequest {})).await.unwrap().into_inner();
    assert!(reloaded.changed);
    let after = reloaded.status.unwrap();
    assert_ne!(after.revision, before.revision);
    assert_eq!(after.reloads_succeeded, before.reloads_succeeded + 1);
    assert_eq!(reason(&mut client).await, "closed", "in force when the call returns");
    let again = admin_client.reload_policies(admin(ReloadPoliciesRequest {})).await.unwrap().into_inner();
    assert!(!again.changed, "the same files: nothing swapped");
    assert_eq!(again.status.unwrap().revision, after.revision);

    std::fs::write(dir.join("rules.cedar"), BROKEN).unwrap();
    let refused = admin_client.reload_policies(admin(ReloadPoliciesRequest {})).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("rules.cedar:1:"), "{}", refused.message());
    assert_eq!(reason(&mut client).await, "closed", "the last good set serves");
    let status = status(&mut admin_client).await;
    assert_eq!((status.reloads_failed, status.revision.as_str()), (1, after.revision.as_str()));
    assert!(status.last_error.unwrap().diagnostics.iter().any(|line| line.contains("rules.cedar:1:")));
}

#[tokio::test]
async fn the_admin_calls_are_off_without_a_token_and_the_demo_cannot_be_reloaded() {
    let off = TestServer::demo().await;
    let mut admin_client = AdminClient::new(off.channel().await);
    let refused = admin_client.policy_status(admin(PolicyStatusRequest {})).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let answer = http_status(&off, Some(&format!("Bearer {ADMIN_TOKEN}"))).await;
    assert_eq!(answer.status(), 403);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "admin_disabled");

    let mut config = Config::demo().unwrap();
    config.admin.token_sha256 = Some(cedargate::config::Digest(SecretDigest::of(ADMIN_TOKEN.as_bytes())));
    let demo = TestServer::start(config).await;
    let mut admin_client = AdminClient::new(demo.channel().await);
    let refused = admin_client.reload_policies(admin(ReloadPoliciesRequest {})).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("embedded"), "{}", refused.message());
    let status = status(&mut admin_client).await;
    assert_eq!((status.source.as_str(), status.watching), ("<embedded demo>", false));
    assert!(status.policy_count > 0 && !status.revision.is_empty());
}

/// Checks from several tasks while the set flips between two, by file and watcher and by
/// bursts of concurrent `ReloadPolicies` calls: every check is answered, by one whole set.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_storm_under_load_answers_every_check_from_one_whole_set() {
    const SET_A: &str = "@id(\"a\") @reason(\"set a\") permit (principal, action, resource);";
    const SET_B: &str = "@id(\"b\") @reason(\"set b\") forbid (principal, action, resource);\n\
                         @id(\"b-open\") permit (principal, action, resource);";
    let answer_a = (Outcome::Allowed, vec!["a".to_owned()], "set a".to_owned());
    let answer_b = (Outcome::Unauthenticated, vec!["b".to_owned()], "set b".to_owned());

    let root = tempfile::tempdir().unwrap();
    let dir = policy_dir(root.path(), SET_A);
    let server = TestServer::start(config(root.path(), true)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut checkers = Vec::new();
    for _ in 0..6 {
        let mut client = server.authorizer().await;
        let stop = Arc::clone(&stop);
        let expected = [answer_a.clone(), answer_b.clone()];
        checkers.push(tokio::spawn(async move {
            let mut seen = [0usize; 2];
            while !stop.load(Ordering::Relaxed) {
                let answer = client
                    .check(check_request("", route("GET", "/x")))
                    .await
                    .expect("every check is answered")
                    .into_inner();
                let decided = (answer.outcome(), answer.policy_ids.clone(), answer.reason.clone());
                let Some(which) = expected.iter().position(|set| *set == decided) else {
                    panic!("an answer from neither set: {answer:?}");
                };
                seen[which] += 1;
            }
            seen
        }));
    }

    let channel = server.channel().await;
    let mut client = server.authorizer().await;
    for round in 0..30 {
        let (text, expected) = if round % 2 == 0 { (SET_B, &answer_b) } else { (SET_A, &answer_a) };
        replace_atomically(&dir.join("rules.cedar"), text);
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let mut admin_client = AdminClient::new(channel.clone());
                tokio::spawn(
                    async move { admin_client.reload_policies(admin(ReloadPoliciesRequest {})).await },
                )
            })
            .collect();
        for call in calls {
            call.await.unwrap().expect("a reload of a valid set goes through");
        }
        // Every call started after the write, so the set written is in force now.
        let answer = client.check(check_request("", route("GET", "/x"))).await.unwrap().into_inner();
        assert_eq!(
            &(answer.outcome(), answer.policy_ids.clone(), answer.reason.clone()),
            expected,
            "round {round}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = [0usize; 2];
    for checker in checkers {
        let seen = checker.await.expect("no checker saw a wrong answer");
        total[0] += seen[0];
        total[1] += seen[1];
    }
    assert!(total[0] > 0 && total[1] > 0, "the checks ran across both sets: {total:?}");
    let status = status(&mut AdminClient::new(channel)).await;
    assert_eq!(status.reloads_failed, 0, "{status:?}");
}
