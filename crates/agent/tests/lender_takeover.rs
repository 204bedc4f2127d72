//! A lender takeover end to end with real binaries: two `jnlp-lender serve`
//! processes on one throwaway PostgreSQL database (one active, one
//! standby), two test controllers (home and borrower) and two real
//! `jnlp-agent`s with the fake engine, each given both lender URLs (one
//! with the standby first). A lease is active on one agent; the active
//! lender is killed with SIGKILL. Within 10 s the standby is active and
//! both agents have relinked to it; the lease is still active and the
//! agent still online at the borrower; the lease is returned through the
//! new lender and the agent goes home.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../lender/tests/pg_support/mod.rs"]
mod pg_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{closed, fake_engine, temp_dir, until_online, AgentProcess};
use pg_support::TestPg;
use serde_json::Value;
use test_support::lender::ServeProcess;
use test_support::until_some;
use testkit::{Peer, TestController};

const LONG: Duration = Duration::from_secs(30);
/// The promise: the standby active, and the agents relinked, within this.
const TAKEOVER: Duration = Duration::from_secs(10);
const HOME_SECRETS: [(&str, &str); 2] = [
    ("mac-01", "1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d"),
    ("mac-02", "2e2d2e2d2e2d2e2d2e2d2e2d2e2d2e2d"),
];
const GUEST_SECRET: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";

/// The `jnlp-lender` binary beside the agent's, built when a lone `cargo
/// test -p jnlp-agent` did not build it.
fn lender_bin() -> PathBuf {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_jnlp-agent"));
    let bin = agent.with_file_name("jnlp-lender");
    if !bin.exists() {
        let release = agent.components().any(|c| c.as_os_str() == "release");
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-q", "-p", "jnlp-lender", "--bin", "jnlp-lender"]);
        if release {
            build.arg("--release");
        }
        assert!(build.status().expect("cargo runs").success());
    }
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}

/// `jnlp-lender token create KIND NAME` on `db`.
fn token(db: &str, kind: &str, name: &str) -> String {
    let out = Command::new(lender_bin())
        .args(["token", "create", kind, name, "--db", db])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `text` alone in a new 0600 file under `dir`.
fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `GET path` on `base`: the status and the JSON body (status 0 when the
/// lender cannot be reached).
async fn get(base: &str, path: &str, token: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    let Ok(response) = response else {
        return (0, Value::Null);
    };
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, body)
}

/// The agents `base` serves as linked (`connected`), once it is active and
/// lists every one of `names` so.
async fn linked(base: &str, token: &str, names: &[&str]) -> Option<Vec<Value>> {
    let (status, agents) = get(base, "/v1/agents", token).await;
    let agents = agents.as_array().filter(|_| status == 200)?.clone();
    names
        .iter()
        .all(|name| {
            agents
                .iter()
                .any(|a| a["name"] == *name && a["connected"] == true)
        })
        .then_some(agents)
}

fn agent_view<'a>(agents: &'a [Value], name: &str) -> &'a Value {
    agents.iter().find(|a| a["name"] == name).unwrap()
}

/// An agent of `home` named `name`, linked to `lenders` (in that order) by
/// `--lender` repeated, or by `JNLP_AGENT_LENDER` when `by_env`.
fn start_agent(
    home: &TestController,
    name: &str,
    labels: &str,
    lenders: &[String],
    token: &Path,
    by_env: bool,
) -> AgentProcess {
    let url = home.url();
    let engine = format!("{} echo", fake_engine().display());
    let secret = HOME_SECRETS.iter().find(|(n, _)| *n == name).unwrap().1;
    let mut args: Vec<&str> = vec![
        "-url",
        &url,
        "-name",
        name,
        "--engine-command",
        &engine,
        "--quiet-period",
        "200ms",
        "--lender-token-file",
        token.to_str().unwrap(),
        "--labels",
        labels,
    ];
    let joined = lenders.join(",");
    let mut envs = vec![("JENKINS_SECRET", secret)];
    if by_env {
        envs.push(("JNLP_AGENT_LENDER", &joined));
    } else {
        for lender in lenders {
            args.extend(["--lender", lender]);
        }
    }
    AgentProcess::start(&args, &envs)
}

