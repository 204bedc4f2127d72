//! Per-client limits, end to end over HTTP: the queue limit (429), node
//! names as Jenkins accepts them, bounded single-line borrower URLs in any
//! scheme case, bounded durations. Judged by the status and body a client
//! sees and by what the pool holds afterwards.

mod server_support;

use serde_json::{json, Value};
use server_support::*;

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_its_limit_queued_gets_429_and_others_still_queue() {
    let lender = Lender::start_with("queue-limit", |config| {
        config.pool.max_queued_per_client = 3;
    })
    .await;
    let team_b = lender.team_b.clone();
    let team_a = lender.team_a.clone();
    // Nobody has `gpu`: every request waits.
    for _ in 0..3 {
        let (status, lease) = lender.lease(&team_b, "gpu", BORROWER_B, "10m").await;
        assert_eq!(status, 202, "{lease}");
    }
    let (status, body) = lender.lease(&team_b, "gpu", BORROWER_B, "10m").await;
    assert_eq!(status, 429, "{body}");
    assert!(
        error_of(&body).contains("already has 3 requests waiting in the queue"),
        "{body}"
    );
    // The pool holds the three, not a fourth.
    let (_, leases) = lender.call("GET", "/v1/leases", &team_b, None).await;
    let states: Vec<&str> = leases
        .as_array()
        .map(|l| l.iter().filter_map(|l| l["state"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(states, ["queued", "queued", "queued"], "{leases}");
    // Another client is not held up by team-b's queue.
    let (status, lease) = lender.lease(&team_a, "gpu", BORROWER_A, "10m").await;
    assert_eq!(status, 202, "{lease}");
    // Withdrawing one makes room again.
    let first = leases[0]["id"].as_u64().unwrap_or_default();
    let (status, _) = lender
        .call("DELETE", &format!("/v1/leases/{first}"), &team_b, None)
        .await;
    assert_eq!(status, 202);
    let (status, lease) = lender.lease(&team_b, "gpu", BORROWER_B, "10m").await;
    assert_eq!(status, 202, "{lease}");
    lender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_urls_and_durations_get_400_naming_the_rule_and_change_nothing() {
    let mut lender = Lender::start("request-limits").await;
    let _agent = lender.agent("a1", &["x"]).await;
    let team_b = lender.team_b.clone();
    let with = |field: &str, value: Value| {
        let mut body = lease_body("x", BORROWER_B, "5s");
        match field.strip_prefix("borrower.") {
            Some(inner) => body["borrower"][inner] = value,
            None => body[field] = value,
        }
        body
    };
    let long_url = format!("{BORROWER_B}{}", "x".repeat(2048));
    let cases = [
        with("borrower.name", json!("a/b")),
        with("borrower.name", json!("mac:01")),
        with("borrower.name", json!("..")),
        with("borrower.name", json!("node.")),
        with("borrower.name", json!("a\u{1}b")),
        with("borrower.name", json!("n".repeat(256))),
        with("borrower.url", json!(long_url)),
        with("borrower.url", json!("https://b.example/\r\nX-Injected: 1")),
        with("borrower.url", json!("https://b.example/\u{0}")),
        with("lease", json!("31days")),
        with("idle_return", json!("31days")),
        with("wait", json!("25h")),
        with("wait", json!("500000000years")),
        with("lease", json!("500000000years")),
    ];
    let rules = [
        "node name must not contain '/'",
        "node name must not contain ':'",
        "node name must not be `.` or `..`",
        "node name must not end with `.`",
        "node name must not contain control characters",
        "node name is 256 bytes long; at most 255",
        "at most 2048 are accepted",
        "must not contain NUL, CR or LF",
        "must not contain NUL, CR or LF",
        "`lease` must be at most 30days",
        "`idle_return` must be at most 30days",
        "`wait` must be at most 1day",
        "`wait` must be at most 1day",
        "`lease` must be at most 30days",
    ];
    for (body, rule) in cases.iter().zip(rules) {
        let (status, answer) = lender
            .call("POST", "/v1/leases", &team_b, Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{rule}: {answer}");
        assert!(error_of(&answer).contains(rule), "{rule}: {answer}");
    }
    let (_, leases) = lender.call("GET", "/v1/leases", &team_b, None).await;
    assert_eq!(leases, json!([]), "a refused request changes nothing");
    // The driver is alive (a huge wait used to overflow its timer).
    let (status, _) = lender.call("GET", "/v1/agents", &team_b, None).await;
    assert_eq!(status, 200);

    // At the limits, with the scheme in capitals: accepted, and the agent
    // is sent (and lands at) the URL in its one spelling.
    let mut body = with("borrower.url", json!("HTTPS://b.example/"));
    body["lease"] = json!("30days");
    body["idle_return"] = json!("30days");
    body["wait"] = json!("24h");
    body["borrower"]["name"] = json!("n".repeat(255));
    let (status, lease) = lender.call("POST", "/v1/leases", &team_b, Some(body)).await;
    assert_eq!(status, 201, "{lease}");
    assert_eq!(lease["borrower"]["url"], BORROWER_B);
    let id = lease["id"].as_u64().unwrap_or_default();
    lender.wait_state(&team_b, id, "active").await;
    lender.stop().await;
}
