//! The engine: the controller's own `remoting.jar`, run as
//! `java -jar remoting.jar` with the channel on its stdin/stdout
//! (PROTOCOL.md section 4). The commands the controller sends are Java
//! objects and bytecode, so only a JVM can run them; running the jar the
//! controller serves means each controller gets an engine of its own version.
//!
//! Jars are cached by SHA-256 so that a controller serving the same bytes
//! again costs a download but no write, and two controllers on different
//! versions keep one jar each.

pub mod bridge;
pub mod builds;
pub mod busy;
pub mod census;
pub mod class_sharing;
mod jar_cache;
pub mod processes;
pub mod window;

pub use jar_cache::JarCache;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::settings::JavaSettings;

/// Capacity asked for the engine's stdin pipe (the kernel may cap it:
/// `/proc/sys/fs/pipe-max-size`, 1 MiB by default). The bridge moves
/// 256 KiB at a time, and with the default 64 KiB each write woke the
/// engine several times.
#[cfg(target_os = "linux")]
const TO_ENGINE_PIPE_SIZE: i32 = 1024 * 1024;

/// Capacity asked for the engine's stdout pipe: smaller, because it is a
/// queue in front of the controller. What the engine sends waits behind
/// what fills it, so a full megabyte kept the engine's answers late under a
/// stream (docs/performance.md, "Queues in front of the controller").
#[cfg(target_os = "linux")]
const FROM_ENGINE_PIPE_SIZE: i32 = 128 * 1024;

/// The engine JVM's options when the user gives none (no
/// `JENKINS_JAVA_OPTS`, no `JAVA_OPTS`); any option of the user's replaces
/// all of them. Each was measured against the previous default in the same
/// run (docs/performance.md, "Engine JVM defaults", has the figures):
/// - the serial collector: an engine's heap is small and its work is I/O,
///   so G1's own threads and remembered sets only cost memory;
/// - C1 only, one compiler thread, a small code cache: every channel gets
///   a fresh engine, and C2 compiling remoting's stream paths costs more
///   CPU than a stream gains from it;
/// - a heap that starts small (the JVM's default is 1/64 of the machine's
///   memory, and eden's pages are touched before the first collection) and
///   gives back what a burst took (free ratios 5-20 %); its maximum stays
///   the JVM's;
/// - native memory given back to the OS every 5 s: glibc keeps what
///   the JVM's threads freed (the compiler's arenas, start-up parsing) in
///   per-thread arenas otherwise. The option is new in 17.0.9 and 21, and
///   an older JVM refuses to start on an option it does not know, hence
///   `-XX:+IgnoreUnrecognizedVMOptions` (for these options only: any of
///   the user's replaces them all);
/// - no performance-counter file (`/tmp/hsperfdata_USER/PID`): the JVM
///   updated it every 50 ms, which was most of an idle engine's wake-ups
///   (and dirty pages in `/tmp`); `jcmd PID` still attaches, only `jps`
///   no longer lists the engine;
/// - and, added per engine, its send window sized from the round trip to
///   its controller ([`window`]).
pub const DEFAULT_JAVA_OPTS: &[&str] = &[
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:CICompilerCount=1",
    "-XX:ReservedCodeCacheSize=32m",
    "-XX:MinHeapFreeRatio=5",
    "-XX:MaxHeapFreeRatio=20",
    "-Xms8m",
    "-XX:+IgnoreUnrecognizedVMOptions",
    "-XX:TrimNativeHeapInterval=5000",
    "-XX:-UsePerfData",
];

/// Largest engine jar accepted from a controller (remoting.jar is ~1.5 MB).
pub const MAX_ENGINE_JAR: usize = 64 * 1024 * 1024;

/// Engines alive in this process, and the agent's own helper processes:
/// they are not build processes, whatever phase their session is in, and
/// the orphan reaper leaves them to whoever waits for them. Registered at
/// spawn, removed when stopped or dropped.
static LIVE_ENGINES: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// The pids of the engines alive now.
pub fn live_engines() -> Vec<u32> {
    LIVE_ENGINES.lock().map(|v| v.clone()).unwrap_or_default()
}

/// A helper process of the agent's own (not an engine), kept out of the
/// build-process census and away from the orphan reaper while this lives.
#[derive(Debug)]
pub struct Helper(u32);

