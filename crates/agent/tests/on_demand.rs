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

use common::{fake_engine, temp_dir, until_online, AgentProcess};
use lender::controllers::{ControllerConfig, ControllerOptions};
use lender::pool::Secret;
use lender::server::{self, Config};
use lender::store::{SqliteStore, Store as _};
use lender::tokens::{self, Principal, TokenKind, TokenRecord};
use testkit::controller::{JobSpec, NodeConfig, Permission};
use testkit::{ControllerEvent, TestController};

const HOME_SECRET: &str = "5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e";
const LONG: Duration = Duration::from_secs(60);
const USER: &str = "lender";
const API_TOKEN: &str = "1234abcd5678ef90";

fn token(db: &Path, kind: TokenKind, name: &str) -> String {
    let mut store = SqliteStore::open(db).unwrap();
    let token = tokens::generate(kind);
    store
        .add_token(&TokenRecord {
            hash: tokens::hash(&token),
            principal: Principal {
                kind,
                name: name.into(),
            },
            created_ms: 0,
        })
        .unwrap();
    token
}

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
        std::fs::write(&file, token(&db, TokenKind::Agent, name)).unwrap();
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
