//! Lending on demand end to end: two test controllers (home, with the
//! agents' nodes; a borrower with the Jenkins API and a lender user), two
//! real `jnlp-agent`s linked to an in-process lender that has the borrower
//! registered (and, in some tests, home too). What counts is what the
//! controllers record: nodes created and deleted, builds and where they
//! ran, nodes online or temporarily offline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{fake_engine, lender_token, temp_dir, until_online, AgentProcess};
use lender::controllers::{ControllerConfig, ControllerOptions};
use lender::pool::Secret;
use lender::server::{self, Config};
use lender::store::{SqliteStore, Store as _};
use lender::tokens::TokenKind;
use testkit::controller::{BuildState, JobSpec, NodeConfig, Permission};
use testkit::{ControllerEvent, TestController};

const LONG: Duration = Duration::from_secs(60);
const USER: &str = "lender";
const API_TOKEN: &str = "1234abcd5678ef90";
/// A Jenkins administrator (cancels queue items as a person would).
const ADMIN: &str = "admin";
const ADMIN_TOKEN: &str = "a11a11a11a11a11a";

fn start_agent(
    home: &TestController,
    lender: &str,
    name: &str,
    labels: &str,
    token: &Path,
) -> AgentProcess {
    let url = home.url();
    let cmd = format!("{} echo", fake_engine().display());
    let token = token.display().to_string();
    let secret = home.node_secret(name).unwrap();
    AgentProcess::start(
        &[
            "-url",
            url.as_str(),
            "-name",
            name,
            "--engine-command",
            cmd.as_str(),
            "--lender",
            lender,
            "--lender-token-file",
            token.as_str(),
            "--labels",
            labels,
        ],
        &[("JENKINS_SECRET", secret.as_str())],
    )
}

