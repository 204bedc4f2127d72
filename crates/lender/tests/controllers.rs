//! Registered controllers against a running lender: `jnlp-lender
//! controller add` (the binary) while `serve` runs is picked up within a
//! poll; `GET /v1/controllers` and `jnlp-lender controllers` show each
//! controller's state, Jenkins version and waiting items, a bad token and
//! a missing permission as `failing` with the cause, never an API token;
//! `controller remove` takes it away again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod server_support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use server_support::*;
use testkit::controller::{JobSpec, Permission};
use testkit::TestController;

const LENDER_USER: &str = "lender";
const GOOD_TOKEN: &str = "11aa22bb33cc44dd";
const WRONG_TOKEN: &str = "ffee00wrong00eeff";
const NOBODY_TOKEN: &str = "55ee66ff77aa88bb";

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jnlp-lender"))
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run jnlp-lender: {err}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn add(db: &Path, dir: &Path, name: &str, url: &str, token: &str) -> Output {
    add_with(db, dir, name, url, token, &[])
}

fn add_with(db: &Path, dir: &Path, name: &str, url: &str, token: &str, extra: &[&str]) -> Output {
    let file = dir.join(format!("{name}.token"));
    write_private(&file, &format!("{token}\n"));
    let db = db.display().to_string();
    let file = file.display().to_string();
    let mut args = vec![
        "controller",
        "add",
        name,
        "--db",
        &db,
        "--url",
        url,
        "--user",
        LENDER_USER,
        "--api-token-file",
        &file,
        "--demand-after",
        "0s",
        "--max-agents",
        "2",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// A secret file only its owner can read.
fn write_private(path: &Path, text: &str) {
    ok(std::fs::write(path, text));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        ok(std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(0o600),
        ));
    }
}

fn find<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|c| c["name"] == name)
}

