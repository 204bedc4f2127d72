//! The control socket of the built agent, driven by the built `jnlp-agent
//! ctl`: who may connect (another uid is kept out by the file mode and, when
//! the mode is too wide, by the peer check), the socket's life cycle, and
//! ctl's exit codes. The agent points at a controller that is not there, so
//! it stays home, backing off, for the whole test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{eventually, AgentProcess};
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(30);
/// `nobody` on Debian and most distributions.
const NOBODY: u32 = 65534;

/// A fresh directory under /tmp that other users can traverse (mode 0755),
/// so that a client running as `nobody` can reach the socket inside.
///
/// /tmp, not `std::env::temp_dir()`: `TMPDIR` may name a private directory
/// (pam_tmpdir's /tmp/user/0 is mode 0700), and a socket path must stay
/// short. The mode is set explicitly, whatever the umask.
fn socket_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/tmp/ctl-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new().mode(0o755).create(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Panics, naming the culprit, unless every directory from / down to `path`
/// (and `path` itself) can be searched, or for a file executed, by others.
/// What a test run as another uid checks would otherwise fail with a bare
/// EACCES that says nothing about the checkout's or /tmp's modes.
fn assert_others_can_reach(path: &Path) {
    for p in path.ancestors() {
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        assert!(
            mode & 0o001 != 0,
            "{} is mode {:o}: uid {NOBODY} cannot reach {}",
            p.display(),
            mode & 0o7777,
            path.display()
        );
    }
}

/// A copy of the built `jnlp-agent` that `nobody` can execute, for running
/// ctl as another uid. The binary under target/ may lie below a directory
/// only root can enter (a checkout in /root or in a `mktemp -d`), and what
/// these tests check must not depend on where the checkout lives. The copy
/// goes away with this value.
struct BinaryForOthers {
    dir: PathBuf,
    exe: PathBuf,
}

impl BinaryForOthers {
    fn new(name: &str) -> Self {
        let dir = socket_dir(&format!("bin-{name}"));
        let exe = dir.join("jnlp-agent");
        std::fs::copy(env!("CARGO_BIN_EXE_jnlp-agent"), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_others_can_reach(&exe);
        Self { dir, exe }
    }

    /// Runs `jnlp-agent ctl ARGS` as `uid`, from a directory it can enter.
    fn ctl(&self, args: &[&str], uid: u32) -> Output {
        let mut tries = 0;
        loop {
            match ctl_command(&self.exe, args, Some(uid), &[])
                .current_dir(&self.dir)
                .output()
            {
                // Another test's child forked while the copy was still open
                // for writing and has not exec'd yet: its inherited fd makes
                // our exec fail with ETXTBSY for a moment.
                Err(e)
                    if e.raw_os_error() == Some(nix::errno::Errno::ETXTBSY as i32)
                        && tries < 100 =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                result => {
                    return result.unwrap_or_else(|e| {
                        panic!("{} ctl runs as uid {uid}: {e}", self.exe.display())
                    })
                }
            }
        }
    }
}

impl Drop for BinaryForOthers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An agent that keeps trying an unreachable controller, with its control
/// socket at `socket`.
async fn agent_at(socket: &Path) -> AgentProcess {
    let agent = AgentProcess::start(
        &[
            "-url",
            "http://127.0.0.1:1/",
            "-name",
            "mac-01",
            "-secret",
            "not-used",
            "--control-socket",
            socket.to_str().unwrap(),
        ],
        &[],
    );
    eventually("the control socket appears", LONG, || socket.exists()).await;
    agent
}

/// Runs the built `jnlp-agent ctl ARGS` as ourselves.
fn ctl(args: &[&str], envs: &[(&str, &str)]) -> Output {
    ctl_command(
        Path::new(env!("CARGO_BIN_EXE_jnlp-agent")),
        args,
        None,
        envs,
    )
    .output()
    .expect("jnlp-agent ctl runs")
}

/// `EXE ctl ARGS` (as `uid` when given) with the socket variable unset.
fn ctl_command(exe: &Path, args: &[&str], uid: Option<u32>, envs: &[(&str, &str)]) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new(exe);
    command
        .arg("ctl")
        .args(args)
        .env_remove(control::SOCKET_ENV)
        .envs(envs.iter().copied())
        .stdin(Stdio::null());
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    command
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn ctl_talks_to_a_running_agent_and_the_socket_goes_with_it() {
    let dir = socket_dir("life");
    let socket = dir.join("control.sock");
    let s = socket.to_str().unwrap();
    let mut agent = agent_at(&socket).await;

    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let out = ctl(&["--socket", s, "status"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("placement   home, "), "{}", text(&out));

    // The socket from the environment, as jobs on the agent get it.
    let out = ctl(&["status", "--json"], &[(control::SOCKET_ENV, s)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("{\"placement\":\"home\",") && stdout.ends_with("}\n"),
        "{}",
        text(&out)
    );

    // A bad order is refused by the agent, not by ctl: exit 1 with the reason.
    let out = ctl(
        &[
            "--socket",
            s,
            "borrow",
            "--url",
            "https://b.example/",
            "--name",
            "mac-01",
            "--secret-file",
            "/nonexistent/secret",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/secret"),
        "{}",
        text(&out)
    );

    // events: the first line is the current status.
    let mut events = std::process::Command::new(env!("CARGO_BIN_EXE_jnlp-agent"))
        .args(["ctl", "--socket", s, "events"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = events.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        use std::io::BufRead as _;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        line
    });
    let first = tokio::time::timeout(LONG, first).await.unwrap().unwrap();
    assert!(
        first.starts_with("{\"at_ms\":") && first.contains("\"kind\":\"subscribed\""),
        "{first}"
    );

    // A second agent on the same socket refuses to start.
    let mut second = AgentProcess::start(
        &[
            "-url",
            "http://127.0.0.1:1/",
            "-name",
            "mac-02",
            "-secret",
            "x",
            "--control-socket",
            s,
        ],
        &[],
    );
    let status = second.wait_exit(LONG).await;
    assert!(!status.success());
    assert!(
        second
            .log()
            .contains("another agent is already listening on"),
        "{}",
        second.log()
    );

    // Stopping the agent ends the event stream and removes the socket.
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(LONG).await;
    assert!(status.success(), "{status:?}; log:\n{}", agent.log());
    assert!(!socket.exists(), "the socket outlived the agent");
    let events_status = tokio::task::spawn_blocking(move || events.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(events_status.code(), Some(0));

    let out = ctl(&["--socket", s, "status"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The agent's reserve of connections for peers that are not builds
/// (`OWNER_CONNECTIONS` in the control server), which this test is.
const OWNER_CONNECTIONS: usize = 16;

#[tokio::test]
async fn ctl_status_gets_through_100_idle_connections_which_are_then_closed() {
    const FLOOD: usize = 100;
    let dir = socket_dir("flood");
    let socket = dir.join("control.sock");
    let s = socket.to_str().unwrap();
    let mut agent = agent_at(&socket).await;

    // Each idle connection records the first line the agent sends it.
    let first_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    for _ in 0..FLOOD {
        let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let first_lines = std::sync::Arc::clone(&first_lines);
        readers.push(tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt as _;
            let mut lines = tokio::io::BufReader::new(stream).lines();
            let line = lines.next_line().await.ok().flatten();
            let eof = matches!(lines.next_line().await, Ok(None));
            first_lines.lock().unwrap().push((line, eof));
        }));
    }
    // ctl's connection queues behind all of them, and still gets in (the
    // bound is generous for a loaded machine: it was over 60 s).
    let asked = std::time::Instant::now();
    let out = ctl(&["--socket", s, "status"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );

    // Every idle connection is closed with a reason: the oldest to make
    // room as newer ones came, the last few when the idle timeout (10 s)
    // passed.
    let count = |what: &str| {
        first_lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(line, eof)| *eof && line.as_deref().is_some_and(|l| l.contains(what)))
            .count()
    };
    let evicted = "idle the longest";
    let timed_out = "no request within 10s; closing the connection";
    eventually("every idle connection is closed", LONG, || {
        count(evicted) + count(timed_out) == FLOOD
    })
    .await;
    // Unless accepting 100 connections took 10 s, only those held in the
    // owner's reserve at the end timed out.
    assert!(
        count(evicted) >= FLOOD - OWNER_CONNECTIONS,
        "{:?}",
        first_lines.lock().unwrap()
    );
    for reader in readers {
        reader.await.unwrap();
    }
    assert_eq!(first_lines.lock().unwrap().len(), FLOOD);

    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(LONG).await;
    assert!(status.success(), "{status:?}; log:\n{}", agent.log());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes `content` to `path` with `mode`, whatever the umask.
fn write_with_mode(path: &Path, content: &str, mode: u32) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn secret_files_other_users_can_read_are_warned_about() {
    let dir = socket_dir("exposed");
    let socket = dir.join("control.sock");
    let s = socket.to_str().unwrap();
    let agent_secret = dir.join("agent-secret");
    write_with_mode(&agent_secret, "agent-s3cret-value\n", 0o644);
    let at = format!("@{}", agent_secret.display());
    let mut agent = AgentProcess::start(
        &[
            "-url",
            "http://127.0.0.1:1/",
            "-name",
            "mac-01",
            "-secret",
            &at,
            "--control-socket",
            s,
        ],
        &[],
    );
    eventually("the control socket appears", LONG, || socket.exists()).await;
    let warning = |path: &Path, mode: &str| {
        format!(
            "{0} holds a secret but other users can read it (mode {mode}); run `chmod 600 {0}`",
            path.display()
        )
    };
    agent
        .wait_log(&warning(&agent_secret, "0644"), 1, LONG)
        .await;

    // A borrow's secret file: ctl warns whoever runs it, the agent logs it.
    let borrow_secret = dir.join("borrow-secret");
    write_with_mode(&borrow_secret, "borrow-s3cret-value", 0o604);
    let out = ctl(
        &[
            "--socket",
            s,
            "borrow",
            "--url",
            "http://127.0.0.1:1/",
            "--name",
            "mac-01",
            "--secret-file",
            borrow_secret.to_str().unwrap(),
        ],
        &[],
    );
    let expected = warning(&borrow_secret, "0604");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("warning: {expected}")),
        "{}",
        text(&out)
    );
    agent.wait_log(&expected, 1, LONG).await;

    // A private file is not worth a word.
    write_with_mode(&borrow_secret, "borrow-s3cret-value", 0o600);
    let out = ctl(
        &[
            "--socket",
            s,
            "borrow",
            "--url",
            "http://127.0.0.1:1/",
            "--name",
            "mac-01",
            "--secret-file",
            borrow_secret.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{}",
        text(&out)
    );

    agent.signal(Signal::SIGTERM);
    agent.wait_exit(LONG).await;
    let log = agent.log();
    assert!(
        !log.contains("s3cret-value"),
        "a secret reached the log:\n{log}"
    );
    assert_eq!(
        agent.count("holds a secret but other users can read it"),
        2,
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctl_usage_errors_exit_2() {
    for args in [
        &["status"][..], // no socket anywhere
        &["--socket", "/x", "fly"],
        &[
            "--socket",
            "/x",
            "borrow",
            "--url",
            "https://b/",
            "--name",
            "n",
        ],
    ] {
        let out = ctl(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    let out = ctl(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Exit status:"));
    let out = ctl(&["--socket", "/nonexistent/control.sock", "status"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}

#[tokio::test]
async fn another_user_is_kept_out() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run ctl as another user");
        return;
    }
    let bin = BinaryForOthers::new("peer");
    let dir = socket_dir("peer");
    assert_others_can_reach(&dir);
    let socket = dir.join("control.sock");
    let s = socket.to_str().unwrap();
    let mut agent = agent_at(&socket).await;

    // Mode 0600: nobody cannot even connect.
    let out = bin.ctl(&["--socket", s, "status"], NOBODY);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ermission denied"),
        "{}",
        text(&out)
    );

    // Were the mode too wide, the peer check still says no.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = bin.ctl(&["--socket", s, "status"], NOBODY);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("permission denied: uid 65534 is not allowed to control this agent"),
        "{}",
        text(&out)
    );
    agent.wait_log("peer not allowed", 1, LONG).await;

    // root may.
    let out = ctl(&["--socket", s, "status"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    agent.signal(Signal::SIGTERM);
    agent.wait_exit(LONG).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_control_group_lets_its_members_in() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run ctl as another user");
        return;
    }
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(NOBODY))
        .unwrap()
        .expect("nobody's group");
    let bin = BinaryForOthers::new("group");
    let dir = socket_dir("group");
    assert_others_can_reach(&dir);
    let socket = dir.join("control.sock");
    let s = socket.to_str().unwrap();
    let mut agent = AgentProcess::start(
        &[
            "-url",
            "http://127.0.0.1:1/",
            "-name",
            "mac-01",
            "-secret",
            "x",
            "--control-socket",
            s,
            "--control-group",
            &group.name,
        ],
        &[],
    );
    eventually("the control socket appears", LONG, || socket.exists()).await;
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), NOBODY);

    let out = bin.ctl(&["--socket", s, "status", "--json"], NOBODY);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    agent.signal(Signal::SIGTERM);
    agent.wait_exit(LONG).await;
    let _ = std::fs::remove_dir_all(&dir);
}