async fn until_logged(c: &TestController, what: &str, pred: impl Fn(&ControllerEvent) -> bool) {
    let deadline = std::time::Instant::now() + LONG;
    while !c.log().iter().any(&pred) {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {LONG:?}; log: {:?}",
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `check` holds, polling; panics naming `what` after [`LONG`].
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + LONG;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {LONG:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many times the lender has read `c`'s queue (or `path`) so far.
fn reads(c: &TestController, path: &str) -> usize {
    c.log()
        .iter()
        .filter(|e| matches!(e, ControllerEvent::Http { path: p, .. } if p == path))
        .count()
}

/// Waits until the lender has read `path` at `c` `n` more times: a "lent
/// nothing meanwhile" assertion then covers that many polls.
async fn polls(c: &TestController, path: &str, n: usize) {
    let from = reads(c, path);
    until(&format!("{n} reads of {path}"), || {
        reads(c, path) >= from + n
    })
    .await;
}

const QUEUE: &str = "/queue/api/json";

fn no_node_created(c: &TestController) -> bool {
    !c.log()
        .iter()
        .any(|e| matches!(e, ControllerEvent::NodeCreated { .. }))
}

/// What a rig is made of.
struct Spec {
    name: &'static str,
    /// The borrower's registration (`ci`).
    options: ControllerOptions,
    /// The API token the lender is given for the borrower.
    api_token: &'static str,
    /// Home registered too (`home`), with these options.
    home: Option<ControllerOptions>,
}

impl Spec {
    fn new(name: &'static str, options: ControllerOptions) -> Self {
        Spec {
            name,
            options,
            api_token: API_TOKEN,
            home: None,
        }
    }
}

/// Home (Jenkins API, nodes mac-01 `macos` and box-01 `linux-box`), a
/// borrower with the Jenkins API (and a node of its own, so that `why`
/// names the label), the lender on SQLite with the borrower registered,
/// both agents online at home.
struct Rig {
    home: TestController,
    borrower: TestController,
    running: Option<lender::server::Running>,
    addr: SocketAddr,
    db: PathBuf,
    /// The lender's API with a client token.
    client: lender::client::Client,
    client_token: String,
    _agents: Vec<AgentProcess>,
}

fn registration(
    name: &str,
    url: String,
    token: &str,
    options: ControllerOptions,
) -> ControllerConfig {
    ControllerConfig {
        name: name.into(),
        url,
        user: USER.into(),
        api_token: Secret::new(token),
        options,
        added_ms: 0,
    }
}

fn lender_config(db: &Path, listen: &str) -> Config {
    let mut config = Config::new(listen, db);
    config.tick = Duration::from_millis(50);
    config.borrow_wait = Duration::from_secs(30);
    config.poll = Duration::from_millis(200);
    config
}

async fn rig(spec: Spec) -> Rig {
    let home = TestController::builder()
        .jenkins_version("2.541.1")
        .user(USER, API_TOKEN, Permission::LENDER)
        .agent(NodeConfig::new("mac-01").labels("macos"))
        .agent(NodeConfig::new("box-01").labels("linux-box"))
        .remoting_jar(testkit::fake_remoting_jar("3301.v4363ddcca_4e7"))
        .start()
        .await;
    let borrower = TestController::builder()
        .jenkins_version("2.541.1")
        .user(USER, API_TOKEN, Permission::LENDER)
        .user(ADMIN, ADMIN_TOKEN, &[Permission::Administer])
        .agent(NodeConfig::new("ci-linux").labels("linux"))
        .remoting_jar(testkit::fake_remoting_jar("3355.v388858a_47b_33"))
        .start()
        .await;
    let dir = temp_dir(spec.name);
    let db = dir.join("pool.db");
    let mut files = Vec::new();
    for name in ["mac-01", "box-01"] {
        let file = dir.join(format!("{name}.token"));
        std::fs::write(&file, lender_token(&db, TokenKind::Agent, name)).unwrap();
        files.push(file);
    }
    let client_token = lender_token(&db, TokenKind::Client, "team");
    {
        let mut store = SqliteStore::open(&db).unwrap();
        let ci = registration("ci", borrower.url(), spec.api_token, spec.options);
        assert!(store.add_controller(&ci).unwrap());
        if let Some(options) = spec.home {
            let at_home = registration("home", home.url(), API_TOKEN, options);
            assert!(store.add_controller(&at_home).unwrap());
        }
    }
    let running = server::start(lender_config(&db, "127.0.0.1:0"))
        .await
        .unwrap();
    let addr = running.local_addr();
    let lender = format!("http://{addr}");
    let agents = vec![
        start_agent(&home, &lender, "mac-01", "macos", &files[0]),
        start_agent(&home, &lender, "box-01", "linux-box", &files[1]),
    ];
    until_online(&home, "mac-01", true, LONG).await;
    until_online(&home, "box-01", true, LONG).await;
    Rig {
        home,
        borrower,
        running: Some(running),
        addr,
        db,
        client: lender::client::Client::new(&lender, &client_token, None).unwrap(),
        client_token,
        _agents: agents,
    }
}

impl Rig {
    /// `GET /metrics` from the lender.
    async fn metrics(&self) -> String {
        let response = reqwest::Client::new()
            .get(format!("http://{}/metrics", self.addr))
            .bearer_auth(&self.client_token)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        response.text().await.unwrap()
    }

    /// The borrower `ci` as `GET /v1/controllers` shows it.
    async fn ci(&self) -> lender::api::ControllerView {
        self.client
            .controllers()
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.name == "ci")
            .unwrap()
    }

    /// Replaces `ci`'s registration, as `controller add --replace` does.
    fn replace_ci(&self, token: &str, options: ControllerOptions) {
        let mut store = SqliteStore::open(&self.db).unwrap();
        assert!(store.remove_controller("ci").unwrap());
        let mut ci = registration("ci", self.borrower.url(), token, options);
        // As the command does: the row is new, even with the same token.
        ci.added_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(store.add_controller(&ci).unwrap());
    }

    async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

/// `POST queue/cancelItem?id=N` at `c` as its administrator.
async fn cancel_item(c: &TestController, id: u64) {
    let response = reqwest::Client::new()
        .post(format!("{}queue/cancelItem?id={id}", c.url()))
        .basic_auth(ADMIN, Some(ADMIN_TOKEN))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success() || response.status().is_redirection(),
        "cancel: {}",
        response.status()
    );
}

/// A metric's value in `text` (None: not there).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The job runs on the lent agent's node, made by the lender; the agent
/// goes home and the node is deleted; the build was never cut. The
/// lender's metric from the item queued to its build started is that
/// build's own wait, to the millisecond.
async fn lent_for_one_job(rig: &Rig) {
    let jenkins = rig.borrower.jenkins();
    let item = jenkins.queue(
        JobSpec::pipeline("app")
            .label("macos")
            .duration(Duration::from_secs(1)),
    );
    let build = jenkins.wait_started(item, LONG).await;
    assert_eq!(build.node, "lent-mac-01");
    assert!(rig.borrower.log().contains(&ControllerEvent::NodeCreated {
        node: "lent-mac-01".into()
    }));
    assert!(!jenkins.has_node("lent-box-01"));
    until_logged(&rig.borrower, "node deleted", |e| {
        *e == ControllerEvent::NodeDeleted {
            node: "lent-mac-01".into(),
        }
    })
    .await;
    until_online(&rig.home, "mac-01", true, LONG).await;
    assert!(!jenkins.has_node("lent-mac-01"));
    let build = jenkins.build(item).unwrap();
    assert_eq!(build.state, BuildState::Finished);

    let metrics = rig.metrics().await;
    let name = "jnlp_lender_demand_build_started_seconds";
    assert_eq!(
        metric(&metrics, &format!("{name}_count{{controller=\"ci\"}}")),
        Some(1.0),
        "{metrics}"
    );
    let waited = (build.started_ms - build.in_queue_since_ms) as f64 / 1000.0;
    let sum = metric(&metrics, &format!("{name}_sum{{controller=\"ci\"}}")).unwrap();
    assert!(
        (sum - waited).abs() < 0.0015,
        "{sum} s for a wait of {waited} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labelled_job_runs_on_a_lent_agent_whose_node_the_lender_made() {
    let rig = rig(Spec::new(
        "on-demand",
        ControllerOptions {
            demand_after: Duration::ZERO,
            idle_return: Duration::from_secs(3),
            ..ControllerOptions::default()
        },
    ))
    .await;
    // The build ends; idle for --idle-return, the agent goes home.
    lent_for_one_job(&rig).await;
    rig.shutdown().await;
}

/// `--one-build`: the agent goes home as soon as its one build is over,
/// long before the idle return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_build_sends_the_agent_home_after_its_build() {
    let rig = rig(Spec::new(
        "on-demand-one",
        ControllerOptions {
            demand_after: Duration::ZERO,
            idle_return: Duration::from_secs(3600),
            one_build: true,
            ..ControllerOptions::default()
        },
    ))
    .await;
    lent_for_one_job(&rig).await;
    rig.shutdown().await;
}

/// Two items for two labels at one controller get the two agents, each on
/// its own node, and both builds run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_labels_get_two_agents_and_both_build() {
    let rig = rig(Spec::new(
        "on-demand-two",
        ControllerOptions {
            demand_after: Duration::ZERO,
            idle_return: Duration::from_secs(1),
            ..ControllerOptions::default()
        },
    ))
    .await;
    let jenkins = rig.borrower.jenkins();
    let mac = jenkins.queue(JobSpec::pipeline("mac-app").label("macos"));
    let other = jenkins.queue(JobSpec::freestyle("box-app").label("linux-box"));
    let on_mac = jenkins.wait_started(mac, LONG).await;
    let on_box = jenkins.wait_started(other, LONG).await;
    assert_eq!(on_mac.node, "lent-mac-01");
    assert_eq!(on_box.node, "lent-box-01");
    // Both run at once: two agents, not one after the other.
    assert_eq!(jenkins.build(mac).unwrap().state, BuildState::Running);
    assert!(jenkins.finish_build(mac));
    assert!(jenkins.finish_build(other));
    for node in ["lent-mac-01", "lent-box-01"] {
        until(&format!("{node} deleted"), || !jenkins.has_node(node)).await;
    }
    until_online(&rig.home, "mac-01", true, LONG).await;
    until_online(&rig.home, "box-01", true, LONG).await;
    rig.shutdown().await;
}

/// An item cancelled (`queue/cancelItem`) before its agent arrives frees
/// the agent: here the agent is busy at home (registered, `--no-demand`)
/// when the item comes, so its node at the borrower is made and its home
/// node taken offline while the lender waits for the home build. Cancelled
/// then, the lease ends: the node at the borrower is deleted, the agent
/// never leaves home, and its home node is online again for the next home
/// build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_item_frees_its_agent() {
    let rig = rig(Spec {
        home: Some(ControllerOptions {
            demand: false,
            ..ControllerOptions::default()
        }),
        ..Spec::new(
            "on-demand-cancel",
            ControllerOptions {
                demand_after: Duration::ZERO,
                idle_return: Duration::from_secs(1),
                ..ControllerOptions::default()
            },
        )
    })
    .await;
    let at_home = rig.home.jenkins();
    let away = rig.borrower.jenkins();
    let first = at_home.queue(JobSpec::freestyle("home-1").label("macos"));
    at_home.wait_started(first, LONG).await;
    let wanted = away.queue(JobSpec::pipeline("app").label("macos"));
    until("home node taken offline", || {
        at_home.temporarily_offline("mac-01").is_some()
    })
    .await;
    assert!(away.has_node("lent-mac-01"));

    cancel_item(&rig.borrower, wanted).await;
    until("node at the borrower deleted", || {
        !away.has_node("lent-mac-01")
    })
    .await;
    // The home build is not cut; once it ends the home node is online
    // again and takes the next home build. The agent never left.
    assert_eq!(at_home.build(first).unwrap().state, BuildState::Running);
    assert!(at_home.finish_build(first));
    until("home node back online", || {
        at_home.temporarily_offline("mac-01").is_none()
    })
    .await;
    let second = at_home.queue(JobSpec::freestyle("home-2").label("macos"));
    assert_eq!(at_home.wait_started(second, LONG).await.node, "mac-01");
    assert!(away.build(wanted).is_none());
    assert!(!rig
        .home
        .log()
        .iter()
        .any(|e| matches!(e, ControllerEvent::ChannelClosed { node, .. } if node == "mac-01")));
    rig.shutdown().await;
}

