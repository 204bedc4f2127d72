//! The test controller's Jenkins HTTP API stand-in over real HTTP (reqwest):
//! auth and permission headers, both node-create routes by version, the
//! JNLP file and its secret, a REST-created node connecting over JNLP4 and
//! WebSocket, the queue's `why` texts in English and German, the scheduler
//! running builds on a connected agent, temporary offline, cancel, and
//! delete closing the node's channel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::StreamExt as _;
use remoting_protocol::handshake::{self, Connected, HandshakeConfig};
use remoting_protocol::{Capability, ChunkCodec};
use reqwest::header::HeaderMap;
use serde_json::Value;
use testkit::controller::{BuildState, ChannelEnd, JobSpec, Mode, NodeConfig, Permission};
use testkit::fake_engine::SPAWN_PREFIX as SPAWN_MARKER;
use testkit::{ControllerEvent, TestController};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Bound on every await; generous for a loaded 2-core machine.
const T: Duration = Duration::from_secs(20);
const ADMIN: (&str, &str) = ("admin", "11aa22bb33cc");
const LENDER: (&str, &str) = ("lender", "44dd55ee66ff");

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(T)
        .build()
        .unwrap()
}

async fn controller(version: &str) -> TestController {
    TestController::builder()
        .jenkins_version(version)
        .user(ADMIN.0, ADMIN.1, &[Permission::Administer])
        .user(LENDER.0, LENDER.1, Permission::LENDER)
        .start()
        .await
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("request");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.expect("body"),
    }
}

async fn get(c: &TestController, who: Option<(&str, &str)>, path: &str) -> Answer {
    get_lang(c, who, path, "en").await
}

async fn get_lang(c: &TestController, who: Option<(&str, &str)>, path: &str, lang: &str) -> Answer {
    let mut request = client()
        .get(format!("{}{path}", c.url()))
        .header("Accept-Language", lang);
    if let Some((user, token)) = who {
        request = request.basic_auth(user, Some(token));
    }
    send(request).await
}

async fn post(c: &TestController, who: (&str, &str), path: &str, form: &[(&str, &str)]) -> Answer {
    send(
        client()
            .post(format!("{}{path}", c.url()))
            .basic_auth(who.0, Some(who.1))
            .form(form),
    )
    .await
}

async fn post_xml(c: &TestController, who: (&str, &str), path: &str, xml: &str) -> Answer {
    send(
        client()
            .post(format!("{}{path}", c.url()))
            .basic_auth(who.0, Some(who.1))
            .header("Content-Type", "application/xml")
            .body(xml.to_owned()),
    )
    .await
}

fn form_json(labels: &str, mode: &str) -> String {
    format!(
        r#"{{"name":"ignored","nodeDescription":"lent","numExecutors":"1","remoteFS":"/home/jenkins/agent","labelString":"{labels}","mode":"{mode}","launcher":{{"$class":"hudson.slaves.JNLPLauncher","webSocket":true}},"retentionStrategy":{{"$class":"hudson.slaves.RetentionStrategy$Always"}},"nodeProperties":{{"stapler-class-bag":"true"}}}}"#
    )
}

async fn create_by_form(
    c: &TestController,
    who: (&str, &str),
    name: &str,
    labels: &str,
    mode: &str,
) -> Answer {
    let json = form_json(labels, mode);
    post(
        c,
        who,
        "computer/doCreateItem",
        &[
            ("name", name),
            ("type", "hudson.slaves.DumbSlave$DescriptorImpl"),
            ("json", &json),
        ],
    )
    .await
}

fn slave_xml(name: &str, labels: &str) -> String {
    format!(
        r#"<slave><name>{name}</name><description/><remoteFS>/home/jenkins/agent</remoteFS><numExecutors>1</numExecutors>
<mode>EXCLUSIVE</mode><retentionStrategy class="hudson.slaves.RetentionStrategy$Always"/>
<launcher class="hudson.slaves.JNLPLauncher"><webSocket>true</webSocket></launcher>
<label>{labels}</label><nodeProperties/></slave>"#
    )
}

