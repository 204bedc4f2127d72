//! Requirements the lender accepts survive a restart: the store keeps their
//! canonical form and parses it again at start, so every expression the API
//! accepts must print to one that parses (found by the `label_expr` fuzz
//! target, fuzz/README.md).

mod server_support;

use server_support::*;

fn id_of(lease: &serde_json::Value) -> u64 {
    lease["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no lease id in {lease}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expression_too_complex_once_printed_is_refused_and_the_lender_restarts() {
    let mut lender = Lender::start("requirements-restart").await;
    let team_b = lender.team_b.clone();

    // 64 levels of parentheses as written (the bound), three operators in
    // each: 256 levels once printed canonically.
    let nested = "(a&&b||c->".repeat(64) + "d" + &")".repeat(64);
    let (status, body) = lender.lease(&team_b, &nested, BORROWER_B, "1h").await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(message.contains("too complex"), "{body}");

    // One within the bounds printed too waits in the queue (no agent)...
    let deep = "(a&&".repeat(64) + "a" + &")".repeat(64);
    let (status, queued) = lender.lease(&team_b, &deep, BORROWER_B, "1h").await;
    assert_eq!(status, 202, "{queued}");
    let id = id_of(&queued);

    // ...and is still there, the same, after a restart.
    lender.restart().await;
    let again = lender.get_lease(&team_b, id).await;
    assert_eq!(again["state"], "queued", "{again}");
    assert_eq!(again["requirements"], queued["requirements"]);
    lender.stop().await;
}
