//! The `fake-engine` binary as a process: stdio only, exit codes, the child.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use remoting_protocol::chunk::put_command;
use remoting_protocol::preamble;
use remoting_protocol::Capability;

fn engine() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fake-engine"));
    command
        .env_remove(testkit::fake_engine::MODE_ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[test]
fn echo_over_real_pipes_exits_zero_at_eof() {
    let mut child = engine().spawn().unwrap();
    let mut chunks = bytes::BytesMut::new();
    put_command(&mut chunks, &[3; 100_000]);
    let mut stdin = child.stdin.take().unwrap();
    let input = [&preamble::encode(Capability::CURRENT)[..], &chunks[..]].concat();
    // Written from a thread: the engine echoes while we write.
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    writer.join().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let recorded = testkit::fixtures::engine_preamble();
    assert_eq!(&out[..recorded.len()], &recorded[..]);
    assert_eq!(&out[recorded.len()..], &chunks[..]);
}

#[test]
fn mismatch_in_replay_exits_non_zero_with_a_message() {
    let mut child = engine()
        .args(["replay", "session-accepted.jsonl"])
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&preamble::encode(Capability::CURRENT))
        .unwrap();
    stdin.write_all(b"\x00\x03bad").unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("record seq"), "{stderr}");
}

#[test]
fn bad_usage_exits_two() {
    let output = engine().arg("dance").stdin(Stdio::null()).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "nothing but chunks on stdout");
}

#[cfg(unix)]
#[test]
fn spawn_child_writes_both_pids() {
    let dir = std::env::temp_dir().join(format!("fake-engine-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("pids");
    let mut child = engine()
        .arg("--spawn-child")
        .arg("--pid-file")
        .arg(&pid_file)
        .arg("sink")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let pids = loop {
        if let Ok(text) = std::fs::read_to_string(&pid_file) {
            break text;
        }
        assert!(Instant::now() < deadline, "no pid file");
        std::thread::sleep(Duration::from_millis(10));
    };
    let pids: Vec<u32> = pids.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2);
    let _kill = KillOnDrop(pids[1]);
    assert_eq!(pids[0], child.id());
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    // The grandchild outlives a normal exit (only a group kill ends it).
    let alive = Command::new("kill")
        .arg("-0")
        .arg(pids[1].to_string())
        .status()
        .unwrap();
    assert!(alive.success(), "the sleep child is still running");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Ends the `sleep` grandchild (which this test started) however the test ends.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.to_string()).status();
    }
}
