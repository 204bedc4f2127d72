//! `lender::jenkins` against the testkit's Jenkins API stand-in over real
//! HTTP: the queue and its `why` texts, computers, both create routes by
//! version, the secret from both JNLP file names, temporary offline and
//! back, delete, and the errors a user can cause (bad token, missing
//! permission, unreachable controller).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lender::jenkins::why::{self, Wanted};
use lender::jenkins::{JenkinsClient, JenkinsError, NodeSpec, Version};
use testkit::controller::{JobSpec, NodeConfig, Permission};
use testkit::{ControllerEvent, TestController};

const ADMIN: (&str, &str) = ("admin", "11aa22bb33cc");
const LENDER: (&str, &str) = ("lender", "44dd55ee66ff");
const READER: (&str, &str) = ("reader", "77aa88bb99cc");
const T: Duration = Duration::from_secs(20);

async fn controller(version: &str) -> TestController {
    TestController::builder()
        .jenkins_version(version)
        .user(ADMIN.0, ADMIN.1, &[Permission::Administer])
        .user(LENDER.0, LENDER.1, Permission::LENDER)
        .user(
            READER.0,
            READER.1,
            &[Permission::OverallRead, Permission::JobRead],
        )
        .agent(NodeConfig::new("mac1").labels("macos arm64"))
        .start()
        .await
}

fn client(c: &TestController, who: (&str, &str)) -> JenkinsClient {
    JenkinsClient::new(&c.url(), who.0, who.1).expect("a client")
}

