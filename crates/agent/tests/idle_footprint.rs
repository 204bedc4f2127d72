//! What the agent costs while it waits: its own memory once online and
//! idle (the engine JVM aside: its options are `engine::DEFAULT_JAVA_OPTS`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{fake_engine, until_online, AgentProcess};
use testkit::TestController;

const SECRET: &str = "1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e";
const LONG: Duration = Duration::from_secs(30);

/// A field of `/proc/PID/smaps_rollup`, in KiB.
fn rollup_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {field} in smaps_rollup: {text}"))
}

/// The agent's own anonymous memory (heap, stacks, queues: what is not
/// its mapped binary and libraries) stays small once it is online and
/// writing its log file. The log file's queue alone once took 4 MiB.
#[tokio::test]
async fn an_idle_agent_keeps_little_memory_of_its_own() {
    let controller = TestController::builder()
        .node("idle", SECRET)
        .remoting_jar(b"jar".to_vec())
        .start()
        .await;
    let url = controller.url();
    let engine = format!("{} echo", fake_engine().display());
    let agent = AgentProcess::start(
        &[
            "-url",
            &url,
            "-name",
            "idle",
            "-secret",
            SECRET,
            "--engine-command",
            &engine,
        ],
        &[],
    );
    until_online(&controller, "idle", true, LONG).await;
    assert!(
        agent.work_dir.join("remoting/logs").is_dir(),
        "the agent writes a log file in its work directory"
    );
    let anon = rollup_kib(agent.pid(), "Anonymous");
    println!("idle agent: {anon} KiB anonymous");
    assert!(
        anon < 4 * 1024,
        "the idle agent holds {anon} KiB of anonymous memory"
    );
    controller.shutdown().await;
}
