//! Lending on demand end to end: two test controllers (home, with the
//! agents' nodes; a borrower with the Jenkins API and a lender user), two
//! real `jnlp-agent`s linked to an in-process lender that has the borrower
//! registered. A job queued with a label at the borrower runs on a lent
//! agent whose node the lender created; after `--idle-return` the agent is
//! home again and the node deleted. What counts is what the controllers
//! record.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{fake_engine, lender_token, temp_dir, until_online, AgentProcess};
use lender::controllers::{ControllerConfig, ControllerOptions};
use lender::pool::Secret;
use lender::server::{self, Config};
use lender::store::{SqliteStore, Store as _};
use lender::tokens::TokenKind;
use testkit::controller::{JobSpec, NodeConfig, Permission};
use testkit::{ControllerEvent, TestController};

const HOME_SECRET: &str = "5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e";
const LONG: Duration = Duration::from_secs(60);
const USER: &str = "lender";
const API_TOKEN: &str = "1234abcd5678ef90";

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
        &[("JENKINS_SECRET", HOME_SECRET)],
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

/// Home with mac-01 and box-01, a borrower with the Jenkins API (and a
/// node of its own, so that `why` names the label), the lender with the
/// borrower registered with `options`, both agents online at home.
struct Rig {
    home: TestController,
    borrower: TestController,
    running: lender::server::Running,
    _agents: Vec<AgentProcess>,
}

async fn rig(name: &str, options: ControllerOptions) -> Rig {
    let home = TestController::builder()
        .node("mac-01", HOME_SECRET)
        .node("box-01", HOME_SECRET)
        .remoting_jar(testkit::fake_remoting_jar("3301.v4363ddcca_4e7"))
        .start()
        .await;
    let borrower = TestController::builder()
        .jenkins_version("2.541.1")
        .user(USER, API_TOKEN, Permission::LENDER)
        .agent(NodeConfig::new("ci-linux").labels("linux"))
        .remoting_jar(testkit::fake_remoting_jar("3355.v388858a_47b_33"))
        .start()
        .await;
    let dir = temp_dir(name);
    let db = dir.join("pool.db");
    let mut files = Vec::new();
    for name in ["mac-01", "box-01"] {
        let file = dir.join(format!("{name}.token"));
        std::fs::write(&file, lender_token(&db, TokenKind::Agent, name)).unwrap();
        files.push(file);
    }
    {
        let mut store = SqliteStore::open(&db).unwrap();
        assert!(store
            .add_controller(&ControllerConfig {
                name: "ci".into(),
                url: borrower.url(),
                user: USER.into(),
                api_token: Secret::new(API_TOKEN),
                options,
                added_ms: 0,
            })
            .unwrap());
    }
    let mut config = Config::new("127.0.0.1:0", &db);
    config.tick = Duration::from_millis(50);
    config.borrow_wait = Duration::from_secs(30);
    config.poll = Duration::from_millis(200);
    let running = server::start(config).await.unwrap();
    let lender = format!("http://{}", running.local_addr());
    let agents = vec![
        start_agent(&home, &lender, "mac-01", "macos", &files[0]),
        start_agent(&home, &lender, "box-01", "linux-box", &files[1]),
    ];
    until_online(&home, "mac-01", true, LONG).await;
    until_online(&home, "box-01", true, LONG).await;
    Rig {
        home,
        borrower,
        running,
        _agents: agents,
    }
}

/// The job runs on the lent agent's node, made by the lender; the agent
/// goes home and the node is deleted; the build was never cut.
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
    assert_eq!(build.state, testkit::controller::BuildState::Finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labelled_job_runs_on_a_lent_agent_whose_node_the_lender_made() {
    let rig = rig(
        "on-demand",
        ControllerOptions {
            demand_after: Duration::ZERO,
            idle_return: Duration::from_secs(3),
            ..ControllerOptions::default()
        },
    )
    .await;
    // The build ends; idle for --idle-return, the agent goes home.
    lent_for_one_job(&rig).await;
    rig.running.shutdown().await;
}

/// `--one-build`: the agent goes home as soon as its one build is over,
/// long before the idle return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_build_sends_the_agent_home_after_its_build() {
    let rig = rig(
        "on-demand-one",
        ControllerOptions {
            demand_after: Duration::ZERO,
            idle_return: Duration::from_secs(3600),
            one_build: true,
            ..ControllerOptions::default()
        },
    )
    .await;
    lent_for_one_job(&rig).await;
    rig.running.shutdown().await;
}

