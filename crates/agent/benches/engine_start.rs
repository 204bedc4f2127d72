//! Engine start-up with and without the class-data sharing archive: the
//! agent's own "engine ready" times (spawn to the engine's preamble), over
//! reconnects forced by the test controller.
//!
//! `cargo bench -p jnlp-agent --bench engine_start` (needs a JDK). The
//! engine is the tests' Java echo engine unless `BENCH_ENGINE_JAR` names
//! another jar (e.g. a remoting.jar: it only has to write its preamble on
//! stdout; the test controller holds the channel without a word).
//! `BENCH_RUNS` (default 10) starts per mode.
//!
//! With `BENCH_ENGINE_JAR` (a real remoting.jar), it also times the first
//! remote calls: `tests/java/RemotingCalls.java`, compiled against that
//! jar, starts engines of the agent's cached copy on stdio and opens a
//! channel to each with remoting's own `ChannelBuilder`, as a controller
//! does for a stdio agent, then calls into it (classes loaded from the
//! caller's side), without and with the archive the agent made.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod java_controller;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::AgentProcess;
use testkit::{Peer, TestController};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const NODE: &str = "start";
const LONG: Duration = Duration::from_secs(120);

fn main() {
    test_support::bench::block_on(run());
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

/// What one mode measured, and (with sharing) the agent's cached jar and
/// the archive made for it.
struct Measured {
    times: Vec<u64>,
    archived: Option<(PathBuf, PathBuf)>,
}

async fn measure(jar: &[u8], runs: usize, sharing: bool) -> Measured {
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
    let engines = agent.work_dir.join("remoting/engines");
    let archive = || {
        std::fs::read_dir(engines.join("cds")).ok().and_then(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "jsa"))
        })
    };
    if sharing {
        common::eventually("the archive is made", LONG, || archive().is_some()).await;
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
    let archived = archive().map(|jsa| (common::cached_jars(&engines).remove(0), jsa));
    Measured { times, archived }
}

/// `channel`, `first` and `ten` (ms from the engine's start) of every
/// engine but each process's first, over `processes` runs of
/// `RemotingCalls` with `opts`.
fn remote_calls(classes: &Path, remoting: &Path, jar: &Path, opts: &[String]) -> Vec<[u64; 3]> {
    let classpath = format!("{}:{}", remoting.display(), classes.display());
    let out = std::process::Command::new("java")
        .args(["-cp", &classpath, "RemotingCalls", "java"])
        .arg(jar)
        .arg("6")
        .args(opts)
        .stderr(std::process::Stdio::null())
        .output()
        .expect("java runs RemotingCalls");
    assert!(out.status.success(), "RemotingCalls failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line
                .split_whitespace()
                .filter_map(|f| f.split_once('=')?.1.parse().ok());
            Some([fields.next()?, fields.next()?, fields.next()?])
        })
        .collect()
}

fn calls_summary(rows: &[[u64; 3]]) -> String {
    let median = |i: usize| {
        let mut v: Vec<u64> = rows.iter().map(|r| r[i]).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    format!(
        "channel up {} ms, first call done {} ms, ten calls {} ms (medians over {})",
        median(0),
        median(1),
        median(2),
        rows.len()
    )
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
    println!("  without an archive: {}", summary(plain.times));
    println!("  with the archive:   {}", summary(shared.times));
    let (Some(remoting), Some((cached, archive))) =
        (std::env::var_os("BENCH_ENGINE_JAR"), shared.archived)
    else {
        return;
    };
    let classes = java_controller::compile(Path::new(&remoting), "tests/java/RemotingCalls.java");
    // The agent's own defaults: the archive was made for the serial collector.
    let plain_opts = vec!["-XX:+UseSerialGC".to_owned()];
    let mut shared_opts = plain_opts.clone();
    shared_opts.extend([
        format!("-XX:SharedArchiveFile={}", archive.display()),
        "-Xshare:auto".into(),
        "-Xlog:disable".into(),
        "-Xlog:all=warning:stderr".into(),
    ]);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        without.extend(remote_calls(
            &classes,
            Path::new(&remoting),
            &cached,
            &plain_opts,
        ));
        with.extend(remote_calls(
            &classes,
            Path::new(&remoting),
            &cached,
            &shared_opts,
        ));
    }
    println!("first remote calls (remoting's ChannelBuilder on stdio, from the engine's start):");
    println!("  without an archive: {}", calls_summary(&without));
    println!("  with the archive:   {}", calls_summary(&with));
}
