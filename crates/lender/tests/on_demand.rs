//! Lending on demand through a running lender: a registered test
//! controller (the testkit's Jenkins API stand-in) queues a labelled job;
//! the lender makes the node `lent-<agent>` there, sends the agent a
//! `borrow` naming that node with the controller's own secret for it, and
//! deletes the node once the agent is home again. A missing Agent/Create
//! permission shows on the controller and lends nothing. The agents are
//! fake (they speak the agent link); the real-agent flow is for
//! `crates/agent/tests`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod server_support;

use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use lender::controllers::{ControllerConfig, ControllerOptions};
use lender::pool::Secret;
use lender::store::{SqliteStore, Store as _};
use server_support::*;
use testkit::controller::{JobSpec, NodeConfig, Permission};
use testkit::{ControllerEvent, TestController};

const USER: &str = "lender";
const TOKEN: &str = "0a1b2c3d4e5f";

fn register(db: &std::path::Path, name: &str, url: &str) {
    register_with(db, name, url, false);
}

/// Registers with `added_ms` (a re-registration is a new row).
fn register_at(db: &std::path::Path, name: &str, url: &str, added_ms: u64) {
    let mut store = ok(SqliteStore::open(db));
    let config = ControllerConfig {
        name: name.into(),
        url: url.into(),
        user: USER.into(),
        api_token: Secret::new(TOKEN),
        options: ControllerOptions {
            demand_after: Duration::ZERO,
            ..ControllerOptions::default()
        },
        added_ms,
    };
    assert!(ok(store.add_controller(&config)));
}

fn register_with(db: &std::path::Path, name: &str, url: &str, one_build: bool) {
    let mut store = ok(SqliteStore::open(db));
    let config = ControllerConfig {
        name: name.into(),
        url: url.into(),
        user: USER.into(),
        api_token: Secret::new(TOKEN),
        options: ControllerOptions {
            demand_after: Duration::ZERO,
            one_build,
            ..ControllerOptions::default()
        },
        added_ms: 0,
    };
    assert!(ok(store.add_controller(&config)));
}