/// The node's `<slave>` XML, as an administrator reads it.
async fn config_xml(c: &TestController, node: &str) -> String {
    let response = reqwest::Client::new()
        .get(format!("{}computer/{node}/config.xml", c.url()))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .timeout(T)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn reads_the_queue_computers_and_version_like_a_lender() {
    let c = controller("2.541.1").await;
    let jenkins = c.jenkins();
    let linux = jenkins.queue(JobSpec::freestyle("build-linux").label("linux"));
    let mac = jenkins.queue(JobSpec::pipeline("build-mac").label("macos && arm64"));
    let api = client(&c, LENDER);

    let root = api.root().await.unwrap();
    assert_eq!(root.version.as_ref().map(Version::as_str), Some("2.541.1"));
    assert_eq!(root.tcp_agent_port, Some(c.agent_addr().port()));
    assert!(!root.web_socket_only());

    let items = api.queue().await.unwrap();
    let item = |id| items.iter().find(|i| i.id == id).expect("queued");
    let (linux, mac) = (item(linux), item(mac));
    assert!(linux.is_demand() && mac.is_demand());
    assert!(linux.in_queue_since > 0);
    // Freestyle: the label is exported (through tree=) and in `why`.
    assert_eq!(linux.task.label_expression.as_deref(), Some("linux"));
    assert_eq!(
        why::wanted(linux.why.as_deref().unwrap()),
        Some(Wanted::Label("linux".into()))
    );
    // Pipeline: no exported label; `why` names the label's only node.
    assert_eq!(mac.task.label_expression, None);
    assert_eq!(
        why::wanted(mac.why.as_deref().unwrap()),
        Some(Wanted::Node("mac1".into()))
    );

    let computers = api.computers().await.unwrap();
    let mac1 = computers.iter().find(|n| n.name == "mac1").expect("mac1");
    assert!(mac1.offline && !mac1.connected && !mac1.temporarily_offline);
    for label in ["macos", "arm64", "mac1"] {
        assert!(mac1.labels.iter().any(|l| l == label), "{:?}", mac1.labels);
    }
    assert_eq!(api.computer("mac1").await.unwrap().as_ref(), Some(mac1));
    assert_eq!(api.computer("absent").await.unwrap(), None);

    // A controller with its TCP agent port off: WebSocket only.
    let ws = TestController::builder()
        .user(LENDER.0, LENDER.1, Permission::LENDER)
        .tcp_agent_port_disabled()
        .start()
        .await;
    assert!(client(&ws, LENDER).root().await.unwrap().web_socket_only());
}

#[tokio::test]
async fn creates_nodes_by_the_route_the_version_has_and_reads_their_secret() {
    // 2.541.1: XML route, jenkins-agent.jnlp; 2.500: form route;
    // 2.263: form route, slave-agent.jnlp only.
    for version in ["2.541.1", "2.500-test", "2.263.4"] {
        let c = controller(version).await;
        let api = client(&c, LENDER);
        let v = api.root().await.unwrap().version.expect("X-Jenkins");
        let spec = NodeSpec::new(
            "lent-mac2",
            ["macos", "xcode16"],
            "lent by jnlp-lender",
            true,
        )
        .unwrap();
        api.create_node(&spec, &v)
            .await
            .unwrap_or_else(|e| panic!("{version}: {e}"));
        assert!(c.log().contains(&ControllerEvent::NodeCreated {
            node: "lent-mac2".into()
        }));
        let created = api.computer("lent-mac2").await.unwrap().expect("created");
        assert!(created.labels.iter().any(|l| l == "xcode16"), "{created:?}");
        assert_eq!(created.num_executors, 1);
        let xml = config_xml(&c, "lent-mac2").await;
        assert!(xml.contains("<mode>EXCLUSIVE</mode>"), "{version}: {xml}");
        assert!(xml.contains("JNLPLauncher"), "{version}: {xml}");
        // Which route: the form route is logged as doCreateItem.
        let form_route = c.log().iter().any(
            |e| matches!(e, ControllerEvent::Http { path, .. } if path.ends_with("doCreateItem")),
        );
        assert_eq!(form_route, version != "2.541.1", "{version}");

        let secret = api.node_secret("lent-mac2", &v).await.unwrap();
        assert_eq!(Some(secret), c.node_secret("lent-mac2"), "{version}");

        // The name is taken now: a clear refusal, not a panic.
        let err = api.create_node(&spec, &v).await.expect_err("taken");
        assert_eq!(err.status(), Some(400), "{version}: {err}");
    }
}

#[tokio::test]
async fn takes_nodes_offline_brings_them_back_and_deletes_them() {
    let c = controller("2.541.1").await;
    let api = client(&c, LENDER);
    let jenkins = c.jenkins();
    api.take_offline("mac1", "jnlp-lender: lending to b")
        .await
        .unwrap();
    let cause = jenkins.temporarily_offline("mac1").expect("offline");
    assert!(cause.contains("jnlp-lender: lending to b"), "{cause}");
    // Idempotent.
    api.take_offline("mac1", "jnlp-lender: lending to b")
        .await
        .unwrap();
    assert!(
        api.computer("mac1")
            .await
            .unwrap()
            .unwrap()
            .temporarily_offline
    );

    assert!(api.bring_online("mac1").await.unwrap());
    assert_eq!(jenkins.temporarily_offline("mac1"), None);
    // Not temporarily offline: nothing to do (toggling would take it offline).
    assert!(!api.bring_online("mac1").await.unwrap());
    assert_eq!(jenkins.temporarily_offline("mac1"), None);

    assert!(api.delete_node("mac1").await.unwrap());
    assert!(!jenkins.has_node("mac1"));
    assert!(c.log().contains(&ControllerEvent::NodeDeleted {
        node: "mac1".into()
    }));
    assert!(!api.delete_node("mac1").await.unwrap());
    assert!(!api.bring_online("mac1").await.unwrap());
}

#[tokio::test]
async fn refusals_name_their_cause_and_never_the_token() {
    let c = controller("2.541.1").await;
    let v = Version::parse("2.541.1").unwrap();

    let bad = client(&c, (LENDER.0, "not-the-token"));
    let err = bad.queue().await.expect_err("bad token");
    assert!(matches!(err, JenkinsError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("API token"), "{err}");
    assert!(!err.to_string().contains("not-the-token"), "{err}");

    let reader = client(&c, READER);
    reader.queue().await.unwrap();
    let spec = NodeSpec::new("lent-x", ["x"], "", false).unwrap();
    let err = reader.create_node(&spec, &v).await.expect_err("no Create");
    match &err {
        JenkinsError::Forbidden { permission, .. } => {
            assert_eq!(permission.as_deref(), Some("hudson.model.Computer.Create"))
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("hudson.model.Computer.Create"));
    let err = reader
        .node_secret("mac1", &v)
        .await
        .expect_err("no Connect");
    assert!(
        err.to_string().contains("hudson.model.Computer.Connect"),
        "{err}"
    );
    let err = reader.delete_node("mac1").await.expect_err("no Delete");
    assert!(
        err.to_string().contains("hudson.model.Computer.Delete"),
        "{err}"
    );
    assert!(c.jenkins().has_node("mac1"));

    // A name Jenkins would refuse never leaves the lender.
    let err = client(&c, LENDER)
        .delete_node("a/b")
        .await
        .expect_err("bad name");
    assert!(matches!(err, JenkinsError::BadNodeName { .. }), "{err}");

    // Nobody listening.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let gone =
        JenkinsClient::new(&format!("http://127.0.0.1:{port}/"), LENDER.0, LENDER.1).unwrap();
    let err = gone.queue().await.expect_err("unreachable");
    assert!(matches!(err, JenkinsError::Unreachable { .. }), "{err}");
    assert!(!err.to_string().contains(LENDER.1), "{err}");
}