impl Helper {
    /// Registers `pid` until the returned value is dropped.
    pub fn register(pid: u32) -> Self {
        register(pid, true);
        Self(pid)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        register(self.0, false);
    }
}

fn register(pid: u32, alive: bool) {
    if let Ok(mut engines) = LIVE_ENGINES.lock() {
        engines.retain(|&p| p != pid);
        if alive {
            engines.push(pid);
        }
    }
}

/// Environment variables the engine (and so every build step) must not
/// inherit: they carry the node's secret in the container images.
const SCRUBBED_ENV: &[&str] = &["JENKINS_SECRET"];

/// Why the engine could not be prepared or started.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No java executable was found.
    #[error(
        "no Java runtime found: set JENKINS_JAVA_BIN or JAVA_HOME, or put java on PATH \
         (the controller's remoting engine needs Java 17 or newer)"
    )]
    NoJava,
    /// The jar cache could not be written.
    #[error("cannot store the engine jar in {dir}: {source}")]
    Cache {
        /// The cache directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The process could not be started.
    #[error("cannot start the engine ({program}): {source}")]
    Spawn {
        /// The program that failed to start.
        program: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Finds `java`: `JENKINS_JAVA_BIN`, else `$JAVA_HOME/bin/java`, else `java` on `PATH`.
pub fn find_java(
    java: &JavaSettings,
    path: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, EngineError> {
    if let Some(bin) = &java.java_bin {
        return Ok(bin.clone());
    }
    if let Some(home) = &java.java_home {
        let bin = home.join("bin").join("java");
        if bin.is_file() {
            return Ok(bin);
        }
    }
    std::env::split_paths(path.unwrap_or_default())
        .map(|dir| dir.join("java"))
        .find(|candidate| candidate.is_file())
        .ok_or(EngineError::NoJava)
}

/// Largest manifest read from an engine jar.
const MAX_MANIFEST: u64 = 64 * 1024;

/// The remoting version an engine jar declares (`Version:` in its manifest,
/// as remoting's build writes it); `None` when the jar has none or is not a
/// readable jar.
pub fn remoting_version(jar: &Path) -> Option<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(jar).ok()?;
    let mut archive = zip::ZipArchive::new(file).ok()?;
    let entry = archive.by_name("META-INF/MANIFEST.MF").ok()?;
    let mut text = String::new();
    entry.take(MAX_MANIFEST).read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("Version:"))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// How to start one engine.
#[derive(Debug, Clone)]
pub struct EngineSpec {
    /// The full command line (`java [opts] -jar remoting.jar [engine options]`,
    /// or the `--engine-command` override).
    pub argv: Vec<String>,
    /// `JNLP_AGENT_CONTROL_SOCKET` for the engine and its build steps.
    pub control_socket: Option<PathBuf>,
}

impl EngineSpec {
    /// `java [java_opts] -jar JAR [-workDir D -internalDir N] -jar-cache C`.
    pub fn java(
        java: &Path,
        java_opts: &[String],
        jar: &Path,
        work_dir: Option<(&Path, &str)>,
        jar_cache: &Path,
    ) -> Self {
        let mut argv = vec![java.display().to_string()];
        argv.extend(java_opts.iter().cloned());
        argv.extend(["-jar".into(), jar.display().to_string()]);
        if let Some((dir, internal)) = work_dir {
            argv.extend([
                "-workDir".into(),
                dir.display().to_string(),
                "-internalDir".into(),
                internal.to_owned(),
            ]);
        }
        argv.extend(["-jar-cache".into(), jar_cache.display().to_string()]);
        Self {
            argv,
            control_socket: None,
        }
    }
}

/// A running engine, in a process group of its own so that everything it
/// starts can be ended with it.
#[derive(Debug)]
pub struct Engine {
    child: Child,
    pid: u32,
    stopped: bool,
    /// The engine's stdin: the chunk stream toward it.
    pub stdin: Option<ChildStdin>,
    /// The engine's stdout: the chunk stream from it.
    pub stdout: Option<ChildStdout>,
}

impl Engine {
    /// Starts the engine; its stderr is forwarded to the log.
    pub fn spawn(spec: &EngineSpec) -> Result<Self, EngineError> {
        let (program, args) = spec.argv.split_first().ok_or_else(|| EngineError::Spawn {
            program: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty engine command"),
        })?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for var in SCRUBBED_ENV {
            command.env_remove(var);
        }
        // Every build process inherits it: how the agent finds the ones
        // that left its process tree.
        command.env(
            crate::engine::builds::SESSION_ENV,
            crate::engine::builds::session_marker(),
        );
        if let Some(socket) = &spec.control_socket {
            command.env("JNLP_AGENT_CONTROL_SOCKET", socket);
        }
        let mut child = command.spawn().map_err(|source| EngineError::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        register(pid, true);
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_stderr(stderr, pid));
        }
        #[cfg(target_os = "linux")]
        for (fd, size) in [
            (
                child.stdin.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
                TO_ENGINE_PIPE_SIZE,
            ),
            (
                child.stdout.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
                FROM_ENGINE_PIPE_SIZE,
            ),
        ] {
            if let Some(fd) = fd {
                // Only a matter of speed: a refusal leaves the kernel's size.
                let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size));
            }
        }
        tracing::info!(pid, "engine started");
        Ok(Self {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            child,
            pid,
            stopped: false,
        })
    }

    /// The engine's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the engine has exited (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Ends the engine and every process in its group: closes its stdin,
    /// sends SIGTERM to the group, and SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        drop(self.stdin.take());
        let group = Pid::from_raw(self.pid as i32);
        if self.pid != 0 {
            let _ = killpg(group, Signal::SIGTERM);
        }
        let exited = tokio::time::timeout(grace, self.child.wait()).await;
        if self.pid != 0 {
            // The engine may be gone while processes it started live on.
            let _ = killpg(group, Signal::SIGKILL);
        }
        if exited.is_err() {
            let _ = self.child.wait().await;
        }
        self.stopped = true;
        register(self.pid, false);
        tracing::info!(pid = self.pid, "engine stopped");
    }
}

