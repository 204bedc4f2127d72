//! Nothing acknowledged is lost, and a change the database refuses is not
//! made: judged by what clients, the database and a restarted lender see.
//! The database is locked the way another process would lock it (an open
//! `BEGIN EXCLUSIVE` on a second connection), so every commit waits its busy
//! timeout and fails.

mod server_support;

use std::time::{Duration, Instant};

use lender::server::Config;
use lender::store::{SqliteStore, Store as _};
use serde_json::Value;
use server_support::*;

/// A short busy timeout, so that a refused commit takes a second, not five.
fn quick_refusal(config: &mut Config) {
    config.db_busy_timeout = Duration::from_secs(2);
}

/// Holds the database's write lock until dropped.
struct Lock(rusqlite::Connection);

impl Lock {
    fn take(db: &std::path::Path) -> Self {
        let conn = ok(rusqlite::Connection::open(db));
        ok(conn.execute_batch("BEGIN EXCLUSIVE"));
        Lock(conn)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("ROLLBACK");
    }
}

fn ids(leases: &Value) -> Vec<u64> {
    leases
        .as_array()
        .map(|all| all.iter().filter_map(|l| l["id"].as_u64()).collect())
        .unwrap_or_default()
}

async fn metric(lender: &Lender, name: &str) -> f64 {
    let (status, text) = lender
        .raw("GET", "/metrics", Some(&lender.team_b.clone()), None)
        .await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_database_refuses_is_answered_503_changes_nothing_and_reads_stay_fast() {
    let mut lender = Lender::start_with("refused", quick_refusal).await;
    let _mac = lender.agent("mac-01", &["macos"]).await;
    let team_b = lender.team_b.clone();
    let (status, first) = lender
        .lease(&team_b, "nothing-matches", BORROWER_B, "1h")
        .await;
    assert_eq!(status, 202, "{first}");
    let first = first["id"].as_u64().unwrap_or_default();

    let lock = Lock::take(&lender.scratch.db());
    let post = {
        let url = lender.url();
        let token = team_b.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let response = ok(reqwest::Client::new()
                .post(format!("{url}/v1/leases"))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(lease_body("macos", BORROWER_B, "10s").to_string())
                .send()
                .await);
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            let body: Value = serde_json::from_str(&ok(response.text().await)).unwrap_or_default();
            (status, retry_after, body, started.elapsed())
        })
    };
    // While the request waits for the database, reads are answered.
    let read_started = Instant::now();
    let agents = lender.agents().await;
    let read_took = read_started.elapsed();
    assert!(
        !post.is_finished(),
        "the read should be answered while the write waits (it took {read_took:?})"
    );
    assert_eq!(
        find_agent(&agents, "mac-01").map(|a| a["state"].clone()),
        Some(Value::from("free"))
    );

    let (status, retry_after, body, took) = ok(post.await);
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("could not store")),
        "{body}"
    );
    assert!(
        took >= Duration::from_secs(1),
        "answered before the database: {took:?}"
    );
    assert_eq!(
        metric(
            &lender,
            "jnlp_lender_store_failures_total{change=\"client\"}"
        )
        .await,
        1.0
    );

    // Nothing changed: the agent is free, the list is as before.
    let agents = lender.agents().await;
    assert_eq!(
        find_agent(&agents, "mac-01").map(|a| (a["state"].clone(), a["lease"].clone())),
        Some((Value::from("free"), Value::Null)),
        "{agents}"
    );
    let (_, leases) = lender.call("GET", "/v1/leases", &team_b, None).await;
    assert_eq!(ids(&leases), [first]);
    drop(lock);

    // The next request is made, with an id never handed out before.
    let (status, second) = lender.lease(&team_b, "macos", BORROWER_B, "10s").await;
    assert_eq!(status, 201, "{second}");
    let second = second["id"].as_u64().unwrap_or_default();
    assert!(
        second > first + 1,
        "the refused request's id was reused: {second}"
    );
    lender.wait_state(&team_b, second, "active").await;

    // A restarted lender has exactly what was acknowledged.
    lender.restart().await;
    let (_, leases) = lender.call("GET", "/v1/leases", &team_b, None).await;
    assert_eq!(ids(&leases), [first, second], "{leases}");
    let stored = ok(SqliteStore::open(&lender.scratch.db()));
    assert_eq!(ok(stored.lease(second)).map(|l| l.id), Some(second));
    assert_eq!(ok(stored.lease(second - 1)), None);
    lender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_the_database_refuses_sends_no_borrow_until_it_is_stored() {
    let mut lender = Lender::start_with("unsaved", quick_refusal).await;
    let mac = lender.agent("mac-01", &["macos"]).await;
    mac.state().place = Some(BORROWER_A.into());
    mac.send_status().await;
    let team_b = lender.team_b.clone();
    eventually("the agent away", || async {
        let agents = lender.agents().await;
        find_agent(&agents, "mac-01").filter(|a| a["state"] == "away")
    })
    .await;
    let (status, lease) = lender.lease(&team_b, "macos", BORROWER_B, "1h").await;
    assert_eq!(status, 202, "{lease}");
    let id = lease["id"].as_u64().unwrap_or_default();

    // The agent comes home while the database is locked: the pool reserves
    // it for the waiting request, but the reservation is not on disk.
    let lock = Lock::take(&lender.scratch.db());
    mac.state().place = None;
    mac.send_status().await;
    eventually("a refused commit of the reservation", || async {
        (metric(
            &lender,
            "jnlp_lender_store_failures_total{change=\"reported\"}",
        )
        .await
            >= 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(metric(&lender, "jnlp_lender_store_unsaved").await, 1.0);
    assert!(
        mac.state().borrows.is_empty(),
        "a borrow went out for a reservation that is not stored"
    );
    drop(lock);

    lender.wait_state(&team_b, id, "active").await;
    assert_eq!(mac.state().borrows.len(), 1);
    assert_eq!(metric(&lender, "jnlp_lender_store_unsaved").await, 0.0);
    lender.restart().await;
    let lease = lender.get_lease(&team_b, id).await;
    assert_eq!(lease["agent"], "mac-01", "{lease}");
    lender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_leases_stay_listed_after_a_restart() {
    let mut lender = Lender::start("ended").await;
    let _mac = lender.agent("mac-01", &["macos"]).await;
    let team_b = lender.team_b.clone();
    let (_, returned) = lender.lease(&team_b, "macos", BORROWER_B, "10s").await;
    let returned = returned["id"].as_u64().unwrap_or_default();
    lender.wait_state(&team_b, returned, "active").await;
    let (status, _) = lender
        .call("DELETE", &format!("/v1/leases/{returned}"), &team_b, None)
        .await;
    assert_eq!(status, 202);
    lender.wait_state(&team_b, returned, "ended").await;
    let (_, cancelled) = lender.lease(&team_b, "nothing", BORROWER_B, "1h").await;
    let cancelled = cancelled["id"].as_u64().unwrap_or_default();
    let (status, _) = lender
        .call("DELETE", &format!("/v1/leases/{cancelled}"), &team_b, None)
        .await;
    assert_eq!(status, 202);
    let (_, open) = lender.lease(&team_b, "nothing", BORROWER_B, "1h").await;
    let open = open["id"].as_u64().unwrap_or_default();
    // Another client's ended lease is never listed.
    let team_a = lender.team_a.clone();
    let (_, theirs) = lender.lease(&team_a, "nothing", BORROWER_A, "0s").await;
    assert_eq!(theirs["lease"]["state"], "ended", "{theirs}");

    lender.restart().await;
    let list = |query: &'static str| {
        let lender = &lender;
        let team_b = team_b.clone();
        async move {
            let (status, leases) = lender
                .call("GET", &format!("/v1/leases{query}"), &team_b, None)
                .await;
            assert_eq!(status, 200, "{query}: {leases}");
            ids(&leases)
        }
    };
    assert_eq!(list("").await, [returned, cancelled, open]);
    assert_eq!(list("?state=all").await, [returned, cancelled, open]);
    assert_eq!(list("?state=ended").await, [returned, cancelled]);
    assert_eq!(list("?state=open").await, [open]);
    assert_eq!(list("?state=all&limit=2").await, [cancelled, open]);
    let (_, ended) = lender
        .call("GET", "/v1/leases?state=ended", &team_b, None)
        .await;
    let reasons: Vec<&str> = ended
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|l| l["ended"]["reason"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(reasons, ["returned", "cancelled"]);
    for bad in ["?state=gone", "?limit=0", "?limit=1001", "?color=red"] {
        let (status, body) = lender
            .call("GET", &format!("/v1/leases{bad}"), &team_b, None)
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    lender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_and_its_link_and_event_stream_close_within_two_seconds() {
    let mut lender = Lender::start("revoked").await;
    let mac = lender.agent("mac-01", &["macos"]).await;
    let team_b = lender.team_b.clone();
    let (status, _) = lender.call("GET", "/v1/agents", &team_b, None).await;
    assert_eq!(status, 200);
    let mut events = ok(reqwest::Client::new()
        .get(format!("{}/v1/events", lender.url()))
        .bearer_auth(&team_b)
        .send()
        .await);
    assert_eq!(events.status().as_u16(), 200);

    let revoked_at = Instant::now();
    {
        let mut store = ok(SqliteStore::open(&lender.scratch.db()));
        assert_eq!(ok(store.revoke("team-b", control::now_ms())), 1);
        assert_eq!(ok(store.revoke("mac-01", control::now_ms())), 1);
    }
    eventually("the client token refused", || async {
        let (status, _) = lender.call("GET", "/v1/agents", &team_b, None).await;
        (status == 401).then_some(())
    })
    .await;
    eventually("the agent's link closed", || async {
        mac.link_ended().then_some(())
    })
    .await;
    let stream_end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = events.chunk().await {}
    })
    .await;
    assert!(stream_end.is_ok(), "the event stream stayed open");
    let took = revoked_at.elapsed();
    // The design bound is one revocation poll (0.5 s) and a lookup; the margin
    // is for a loaded machine.
    assert!(took < Duration::from_secs(5), "revocation took {took:?}");
    assert_eq!(
        mac.state()
            .closed
            .as_ref()
            .map(|(_, reason)| reason.clone()),
        Some("this agent's token was revoked".to_owned())
    );
    // Other tokens still work.
    let (status, _) = lender
        .call("GET", "/v1/agents", &lender.team_a.clone(), None)
        .await;
    assert_eq!(status, 200);
    let link = mac.try_connect(lender.addr, "mac-01").await;
    assert_eq!(link, Err(401));
    lender.stop().await;
}