async fn read_events_until(stream: &mut tokio::net::TcpStream, until: &str) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !seen.contains(until) {
            let n = ok(stream.read(&mut buf).await);
            assert!(n > 0, "event stream closed: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .is_err()
    {
        panic!("no {until:?} in the event stream: {seen}");
    }
    seen
}

fn has(c: &TestController, event: &ControllerEvent) -> bool {
    c.log().contains(event)
}

#[tokio::test]
async fn a_waiting_build_gets_an_agent_whose_node_the_lender_made_and_deletes() {
    let mut lender = Lender::start_with("on-demand", |c| c.poll = Duration::from_millis(200)).await;
    // A node of its own, so that `why` names the label (with no nodes at
    // all Jenkins does not); the job is a Pipeline: `why` is the only way
    // to its label.
    let ci = TestController::builder()
        .jenkins_version("2.541.1")
        .user(USER, TOKEN, Permission::LENDER)
        .agent(NodeConfig::new("ci-linux").labels("linux"))
        .start()
        .await;
    let mac = lender.agent("mac1", &["macos"]).await;
    let _linux = lender.agent("lin1", &["linux-box"]).await;
    let mut events = ok(tokio::net::TcpStream::connect(lender.addr).await);
    let request = format!(
        "GET /v1/events HTTP/1.1\r\nHost: lender\r\nAuthorization: Bearer {}\r\n\r\n",
        lender.team_a
    );
    ok(events.write_all(request.as_bytes()).await);
    register(&lender.scratch.db(), "ci", &ci.url());
    let item = ci
        .jenkins()
        .queue(JobSpec::pipeline("build").label("macos"));

    let created = ControllerEvent::NodeCreated {
        node: "lent-mac1".into(),
    };

    eventually("node created and borrow sent", || async {
        (has(&ci, &created) && !mac.state().borrows.is_empty()).then_some(())
    })
    .await;
    let borrow = mac.state().borrows[0].clone();
    assert_eq!(borrow.name, "lent-mac1");
    assert_eq!(borrow.secret, ci.node_secret("lent-mac1"));
    assert_eq!(borrow.idle_return, Some(Duration::from_secs(300)));
    assert!(ci.jenkins().has_node("lent-mac1"));
    assert!(!ci
        .log()
        .iter()
        .any(|e| matches!(e, ControllerEvent::NodeCreated { node } if node == "lent-lin1")));

    // Active at the controller, and shown there.
    let token = lender.team_a.clone();
    eventually("one agent lent at ci", || async {
        let (_, list) = lender.call("GET", "/v1/controllers", &token, None).await;
        let c = list.as_array()?.iter().find(|c| c["name"] == "ci")?.clone();
        (c["agents_lent"] == 1).then_some(())
    })
    .await;
    assert!(ci.jenkins().queued().contains(&item));
    let (status, metrics) = lender.raw("GET", "/metrics", Some(&token), None).await;
    assert_eq!(status, 200);
    for line in [
        "jnlp_lender_auto_leases{controller=\"ci\",state=\"active\"} 1",
        "jnlp_lender_demand_waiting_items{controller=\"ci\",label=\"macos\"} 1",
        "jnlp_lender_demand_agent_online_seconds_count{controller=\"ci\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // The agent comes home (its idle return): the node goes.
    mac.state().place = None;
    mac.send_status().await;
    let deleted = ControllerEvent::NodeDeleted {
        node: "lent-mac1".into(),
    };
    eventually("node deleted", || async {
        has(&ci, &deleted).then_some(())
    })
    .await;
    assert!(!ci.jenkins().has_node("lent-mac1"));
    let seen = read_events_until(&mut events, "event: node_deleted").await;
    for needle in [
        format!("event: demand\ndata: {{\"controller\":\"ci\",\"queue_id\":{item},\"requirements\":\"macos\""),
        "event: node_created\ndata: {\"controller\":\"ci\",\"node\":\"lent-mac1\"".to_owned(),
    ] {
        assert!(seen.contains(&needle), "{needle} in {seen}");
    }
    assert!(!seen.contains(TOKEN), "{seen}");
    let secret = ci.node_secret("lent-mac1").unwrap_or_else(|| "none".into());
    assert!(!seen.contains(&secret), "{seen}");
    lender.stop().await;
}

/// Two items for two labels get two agents, each on its own node; an item
/// cancelled before its agent arrives sends that agent home.
#[tokio::test]
async fn two_labels_get_two_agents_and_a_cancelled_item_frees_its_agent() {
    let mut lender =
        Lender::start_with("on-demand-two", |c| c.poll = Duration::from_millis(200)).await;
    let ci = TestController::builder()
        .jenkins_version("2.500-test")
        .user(USER, TOKEN, Permission::LENDER)
        .agent(NodeConfig::new("ci-linux").labels("linux"))
        .start()
        .await;
    let mac = lender.agent("mac1", &["macos"]).await;
    let gpu = lender.agent("gpu1", &["gpu"]).await;
    // gpu1 never answers its borrow: it has not arrived when its item goes.
    gpu.state().mute = true;
    register(&lender.scratch.db(), "ci", &ci.url());
    let jenkins = ci.jenkins();
    jenkins.queue(JobSpec::freestyle("ios").label("macos"));
    let ml = jenkins.queue(JobSpec::pipeline("train").label("gpu"));
    eventually("both borrows sent", || async {
        (!mac.state().borrows.is_empty() && !gpu.state().borrows.is_empty()).then_some(())
    })
    .await;
    assert_eq!(mac.state().borrows[0].name, "lent-mac1");
    assert_eq!(gpu.state().borrows[0].name, "lent-gpu1");
    assert_eq!(gpu.state().borrows[0].secret, ci.node_secret("lent-gpu1"));
    // The form route (before 2.539) made both.
    assert!(jenkins.has_node("lent-mac1") && jenkins.has_node("lent-gpu1"));

    assert!(jenkins.cancel(ml));
    eventually("gpu1 recalled", || async {
        (!gpu.state().returns.is_empty()).then_some(())
    })
    .await;
    assert!(mac.state().returns.is_empty());
    lender.stop().await;
}

#[tokio::test]
async fn a_refused_create_lends_nothing_and_names_the_permission() {
    let mut lender =
        Lender::start_with("on-demand-refused", |c| c.poll = Duration::from_millis(200)).await;
    let ci = TestController::builder()
        .jenkins_version("2.541.1")
        .user(USER, TOKEN, &[Permission::OverallRead, Permission::JobRead])
        .start()
        .await;
    let mac = lender.agent("mac1", &["macos"]).await;
    register(&lender.scratch.db(), "ci", &ci.url());
    ci.jenkins()
        .queue(JobSpec::freestyle("build").label("macos"));
    let token = lender.team_a.clone();
    let c = eventually("the refusal shows", || async {
        let (_, list) = lender.call("GET", "/v1/controllers", &token, None).await;
        let c = list.as_array()?.iter().find(|c| c["name"] == "ci")?.clone();
        c["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("hudson.model.Computer.Create"))
            .then_some(c)
    })
    .await;
    assert_eq!(c["agents_lent"], 0, "{c}");
    assert_eq!(c["state"], "failing", "{c}");
    assert!(
        c["last_error"].as_str().unwrap().contains("--replace"),
        "{c}"
    );
    assert!(mac.state().borrows.is_empty());
    assert!(!ci.jenkins().has_node("lent-mac1"));
    // The agent is free again.
    let agents = lender.agents().await;
    let agent = find_agent(&agents, "mac1").expect("mac1");
    assert_eq!(agent["state"], "free", "{agent}");
    assert!(!c.to_string().contains(TOKEN));

    // Granted, and re-registered (`controller add --replace`): the skipped
    // item is served now, and the controller is ok again.
    assert!(ci.jenkins().grant(USER, Permission::LENDER));
    {
        let mut store = ok(SqliteStore::open(&lender.scratch.db()));
        assert!(ok(store.remove_controller("ci")));
    }
    register_at(&lender.scratch.db(), "ci", &ci.url(), 1);
    eventually("the item served after the fix", || async {
        (!mac.state().borrows.is_empty()).then_some(())
    })
    .await;
    assert!(ci.jenkins().has_node("lent-mac1"));
    eventually("ci ok again", || async {
        let (_, list) = lender.call("GET", "/v1/controllers", &token, None).await;
        let c = list.as_array()?.iter().find(|c| c["name"] == "ci")?.clone();
        (c["state"] == "ok").then_some(())
    })
    .await;
    lender.stop().await;
}

/// Nodes with the lender's prefix and no live lease (left by a lender
/// restarted mid-lease, say) are deleted once idle; a node whose lease is
/// still live survives a restart, and goes once its agent is home.
#[tokio::test]
async fn a_restarted_lender_reconciles_its_nodes() {
    let mut lender =
        Lender::start_with("on-demand-restart", |c| c.poll = Duration::from_millis(200)).await;
    let ci = TestController::builder()
        .jenkins_version("2.541.1")
        .user(USER, TOKEN, Permission::LENDER)
        .agent(NodeConfig::new("ci-linux").labels("linux"))
        .agent(NodeConfig::new("lent-ghost").labels("macos"))
        .start()
        .await;
    let mac = lender.agent("mac1", &["macos"]).await;
    register(&lender.scratch.db(), "ci", &ci.url());
    // A pipeline waiting on the ghost (offline) node: `why` names it.
    ci.jenkins()
        .queue(JobSpec::pipeline("build").label("macos"));
    let ghost = ControllerEvent::NodeDeleted {
        node: "lent-ghost".into(),
    };
    eventually("the ghost node deleted, mac1 lent", || async {
        (has(&ci, &ghost) && !mac.state().borrows.is_empty()).then_some(())
    })
    .await;
    assert!(ci.jenkins().has_node("ci-linux"));
    assert_eq!(mac.state().borrows[0].name, "lent-mac1");
    let token = lender.team_a.clone();
    eventually("active", || async {
        let agents = lender.agents().await;
        (find_agent(&agents, "mac1")?["state"] == "leased").then_some(())
    })
    .await;

    // Restarted mid-lease: the node stays while its lease lives.
    lender.restart().await;
    mac.connect(lender.addr).await;
    lender.wait_connected("mac1").await;
    let polled = |list: &serde_json::Value| {
        let c = list.as_array()?.iter().find(|c| c["name"] == "ci")?.clone();
        (c["state"] == "ok" && c["agents_lent"] == 1).then(|| c["polled_ms"].as_u64())?
    };
    let first = eventually("polled after the restart", || async {
        polled(&lender.call("GET", "/v1/controllers", &token, None).await.1)
    })
    .await;
    // Three more polls (each one reconciles): the node is still there.
    eventually("three more polls", || async {
        let last = polled(&lender.call("GET", "/v1/controllers", &token, None).await.1)?;
        (last >= first + 600).then_some(())
    })
    .await;
    assert!(ci.jenkins().has_node("lent-mac1"));
    // Home: deleted.
    mac.state().place = None;
    mac.send_status().await;
    let deleted = ControllerEvent::NodeDeleted {
        node: "lent-mac1".into(),
    };
    eventually("node deleted", || async {
        has(&ci, &deleted).then_some(())
    })
    .await;
    lender.stop().await;
}

/// Leaving without guessing: before the lender takes an agent away (here:
/// `--one-build`, its build over), the node is taken temporarily offline
/// at the controller with a message naming the lender and the lease, and
/// then the agent is sent home at once (not "when idle").
#[tokio::test]
async fn the_node_goes_offline_before_the_agent_is_taken_away() {
    let mut lender =
        Lender::start_with("on-demand-leave", |c| c.poll = Duration::from_millis(200)).await;
    let ci = TestController::builder()
        .jenkins_version("2.541.1")
        .user(USER, TOKEN, Permission::LENDER)
        .agent(NodeConfig::new("ci-linux").labels("linux"))
        .start()
        .await;
    let mac = lender.agent("mac1", &["macos"]).await;
    register_with(&lender.scratch.db(), "ci", &ci.url(), true);
    ci.jenkins()
        .queue(JobSpec::freestyle("build").label("macos"));
    eventually("borrowed", || async {
        (!mac.state().borrows.is_empty()).then_some(())
    })
    .await;
    // Its build runs, then ends.
    mac.state().busy = true;
    mac.send_status().await;
    eventually("busy seen", || async {
        let agents = lender.agents().await;
        (find_agent(&agents, "mac1")?["busy"] == true).then_some(())
    })
    .await;
    mac.state().busy = false;
    mac.send_status().await;
    eventually("sent home", || async {
        (!mac.state().returns.is_empty()).then_some(())
    })
    .await;
    assert_eq!(mac.state().returns[0], control::When::Now);
    let offline_first = ci.log().iter().position(|e| {
        matches!(e, ControllerEvent::Http { path, status } if path == "/computer/lent-mac1/changeOfflineCause" && *status == 302)
    });
    assert!(offline_first.is_some(), "{:?}", ci.log());
    let deleted = ControllerEvent::NodeDeleted {
        node: "lent-mac1".into(),
    };
    eventually("node deleted", || async {
        has(&ci, &deleted).then_some(())
    })
    .await;
    let deleted_at = ci.log().iter().position(|e| *e == deleted);
    assert!(offline_first < deleted_at);
    lender.stop().await;
}