impl Drop for Engine {
    /// An engine dropped without [`Engine::stop`] (a cancelled session) still
    /// takes its whole process group with it: nothing it started outlives it.
    fn drop(&mut self) {
        if !self.stopped && self.pid != 0 {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            register(self.pid, false);
        }
    }
}

async fn forward_stderr(stderr: tokio::process::ChildStderr, pid: u32) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "engine", pid, "{line}");
    }
}

/// Whether remoting version `ours` is older than `minimum`, comparing the
/// numbers Jenkins compares (`3107.v665000b_51092` → 3107; `4.13` → 4, 13).
/// Versions that do not start with a number are never "older".
pub fn older_than(ours: &str, minimum: &str) -> bool {
    fn numbers(version: &str) -> Vec<u64> {
        version
            .split(['.', '-'])
            .map_while(|part| part.parse().ok())
            .collect()
    }
    let (ours, minimum) = (numbers(ours), numbers(minimum));
    !ours.is_empty() && !minimum.is_empty() && ours < minimum
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn remoting_versions_compare_as_jenkins_does() {
        assert!(older_than("3107.v665000b_51092", "3206.vb_15dcf73f6a_9"));
        assert!(!older_than("3206.vb_15dcf73f6a_9", "3107.v665000b_51092"));
        assert!(older_than("4.13", "3107.v665000b_51092"));
        assert!(!older_than("3107.v665000b_51092", "3107.v665000b_51092"));
        assert!(!older_than("unknown", "3107.v1"));
    }

    #[test]
    fn java_is_found_in_order() {
        let dir = std::env::temp_dir().join(format!("jnlp-agent-java-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/java"), b"").unwrap();
        let explicit = JavaSettings {
            java_bin: Some("/opt/j/bin/java".into()),
            java_home: Some(dir.clone()),
            ..Default::default()
        };
        assert_eq!(
            find_java(&explicit, None).unwrap(),
            PathBuf::from("/opt/j/bin/java")
        );
        let home = JavaSettings {
            java_home: Some(dir.clone()),
            ..Default::default()
        };
        assert_eq!(find_java(&home, None).unwrap(), dir.join("bin/java"));
        let path = std::env::join_paths([dir.join("bin")]).unwrap();
        assert_eq!(
            find_java(&JavaSettings::default(), Some(&path)).unwrap(),
            dir.join("bin/java")
        );
        assert!(matches!(
            find_java(
                &JavaSettings::default(),
                Some(std::ffi::OsStr::new("/nonexistent"))
            ),
            Err(EngineError::NoJava)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn remoting_version_comes_from_the_manifest() {
        let dir = std::env::temp_dir().join(format!("jnlp-agent-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let jar = dir.join("remoting.jar");
        std::fs::write(&jar, testkit::fake_remoting_jar("3355.v388858a_47b_33")).unwrap();
        assert_eq!(
            remoting_version(&jar).as_deref(),
            Some("3355.v388858a_47b_33")
        );
        std::fs::write(&jar, b"not a zip").unwrap();
        assert_eq!(remoting_version(&jar), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn java_command_line() {
        let spec = EngineSpec::java(
            Path::new("/usr/bin/java"),
            &["-Xmx512m".into()],
            Path::new("/w/remoting/engines/remoting-ab.jar"),
            Some((Path::new("/w"), "remoting")),
            Path::new("/w/remoting/jarCache"),
        );
        assert_eq!(
            spec.argv,
            [
                "/usr/bin/java",
                "-Xmx512m",
                "-jar",
                "/w/remoting/engines/remoting-ab.jar",
                "-workDir",
                "/w",
                "-internalDir",
                "remoting",
                "-jar-cache",
                "/w/remoting/jarCache"
            ]
        );
    }

    /// The defaults start a JVM together (`-XX:CICompilerCount=1` alone
    /// makes it refuse to start) and it runs them as meant: C1 only, one
    /// compiler thread, the serial collector, native memory trimmed (on a
    /// JVM that knows the option: 17.0.9 and later), no perf-data file.
    #[test]
    fn default_java_opts_are_what_the_jvm_runs() {
        let path = std::env::var_os("PATH");
        let java = find_java(&JavaSettings::default(), path.as_deref())
            .expect("the tests need a JDK on PATH");
        let out = std::process::Command::new(&java)
            .args(DEFAULT_JAVA_OPTS)
            .args(["-XX:+PrintFlagsFinal", "-version"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let flag = |name: &str| {
            text.lines()
                .map(str::split_whitespace)
                .find_map(|mut words| {
                    let _type = words.next()?;
                    (words.next()? == name).then(|| words.nth(1).map(str::to_owned))?
                })
                .unwrap_or_else(|| panic!("{name} not in -XX:+PrintFlagsFinal"))
        };
        assert_eq!(flag("TieredStopAtLevel"), "1");
        assert_eq!(flag("CICompilerCount"), "1");
        assert_eq!(flag("UseSerialGC"), "true");
        assert_eq!(flag("InitialHeapSize"), (8 * 1024 * 1024).to_string());
        assert_eq!(flag("UsePerfData"), "false");
        if text.contains(" TrimNativeHeapInterval ") {
            assert_eq!(flag("TrimNativeHeapInterval"), "5000");
        }
        // A JVM older than an option in the defaults still starts: here an
        // option no JVM knows stands for it.
        let status = std::process::Command::new(java)
            .args(DEFAULT_JAVA_OPTS)
            .args(["-XX:NoSuchOptionInAnyJvm=1", "-version"])
            .output()
            .unwrap()
            .status;
        assert!(status.success(), "an unknown option stopped the JVM");
    }

    /// The stdout pipe is the smaller one: it is a queue in front of the
    /// controller.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_engine_pipes_are_sized_for_their_direction() {
        use std::os::fd::AsRawFd;
        let spec = EngineSpec {
            argv: vec!["cat".into()],
            control_socket: None,
        };
        let mut engine = Engine::spawn(&spec).unwrap();
        let size = |fd| nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETPIPE_SZ).unwrap();
        let stdin = size(engine.stdin.as_ref().unwrap().as_raw_fd());
        let stdout = size(engine.stdout.as_ref().unwrap().as_raw_fd());
        assert_eq!(stdout, FROM_ENGINE_PIPE_SIZE);
        // pipe-max-size (1 MiB unless lowered) caps what a user may ask for.
        let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size").unwrap();
        if max.trim().parse::<i32>().unwrap() >= TO_ENGINE_PIPE_SIZE {
            assert_eq!(stdin, TO_ENGINE_PIPE_SIZE);
        }
        engine.stop(Duration::from_secs(5)).await;
    }
}