// Multi-threaded: the command-line client blocks this thread while the
// in-process lender answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_controllers_show_their_state_and_never_their_token() {
    let lender = Lender::start_with("controllers", |c| c.poll = Duration::from_millis(200)).await;
    let good = TestController::builder()
        .jenkins_version("2.541.1")
        .user(LENDER_USER, GOOD_TOKEN, Permission::LENDER)
        .start()
        .await;
    good.jenkins()
        .queue(JobSpec::pipeline("build").label("macos"));
    let nobody = TestController::builder()
        .user(LENDER_USER, NOBODY_TOKEN, &[])
        .start()
        .await;
    let db = lender.scratch.db();
    let dir = lender.scratch.0.clone();
    let mut events = ok(tokio::net::TcpStream::connect(lender.addr).await);
    let request = format!(
        "GET /v1/events HTTP/1.1\r\nHost: lender\r\nAuthorization: Bearer {}\r\n\r\n",
        lender.team_a
    );
    ok(tokio::io::AsyncWriteExt::write_all(&mut events, request.as_bytes()).await);

    // While serving: three controllers, one of them with a wrong token.
    for (name, url, token) in [
        ("good", good.url(), GOOD_TOKEN),
        ("badtoken", good.url(), WRONG_TOKEN),
        ("noperm", nobody.url(), NOBODY_TOKEN),
    ] {
        let out = add(&db, &dir, name, &url, token);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(!text(&out.stderr).contains(token));
    }
    // The same name twice: refused, with what to do.
    let out = add(&db, &dir, "good", &good.url(), GOOD_TOKEN);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--replace"),
        "{}",
        text(&out.stderr)
    );

    let token = lender.team_a.clone();
    let list = eventually("all three polled", || async {
        let (status, list) = lender.call("GET", "/v1/controllers", &token, None).await;
        assert_eq!(status, 200, "{list}");
        ["good", "badtoken", "noperm"]
            .iter()
            .all(|n| find(&list, n).is_some_and(|c| c["state"] != "pending"))
            .then_some(list)
    })
    .await;
    let body = list.to_string();
    for secret in [GOOD_TOKEN, WRONG_TOKEN, NOBODY_TOKEN] {
        assert!(!body.contains(secret), "{body}");
    }
    let c = find(&list, "good").unwrap();
    assert_eq!(c["state"], "ok", "{c}");
    assert_eq!(c["jenkins_version"], "2.541.1", "{c}");
    assert_eq!(c["waiting_items"], 1, "{c}");
    assert_eq!(c["agents_lent"], 0, "{c}");
    assert_eq!(c["url"], good.url());
    let c = find(&list, "badtoken").unwrap();
    assert_eq!(c["state"], "failing", "{c}");
    assert!(
        c["last_error"].as_str().unwrap().contains("HTTP 401"),
        "{c}"
    );
    let c = find(&list, "noperm").unwrap();
    assert_eq!(c["state"], "failing", "{c}");
    assert!(
        c["last_error"]
            .as_str()
            .unwrap()
            .contains("hudson.model.Hudson.Read"),
        "{c}"
    );

    // Failing controllers were announced, without their tokens.
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !(seen.contains("\"name\":\"badtoken\"") && seen.contains("\"name\":\"noperm\"")) {
            let n = ok(tokio::io::AsyncReadExt::read(&mut events, &mut buf).await);
            assert!(n > 0, "event stream closed: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .is_ok(),
        "no controller_failing events: {seen}"
    );
    assert!(
        seen.contains("event: controller_failing\ndata: {"),
        "{seen}"
    );
    for secret in [GOOD_TOKEN, WRONG_TOKEN, NOBODY_TOKEN] {
        assert!(!seen.contains(secret), "{seen}");
    }

    let (status, metrics) = lender.raw("GET", "/metrics", Some(&token), None).await;
    assert_eq!(status, 200);
    for needle in [
        "jnlp_lender_controller_errors_total{controller=\"badtoken\",status=\"401\"}",
        "jnlp_lender_controller_errors_total{controller=\"noperm\",status=\"403\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} in {metrics}");
    }

    // The command-line client shows the same.
    let token_file = dir.join("client.token");
    write_private(&token_file, &lender.team_a);
    let lender_url = lender.url();
    let token_arg = token_file.display().to_string();
    let out = run(&[
        "controllers",
        "--lender",
        &lender_url,
        "--token-file",
        &token_arg,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines = text(&out.stdout);
    assert!(
        lines
            .lines()
            .any(|l| l.starts_with("good\tok\t2.541.1\t1\t0\t")),
        "{lines}"
    );
    assert!(lines.contains("hudson.model.Hudson.Read"), "{lines}");
    let out = run(&[
        "controllers",
        "--lender",
        &lender_url,
        "--token-file",
        &token_arg,
        "--json",
    ]);
    let json: Value = ok(serde_json::from_slice(&out.stdout));
    assert_eq!(find(&json, "good").unwrap()["state"], "ok");

    // A token replaced while serving (`controller add --replace`): the
    // controller is polled with the new one and recovers within a poll.
    let out = add_with(
        &db,
        &dir,
        "badtoken",
        &good.url(),
        GOOD_TOKEN,
        &["--replace"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("replaced"),
        "{}",
        text(&out.stderr)
    );
    eventually("badtoken fixed", || async {
        let (_, list) = lender.call("GET", "/v1/controllers", &token, None).await;
        find(&list, "badtoken")
            .is_some_and(|c| c["state"] == "ok")
            .then_some(())
    })
    .await;

    // Removed while serving: gone within a poll.
    let out = run(&[
        "controller",
        "remove",
        "badtoken",
        "--db",
        &db.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    eventually("badtoken gone", || async {
        let (_, list) = lender.call("GET", "/v1/controllers", &token, None).await;
        find(&list, "badtoken").is_none().then_some(())
    })
    .await;
    let out = run(&[
        "controller",
        "remove",
        "badtoken",
        "--db",
        &db.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));

    // Only client tokens may look.
    let mut lender = lender;
    let agent = lender.agent_token("mac1");
    let (status, _) = lender.call("GET", "/v1/controllers", &agent, None).await;
    assert_eq!(status, 403);
    lender.stop().await;
}

#[test]
fn controller_add_refuses_what_cannot_work() {
    let scratch = Scratch::new("controller-add");
    let db = scratch.db();
    let empty = scratch.0.join("empty.token");
    ok(std::fs::write(&empty, "\n"));
    let base = |url: &str, token: &Path| -> Vec<String> {
        [
            "controller",
            "add",
            "c1",
            "--db",
            &db.display().to_string(),
            "--url",
            url,
            "--user",
            "u",
            "--api-token-file",
            &token.display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let args = base("http://127.0.0.1:1/", &empty);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is empty"),
        "{}",
        text(&out.stderr)
    );

    let token = scratch.0.join("t.token");
    ok(std::fs::write(&token, "abc"));
    for (extra, needle) in [
        (vec!["--node-prefix", "lent/"], "--node-prefix"),
        (vec!["--max-agents", "0"], "--max-agents"),
    ] {
        let mut args = base("http://127.0.0.1:1/", &token);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stderr).contains(needle), "{}", text(&out.stderr));
    }
    let args = base("ftp://x/", &token);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("http(s)://"),
        "{}",
        text(&out.stderr)
    );
    let args = base("http://127.0.0.1:1/", &token);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
