//! `jnlp-lender serve` end to end in one process: the HTTP API, agent links
//! to fake agents, the driver and the SQLite store.

mod server_support;

use std::collections::BTreeSet;
use std::time::Duration;

use control::{Target, When};
use serde_json::{json, Value};
use server_support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn id_of(lease: &Value) -> u64 {
    lease["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no lease id in {lease}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_by_label_expression_lands_on_a_matching_agent_and_becomes_active() {
    let mut lender = Lender::start("lands").await;
    let mac = lender.agent("mac-01", &["macos", "arm64", "xcode16"]).await;
    let lin = lender.agent("lin-01", &["linux", "amd64"]).await;
    assert!(mac.state().welcomed);

    let team_b = lender.team_b.clone();
    let (status, lease) = lender
        .lease(
            &team_b,
            "macos && (arm64 || x86_64) && !xcode15",
            BORROWER_B,
            "10s",
        )
        .await;
    assert_eq!(status, 201, "{lease}");
    assert_eq!(lease["agent"], "mac-01");
    assert!(
        !lease.to_string().contains(SECRET),
        "the secret leaked: {lease}"
    );
    let id = id_of(&lease);

    let active = lender.wait_state(&team_b, id, "active").await;
    assert_eq!(active["borrower"]["url"], BORROWER_B);
    assert_eq!(active["lease"], "2h");
    {
        let state = mac.state();
        assert_eq!(state.borrows.len(), 1);
        let borrow = &state.borrows[0];
        assert_eq!(
            borrow.target,
            Target::Url {
                url: BORROWER_B.into()
            }
        );
        assert_eq!(borrow.name, "lent-node");
        assert_eq!(borrow.secret.as_deref(), Some(SECRET));
        assert_eq!(borrow.lease, Some(Duration::from_secs(7200)));
        assert_eq!(borrow.idle_return, Some(Duration::from_secs(1800)));
        assert!(borrow.wait.is_some(), "phase two waits for online");
        assert_eq!(borrow.transport, Some(control::Transport::WebSocket));
    }
    assert!(lin.state().borrows.is_empty());

    // The agent's own report of its place follows its reply.
    let mac_view = eventually("mac-01 at the borrower", || async {
        find_agent(&lender.agents().await, "mac-01").filter(|a| a["borrower_url"] == BORROWER_B)
    })
    .await;
    let agents = lender.agents().await;
    assert_eq!(mac_view["state"], "leased");
    assert_eq!(mac_view["lease"], id);
    assert_eq!(mac_view["borrower_url"], BORROWER_B);
    assert_eq!(
        find_agent(&agents, "lin-01").unwrap_or_default()["state"],
        "free"
    );

    // The list holds the client's own leases only.
    let (_, mine) = lender.call("GET", "/v1/leases", &team_b, None).await;
    assert_eq!(mine.as_array().map(Vec::len), Some(1));
    let team_a = lender.team_a.clone();
    let (_, theirs) = lender.call("GET", "/v1/leases", &team_a, None).await;
    assert_eq!(theirs, json!([]));
    lender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_agent_matches_queues_then_times_out_with_a_clear_error() {
    let mut lender = Lender::start("times-out").await;
    let _lin = lender.agent("lin-01", &["linux"]).await;
    let team_b = lender.team_b.clone();

    let (status, lease) = lender
        .lease(&team_b, "windows && arm64", BORROWER_B, "500ms")
        .await;
    assert_eq!(status, 202, "{lease}");
    assert_eq!(lease["state"], "queued");
    let ended = lender.wait_state(&team_b, id_of(&lease), "ended").await;
    assert_eq!(ended["ended"]["reason"], "timed_out");
    let message = ended["ended"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no agent in the pool matches `(windows && arm64)`"),
        "{message}"
    );

    // Without a wait, the answer comes at once.
    let (status, body) = lender.lease(&team_b, "windows", BORROWER_B, "0s").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]
        .as_str()
        .is_some_and(|e| e.contains("no agent in the pool matches")));
    assert_eq!(body["lease"]["state"], "ended");
    lender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_a_lease_sends_the_agent_home() {
    let mut lender = Lender::start("return").await;
    let agent = lender.agent("a1", &["x"]).await;
    let team_b = lender.team_b.clone();
    let (_, lease) = lender.lease(&team_b, "x", BORROWER_B, "5s").await;
    let id = id_of(&lease);
    lender.wait_state(&team_b, id, "active").await;

    let (status, returning) = lender
        .call("DELETE", &format!("/v1/leases/{id}"), &team_b, None)
        .await;
    assert_eq!(status, 202, "{returning}");
    let ended = lender.wait_state(&team_b, id, "ended").await;
    assert_eq!(ended["ended"]["reason"], "returned");
    assert_eq!(agent.state().returns, [When::Idle]);
    assert_eq!(agent.state().place, None);
    eventually("the agent free again", || async {
        find_agent(&lender.agents().await, "a1").filter(|a| a["state"] == "free")
    })
    .await;

    // `?now=true` asks the agent to leave at once.
    let (_, lease) = lender.lease(&team_b, "x", BORROWER_B, "5s").await;
    let id = id_of(&lease);
    lender.wait_state(&team_b, id, "active").await;
    let (status, _) = lender
        .call(
            "DELETE",
            &format!("/v1/leases/{id}?now=true"),
            &team_b,
            None,
        )
        .await;
    assert_eq!(status, 202);
    lender.wait_state(&team_b, id, "ended").await;
    assert_eq!(agent.state().returns, [When::Idle, When::Now]);

    // An ended lease cannot be returned again.
    let (status, body) = lender
        .call("DELETE", &format!("/v1/leases/{id}"), &team_b, None)
        .await;
    assert_eq!(status, 409, "{body}");
    lender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_releases_the_reservation_and_the_next_matching_agent_is_tried() {
    let mut lender = Lender::start("refusal").await;
    let first = lender.agent("a1", &["x"]).await;
    first.state().refuse = Some("handshake: the borrower refused the node's secret".into());
    let second = lender.agent("a2", &["x"]).await;
    let team_b = lender.team_b.clone();

    let (status, lease) = lender.lease(&team_b, "x", BORROWER_B, "5s").await;
    assert_eq!(status, 201, "{lease}");
    // Never lent, ties by name: a1 first.
    assert_eq!(lease["agent"], "a1");
    let active = lender.wait_state(&team_b, id_of(&lease), "active").await;
    assert_eq!(active["agent"], "a2");
    assert_eq!(active["attempts"][0]["agent"], "a1");
    assert_eq!(
        active["attempts"][0]["reason"],
        "handshake: the borrower refused the node's secret"
    );
    assert_eq!(first.state().borrows.len(), 1);
    assert_eq!(second.state().borrows.len(), 1);
    let agents = lender.agents().await;
    assert_eq!(
        find_agent(&agents, "a1").unwrap_or_default()["state"],
        "free"
    );

    let team_a = lender.team_a.clone();
    let (_, metrics) = lender.raw("GET", "/metrics", Some(&team_a), None).await;
    assert!(
        metrics.contains("jnlp_lender_borrow_failures_total 1"),
        "{metrics}"
    );
    lender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_for_three_matching_agents_lend_each_agent_once() {
    let mut lender = Lender::start("concurrent").await;
    let mut agents = Vec::new();
    for name in ["x1", "x2", "x3"] {
        agents.push(lender.agent(name, &["x", "linux"]).await);
    }
    let _other = lender.agent("y1", &["y", "linux"]).await;
    let team_b = lender.team_b.clone();

    let lender = std::sync::Arc::new(lender);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let lender = lender.clone();
        let token = team_b.clone();
        tasks.push(tokio::spawn(async move {
            lender.lease(&token, "x && linux", BORROWER_B, "1s").await
        }));
    }
    let mut created = 0;
    let mut queued = 0;
    let mut ids = Vec::new();
    for task in tasks {
        let (status, lease) = ok(task.await);
        match status {
            201 => created += 1,
            202 => queued += 1,
            other => panic!("HTTP {other}: {lease}"),
        }
        ids.push(id_of(&lease));
    }
    assert_eq!((created, queued), (3, 17));

    let mut active_agents = BTreeSet::new();
    let mut timed_out = 0;
    for id in ids {
        let lease = eventually(&format!("lease {id} settled"), || async {
            let lease = lender.get_lease(&team_b, id).await;
            matches!(lease["state"].as_str(), Some("active" | "ended")).then_some(lease)
        })
        .await;
        match lease["state"].as_str() {
            Some("active") => {
                assert!(active_agents.insert(lease["agent"].to_string()), "{lease}");
            }
            _ => {
                assert_eq!(lease["ended"]["reason"], "timed_out", "{lease}");
                timed_out += 1;
            }
        }
    }
    assert_eq!(active_agents.len(), 3);
    assert_eq!(timed_out, 17);
    for agent in &agents {
        let state = agent.state();
        assert_eq!(state.borrows.len(), 1, "{}", agent.name);
        assert!(!state.lent_twice, "{} lent twice", agent.name);
    }
    match std::sync::Arc::try_unwrap(lender) {
        Ok(lender) => lender.stop().await,
        Err(_) => panic!("lender still shared"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lender_restarted_mid_lease_keeps_the_lease_and_reconciles_reconnecting_agents() {
    let mut lender = Lender::start("restart").await;
    let kept = lender.agent("kept", &["x"]).await;
    let went_home = lender.agent("went-home", &["y"]).await;
    let team_b = lender.team_b.clone();
    let (_, lease) = lender.lease(&team_b, "x", BORROWER_B, "5s").await;
    let kept_id = id_of(&lease);
    lender.wait_state(&team_b, kept_id, "active").await;
    let (_, lease) = lender.lease(&team_b, "y", BORROWER_B, "5s").await;
    let home_id = id_of(&lease);
    lender.wait_state(&team_b, home_id, "active").await;

    lender.restart().await;
    // Before the agents are back: the leases are there, the agents offline
    // but still in their leases.
    assert_eq!(lender.get_lease(&team_b, kept_id).await["state"], "active");
    let agents = lender.agents().await;
    let view = find_agent(&agents, "kept").unwrap_or_default();
    assert_eq!(view["connected"], false);
    assert_eq!(view["lease"], kept_id);

    // One agent is still at the borrower: the lease stands.
    kept.connect(lender.addr).await;
    lender.wait_connected("kept").await;
    assert_eq!(lender.get_lease(&team_b, kept_id).await["state"], "active");
    let view = find_agent(&lender.agents().await, "kept").unwrap_or_default();
    assert_eq!(view["state"], "leased");
    assert_eq!(view["borrower_url"], BORROWER_B);

    // The other was restarted and came home meanwhile: its word wins.
    went_home.state().place = None;
    went_home.connect(lender.addr).await;
    let ended = lender.wait_state(&team_b, home_id, "ended").await;
    assert_eq!(ended["ended"]["reason"], "agent_left");
    eventually("went-home free", || async {
        find_agent(&lender.agents().await, "went-home").filter(|a| a["state"] == "free")
    })
    .await;

    // The kept lease still works: a return reaches the agent on its new link.
    let (status, _) = lender
        .call("DELETE", &format!("/v1/leases/{kept_id}"), &team_b, None)
        .await;
    assert_eq!(status, 202);
    lender.wait_state(&team_b, kept_id, "ended").await;
    assert_eq!(kept.state().returns.len(), 1);
    lender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_disconnects_keeps_its_lease_and_re_announces_itself() {
    let mut lender = Lender::start("disconnect").await;
    let agent = lender.agent("a1", &["x"]).await;
    let team_b = lender.team_b.clone();
    let (_, lease) = lender.lease(&team_b, "x", BORROWER_B, "5s").await;
    let id = id_of(&lease);
    lender.wait_state(&team_b, id, "active").await;

    agent.disconnect().await;
    let view = eventually("a1 offline", || async {
        find_agent(&lender.agents().await, "a1").filter(|a| a["connected"] == false)
    })
    .await;
    assert_eq!(view["lease"], id);
    assert_eq!(view["state"], "leased");
    assert_eq!(lender.get_lease(&team_b, id).await["state"], "active");

    // Meanwhile nothing else can have it.
    let (status, _) = lender.lease(&team_b, "x", BORROWER_A, "0s").await;
    assert_eq!(status, 409);

    agent.connect(lender.addr).await;
    lender.wait_connected("a1").await;
    assert_eq!(lender.get_lease(&team_b, id).await["state"], "active");
    assert_eq!(agent.state().borrows.len(), 1, "no second borrow");
    lender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_idle_at_borrower_a_is_reclaimed_for_a_request_from_borrower_b() {
    let mut lender = Lender::start_with("reclaim", |config| {
        config.reclaim_after = Some(Duration::from_millis(200));
    })
    .await;
    let agent = lender.agent("a1", &["x"]).await;
    let (team_a, team_b) = (lender.team_a.clone(), lender.team_b.clone());
    let (_, lease) = lender.lease(&team_a, "x", BORROWER_A, "5s").await;
    let first = id_of(&lease);
    lender.wait_state(&team_a, first, "active").await;

    let (status, waiting) = lender.lease(&team_b, "x", BORROWER_B, "10s").await;
    assert_eq!(status, 202, "{waiting}");
    let second = id_of(&waiting);

    let ended = lender.wait_state(&team_a, first, "ended").await;
    assert_eq!(ended["ended"]["reason"], "reclaimed");
    let active = lender.wait_state(&team_b, second, "active").await;
    assert_eq!(active["agent"], "a1");
    {
        let state = agent.state();
        assert_eq!(state.returns, [When::Idle]);
        assert_eq!(state.place.as_deref(), Some(BORROWER_B));
        assert_eq!(state.borrows.len(), 2);
        assert!(!state.lent_twice);
    }
    lender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_wrong_agent_tokens_malformed_json_and_oversized_bodies_change_nothing() {
    let mut lender = Lender::start("bad-input").await;
    let _agent = lender.agent("a1", &["x"]).await;
    let team_b = lender.team_b.clone();
    let agent_token = lender.agent_token("a1");
    let good = lease_body("x", BORROWER_B, "5s").to_string();
    let agents_before = lender.agents().await;

    // (what, path, token, body, status, part of the error)
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<String>,
        u16,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        ("no token", "/v1/leases", None, Some(good.clone()), 401, "missing `Authorization"),
        ("unknown token", "/v1/leases", Some("jlc_0123"), Some(good.clone()), 401, "unknown token"),
        ("agent token on the API", "/v1/leases", Some(&agent_token), Some(good.clone()), 403, "agent token cannot use the API"),
        ("malformed JSON", "/v1/leases", Some(&team_b), Some("{\"requirements\": ".into()), 400, "malformed JSON"),
        ("not an object", "/v1/leases", Some(&team_b), Some("[1,2]".into()), 400, "malformed JSON"),
        (
            "unknown field",
            "/v1/leases",
            Some(&team_b),
            Some(json!({"requirements": "x", "borrower": {"url": BORROWER_B, "name": "n", "secret": "s"}, "color": "red"}).to_string()),
            400,
            "unknown field `color`",
        ),
        (
            "bad expression",
            "/v1/leases",
            Some(&team_b),
            Some(lease_body("x &&", BORROWER_B, "5s").to_string()),
            400,
            "invalid label expression",
        ),
        (
            "bad borrower URL",
            "/v1/leases",
            Some(&team_b),
            Some(lease_body("x", "ftp://b", "5s").to_string()),
            400,
            "must be an http(s) URL",
        ),
        (
            "secret file without a secret directory",
            "/v1/leases",
            Some(&team_b),
            Some(json!({"requirements": "x", "borrower": {"url": BORROWER_B, "name": "n", "secret_file": "/etc/passwd"}}).to_string()),
            400,
            "no --secret-dir",
        ),
        (
            "oversized body",
            "/v1/leases",
            Some(&team_b),
            Some(format!("{{\"requirements\": \"{}\"}}", "x".repeat(100 * 1024))),
            413,
            "larger than 65536 bytes",
        ),
    ];
    for (what, path, token, body, status, message) in cases {
        let (got, text) = lender.raw("POST", path, token, body).await;
        assert_eq!(got, status, "{what}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let error = error["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(message),
            "{what}: {error:?} lacks {message:?}"
        );
    }
    let (status, body) = lender.raw("PUT", "/v1/agents", Some(&team_b), None).await;
    assert_eq!(status, 405, "{body}");
    let (status, _) = lender.raw("GET", "/v1/nothing", Some(&team_b), None).await;
    assert_eq!(status, 404);

    // Nothing changed.
    let (_, leases) = lender.call("GET", "/v1/leases", &team_b, None).await;
    assert_eq!(leases, json!([]));
    assert_eq!(lender.agents().await, agents_before);

    // Another client's lease is invisible and cannot be returned.
    let (_, lease) = lender.lease(&team_b, "x", BORROWER_B, "5s").await;
    let id = id_of(&lease);
    lender.wait_state(&team_b, id, "active").await;
    let team_a = lender.team_a.clone();
    let (status, _) = lender
        .call("GET", &format!("/v1/leases/{id}"), &team_a, None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = lender
        .call("DELETE", &format!("/v1/leases/{id}"), &team_a, None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(lender.get_lease(&team_b, id).await["state"], "active");
    lender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_refuses_client_tokens_and_agents_speaking_for_others() {
    let mut lender = Lender::start("link-auth").await;
    let team_b = lender.team_b.clone();
    let (status, _) = lender.raw("GET", "/v1/link", None, None).await;
    assert_eq!(status, 401);

    // A client token cannot open a link.
    let impostor = FakeAgent::new("a1", &["x"], &team_b);
    assert_eq!(impostor.try_connect(lender.addr, "a1").await, Err(403));
    // An unknown token neither.
    let unknown = FakeAgent::new("a1", &["x"], "jla_00");
    assert_eq!(unknown.try_connect(lender.addr, "a1").await, Err(401));

    // a1's token saying hello as a2: closed with a policy error.
    let token = lender.agent_token("a1");
    let liar = FakeAgent::new("a1", &["x"], &token);
    assert_eq!(liar.try_connect(lender.addr, "a2").await, Ok(()));
    eventually("the link closed", || async {
        liar.link_ended().then_some(())
    })
    .await;
    let closed = liar.state().closed.clone();
    match closed {
        Some((CloseCode::Policy, reason)) => {
            assert!(
                reason.contains("speaks for agent \"a1\", not \"a2\""),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(lender.agents().await, json!([]));
    lender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_link_is_dead_after_three_ping_intervals() {
    let mut lender = Lender::start_with("silent", |config| {
        config.ping_interval = Duration::from_millis(100);
    })
    .await;
    // The fake agent never pings.
    let agent = lender.agent("a1", &["x"]).await;
    eventually("a1 offline", || async {
        find_agent(&lender.agents().await, "a1").filter(|a| a["connected"] == false)
    })
    .await;
    assert!(agent.link_ended());
    lender.stop().await;
}

/// Reads a server-sent event stream until `until` appears in it.
async fn read_events_until(stream: &mut tokio::net::TcpStream, until: &str) -> String {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !seen.contains(until) {
            let n = ok(stream.read(&mut buf).await);
            assert!(n > 0, "event stream closed: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .is_err()
    {
        panic!("no {until:?} in the event stream");
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_server_sent_events() {
    let mut lender = Lender::start("observe").await;
    let _agent = lender.agent("a1", &["x"]).await;
    let _idle = lender.agent("a2", &["y"]).await;
    let (team_a, team_b) = (lender.team_a.clone(), lender.team_b.clone());

    let mut events = ok(tokio::net::TcpStream::connect(lender.addr).await);
    let request = format!(
        "GET /v1/events HTTP/1.1\r\nHost: lender\r\nAuthorization: Bearer {team_b}\r\n\r\n"
    );
    ok(events.write_all(request.as_bytes()).await);
    let head = read_events_until(&mut events, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    // Another client's stream does not carry team-b's leases.
    let mut other = ok(tokio::net::TcpStream::connect(lender.addr).await);
    let request = format!(
        "GET /v1/events HTTP/1.1\r\nHost: lender\r\nAuthorization: Bearer {team_a}\r\n\r\n"
    );
    ok(other.write_all(request.as_bytes()).await);
    read_events_until(&mut other, "\r\n\r\n").await;

    let (_, lease) = lender.lease(&team_b, "x", BORROWER_B, "5s").await;
    let id = id_of(&lease);
    lender.wait_state(&team_b, id, "active").await;
    let seen = read_events_until(&mut events, "\"state\":\"active\"").await;
    assert!(seen.contains("event: lease\ndata: {"), "{seen}");
    assert!(seen.contains("event: agent\ndata: {"), "{seen}");
    assert!(!seen.contains(SECRET));
    let seen_other = read_events_until(&mut other, "\"state\":\"leased\"").await;
    assert!(!seen_other.contains("event: lease"), "{seen_other}");

    let (status, metrics) = lender.raw("GET", "/metrics", Some(&team_a), None).await;
    assert_eq!(status, 200);
    for line in [
        "jnlp_lender_agents{state=\"leased\"} 1",
        "jnlp_lender_agents{state=\"free\"} 1",
        "jnlp_lender_agent_links 2",
        "jnlp_lender_leases{state=\"active\"} 1",
        "jnlp_lender_queue_length 0",
        "jnlp_lender_lease_wait_seconds_count 1",
        "# TYPE jnlp_lender_lease_wait_seconds summary",
        "jnlp_lender_borrow_failures_total 0",
        "jnlp_lender_leases_ended_total{reason=\"timed_out\"} 0",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
    let (status, _) = lender.raw("GET", "/metrics", None, None).await;
    assert_eq!(status, 401);
    lender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_leases_lists_and_returns() {
    let mut lender = Lender::start("cli").await;
    let agent = lender.agent("mac-01", &["macos", "arm64"]).await;
    let dir = &lender.scratch.0;
    let token_file = dir.join("token");
    let secret_file = dir.join("secret");
    ok(std::fs::write(&token_file, format!("{}\n", lender.team_b)));
    ok(std::fs::write(&secret_file, format!("{SECRET}\n")));
    let run = |args: Vec<String>| {
        let url = lender.url();
        let token_file = token_file.clone();
        async move {
            let out = ok(
                tokio::process::Command::new(env!("CARGO_BIN_EXE_jnlp-lender"))
                    .args(&args)
                    .env("JNLP_LENDER_URL", url)
                    .env("JNLP_LENDER_TOKEN_FILE", token_file)
                    .output()
                    .await,
            );
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let (code, stdout, stderr) = run(args(&[
        "lease",
        "--labels",
        "macos && arm64",
        "--url",
        BORROWER_B,
        "--name",
        "lent-node",
        "--secret-file",
        &secret_file.display().to_string(),
        "--for",
        "2h",
        "--wait",
        "10s",
        "--web-socket",
        "--json",
    ]))
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let lease: Value = ok(serde_json::from_str(stdout.trim()));
    assert_eq!(lease["state"], "active");
    assert_eq!(lease["agent"], "mac-01");
    assert_eq!(agent.state().borrows[0].secret.as_deref(), Some(SECRET));
    let id = id_of(&lease);

    let (code, stdout, _) = run(args(&["leases"])).await;
    assert_eq!(code, Some(0));
    assert!(
        stdout.starts_with(&format!("{id}\tactive\tmac-01\t{BORROWER_B}")),
        "{stdout}"
    );
    eventually("mac-01 at the borrower", || async {
        find_agent(&lender.agents().await, "mac-01").filter(|a| a["borrower_url"] == BORROWER_B)
    })
    .await;
    let (code, stdout, _) = run(args(&["agents"])).await;
    assert_eq!(code, Some(0));
    assert!(
        stdout.starts_with(&format!("mac-01\tleased\t{BORROWER_B}\t{id}")),
        "{stdout}"
    );

    let (code, stdout, stderr) = run(args(&["return", &id.to_string()])).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("returning") || stdout.contains("ended"),
        "{stdout}"
    );
    lender.wait_state(&lender.team_b.clone(), id, "ended").await;

    // Nothing matches: exit 1 with the lender's reason.
    let (code, _, stderr) = run(args(&[
        "lease",
        "--labels",
        "windows",
        "--url",
        BORROWER_B,
        "--name",
        "n",
        "--secret-file",
        &secret_file.display().to_string(),
    ]))
    .await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no agent in the pool matches"), "{stderr}");
    lender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_certificate_file() {
    let scratch = Scratch::new("tls");
    let certified = ok(rcgen::generate_simple_self_signed(vec![
        "127.0.0.1".to_owned()
    ]));
    let cert = scratch.0.join("cert.pem");
    let key = scratch.0.join("key.pem");
    ok(std::fs::write(&cert, certified.cert.pem()));
    ok(std::fs::write(&key, certified.key_pair.serialize_pem()));
    let token = create_token(&scratch.db(), lender::tokens::TokenKind::Client, "team-b");
    let mut config = test_config(scratch.db());
    config.tls = Some(lender::server::TlsFiles { cert, key });
    let running = ok(lender::server::start(config).await);
    let url = format!("https://{}", running.local_addr());

    let trusting = ok(lender::client::Client::new(
        &url,
        &token,
        Some(certified.cert.pem().as_bytes()),
    ));
    assert_eq!(ok(trusting.agents().await), []);
    // Without the CA the certificate is refused.
    let plain = ok(lender::client::Client::new(&url, &token, None));
    assert!(matches!(
        plain.agents().await,
        Err(lender::client::ClientError::Http(_))
    ));
    running.shutdown().await;
}
