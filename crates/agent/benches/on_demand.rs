//! Lending on demand: from a build queued for a label at a registered
//! controller to that build started on a pooled agent that was idle at
//! home, as the controller records it (`inQueueSince` to the build's
//! start). Each run: queue, wait for the start, let the build end, wait for
//! the agent to be home and the node deleted and idle there past its quiet
//! period, again. Prints p50 / p95 / max
//! and judges the goal: within one `--poll` interval plus 1.5 s. Then
//! the lender's own figure for the same span
//! (`jnlp_lender_demand_build_started_seconds`, from its polls of the
//! borrower's executors: each build lasts a poll so that one sees it),
//! which must agree.
//!
//! Run: `cargo bench -p jnlp-agent --bench on_demand`
//! (`BENCH_RUNS`, default 20; `BENCH_POLL_MS`, default 2000).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{fake_engine, lender_token, temp_dir, until_online, AgentProcess};
use lender::controllers::{ControllerConfig, ControllerOptions};
use lender::pool::Secret;
use lender::server::{self, Config};
use lender::store::{SqliteStore, Store as _};
use lender::tokens::TokenKind;
use testkit::controller::{BuildState, JobSpec, NodeConfig, Permission};
use testkit::{ControllerEvent, TestController};

const HOME_SECRET: &str = "5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e";
const USER: &str = "lender";
const API_TOKEN: &str = "1234abcd5678ef90";
const LONG: Duration = Duration::from_secs(60);
/// How long the agent stays at home before the next build is queued.
const IDLE: Duration = Duration::from_secs(6);

use test_support::bench::env_number;

async fn until(what: &str, done: impl FnMut() -> bool) {
    common::eventually(what, LONG, done).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = env_number("BENCH_RUNS", 20) as usize;
    let poll = Duration::from_millis(env_number("BENCH_POLL_MS", 2000));
    let home = TestController::builder()
        .node("mac-01", HOME_SECRET)
        .remoting_jar(testkit::fake_remoting_jar("3301.v4363ddcca_4e7"))
        .start()
        .await;
    let ci = TestController::builder()
        .jenkins_version("2.541.1")
        .user(USER, API_TOKEN, Permission::LENDER)
        .agent(NodeConfig::new("ci-linux").labels("linux"))
        .remoting_jar(testkit::fake_remoting_jar("3355.v388858a_47b_33"))
        .start()
        .await;
    let dir = temp_dir("bench-on-demand");
    let db = dir.join("pool.db");
    let token_file = dir.join("mac-01.token");
    let client_token = lender_token(&db, TokenKind::Client, "bench");
    {
        let token = lender_token(&db, TokenKind::Agent, "mac-01");
        let mut store = SqliteStore::open(&db).unwrap();
        std::fs::write(&token_file, token).unwrap();
        store
            .add_controller(&ControllerConfig {
                name: "ci".into(),
                url: ci.url(),
                user: USER.into(),
                api_token: Secret::new(API_TOKEN),
                options: ControllerOptions {
                    demand_after: Duration::ZERO,
                    idle_return: Duration::from_secs(1),
                    ..ControllerOptions::default()
                },
                added_ms: 0,
            })
            .unwrap();
    }
    let mut config = Config::new("127.0.0.1:0", &db);
    config.poll = poll;
    let running = server::start(config).await.unwrap();
    let lender = format!("http://{}", running.local_addr());
    let engine = format!("{} echo", fake_engine().display());
    let url = home.url();
    let token = token_file.display().to_string();
    let _agent = AgentProcess::start(
        &[
            "-url",
            &url,
            "-name",
            "mac-01",
            "--engine-command",
            &engine,
            "--lender",
            &lender,
            "--lender-token-file",
            &token,
            "--labels",
            "macos",
        ],
        &[("JENKINS_SECRET", HOME_SECRET), ("RUST_LOG", "warn")],
    );
    until_online(&home, "mac-01", true, LONG).await;
    tokio::time::sleep(IDLE).await;

    let jenkins = ci.jenkins();
    let mut waits = Vec::new();
    for run in 0..runs {
        let deleted_before = ci
            .log()
            .iter()
            .filter(|e| matches!(e, ControllerEvent::NodeDeleted { .. }))
            .count();
        let item = jenkins.queue(
            JobSpec::pipeline(&format!("app-{run}"))
                .label("macos")
                // Longer than a poll: the lender sees every build start.
                .duration(poll + Duration::from_millis(300)),
        );
        let build = jenkins.wait_started(item, LONG).await;
        let wait = build.started_ms.saturating_sub(build.in_queue_since_ms);
        println!(
            "run {run:>2}: queued -> started on {} in {wait} ms",
            build.node
        );
        waits.push(wait);
        until("the build ends", || {
            jenkins
                .build(item)
                .is_some_and(|b| b.state != BuildState::Running)
        })
        .await;
        until("the node is deleted", || {
            ci.log()
                .iter()
                .filter(|e| matches!(e, ControllerEvent::NodeDeleted { .. }))
                .count()
                > deleted_before
        })
        .await;
        until_online(&home, "mac-01", true, LONG).await;
        // Idle at home: past the agent's quiet period (5 s by default),
        // which it waits out before it leaves a controller the lender has
        // no credentials for.
        tokio::time::sleep(IDLE).await;
    }
    waits.sort_unstable();
    let at = |q: f64| waits[((waits.len() as f64 * q).ceil() as usize).clamp(1, waits.len()) - 1];
    let goal = poll.as_millis() as u64 + 1500;
    println!(
        "queued -> started, {} runs, --poll {} ms: p50 {} ms, p95 {} ms, max {} ms; goal p95 <= {goal} ms: {}",
        waits.len(),
        poll.as_millis(),
        at(0.5),
        at(0.95),
        waits.last().copied().unwrap_or(0),
        if at(0.95) <= goal { "met" } else { "NOT met" }
    );
    let metrics = reqwest::Client::new()
        .get(format!("{lender}/metrics"))
        .bearer_auth(&client_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metric = |name: &str| {
        metrics.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix("{controller=\"ci\"} ")?
                .parse::<f64>()
                .ok()
        })
    };
    let name = "jnlp_lender_demand_build_started_seconds";
    let (sum, count) = (
        metric(&format!("{name}_sum")).unwrap_or(0.0),
        metric(&format!("{name}_count")).unwrap_or(0.0),
    );
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    println!(
        "the lender's {name}: {count} builds, mean {:.0} ms (the controller's: {} builds, mean {:.0} ms)",
        sum * 1000.0 / count.max(1.0),
        waits.len(),
        mean(&waits)
    );
    running.shutdown().await;
    home.shutdown().await;
    ci.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
