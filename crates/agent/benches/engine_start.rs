//! Engine start-up with and without the class-data sharing archive: the
//! agent's own "engine ready" times (spawn to the engine's preamble), over
//! reconnects forced by the test controller.
//!
//! `cargo bench -p jnlp-agent --bench engine_start` (needs a JDK). The
//! engine is the tests' Java echo engine unless `BENCH_ENGINE_JAR` names
//! another jar (e.g. a remoting.jar: it only has to write its preamble on
//! stdout; the test controller holds the channel without a word).
//! `BENCH_RUNS` (default 10) starts per mode.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::AgentProcess;
use testkit::{Peer, TestController};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const NODE: &str = "start";
const LONG: Duration = Duration::from_secs(120);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

/// `(ms, class_sharing)` of every "engine ready" line so far.
fn engine_starts(agent: &AgentProcess) -> Vec<(u64, String)> {
    agent
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["fields"]["message"] == "engine ready")
        .filter_map(|v| {
            Some((
                v["fields"]["ms"].as_u64()?,
                v["fields"]["class_sharing"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

async fn measure(jar: &[u8], runs: usize, sharing: bool) -> Vec<u64> {
    let controller = TestController::builder()
        .node(NODE, SECRET)
        .remoting_jar(jar.to_vec())
        .peer(Peer::Hold)
        .start()
        .await;
    let url = controller.url();
    let mut args = vec!["-url", url.as_str(), "-name", NODE, "-secret", SECRET];
    args.extend_from_slice(if sharing {
        &["--class-sharing-after", "3s"]
    } else {
        &["--no-class-sharing"]
    });
    let agent = AgentProcess::start(&args, &[]);
    common::until_online(&controller, NODE, true, LONG).await;
    if sharing {
        let cds = agent.work_dir.join("remoting/engines/cds");
        common::eventually("the archive is made", LONG, || {
            std::fs::read_dir(&cds).is_ok_and(|dir| {
                dir.filter_map(Result::ok)
                    .any(|e| e.path().extension().is_some_and(|x| x == "jsa"))
            })
        })
        .await;
    }
    let first = engine_starts(&agent).len();
    for _ in 0..runs {
        let accepts = common::accepted(&controller.log());
        assert!(controller.disconnect(NODE));
        controller
            .wait_for(|log| common::accepted(log) == accepts + 1, LONG)
            .await;
        common::until_online(&controller, NODE, true, LONG).await;
    }
    let starts = engine_starts(&agent);
    let expected = if sharing { "archive" } else { "off" };
    let times: Vec<u64> = starts[first..]
        .iter()
        .map(|(ms, how)| {
            assert_eq!(how, expected, "{}", agent.log());
            *ms
        })
        .collect();
    controller.shutdown().await;
    times
}

fn summary(mut times: Vec<u64>) -> String {
    times.sort_unstable();
    if times.is_empty() {
        return "no starts".into();
    }
    format!(
        "median {} ms, min {} ms, max {} ms over {}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len()
    )
}

async fn run() {
    let runs = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10usize);
    let (jar, what) = match std::env::var_os("BENCH_ENGINE_JAR") {
        Some(path) => (
            std::fs::read(&path).expect("BENCH_ENGINE_JAR"),
            path.to_string_lossy().into_owned(),
        ),
        None => (
            common::java_echo_engine_jar(),
            "the tests' Java echo engine".to_owned(),
        ),
    };
    println!("engine start-up, spawn to preamble, {what}:");
    let plain = measure(&jar, runs, false).await;
    let shared = measure(&jar, runs, true).await;
    println!("  without an archive: {}", summary(plain));
    println!("  with the archive:   {}", summary(shared));
}
