//! Running the built `jnlp-agent` against test controllers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::controller::ChannelEnd;
use testkit::{ControllerEvent, TestController};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub mod lending;
pub mod sessions;

// Shared with the lender's tests and the benchmarks (not every test
// binary uses every one).
#[allow(unused_imports)]
pub use test_support::procfs::{alive, proc_cpu_seconds, proc_descendants, proc_status_kib};
#[allow(unused_imports)]
pub use test_support::{eventually, lender_token, temp_dir};

/// The fake engine binary, built on demand when a lone `cargo test -p
/// jnlp-agent` did not build it.
pub fn fake_engine() -> PathBuf {
    if let Some(path) = testkit::fake_engine::binary_path() {
        return path;
    }
    // Built in the profile of whatever runs this (tests or the benchmark),
    // so that it lands where `binary_path` looks.
    let release = std::env::current_exe()
        .is_ok_and(|exe| exe.components().any(|c| c.as_os_str() == "release"));
    let mut build = std::process::Command::new(env!("CARGO"));
    build.args(["build", "-q", "-p", "testkit", "--bin", "fake-engine"]);
    if release {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building fake-engine failed");
    testkit::fake_engine::binary_path().expect("fake-engine built")
}

/// The agent binary the tests run: `JNLP_AGENT_BIN` (another build of it,
/// e.g. the static musl one), else the one cargo built for these tests.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("JNLP_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_jnlp-agent")))
}

/// The engine jars cached in an agent's `remoting/engines` directory.
#[allow(dead_code)]
pub fn cached_jars(engines: &Path) -> Vec<PathBuf> {
    let mut jars: Vec<PathBuf> = std::fs::read_dir(engines)
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jar"))
                .collect()
        })
        .unwrap_or_default();
    jars.sort();
    jars
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
        Self::start_bin(&agent_bin(), work_dir, args, envs)
    }

    /// Like [`AgentProcess::start_in`] with another build of the agent (a
    /// benchmark's A/B against an earlier one).
    pub fn start_bin(bin: &Path, work_dir: PathBuf, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(bin);
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

/// A TCP relay whose agent-facing sockets can be dropped while the
/// controller-facing ones stay open.
pub struct CuttableProxy {
    pub port: u16,
    cut: Arc<tokio::sync::Notify>,
}

impl CuttableProxy {
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(tokio::sync::Notify::new());
        let notify = cut.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((agent, _)) = listener.accept().await {
                let controller = tokio::net::TcpStream::connect(target).await.unwrap();
                let (mut ar, mut aw) = agent.into_split();
                let (mut cr, cw) = controller.into_split();
                let cw = Arc::new(tokio::sync::Mutex::new(cw));
                let notify = notify.clone();
                let cw2 = cw.clone();
                let relay = tokio::spawn(async move {
                    let up = async {
                        let mut buf = vec![0; 65536];
                        loop {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let n = ar.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            if cw2.lock().await.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut cr, &mut aw);
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        () = notify.notified() => {}
                    }
                    // Only the agent side goes; the controller side stays open.
                    cr
                });
                held.push((relay, cw));
            }
        });
        Self { port, cut }
    }

    pub fn cut_agent_side(&self) {
        self.cut.notify_waiters();
    }
}

/// Connections the controller accepted.
pub fn accepted(log: &[ControllerEvent]) -> usize {
    log.iter()
        .filter(|e| matches!(e, ControllerEvent::Accepted { .. }))
        .count()
}

/// Connections the controller refused.
pub fn refused(log: &[ControllerEvent]) -> usize {
    log.iter()
        .filter(|e| matches!(e, ControllerEvent::Refused { .. }))
        .count()
}

/// Channels that ended, however.
pub fn closed(log: &[ControllerEvent]) -> usize {
    log.iter()
        .filter(|e| matches!(e, ControllerEvent::ChannelClosed { .. }))
        .count()
}

/// Channels the agent ended with a `Channel$CloseCommand`.
pub fn closed_by_command(log: &[ControllerEvent]) -> usize {
    log.iter()
        .filter(|e| {
            matches!(
                e,
                ControllerEvent::ChannelClosed {
                    how: ChannelEnd::CloseCommand,
                    ..
                }
            )
        })
        .count()
}

/// Polls the controller's own view until `node`'s online state is
/// `online`; returns how long that took, or panics with the log past
/// `within`.
pub async fn until_online(
    controller: &TestController,
    node: &str,
    online: bool,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    while controller.is_online(node) != online {
        assert!(
            start.elapsed() < within,
            "{node} not {} within {within:?}; controller log: {:#?}",
            if online { "online" } else { "offline" },
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// `tests/java/EchoEngine.java` compiled and packed as a jar (the JDK is a
/// test dependency: `.ci/run` installs it): a real JVM engine that speaks
/// the stdio preamble and echoes chunks.
pub fn java_echo_engine_jar() -> Vec<u8> {
    let build = temp_dir("java-engine");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/java/EchoEngine.java");
    std::fs::copy(&source, build.join("EchoEngine.java")).unwrap();
    for (tool, args) in [
        ("javac", vec!["EchoEngine.java"]),
        (
            "jar",
            vec!["cfe", "engine.jar", "EchoEngine", "EchoEngine.class"],
        ),
    ] {
        let status = std::process::Command::new(tool)
            .args(&args)
            .current_dir(&build)
            .status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "{tool} failed ({status:?}); the JDK is a test dependency (.ci/run installs it)"
        );
    }
    std::fs::read(build.join("engine.jar")).unwrap()
}

/// `tests/java/WindowedEngine.java` compiled and packed as a jar: the
/// windowed benchmark's engine (remoting's flow control over the chunk
/// framing; `testkit::windowed` is its controller side). As a stdio engine
/// the test controller serves it as `remoting.jar`; `java -jar it -direct
/// HOST PORT NODE SECRET` connects to the agent port itself. `None` (with
/// the reason on stderr) when the JDK is missing or compiling fails.
pub fn java_windowed_engine_jar() -> Option<Vec<u8>> {
    let build = temp_dir("java-windowed");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/java/WindowedEngine.java");
    std::fs::copy(&source, build.join("WindowedEngine.java")).ok()?;
    let run = |tool: &str, args: &[String]| {
        let status = std::process::Command::new(tool)
            .args(args)
            .current_dir(&build)
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            eprintln!(
                "{tool} failed ({status:?}); the JDK is a test dependency (.ci/run installs it)"
            );
            return false;
        }
        true
    };
    if !run("javac", &["WindowedEngine.java".into()]) {
        return None;
    }
    // The main class and its nested classes.
    let mut classes: Vec<String> = std::fs::read_dir(&build)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".class"))
        .collect();
    classes.sort();
    let mut args: Vec<String> = ["cfe", "windowed.jar", "WindowedEngine"]
        .map(String::from)
        .into();
    args.extend(classes);
    if !run("jar", &args) {
        return None;
    }
    std::fs::read(build.join("windowed.jar")).ok()
}
