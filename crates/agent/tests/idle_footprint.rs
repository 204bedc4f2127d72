//! What the agent costs while it waits: its own memory once online and
//! idle (the engine JVM aside: its options are `engine::DEFAULT_JAVA_OPTS`).
// Read from Linux's /proc: smaps_rollup, io, net/tcp.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{fake_engine, until_online, AgentProcess};
use testkit::TestController;

const SECRET: &str = "1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e";
const LONG: Duration = Duration::from_secs(30);

/// The controller with node `idle` and the agent online there, its engine
/// the fake one.
async fn online_agent() -> (TestController, AgentProcess) {
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
    (controller, agent)
}

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
    let (controller, agent) = online_agent().await;
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

/// Read calls the process `pid` made so far (`/proc/PID/io`).
fn read_calls(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("syscr:")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no syscr in /proc/{pid}/io: {text}"))
}

/// An idle agent, online at home with nothing running, does not read
/// `/proc` (it once read every process's `stat` once a second, looking
/// for orphans to reap): once what coming online asked for is done (a
/// count of build processes is wanted for a few seconds after each status
/// change), its read calls stop.
#[tokio::test]
async fn an_idle_agent_reads_no_other_process() {
    let (controller, agent) = online_agent().await;
    let quiet_for = Duration::from_millis(1500);
    let deadline = Instant::now() + LONG;
    let (mut reads, mut changed) = (read_calls(agent.pid()), Instant::now());
    while changed.elapsed() < quiet_for {
        assert!(
            Instant::now() < deadline,
            "the idle agent never stopped reading: {reads} read calls so far"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = read_calls(agent.pid());
        if now != reads {
            (reads, changed) = (now, Instant::now());
        }
    }
    controller.shutdown().await;
}

/// The socket inodes of `pid`'s open file descriptors.
fn socket_inodes(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Whether `pid` holds a TCP connection (IPv4 or IPv6) to local port `port`.
fn connected_to(pid: u32, port: u16) -> bool {
    let inodes = socket_inodes(pid);
    let remote_port = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 9
                    && fields[2].ends_with(&remote_port)
                    && fields[9]
                        .parse()
                        .is_ok_and(|inode: u64| inodes.contains(&inode))
            })
    })
}

/// Once online, the agent lets its connection to the controller's web
/// port go within seconds (reqwest kept an idle one 90 s, and with it a
/// read buffer the size of the jar's last reads).
#[tokio::test]
async fn an_idle_agent_lets_its_web_connection_go() {
    let (controller, agent) = online_agent().await;
    let port = controller.http_addr().port();
    let deadline = Instant::now() + LONG;
    while connected_to(agent.pid(), port) {
        assert!(
            Instant::now() < deadline,
            "the idle agent still holds a connection to the controller's web port after {LONG:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    controller.shutdown().await;
}
