//! The built binary's command-line contract: help and version on stdout with
//! exit 0, refusals as `error: ...` on stderr with exit 2. The parsing itself
//! is unit-tested in `src/cli/tests.rs` (a binary crate has no lib target to
//! import here).

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the agent with an empty environment (so a `JENKINS_URL` on the test
/// machine changes nothing). None of these command lines gets as far as
/// connecting, but a deadline keeps a regression from hanging the suite.
fn agent(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_jnlp-agent"))
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("jnlp-agent {args:?} still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The outputs are a few KiB at most: they fit in the pipes' buffers.
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Run {
        code: status.code(),
        stdout,
        stderr,
    }
}

#[test]
fn help_goes_to_stdout_and_exits_0() {
    for flag in ["-help", "--help", "-h"] {
        let run = agent(&[flag]);
        assert_eq!(run.code, Some(0), "{flag}: {}", run.stderr);
        assert!(run.stdout.contains("-url"), "{flag}: {}", run.stdout);
        assert!(run.stdout.contains("-secret"), "{flag}: {}", run.stdout);
        assert!(run.stdout.contains("JENKINS_URL"), "{flag}: {}", run.stdout);
        assert!(run.stderr.is_empty(), "{flag}: {}", run.stderr);
    }
}

#[test]
fn version_goes_to_stdout_and_exits_0() {
    for flag in ["-version", "--version"] {
        let run = agent(&[flag]);
        assert_eq!(run.code, Some(0), "{flag}: {}", run.stderr);
        assert!(
            run.stdout.contains(env!("CARGO_PKG_VERSION")),
            "{flag}: {}",
            run.stdout
        );
    }
}

#[test]
fn an_unknown_option_is_refused_with_a_hint() {
    let run = agent(&["-url", "http://c:8080", "-workdir", "/w"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.starts_with("error: unknown option '-workdir'"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("'-workDir'"), "{}", run.stderr);
}

#[test]
fn web_socket_refuses_what_agent_jar_refuses_with_it() {
    let run = agent(&[
        "-url",
        "http://c:8080",
        "-secret",
        SECRET,
        "-name",
        "n",
        "-webSocket",
        "-tunnel",
        "c:50000",
    ]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("-webSocket cannot be combined with -tunnel"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(SECRET), "{}", run.stderr);
}

#[test]
fn a_missing_controller_is_refused_without_showing_the_secret() {
    let run = agent(&["-secret", SECRET, "-name", "n"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("-url"), "{}", run.stderr);
    assert!(!run.stderr.contains(SECRET), "{}", run.stderr);
}

/// A fresh directory for one test (under the system temp dir; removed at
/// the end).
fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "jnlp-agent-cli-config-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_missing_logging_config_is_refused_at_start_by_name() {
    let dir = scratch("jul");
    let missing = dir.join("logging.properties");
    let run = agent(&[
        "-url",
        "http://c:8080",
        "-secret",
        SECRET,
        "-name",
        "n",
        "-loggingConfig",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.starts_with("error: -loggingConfig ")
            && run.stderr.contains(missing.to_str().unwrap())
            && run.stderr.contains("no such file"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(SECRET), "{}", run.stderr);
    let _ = std::fs::remove_dir_all(dir);
}

/// An agent log that cannot be opened stops the start with a message naming
/// it, before any connection is tried (the controller URL leads nowhere).
#[test]
fn an_agent_log_that_cannot_be_opened_is_named() {
    let dir = scratch("agentlog");
    let log = dir.join("no-such-dir").join("agent.log");
    let run = agent(&[
        "-url",
        "http://127.0.0.1:9/",
        "-secret",
        SECRET,
        "-name",
        "n",
        "-workDir",
        dir.join("work").to_str().unwrap(),
        "-agentLog",
        log.to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.starts_with("error: cannot open the agent log ")
            && run.stderr.contains(log.to_str().unwrap())
            && run.stderr.contains("-agentLog"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(SECRET), "{}", run.stderr);
    let _ = std::fs::remove_dir_all(dir);
}

/// With `-agentLog`, the error that ends the agent is in the file and,
/// once, on stderr; the log lines before it are in the file only.
#[test]
fn the_error_that_ends_the_agent_shows_on_stderr_too() {
    let dir = scratch("fatal");
    let log = dir.join("agent.log");
    // Port 9 (discard) on loopback: nothing listens, so the first attempt
    // fails and -noReconnect ends the agent.
    let run = agent(&[
        "-url",
        "http://127.0.0.1:9/",
        "-secret",
        SECRET,
        "-name",
        "n",
        "-noReconnect",
        "-workDir",
        dir.join("work").to_str().unwrap(),
        "-agentLog",
        log.to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("jnlp-agent starting"), "{text}");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    let error = run.stderr.trim_end().strip_prefix("error: ").unwrap();
    assert!(text.contains(error), "{error:?} not in\n{text}");
    assert!(!run.stderr.contains(SECRET) && !text.contains(SECRET));
    let _ = std::fs::remove_dir_all(dir);
}