/// `jnlp-lender ARGS --lender LENDERS --token-file TOKEN --json`, which
/// must succeed; its JSON output.
async fn client(args: &[&str], lenders: &str, token: &Path) -> Value {
    let out = tokio::process::Command::new(lender_bin())
        .args(args)
        .args(["--lender", lenders, "--json", "--token-file"])
        .arg(token)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "jnlp-lender {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agents_follow_a_takeover_and_the_lease_survives_it() {
    let pg = TestPg::start();
    let db = pg.database("agents");
    let files = temp_dir("takeover");
    let ci = token(&db, "--client", "ci");
    let ci_file = secret_file(&files, "ci-token", &ci);
    let agent_tokens: Vec<(String, PathBuf)> = HOME_SECRETS
        .iter()
        .map(|(name, _)| {
            let token = token(&db, "--agent", name);
            let file = secret_file(&files, &format!("{name}-token"), &token);
            (token, file)
        })
        .collect();

    let mut active = ServeProcess::start(&lender_bin(), &db, "lender-1");
    until_some("the first lender active", LONG, || async {
        (get(&active.url(), "/v1/agents", &ci).await.0 == 200).then_some(())
    })
    .await;
    let standby = ServeProcess::start(&lender_bin(), &db, "lender-2");
    let (status, body) = get(&standby.url(), "/v1/agents", &ci).await;
    assert_eq!(status, 503, "the second is a standby: {body}");

    let home = HOME_SECRETS
        .iter()
        .fold(TestController::builder(), |b, (name, secret)| {
            b.node(name, secret)
        })
        .remoting_jar(testkit::fake_remoting_jar("3301.v4363ddcca_4e7"))
        .peer(Peer::Hold)
        .start()
        .await;
    let borrower = TestController::builder()
        .node("guest-mac", GUEST_SECRET)
        .remoting_jar(testkit::fake_remoting_jar("3355.v388858a_47b_33"))
        .peer(Peer::Hold)
        .start()
        .await;

    // mac-01: the active lender first (--lender twice); mac-02: the
    // standby first (JNLP_AGENT_LENDER), which it must pass over.
    let (a_url, s_url) = (active.url(), standby.url());
    let mac01 = start_agent(
        &home,
        "mac-01",
        "xcode16",
        &[a_url.clone(), s_url.clone()],
        &agent_tokens[0].1,
        false,
    );
    let mac02 = start_agent(
        &home,
        "mac-02",
        "other",
        &[s_url.clone(), a_url.clone()],
        &agent_tokens[1].1,
        true,
    );
    until_some("both agents linked to the active lender", LONG, || {
        linked(&a_url, &ci, &["mac-01", "mac-02"])
    })
    .await;
    until_online(&home, "mac-01", true, LONG).await;
    until_online(&home, "mac-02", true, LONG).await;
    mac02.wait_log("passed over a lender", 1, LONG).await;
    assert!(
        mac02.log().contains("503"),
        "the standby's refusal named: {}",
        mac02.log()
    );

    // A lease, asked with both URLs: active once online at the borrower.
    let guest_secret = secret_file(&files, "guest-secret", GUEST_SECRET);
    let both = format!("{a_url},{s_url}");
    let lease = client(
        &[
            "lease",
            "--labels",
            "xcode16",
            "--url",
            &borrower.url(),
            "--name",
            "guest-mac",
            "--secret-file",
            guest_secret.to_str().unwrap(),
            "--for",
            "1h",
        ],
        &both,
        &ci_file,
    )
    .await;
    assert_eq!(lease["state"], "active", "{lease}");
    let id = lease["id"].as_u64().unwrap();
    until_online(&borrower, "guest-mac", true, LONG).await;
    until_online(&home, "mac-01", false, LONG).await;
    let channels_closed_at_borrower = closed(&borrower.log());

    // kill -9 the active lender.
    active.kill();
    let killed = Instant::now();
    let agents = until_some(
        "the standby active with both agents relinked",
        TAKEOVER,
        || linked(&s_url, &ci, &["mac-01", "mac-02"]),
    )
    .await;
    let relinked = killed.elapsed();
    eprintln!(
        "standby active and both agents relinked {} ms after SIGKILL",
        relinked.as_millis()
    );
    assert!(relinked < TAKEOVER, "{relinked:?}\n{}", standby.log());
    let lent = agent_view(&agents, "mac-01");
    assert_eq!(lent["place"], "borrowed", "{lent}");
    assert_eq!(lent["lease"], id, "{lent}");
    assert_eq!(lent["borrower_url"], borrower.url().as_str(), "{lent}");
    assert_eq!(agent_view(&agents, "mac-02")["place"], "home");
    let (status, after) = get(&s_url, &format!("/v1/leases/{id}"), &ci).await;
    assert_eq!((status, &after["state"]), (200, &Value::from("active")));
    // The borrower saw nothing of it: the agent online, its channel never cut.
    assert!(borrower.is_online("guest-mac"));
    assert!(!home.is_online("mac-01"));
    assert_eq!(closed(&borrower.log()), channels_closed_at_borrower);
    for agent in [&mac01, &mac02] {
        agent.wait_log("lender link up", 2, LONG).await;
    }

    // Returned with the dead lender first in the list: passed over.
    let returned = client(&["return", &id.to_string(), "--now"], &both, &ci_file).await;
    assert_eq!(returned["id"], id, "{returned}");
    until_online(&home, "mac-01", true, LONG).await;
    until_online(&borrower, "guest-mac", false, LONG).await;
    until_some("the lease ended", LONG, || async {
        let (_, lease) = get(&s_url, &format!("/v1/leases/{id}"), &ci).await;
        (lease["state"] == "ended").then_some(())
    })
    .await;
    until_some("mac-01 home as the new lender sees it", LONG, || async {
        let agents = linked(&s_url, &ci, &["mac-01"]).await?;
        (agent_view(&agents, "mac-01")["place"] == "home").then_some(())
    })
    .await;

    for ((token, _), agent) in agent_tokens.iter().zip([&mac01, &mac02]) {
        assert!(!agent.log().contains(token.as_str()), "a token was logged");
    }
    home.shutdown().await;
    borrower.shutdown().await;
}