/// Leaving home without guessing: the agent's home is registered too
/// (`--no-demand`: for its credentials). A build running at home when a
/// borrower's job wants the agent is not cut: the home node goes
/// temporarily offline, the lender waits for it to finish, and only then
/// lends the agent. A build queued at home meanwhile waits, and runs once
/// the agent is back and its home node online again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_at_home_is_never_cut_and_the_next_one_waits_for_the_agent() {
    let rig = rig(Spec {
        home: Some(ControllerOptions {
            demand: false,
            ..ControllerOptions::default()
        }),
        ..Spec::new(
            "on-demand-home",
            ControllerOptions {
                demand_after: Duration::ZERO,
                idle_return: Duration::from_secs(2),
                ..ControllerOptions::default()
            },
        )
    })
    .await;
    let home = &rig.home;

    // A build runs at home; then the borrower wants the machine.
    let at_home = home.jenkins();
    let first = at_home.queue(JobSpec::freestyle("home-1").label("macos"));
    at_home.wait_started(first, LONG).await;
    let away = rig.borrower.jenkins();
    let wanted = away.queue(
        JobSpec::pipeline("app")
            .label("macos")
            .duration(Duration::from_secs(1)),
    );
    until("home node taken offline", || {
        at_home.temporarily_offline("mac-01").is_some()
    })
    .await;
    let cause = at_home.temporarily_offline("mac-01").unwrap();
    assert!(cause.contains("jnlp-lender"), "{cause}");
    // A second build queued at home waits; the first is not cut.
    let second = at_home.queue(JobSpec::freestyle("home-2").label("macos"));
    // The lender has looked at the busy home node several times (it
    // waits for idle) and lent nothing meanwhile.
    polls(home, "/computer/mac-01/api/json", 3).await;
    assert!(
        away.build(wanted).is_none(),
        "lent while a build ran at home"
    );
    assert!(at_home.build(second).is_none());
    assert_eq!(at_home.build(first).unwrap().state, BuildState::Running);

    // The home build ends: the agent is lent, builds there, comes home
    // after its idle return, and the waiting home build runs.
    assert!(at_home.finish_build(first));
    let build = away.wait_started(wanted, LONG).await;
    assert_eq!(build.node, "lent-mac-01");
    let next = at_home.wait_started(second, LONG).await;
    assert_eq!(next.node, "mac-01");
    assert!(next.started_ms >= away.build(wanted).unwrap().ended_ms.unwrap_or(u64::MAX));
    assert_eq!(at_home.build(first).unwrap().state, BuildState::Finished);
    assert_eq!(at_home.temporarily_offline("mac-01"), None);
    rig.shutdown().await;
}

