//! Two `jnlp-lender serve` processes (the real binary) on one PostgreSQL
//! database (a throwaway cluster): one active, one standby. The active one
//! is killed with SIGKILL; the standby takes over within 10 s with the
//! lease still active and the queued request still queued, then served.
//! The agents are the lender tests' fake agents (they speak the agent
//! link as `jnlp-agent --lender` does); they relink to the new leader as
//! a real agent's link does. Also: a database that stops makes the active
//! lender answer 503 (it decides nothing alone), and it resumes once the
//! database is back.

mod pg_support;
mod server_support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pg_support::TestPg;
use serde_json::{json, Value};
use server_support::{ok, FakeAgent, ServeProcess, BORROWER_A};

const BIN: &str = env!("CARGO_BIN_EXE_jnlp-lender");

/// Files for the client command (token, secret), removed on drop.
struct Files(std::path::PathBuf);

impl Files {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("jnlp-lender-takeover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        ok(std::fs::create_dir_all(&dir));
        Files(dir)
    }

    fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.0.join(name);
        ok(std::fs::write(&path, text));
        ok(std::fs::set_permissions(
            &path,
            std::fs::Permissions::from_mode(0o600),
        ));
        path
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn token(db: &str, kind: &str, name: &str) -> String {
    let out = ok(Command::new(BIN)
        .args(["token", "create", kind, name, "--db", db])
        .output());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One exchange: status, `Retry-After`, JSON body.
async fn call(
    base: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let client = reqwest::Client::new();
    let method = ok(reqwest::Method::from_bytes(method.as_bytes()));
    let mut request = client
        .request(method, format!("{base}{path}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(10));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    // A lender stepping down or taking over may cut a connection: status 0.
    let Ok(response) = request.send().await else {
        return (0, None, Value::Null);
    };
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.unwrap_or_default();
    (
        status,
        retry,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

fn lease_body(requirements: &str, node: &str) -> Value {
    json!({
        "requirements": requirements,
        "borrower": {"url": BORROWER_A, "name": node, "secret": "s3cr3t", "transport": "web_socket"},
        "wait": "1h",
    })
}

/// Polls `check` every 50 ms until it gives a value or `within` passes.
async fn within<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_active(serve: &ServeProcess, token: &str, limit: Duration) {
    let url = serve.url();
    let deadline = Instant::now() + limit;
    loop {
        let (status, _, _) = call(&url, "GET", "/v1/agents", token, None).await;
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not active in {limit:?}:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn lease_state(base: &str, token: &str, id: u64) -> Value {
    let (status, _, lease) = call(base, "GET", &format!("/v1/leases/{id}"), token, None).await;
    assert_eq!(status, 200, "{lease}");
    lease
}

async fn wait_lease(base: &str, token: &str, id: u64, state: &str) -> Value {
    within(
        Duration::from_secs(10),
        &format!("lease {id} {state}"),
        || async {
            let lease = lease_state(base, token, id).await;
            (lease["state"] == state).then_some(lease)
        },
    )
    .await
}

/// Relinks `agent` to whichever lender is active (a standby refuses).
async fn relink(agent: &FakeAgent, lenders: &[SocketAddr]) {
    within(Duration::from_secs(10), "the agent to relink", || async {
        for addr in lenders {
            // Passing over a lender that cannot be reached (the fake
            // agent's link panics on that) or refuses the link.
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                continue;
            }
            if agent.try_connect(*addr, &agent.name.clone()).await.is_ok() {
                return Some(());
            }
        }
        None
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_within_10s_after_sigkill_with_the_lease_and_the_queue() {
    let pg = TestPg::start();
    let db = pg.database("takeover");
    let ci = token(&db, "--client", "ci");
    let a1 = FakeAgent::new("mac-01", &["mac"], &token(&db, "--agent", "mac-01"));

    let mut first = ServeProcess::start(std::path::Path::new(BIN), &db, "lender-1");
    wait_active(&first, &ci, Duration::from_secs(10)).await;
    let second = ServeProcess::start(std::path::Path::new(BIN), &db, "lender-2");
    // A standby: 503, Retry-After, a reason; agent links refused too.
    let (status, retry, body) = call(&second.url(), "GET", "/v1/agents", &ci, None).await;
    assert_eq!(status, 503, "{body}");
    assert!(retry.is_some());
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("standby"),
        "{body}"
    );
    assert_eq!(a1.try_connect(second.addr, "mac-01").await, Err(503));

    let lenders = [first.addr, second.addr];
    relink(&a1, &lenders).await;
    let (status, _, lease) = call(
        &first.url(),
        "POST",
        "/v1/leases",
        &ci,
        Some(lease_body("mac", "n1")),
    )
    .await;
    assert!(
        status == 200 || status == 201 || status == 202,
        "{status} {lease}"
    );
    wait_lease(&first.url(), &ci, 1, "active").await;
    // Queued (the one mac is lent), by `jnlp-lender lease --wait` given
    // the standby first: it passes over the 503 to the active one, and
    // waits there.
    let files = Files::new();
    let secret = files.write("secret", "s3cr3t");
    let token_file = files.write("token", &ci);
    let waiting = ok(Command::new(BIN)
        .args([
            "lease", "--labels", "mac", "--url", BORROWER_A, "--name", "n2",
        ])
        .arg("--secret-file")
        .arg(&secret)
        .args(["--wait", "1h", "--web-socket", "--json"])
        .arg("--lender")
        .arg(format!("{},{}", second.url(), first.url()))
        .arg("--token-file")
        .arg(&token_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn());
    within(Duration::from_secs(10), "lease 2 queued", || async {
        let (status, _, lease) = call(&first.url(), "GET", "/v1/leases/2", &ci, None).await;
        (status == 200 && lease["state"] == "queued").then_some(())
    })
    .await;

    // kill -9 the active one.
    first.kill();
    let killed = Instant::now();
    wait_active(&second, &ci, Duration::from_secs(10)).await;
    let takeover = killed.elapsed();
    eprintln!("takeover after SIGKILL: {} ms", takeover.as_millis());
    assert!(takeover < Duration::from_secs(10), "{takeover:?}");
    assert_eq!(lease_state(&second.url(), &ci, 1).await["state"], "active");
    assert_eq!(lease_state(&second.url(), &ci, 2).await["state"], "queued");

    // The agent relinks and reports where it is; the lease is returned;
    // the queued request gets the agent.
    relink(&a1, &lenders).await;
    let (status, _, body) = call(&second.url(), "DELETE", "/v1/leases/1?now", &ci, None).await;
    assert_eq!(status, 202, "{body}");
    wait_lease(&second.url(), &ci, 1, "ended").await;
    wait_lease(&second.url(), &ci, 2, "active").await;
    assert!(!a1.state().lent_twice);
    assert_eq!(a1.state().borrows.len(), 2);
    // The waiting `lease` followed the takeover and reports its lease.
    let out = ok(tokio::task::spawn_blocking(move || waiting.wait_with_output()).await);
    let out = ok(out);
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        (printed["id"].clone(), printed["state"].clone()),
        (json!(2), json!("active"))
    );

    // The former leader comes back: a standby.
    let again = ServeProcess::start(std::path::Path::new(BIN), &db, "lender-1");
    let (status, _, body) = call(&again.url(), "GET", "/v1/agents", &ci, None).await;
    assert_eq!(status, 503, "{body}\n{}", again.log());
    assert_eq!(lease_state(&second.url(), &ci, 2).await["state"], "active");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_makes_the_active_lender_answer_503_until_it_is_back() {
    let mut pg = TestPg::start();
    let db = pg.database("outage");
    let ci = token(&db, "--client", "ci");
    let serve = ServeProcess::start(std::path::Path::new(BIN), &db, "lender-1");
    wait_active(&serve, &ci, Duration::from_secs(10)).await;
    let (status, _, _) = call(
        &serve.url(),
        "POST",
        "/v1/leases",
        &ci,
        Some(lease_body("mac", "n1")),
    )
    .await;
    assert!(status < 300);

    pg.stop();
    // It stops acknowledging: every call is 503 with Retry-After.
    let url = serve.url();
    within(
        Duration::from_secs(10),
        "503 while the database is down",
        || async {
            let (status, retry, _) = call(&url, "GET", "/v1/agents", &ci, None).await;
            (status == 503 && retry.is_some()).then_some(())
        },
    )
    .await;
    let (status, _, body) = call(
        &url,
        "POST",
        "/v1/leases",
        &ci,
        Some(lease_body("mac", "n2")),
    )
    .await;
    assert_eq!(status, 503, "decided without its database: {body}");

    ok(pg.run());
    wait_active(&serve, &ci, Duration::from_secs(15)).await;
    // Nothing was decided during the outage: lease 2 was never made.
    assert_eq!(lease_state(&url, &ci, 1).await["state"], "queued");
    let (status, _, _) = call(&url, "GET", "/v1/leases/2", &ci, None).await;
    assert_eq!(status, 404, "{}", serve.log());
    let (status, _, body) = call(
        &url,
        "POST",
        "/v1/leases",
        &ci,
        Some(lease_body("mac", "n3")),
    )
    .await;
    assert!(status < 300, "{status} {body}");
    assert_eq!(body["id"], 2, "{body}");
}