/// The secret as a lender reads it: the first `<argument>` of the JNLP file.
async fn secret_from_jnlp(c: &TestController, who: (&str, &str), file: &str, node: &str) -> String {
    let answer = get(c, Some(who), &format!("computer/{node}/{file}")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    remoting_protocol::jnlp::parse_jnlp(answer.body.as_bytes())
        .expect("a JNLP file")
        .secret
}

async fn connect(c: &TestController, node: &str, secret: &str) -> Connected<TcpStream> {
    let tcp = timeout(T, TcpStream::connect(c.agent_addr()))
        .await
        .unwrap()
        .unwrap();
    timeout(
        T,
        handshake::connect(
            tcp,
            "127.0.0.1",
            c.identity(),
            HandshakeConfig::new(node, secret),
        ),
    )
    .await
    .expect("handshake timed out")
    .expect("accepted")
}

fn started(log: &[ControllerEvent], queue_id: u64) -> bool {
    log.iter()
        .any(|e| matches!(e, ControllerEvent::BuildStarted(b) if b.queue_id == queue_id))
}

#[tokio::test]
async fn bad_tokens_and_missing_permissions_answer_like_jenkins() {
    let c = controller("2.541.1").await;
    // A wrong token: 401 with the realm, on any page.
    let answer = get(&c, Some((LENDER.0, "wrong")), "api/json").await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.header("www-authenticate"),
        Some("Basic realm=\"Jenkins\"")
    );
    let answer = get(&c, Some(("nobody", LENDER.1)), "login").await;
    assert_eq!(answer.status, 401);

    // Version headers on the API and on the login page.
    let answer = get(&c, Some(LENDER), "api/json").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-jenkins"), Some("2.541.1"));
    assert_eq!(answer.json()["useSecurity"], true);
    let login = get(&c, None, "login").await;
    assert_eq!(
        (login.status, login.header("x-jenkins")),
        (200, Some("2.541.1"))
    );
    c.jenkins().set_version("2.538");
    assert_eq!(
        get(&c, None, "login").await.header("x-jenkins"),
        Some("2.538")
    );

    // Anonymous: no Overall/Read.
    let answer = get(&c, None, "computer/api/json").await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.header("x-you-are-authenticated-as"),
        Some("anonymous")
    );
    assert_eq!(
        answer.header("x-required-permission"),
        Some("hudson.model.Hudson.Read")
    );

    // A user without Agent/Create: 403 naming it and what implies it.
    c.jenkins()
        .add_user("reader", "r3ad", &[Permission::OverallRead]);
    let answer = create_by_form(&c, ("reader", "r3ad"), "n1", "", "NORMAL").await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(answer.header("x-you-are-authenticated-as"), Some("reader"));
    assert_eq!(
        answer.header("x-required-permission"),
        Some("hudson.model.Computer.Create")
    );
    assert_eq!(
        answer.headers_all("x-permission-implied-by"),
        [
            "hudson.security.Permission.GenericCreate",
            "hudson.security.Permission.GenericWrite",
            "hudson.model.Hudson.Administer"
        ]
    );
    assert!(!c.jenkins().has_node("n1"));
    // Granting it is enough.
    assert!(c.jenkins().grant(
        "reader",
        &[Permission::OverallRead, Permission::ComputerCreate]
    ));
    let answer = create_by_form(&c, ("reader", "r3ad"), "n1", "", "NORMAL").await;
    assert_eq!(answer.status, 302, "{}", answer.body);

    // whoAmI is unprotected and names the caller.
    let me = get(&c, Some(LENDER), "whoAmI/api/json").await.json();
    assert_eq!(
        (me["name"].as_str(), me["anonymous"].as_bool()),
        (Some("lender"), Some(false))
    );
    let anon = get(&c, None, "whoAmI/api/json").await.json();
    assert_eq!(
        (anon["name"].as_str(), anon["anonymous"].as_bool()),
        (Some("anonymous"), Some(true))
    );
    c.shutdown().await;
}