/// Leaving home without guessing: the agent's home is registered too
/// (`--no-demand`: for its credentials). A build running at home when a
/// borrower's job wants the agent is not cut: the home node goes
/// temporarily offline, the lender waits for it to finish, and only then
/// lends the agent. A build queued at home meanwhile waits, and runs once
/// the agent is back and its home node online again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_at_home_is_never_cut_and_the_next_one_waits_for_the_agent() {
    let home = TestController::builder()
        .jenkins_version("2.541.1")
        .user(USER, API_TOKEN, Permission::LENDER)
        .agent(NodeConfig::new("mac-01").labels("macos"))
        .remoting_jar(testkit::fake_remoting_jar("3301.v4363ddcca_4e7"))
        .start()
        .await;
    let borrower = TestController::builder()
        .jenkins_version("2.541.1")
        .user(USER, API_TOKEN, Permission::LENDER)
        .agent(NodeConfig::new("ci-linux").labels("linux"))
        .remoting_jar(testkit::fake_remoting_jar("3355.v388858a_47b_33"))
        .start()
        .await;
    let dir = temp_dir("on-demand-home");
    let db = dir.join("pool.db");
    let file = dir.join("mac-01.token");
    std::fs::write(&file, lender_token(&db, TokenKind::Agent, "mac-01")).unwrap();
    {
        let mut store = SqliteStore::open(&db).unwrap();
        for (name, url, demand) in [("home", home.url(), false), ("ci", borrower.url(), true)] {
            assert!(store
                .add_controller(&ControllerConfig {
                    name: name.into(),
                    url,
                    user: USER.into(),
                    api_token: Secret::new(API_TOKEN),
                    options: ControllerOptions {
                        demand_after: Duration::ZERO,
                        idle_return: Duration::from_secs(2),
                        demand,
                        ..ControllerOptions::default()
                    },
                    added_ms: 0,
                })
                .unwrap());
        }
    }
    let mut config = Config::new("127.0.0.1:0", &db);
    config.tick = Duration::from_millis(50);
    config.borrow_wait = Duration::from_secs(30);
    config.poll = Duration::from_millis(200);
    let running = server::start(config).await.unwrap();
    let lender = format!("http://{}", running.local_addr());
    let secret = home.node_secret("mac-01").unwrap();
    let url = home.url();
    let cmd = format!("{} echo", fake_engine().display());
    let token_arg = file.display().to_string();
    let _agent = AgentProcess::start(
        &[
            "-url",
            url.as_str(),
            "-name",
            "mac-01",
            "--engine-command",
            cmd.as_str(),
            "--lender",
            lender.as_str(),
            "--lender-token-file",
            token_arg.as_str(),
            "--labels",
            "macos",
        ],
        &[("JENKINS_SECRET", secret.as_str())],
    );
    until_online(&home, "mac-01", true, LONG).await;

    // A build runs at home; then the borrower wants the machine.
    let at_home = home.jenkins();
    let first = at_home.queue(JobSpec::freestyle("home-1").label("macos"));
    at_home.wait_started(first, LONG).await;
    let away = borrower.jenkins();
    let wanted = away.queue(
        JobSpec::pipeline("app")
            .label("macos")
            .duration(Duration::from_secs(1)),
    );
    let deadline = std::time::Instant::now() + LONG;
    while at_home.temporarily_offline("mac-01").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "home node not taken offline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cause = at_home.temporarily_offline("mac-01").unwrap();
    assert!(cause.contains("jnlp-lender"), "{cause}");
    // A second build queued at home waits; the first is not cut.
    let second = at_home.queue(JobSpec::freestyle("home-2").label("macos"));
    // The lender has looked at the busy home node several times (it
    // waits for idle) and lent nothing meanwhile.
    until_logged(&home, "the lender checking the home node", |_| {
        home.log()
            .iter()
            .filter(|e| matches!(e, ControllerEvent::Http { path, .. } if path == "/computer/mac-01/api/json"))
            .count()
            >= 3
    })
    .await;
    assert!(
        away.build(wanted).is_none(),
        "lent while a build ran at home"
    );
    assert!(at_home.build(second).is_none());
    assert_eq!(
        at_home.build(first).unwrap().state,
        testkit::controller::BuildState::Running
    );

    // The home build ends: the agent is lent, builds there, comes home
    // after its idle return, and the waiting home build runs.
    assert!(at_home.finish_build(first));
    let build = away.wait_started(wanted, LONG).await;
    assert_eq!(build.node, "lent-mac-01");
    let next = at_home.wait_started(second, LONG).await;
    assert_eq!(next.node, "mac-01");
    assert!(next.started_ms >= away.build(wanted).unwrap().ended_ms.unwrap_or(u64::MAX));
    assert_eq!(
        at_home.build(first).unwrap().state,
        testkit::controller::BuildState::Finished
    );
    assert_eq!(at_home.temporarily_offline("mac-01"), None);
    running.shutdown().await;
}