/// A home that is a registered controller with demand on: an item waiting
/// there for its own agent's label (its node taken offline by an admin)
/// does not make the lender lend the agent to its own home as a second
/// node; once the node is back, home's scheduler runs the item on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_never_lent_to_its_own_home() {
    let options = ControllerOptions {
        demand_after: Duration::ZERO,
        idle_return: Duration::from_secs(1),
        ..ControllerOptions::default()
    };
    let rig = rig(Spec {
        home: Some(options.clone()),
        ..Spec::new("on-demand-self", options)
    })
    .await;
    let at_home = rig.home.jenkins();
    assert!(at_home.set_temporarily_offline("mac-01", Some("maintenance")));
    let item = at_home.queue(JobSpec::pipeline("app").label("macos"));
    polls(&rig.home, QUEUE, 5).await;
    assert!(no_node_created(&rig.home), "{:?}", rig.home.log());
    assert!(!at_home.has_node("lent-mac-01"));
    assert!(at_home.build(item).is_none());
    assert!(rig.home.is_online("mac-01"));

    assert!(at_home.set_temporarily_offline("mac-01", None));
    assert_eq!(at_home.wait_started(item, LONG).await.node, "mac-01");
    assert!(no_node_created(&rig.home));
    rig.shutdown().await;
}