#[tokio::test]
async fn the_form_route_works_on_every_version_the_xml_route_from_2_539() {
    for version in ["2.538", "2.539"] {
        let c = controller(version).await;
        let xml_route = post_xml(
            &c,
            LENDER,
            "computer/createItem?name=x1",
            &slave_xml("x1", "mac"),
        )
        .await;
        if version == "2.538" {
            // Only the "New Node" wizard's handler is there.
            assert_eq!(xml_route.status, 400, "{}", xml_route.body);
            assert!(
                xml_route.body.contains("No mode given"),
                "{}",
                xml_route.body
            );
            assert!(!c.jenkins().has_node("x1"));
        } else {
            assert_eq!(xml_route.status, 200, "{}", xml_route.body);
            assert!(c.jenkins().has_node("x1"));
            let again = post_xml(
                &c,
                LENDER,
                "computer/createItem?name=x1",
                &slave_xml("x1", "mac"),
            )
            .await;
            assert_eq!(again.status, 400);
            assert!(
                again.body.contains("x1") && again.body.contains("already exists"),
                "{}",
                again.body
            );
            let node = get(&c, Some(LENDER), "computer/x1/api/json").await.json();
            assert_eq!(
                node["assignedLabels"],
                serde_json::json!([{"name": "mac"}, {"name": "x1"}])
            );
        }

        let answer = create_by_form(&c, LENDER, " f1 ", "linux x64", "EXCLUSIVE").await;
        assert_eq!(answer.status, 302, "{}", answer.body);
        assert_eq!(
            answer.header("location"),
            Some(format!("{}computer/", c.url()).as_str())
        );
        let again = create_by_form(&c, LENDER, "f1", "linux", "NORMAL").await;
        assert_eq!(again.status, 400);
        assert!(
            again.body.contains("Agent called ‘f1’ already exists"),
            "{}",
            again.body
        );
        let bad = create_by_form(&c, LENDER, "a/b", "", "NORMAL").await;
        assert_eq!(bad.status, 400);
        assert!(
            bad.body.contains("‘/’ is an unsafe character"),
            "{}",
            bad.body
        );
        let dot = create_by_form(&c, LENDER, "f.", "", "NORMAL").await;
        assert_eq!(dot.status, 400);

        let list = get(&c, Some(LENDER), "computer/api/json?tree=computer[displayName,numExecutors,offline,idle,temporarilyOffline,assignedLabels[name]]").await.json();
        let f1 = list["computer"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["displayName"] == "f1")
            .expect("f1 listed")
            .clone();
        assert_eq!(
            f1,
            serde_json::json!({"_class": "hudson.slaves.SlaveComputer", "displayName": "f1", "numExecutors": 1,
                "offline": true, "idle": true, "temporarilyOffline": false,
                "assignedLabels": [{"name": "f1"}, {"name": "linux"}, {"name": "x64"}]})
        );
        assert_eq!(
            get(&c, Some(LENDER), "computer/nope/api/json").await.status,
            404
        );
        c.shutdown().await;
    }
}

