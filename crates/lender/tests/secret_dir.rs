//! `--secret-dir` per client: client `C` names only files under `DIR/C/`;
//! `..`, absolute paths and symbolic links leading out are refused, so no
//! client can send another's secret (or any file the lender reads) to a URL
//! of its choice.

mod server_support;

use std::path::PathBuf;

use serde_json::{json, Value};
use server_support::*;

const SECRET_A: &str = "team-a-node-secret";
const SECRET_B: &str = "team-b-node-secret";

fn secrets_of(config_db: &std::path::Path) -> PathBuf {
    config_db
        .parent()
        .map(|dir| dir.join("secrets"))
        .unwrap_or_default()
}

fn body(secret_file: &str) -> Value {
    json!({
        "requirements": "x",
        "borrower": {
            "url": BORROWER_A,
            "name": "lent-node",
            "secret_file": secret_file,
            "transport": "web_socket",
        },
        "wait": "5s",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_only_its_own_secret_files() {
    let mut lender = Lender::start_with("secret-dir", |config| {
        config.secret_dir = Some(secrets_of(&config.db));
    })
    .await;
    let dir = secrets_of(&lender.scratch.db());
    let (own_a, own_b) = (dir.join("team-a"), dir.join("team-b"));
    ok(std::fs::create_dir_all(&own_a));
    ok(std::fs::create_dir_all(&own_b));
    ok(std::fs::write(own_a.join("node"), format!("{SECRET_A}\n")));
    ok(std::fs::write(own_b.join("node"), SECRET_B));
    ok(std::os::unix::fs::symlink(
        own_b.join("node"),
        own_a.join("to-b"),
    ));
    ok(std::os::unix::fs::symlink(
        "../team-b/node",
        own_a.join("to-b-relative"),
    ));
    ok(std::os::unix::fs::symlink(
        "/etc/passwd",
        own_a.join("passwd"),
    ));
    ok(std::os::unix::fs::symlink(&own_b, own_a.join("dir-b")));
    let agent = lender.agent("a1", &["x"]).await;
    let team_a = lender.team_a.clone();

    let b_file = own_b.join("node").display().to_string();
    let refused = [
        (b_file.as_str(), "not the absolute path"),
        ("../team-b/node", "without `..`"),
        ("./../team-b/node", "without `..`"),
        ("/etc/passwd", "not the absolute path"),
        ("to-b", "leads out of your directory"),
        ("to-b-relative", "leads out of your directory"),
        ("passwd", "leads out of your directory"),
        ("dir-b/node", "leads out of your directory"),
        ("team-b/node", "cannot read borrower.secret_file"),
        ("missing", "cannot read borrower.secret_file"),
        ("", "must name a file"),
    ];
    for (file, message) in refused {
        let (status, answer) = lender
            .call("POST", "/v1/leases", &team_a, Some(body(file)))
            .await;
        assert_eq!(status, 400, "{file:?}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{file:?}: {error}");
        assert!(!error.contains(SECRET_B), "{error}");
    }
    let (_, leases) = lender.call("GET", "/v1/leases", &team_a, None).await;
    assert_eq!(leases, json!([]), "nothing was asked for");
    assert!(agent.state().borrows.is_empty(), "no borrow went out");

    // Its own file, plainly or with `./`: the agent gets its content.
    let (status, lease) = lender
        .call("POST", "/v1/leases", &team_a, Some(body("./node")))
        .await;
    assert_eq!(status, 201, "{lease}");
    let id = lease["id"].as_u64().unwrap_or_default();
    lender.wait_state(&team_a, id, "active").await;
    let secrets: Vec<Option<String>> = agent
        .state()
        .borrows
        .iter()
        .map(|b| b.secret.clone())
        .collect();
    assert_eq!(secrets, [Some(SECRET_A.to_owned())]);
    lender.stop().await;
}