/// Waits until `ci` as `GET /v1/controllers` shows it passes `check`.
async fn until_ci(
    rig: &Rig,
    what: &str,
    check: impl Fn(&lender::api::ControllerView) -> bool,
) -> lender::api::ControllerView {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let ci = rig.ci().await;
        if check(&ci) {
            return ci;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {ci:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A bad API token (401) and then a user missing Overall/Read (403) show
/// as `failing` with the cause, and nothing is lent while a labelled item
/// waits; a good token (`controller add --replace`) and the permission
/// granted make the item build on a lent agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_or_a_missing_permission_lends_nothing_until_fixed() {
    let options = ControllerOptions {
        demand_after: Duration::ZERO,
        idle_return: Duration::from_secs(1),
        ..ControllerOptions::default()
    };
    let rig = rig(Spec {
        api_token: "0000bad0000bad00",
        ..Spec::new("on-demand-401", options.clone())
    })
    .await;
    let jenkins = rig.borrower.jenkins();
    let item = jenkins.queue(JobSpec::pipeline("app").label("macos"));
    let ci = until_ci(&rig, "ci failing with 401", |c| c.state == "failing").await;
    let error = ci.last_error.unwrap();
    assert!(error.contains("401"), "{error}");
    polls(&rig.borrower, "/api/json", 2).await;
    assert!(no_node_created(&rig.borrower));
    assert!(jenkins.build(item).is_none());
    assert!(rig.home.is_online("mac-01"));

    // The right token, for a user who may not read: 403, naming the
    // permission Jenkins says is missing.
    assert!(jenkins.grant(USER, &[]));
    rig.replace_ci(API_TOKEN, options.clone());
    let ci = until_ci(&rig, "ci failing with 403", |c| {
        c.state == "failing" && c.last_error.as_deref().is_some_and(|e| e.contains("403"))
    })
    .await;
    let error = ci.last_error.unwrap();
    assert!(error.contains("hudson.model.Hudson.Read"), "{error}");
    assert!(!error.contains(API_TOKEN));
    polls(&rig.borrower, "/api/json", 1).await;
    assert!(no_node_created(&rig.borrower));
    assert!(jenkins.build(item).is_none());
    assert!(rig.home.is_online("mac-01"));

    // Granted: the item builds on a lent agent.
    assert!(jenkins.grant(USER, Permission::LENDER));
    assert_eq!(jenkins.wait_started(item, LONG).await.node, "lent-mac-01");
    until_ci(&rig, "ci ok", |c| c.state == "ok").await;
    rig.shutdown().await;
}

/// The lender restarted (same database) mid-lease reconciles: the lease
/// stays, the agent stays lent and its build runs on, and at the end the
/// agent goes home and its node is deleted. A node with the lender's
/// prefix and no lease (made while the lender was down) is deleted once
/// idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_lender_keeps_its_lease_and_deletes_stray_nodes() {
    let mut rig = rig(Spec::new(
        "on-demand-restart",
        ControllerOptions {
            demand_after: Duration::ZERO,
            idle_return: Duration::from_secs(1),
            ..ControllerOptions::default()
        },
    ))
    .await;
    let jenkins = rig.borrower.jenkins();
    let item = jenkins.queue(JobSpec::pipeline("app").label("macos"));
    assert_eq!(jenkins.wait_started(item, LONG).await.node, "lent-mac-01");

    rig.running.take().unwrap().shutdown().await;
    jenkins
        .create_node(NodeConfig::new("lent-stray").labels("macos"))
        .unwrap();
    let running = server::start(lender_config(&rig.db, &rig.addr.to_string()))
        .await
        .unwrap();
    rig.running = Some(running);

    until("the stray node deleted", || !jenkins.has_node("lent-stray")).await;
    polls(&rig.borrower, QUEUE, 3).await;
    assert!(jenkins.has_node("lent-mac-01"));
    assert!(rig.borrower.is_online("lent-mac-01"));
    assert_eq!(jenkins.build(item).unwrap().state, BuildState::Running);
    assert_eq!(
        until_ci(&rig, "ci ok", |c| c.state == "ok")
            .await
            .agents_lent,
        1
    );

    assert!(jenkins.finish_build(item));
    until("lent node deleted", || !jenkins.has_node("lent-mac-01")).await;
    until_online(&rig.home, "mac-01", true, LONG).await;
    assert_eq!(jenkins.build(item).unwrap().state, BuildState::Finished);
    rig.shutdown().await;
}

/// A secret that does not match: the borrower refuses the lent agent's
/// connection for the node the lender made. The controller shows
/// `failing` with a cause that says so and what to do, the auto-lease ends
/// with the agent at home and its node deleted, and no node is made again
/// for the item while the cause stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_secret_shows_failing_and_sends_the_agent_home() {
    let options = ControllerOptions {
        demand_after: Duration::ZERO,
        idle_return: Duration::from_secs(1),
        ..ControllerOptions::default()
    };
    let rig = rig(Spec::new("on-demand-secret", options.clone())).await;
    let jenkins = rig.borrower.jenkins();
    jenkins.refuse_secrets_of(Some("lent-"));
    let item = jenkins.queue(JobSpec::pipeline("app").label("macos"));
    let ci = until_ci(&rig, "ci failing: secret refused", |c| c.state == "failing").await;
    let error = ci.last_error.unwrap();
    assert!(
        error.contains("refused the secret of node lent-mac-01"),
        "{error}"
    );
    assert!(error.contains("--replace"), "{error}");
    until("lent node deleted", || !jenkins.has_node("lent-mac-01")).await;
    until_online(&rig.home, "mac-01", true, LONG).await;
    polls(&rig.borrower, QUEUE, 5).await;
    let created = rig
        .borrower
        .log()
        .iter()
        .filter(|e| matches!(e, ControllerEvent::NodeCreated { .. }))
        .count();
    assert_eq!(created, 1);
    assert!(jenkins.build(item).is_none());
    assert!(rig.home.is_online("mac-01"));

    // Fixed at the controller and re-registered (`controller add
    // --replace`): the item is served again and builds.
    jenkins.refuse_secrets_of(None);
    rig.replace_ci(API_TOKEN, options);
    assert_eq!(jenkins.wait_started(item, LONG).await.node, "lent-mac-01");
    until_ci(&rig, "ci ok", |c| c.state == "ok").await;
    rig.shutdown().await;
}
