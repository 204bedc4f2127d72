//! Running the built `jnlp-agent` against test controllers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The fake engine binary, built on demand when a lone `cargo test -p
/// jnlp-agent` did not build it.
pub fn fake_engine() -> PathBuf {
    if let Some(path) = testkit::fake_engine::binary_path() {
        return path;
    }
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "testkit", "--bin", "fake-engine"])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building fake-engine failed");
    testkit::fake_engine::binary_path().expect("fake-engine built")
}

/// A fresh directory under the target dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "jnlp-agent-test-{name}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

/// A running agent whose stderr (JSON log lines) is collected.
pub struct AgentProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<tokio::task::JoinHandle<()>>,
    pub work_dir: PathBuf,
}

impl AgentProcess {
    /// Starts the agent with `args` (plus JSON logs, a fresh work dir and a
    /// fast reconnect) and `envs`; the environment is otherwise emptied of
    /// Jenkins variables.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_in(temp_dir("work"), args, envs)
    }

    /// Like [`AgentProcess::start`] with a given work dir (to restart an
    /// agent where a previous one left its state).
    pub fn start_in(work_dir: PathBuf, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_jnlp-agent"));
        command
            .args(args)
            .args([
                "--log-format",
                "json",
                "--reconnect-delay",
                "50ms",
                "--reconnect-max-delay",
                "500ms",
            ])
            .arg("-workDir")
            .arg(&work_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, _) in std::env::vars() {
            if name.starts_with("JENKINS_") || name == "JAVA_OPTS" {
                command.env_remove(name);
            }
        }
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("jnlp-agent starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        let reader = tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if std::env::var_os("AGENT_TEST_ECHO").is_some() {
                    eprintln!("agent: {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            lines,
            reader: Some(reader),
            work_dir,
        }
    }

    /// The control socket in the agent's work dir.
    pub fn socket(&self) -> PathBuf {
        self.work_dir.join("remoting/control.sock")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Number of log lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `needle` has been logged `times` times.
    pub async fn wait_log(&self, needle: &str, times: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count(needle) < times {
            assert!(
                Instant::now() < deadline,
                "{needle:?} not logged {times} times within {timeout:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal).unwrap();
    }

    /// Waits for the agent to exit and for its last log line.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "agent still running after {timeout:?}; log:\n{}",
                self.log()
            ),
        };
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(timeout, reader).await;
        }
        status
    }
}

/// Whether a process is alive (zombies count as dead).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}

/// Polls `cond` until true or panics after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not true within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads the fake engine's pid file (engine pid, then its child's), waiting for it.
pub async fn read_pids(path: &Path, timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            let pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if !pids.is_empty() {
                return pids;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no pid file at {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