#[tokio::test]
async fn the_jnlp_file_needs_connect_and_carries_the_deterministic_secret() {
    let c = TestController::builder()
        .jenkins_version("2.263")
        .jenkins_key(b"one key")
        .user(ADMIN.0, ADMIN.1, &[Permission::Administer])
        .user("reader", "r3ad", &[Permission::OverallRead])
        .start()
        .await;
    assert_eq!(
        create_by_form(&c, ADMIN, "n1", "", "NORMAL").await.status,
        302
    );
    // Before 2.264 only slave-agent.jnlp.
    assert_eq!(
        get(&c, Some(ADMIN), "computer/n1/jenkins-agent.jnlp")
            .await
            .status,
        404
    );
    let secret = secret_from_jnlp(&c, ADMIN, "slave-agent.jnlp", "n1").await;
    assert_eq!(secret.len(), 64);
    assert!(secret
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(c.node_secret("n1").as_deref(), Some(secret.as_str()));
    let denied = get(&c, Some(("reader", "r3ad")), "computer/n1/slave-agent.jnlp").await;
    assert_eq!(denied.status, 403);
    assert_eq!(
        denied.header("x-required-permission"),
        Some("hudson.model.Computer.Connect")
    );
    assert_eq!(
        get(&c, Some(ADMIN), "computer/n2/slave-agent.jnlp")
            .await
            .status,
        404
    );

    // Same key, same name: same secret (a restart, or a re-created node).
    let again = TestController::builder()
        .jenkins_version("2.264")
        .jenkins_key(b"one key")
        .user(ADMIN.0, ADMIN.1, &[Permission::Administer])
        .start()
        .await;
    assert_eq!(
        post_xml(&again, ADMIN, "computer/createItem", &slave_xml("n1", ""))
            .await
            .status,
        400,
        "2.264 has no XML route"
    );
    assert_eq!(
        create_by_form(&again, ADMIN, "n1", "", "NORMAL")
            .await
            .status,
        302
    );
    assert_eq!(
        secret_from_jnlp(&again, ADMIN, "jenkins-agent.jnlp", "n1").await,
        secret
    );
    assert_eq!(
        post(&again, ADMIN, "computer/n1/doDelete", &[])
            .await
            .status,
        302
    );
    assert_eq!(
        create_by_form(&again, ADMIN, "n1", "", "NORMAL")
            .await
            .status,
        302
    );
    assert_eq!(
        secret_from_jnlp(&again, ADMIN, "jenkins-agent.jnlp", "n1").await,
        secret
    );
    c.shutdown().await;
    again.shutdown().await;
}

#[tokio::test]
async fn a_node_created_over_rest_connects_over_jnlp4_and_websocket() {
    let c = controller("2.541.1").await;
    assert_eq!(
        post_xml(
            &c,
            LENDER,
            "computer/createItem?name=tcp1",
            &slave_xml("tcp1", "a")
        )
        .await
        .status,
        200
    );
    assert_eq!(
        create_by_form(&c, LENDER, "ws1", "b", "EXCLUSIVE")
            .await
            .status,
        302
    );
    let tcp_secret = secret_from_jnlp(&c, LENDER, "jenkins-agent.jnlp", "tcp1").await;
    let ws_secret = secret_from_jnlp(&c, LENDER, "jenkins-agent.jnlp", "ws1").await;
    // The launcher's webSocket flag shows in the JNLP file, nowhere else.
    let file = get(&c, Some(LENDER), "computer/ws1/jenkins-agent.jnlp")
        .await
        .body;
    let parsed = remoting_protocol::jnlp::parse_jnlp(file.as_bytes()).unwrap();
    assert_eq!(
        (parsed.name.as_str(), parsed.options[0].as_str()),
        ("ws1", "-webSocket")
    );

    let _tcp = connect(&c, "tcp1", &tcp_secret).await;
    let addr = c.http_addr();
    let request = http::Request::builder()
        .uri(format!("ws://{addr}/wsagents/"))
        .header("Host", addr.to_string())
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .header("Node-Name", "ws1")
        .header("Secret-Key", ws_secret.as_str())
        .header("X-Remoting-Capability", Capability::CURRENT.to_base64())
        .body(())
        .unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (_ws, response) = timeout(T, tokio_tungstenite::client_async(request, stream))
        .await
        .unwrap()
        .expect("WebSocket accepted");
    assert_eq!(response.status(), 101);

    c.wait_for(
        |log| {
            ["tcp1", "ws1"].iter().all(|n| {
                log.iter()
                    .any(|e| matches!(e, ControllerEvent::Accepted { node, .. } if node == n))
            })
        },
        T,
    )
    .await;
    for node in ["tcp1", "ws1"] {
        let json = get(&c, Some(LENDER), &format!("computer/{node}/api/json"))
            .await
            .json();
        assert_eq!(json["offline"], false, "{json}");
        assert_eq!(
            json["absoluteRemotePath"], "/home/jenkins/agent",
            "connected and Connect"
        );
    }
    c.shutdown().await;
}

#[tokio::test]
async fn why_texts_in_english_and_german_and_what_the_queue_exports() {
    let c = controller("2.541.1").await;
    let jenkins = c.jenkins();
    jenkins
        .create_node(
            NodeConfig::new("m1")
                .labels("macos arm64")
                .mode(Mode::Exclusive),
        )
        .unwrap();
    jenkins
        .create_node(NodeConfig::new("m2").labels("macos"))
        .unwrap();
    let none = jenkins.queue(JobSpec::freestyle("lin").label("linux"));
    let one = jenkins.queue(JobSpec::pipeline("app").label("macos && arm64"));
    let all = jenkins.queue(JobSpec::freestyle("mac").label("macos"));
    let roam = jenkins.queue(JobSpec::freestyle("roam"));

    let tree = "queue/api/json?tree=items[id,why,buildable,blocked,stuck,pending,inQueueSince,buildableStartMilliseconds,task[name,url,labelExpression]]";
    let items =
        |answer: &Answer| -> Vec<Value> { answer.json()["items"].as_array().unwrap().clone() };
    let why_of = |items: &[Value], id: u64| -> String {
        items.iter().find(|i| i["id"] == id).expect("listed")["why"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let en = items(&get(&c, Some(LENDER), tree).await);
    assert_eq!(
        en.iter()
            .map(|i| i["id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [roam, all, one, none],
        "newest first"
    );
    assert_eq!(
        why_of(&en, none),
        "There are no nodes with the label ‘linux’"
    );
    assert_eq!(why_of(&en, one), "‘m1’ is offline");
    assert_eq!(why_of(&en, all), "All nodes of label ‘macos’ are offline");
    // m1 is reserved, m2 offline, and no idle executor online anywhere.
    assert_eq!(why_of(&en, roam), "Waiting for next available executor");
    let de = items(&get_lang(&c, Some(LENDER), tree, "de-DE,de;q=0.9,en;q=0.5").await);
    assert_eq!(
        why_of(&de, none),
        "Es gibt keine Knoten mit dem Label „linux“"
    );
    assert_eq!(why_of(&de, one), "m1 ist offline");
    assert_eq!(
        why_of(&de, all),
        "Alle Knoten des Labels „macos“ sind offline"
    );

    // The fields asked for, labelExpression for freestyle only.
    let item = en.iter().find(|i| i["id"] == none).unwrap();
    assert_eq!(item["buildable"], true);
    assert_eq!(item["pending"], false);
    assert_eq!(item["stuck"], true, "its label is offline");
    assert!(item["inQueueSince"].as_u64().unwrap() > 0);
    assert_eq!(item["task"]["labelExpression"], "linux");
    let pipeline = en.iter().find(|i| i["id"] == one).unwrap();
    assert!(
        pipeline["task"].get("labelExpression").is_none(),
        "{pipeline}"
    );
    assert!(pipeline["task"]["name"]
        .as_str()
        .unwrap()
        .starts_with("part of app"));
    // At the default depth labelExpression is hidden, a Pipeline task bare.
    let plain = items(&get(&c, Some(LENDER), "queue/api/json").await);
    let item = plain.iter().find(|i| i["id"] == none).unwrap();
    assert!(item["task"].get("labelExpression").is_none(), "{item}");
    assert_eq!(item["task"]["name"], "lin");
    let pipeline = plain.iter().find(|i| i["id"] == one).unwrap();
    assert_eq!(
        pipeline["task"].as_object().unwrap().len(),
        1,
        "only _class: {pipeline}"
    );

    // Without Job/Read the items are left out.
    jenkins.add_user("peek", "p33k", &[Permission::OverallRead]);
    assert_eq!(items(&get(&c, Some(("peek", "p33k")), tree).await).len(), 0);

    // Online and busy: the label's why names the only node for macos&&arm64.
    let m1 = connect(&c, "m1", &c.node_secret("m1").unwrap()).await;
    let _m2 = connect(&c, "m2", &c.node_secret("m2").unwrap()).await;
    c.wait_for(|log| started(log, one) && started(log, all), T)
        .await;
    assert!(
        jenkins.queued().contains(&roam),
        "EXCLUSIVE m1 does not take it"
    );
    let second = jenkins.queue(JobSpec::freestyle("b").label("macos&&arm64"));
    let third = jenkins.queue(JobSpec::freestyle("c").label("macos"));
    let en = items(&get(&c, Some(LENDER), tree).await);
    assert_eq!(
        why_of(&en, second),
        "Waiting for next available executor on ‘m1’"
    );
    assert_eq!(
        why_of(&en, third),
        "Waiting for next available executor on ‘macos’"
    );
    let de = items(&get_lang(&c, Some(LENDER), tree, "de").await);
    assert_eq!(
        why_of(&de, third),
        "Warte auf den nächsten freien Build-Prozessor auf macos"
    );
    // The label endpoint, percent-encoded as Jenkins builds its URLs.
    let label = get(&c, Some(LENDER), "label/macos%26%26arm64/api/json")
        .await
        .json();
    assert_eq!(label["name"], "macos&&arm64");
    assert_eq!(
        label["nodes"],
        serde_json::json!([{"_class": "hudson.slaves.DumbSlave", "nodeName": "m1"}])
    );
    assert_eq!(
        (
            label["busyExecutors"].as_u64(),
            label["idleExecutors"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(label["offline"], false);
    let none = get(&c, Some(LENDER), "label/linux/api/json").await.json();
    assert_eq!(
        (
            none["offline"].as_bool(),
            none["nodes"].as_array().map(Vec::len)
        ),
        (Some(true), Some(0))
    );
    drop(m1);
    c.shutdown().await;
}

/// Reads chunks until a command carrying `needle` arrives.
async fn expect_command(
    framed: &mut tokio_util::codec::Framed<
        impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        ChunkCodec,
    >,
    needle: &[u8],
) {
    let mut seen = Vec::new();
    loop {
        let chunk = timeout(T, framed.next())
            .await
            .expect("a command in time")
            .expect("channel open")
            .expect("a chunk");
        seen.extend_from_slice(&chunk.payload);
        if seen.windows(needle.len()).any(|w| w == needle) {
            return;
        }
    }
}

#[tokio::test]
async fn builds_run_on_a_connected_agent_keep_it_busy_and_deleting_the_node_cuts_them() {
    let c = controller("2.541.1").await;
    let jenkins = c.jenkins();
    assert_eq!(
        create_by_form(&c, LENDER, "lent-m1", "macos", "EXCLUSIVE")
            .await
            .status,
        302
    );
    let item = jenkins.queue(JobSpec::freestyle("app").label("macos"));
    assert!(jenkins.build(item).is_none(), "no agent yet");
    let secret = secret_from_jnlp(&c, LENDER, "jenkins-agent.jnlp", "lent-m1").await;
    let mut agent = connect(&c, "lent-m1", &secret)
        .await
        .into_framed(ChunkCodec);

    // The build starts on the agent: the agent sees a build command.
    let build = jenkins.wait_started(item, T).await;
    assert_eq!((build.node.as_str(), build.number), ("lent-m1", 1));
    assert!(build.started_ms >= build.in_queue_since_ms);
    expect_command(&mut agent, SPAWN_MARKER).await;
    let node = get(
        &c,
        Some(LENDER),
        "computer/lent-m1/api/json?tree=idle,executors[idle,currentExecutable[url,number]]",
    )
    .await
    .json();
    assert_eq!(node["idle"], false, "{node}");
    assert_eq!(
        node["executors"][0]["currentExecutable"]["number"], 1,
        "{node}"
    );
    assert!(jenkins.queued().is_empty());

    // Finished: idle again.
    assert!(jenkins.finish_build(item));
    let node = get(&c, Some(LENDER), "computer/lent-m1/api/json")
        .await
        .json();
    assert_eq!(node["idle"], true, "{node}");
    assert_eq!(node["executors"][0]["currentExecutable"], Value::Null);
    assert_eq!(jenkins.build(item).unwrap().state, BuildState::Finished);

    // A second build, then the node is deleted under it.
    let next = jenkins.queue(JobSpec::freestyle("app").label("macos"));
    assert_eq!(jenkins.wait_started(next, T).await.number, 2);
    expect_command(&mut agent, SPAWN_MARKER).await;
    let deleted = post(&c, LENDER, "computer/lent-m1/doDelete", &[]).await;
    assert_eq!(deleted.status, 302);
    // The channel closes at once: the agent's connection ends.
    while let Some(Ok(_)) = timeout(T, agent.next()).await.expect("closed in time") {}
    let log = c
        .wait_for(
            |log| {
                log.iter().any(|e| matches!(e, ControllerEvent::ChannelClosed { node, how: ChannelEnd::Disconnected } if node == "lent-m1"))
            },
            T,
        )
        .await;
    assert!(log
        .iter()
        .any(|e| matches!(e, ControllerEvent::NodeDeleted { node } if node == "lent-m1")));
    assert!(log
        .iter()
        .any(|e| matches!(e, ControllerEvent::BuildCut(b) if b.queue_id == next)));
    assert_eq!(jenkins.build(next).unwrap().state, BuildState::Cut);
    assert_eq!(
        get(&c, Some(LENDER), "computer/lent-m1/api/json")
            .await
            .status,
        404
    );
    assert_eq!(
        post(&c, LENDER, "computer/lent-m1/doDelete", &[])
            .await
            .status,
        404
    );
    c.shutdown().await;
}

#[tokio::test]
async fn a_channel_that_drops_mid_build_cuts_the_build_and_a_timed_job_finishes() {
    let c = controller("2.541.1").await;
    let jenkins = c.jenkins();
    jenkins
        .create_node(NodeConfig::new("n1").labels("x"))
        .unwrap();
    let agent = connect(&c, "n1", &c.node_secret("n1").unwrap()).await;
    let timed = jenkins.queue(
        JobSpec::freestyle("quick")
            .label("x")
            .duration(Duration::from_millis(200)),
    );
    c.wait_for(
        |log| {
            log.iter()
                .any(|e| matches!(e, ControllerEvent::BuildFinished(b) if b.queue_id == timed))
        },
        T,
    )
    .await;
    let long = jenkins.queue(JobSpec::freestyle("long").label("x"));
    jenkins.wait_started(long, T).await;
    drop(agent);
    c.wait_for(
        |log| {
            log.iter()
                .any(|e| matches!(e, ControllerEvent::BuildCut(b) if b.queue_id == long))
        },
        T,
    )
    .await;
    let node = get(&c, Some(LENDER), "computer/n1/api/json").await.json();
    assert_eq!(
        node["offlineCause"]["_class"],
        "hudson.slaves.OfflineCause$ChannelTermination"
    );
    assert_eq!(node["idle"], true);
    c.shutdown().await;
}

#[tokio::test]
async fn temporary_offline_holds_builds_back_until_toggled_online() {
    let c = controller("2.541.1").await;
    let jenkins = c.jenkins();
    jenkins.add_user(
        "connector",
        "c0nn",
        &[Permission::OverallRead, Permission::ComputerConnect],
    );
    jenkins
        .create_node(NodeConfig::new("n1").labels("x").mode(Mode::Exclusive))
        .unwrap();
    let _agent = connect(&c, "n1", &c.node_secret("n1").unwrap()).await;
    c.wait_for(
        |log| {
            log.iter()
                .any(|e| matches!(e, ControllerEvent::Accepted { .. }))
        },
        T,
    )
    .await;

    // Connect alone may not take it offline.
    let denied = post(
        &c,
        ("connector", "c0nn"),
        "computer/n1/changeOfflineCause",
        &[("offlineMessage", "x")],
    )
    .await;
    assert_eq!(denied.status, 403);
    assert_eq!(
        denied.header("x-required-permission"),
        Some("hudson.model.Computer.Disconnect")
    );
    for _ in 0..2 {
        let answer = post(
            &c,
            LENDER,
            "computer/n1/changeOfflineCause",
            &[("offlineMessage", "jnlp-lender: returning")],
        )
        .await;
        assert_eq!(answer.status, 302, "idempotent");
    }
    let node = get(&c, Some(LENDER), "computer/n1/api/json").await.json();
    assert_eq!(node["temporarilyOffline"], true);
    assert_eq!(node["offline"], true);
    assert_eq!(
        node["absoluteRemotePath"], "/home/jenkins/agent",
        "still connected"
    );
    assert_eq!(
        node["offlineCauseReason"],
        "Disconnected by lender : jnlp-lender: returning"
    );

    let item = jenkins.queue(JobSpec::freestyle("j").label("x"));
    assert_eq!(
        jenkins.why(item, testkit::controller::Lang::En).as_deref(),
        Some("‘n1’ is offline")
    );
    assert!(jenkins.build(item).is_none());
    // toggleOffline while temporarily offline brings it back (Connect is enough).
    assert_eq!(
        post(&c, ("connector", "c0nn"), "computer/n1/toggleOffline", &[])
            .await
            .status,
        302
    );
    jenkins.wait_started(item, T).await;
    assert_eq!(jenkins.temporarily_offline("n1"), None);
    c.shutdown().await;
}

#[tokio::test]
async fn cancel_item_over_http() {
    let c = controller("2.541.1").await;
    let jenkins = c.jenkins();
    jenkins.add_user(
        "watcher",
        "w4tch",
        &[Permission::OverallRead, Permission::JobRead],
    );
    let a = jenkins.queue(JobSpec::freestyle("a").label("nowhere"));
    let b = jenkins.queue(JobSpec::freestyle("b").label("nowhere"));
    let refused = post(
        &c,
        ("watcher", "w4tch"),
        &format!("queue/cancelItem?id={a}"),
        &[],
    )
    .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(
        post(&c, ADMIN, &format!("queue/cancelItem?id={a}"), &[])
            .await
            .status,
        204
    );
    assert_eq!(
        post(&c, ADMIN, &format!("queue/cancelItem?id={a}"), &[])
            .await
            .status,
        404
    );
    assert_eq!(
        get(&c, Some(ADMIN), &format!("queue/cancelItem?id={b}"))
            .await
            .status,
        405
    );
    assert_eq!(jenkins.queued(), [b]);
    assert!(c
        .log()
        .contains(&ControllerEvent::ItemCancelled { queue_id: a }));
    let item = get(&c, Some(ADMIN), &format!("queue/item/{b}/api/json"))
        .await
        .json();
    assert_eq!(
        item["why"], "Waiting for next available executor",
        "no agents at all"
    );
    c.shutdown().await;
}

#[tokio::test]
async fn a_reconnection_that_takes_the_channel_over_cuts_its_builds() {
    let c = controller("2.541.1").await;
    let jenkins = c.jenkins();
    jenkins.create_node(NodeConfig::new("n1")).unwrap();
    let secret = c.node_secret("n1").unwrap();
    let _first = connect(&c, "n1", &secret).await;
    let item = jenkins.queue(JobSpec::freestyle("j"));
    jenkins.wait_started(item, T).await;
    let mut config = HandshakeConfig::new("n1", &secret);
    config.cookie = c.current_cookie("n1");
    let tcp = TcpStream::connect(c.agent_addr()).await.unwrap();
    let _second = timeout(
        T,
        handshake::connect(tcp, "127.0.0.1", c.identity(), config),
    )
    .await
    .unwrap()
    .expect("taken over");
    let log = c
        .wait_for(
            |log| {
                log.iter().any(|e| {
                    matches!(
                        e,
                        ControllerEvent::Accepted {
                            took_over: true,
                            ..
                        }
                    )
                })
            },
            T,
        )
        .await;
    assert!(
        log.iter()
            .any(|e| matches!(e, ControllerEvent::BuildCut(b) if b.queue_id == item)),
        "{log:#?}"
    );
    assert_eq!(jenkins.idle("n1"), Some(true));
    c.shutdown().await;
}

#[tokio::test]
async fn config_xml_reads_and_relabels_a_node() {
    let c = controller("2.541.1").await;
    let jenkins = c.jenkins();
    assert_eq!(
        post_xml(&c, LENDER, "computer/createItem", &slave_xml("r1", "mac"))
            .await
            .status,
        200
    );
    let _agent = connect(&c, "r1", &c.node_secret("r1").unwrap()).await;
    let item = jenkins.queue(JobSpec::freestyle("j").label("linux"));
    assert_eq!(
        jenkins.why(item, testkit::controller::Lang::En).as_deref(),
        Some("There are no nodes with the label ‘linux’")
    );

    let xml = get(&c, Some(LENDER), "computer/r1/config.xml").await;
    assert_eq!(xml.status, 200);
    assert!(xml.body.contains("<label>mac</label>"), "{}", xml.body);
    let relabelled = xml
        .body
        .replace("<label>mac</label>", "<label>mac linux</label>");
    jenkins.add_user("reader", "r3ad", &[Permission::OverallRead]);
    let denied = get(&c, Some(("reader", "r3ad")), "computer/r1/config.xml").await;
    assert_eq!(
        denied.header("x-required-permission"),
        Some("hudson.model.Computer.ExtendedRead")
    );
    let wrong = post_xml(&c, LENDER, "computer/r1/config.xml", "<project/>").await;
    assert_eq!(wrong.status, 400);
    assert_eq!(
        post_xml(&c, LENDER, "computer/r1/config.xml", &relabelled)
            .await
            .status,
        200
    );
    // The relabelled node takes the waiting item.
    jenkins.wait_started(item, T).await;
    let node = get(
        &c,
        Some(LENDER),
        "computer/r1/api/json?tree=assignedLabels[name]",
    )
    .await
    .json();
    assert_eq!(
        node["assignedLabels"],
        serde_json::json!([{"name": "linux"}, {"name": "mac"}, {"name": "r1"}])
    );
    assert_eq!(
        post_xml(&c, LENDER, "computer/r9/config.xml", &relabelled)
            .await
            .status,
        404
    );
    c.shutdown().await;
}
