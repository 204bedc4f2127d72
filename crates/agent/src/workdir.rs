//! The work directory (`-workDir`, `-internalDir`) and logging.
//!
//! With a work directory, `<workDir>/<internalDir>/` holds `logs/` (rotated
//! daily, a week kept), `engines/` (engine jars by hash) and `jarCache/`
//! (the engine's class cache), as agent.jar lays it out. Without one, logs go
//! to stderr only and the caches live under the user's cache directory:
//! `~/Library/Caches/jnlp-agent` on macOS, `$XDG_CACHE_HOME/jnlp-agent` or
//! `~/.cache/jnlp-agent` elsewhere.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::settings::{LogFormat, Settings};

/// Log files kept.
const KEPT_LOGS: usize = 7;

/// Where the agent keeps its files.
#[derive(Debug, Clone)]
pub struct WorkDir {
    /// `-workDir`, if given (passed on to the engine).
    pub root: Option<PathBuf>,
    /// `-internalDir` name.
    pub internal_name: String,
    /// Rotated logs, when there is a work directory.
    pub logs: Option<PathBuf>,
    /// Engine jars by hash.
    pub engines: PathBuf,
    /// The engine's jar cache (`-jar-cache`).
    pub jar_cache: PathBuf,
    /// Where the control socket goes unless `--control-socket` says.
    pub control_socket: PathBuf,
    /// Where the state file goes unless `--state-file` says.
    pub state_file: PathBuf,
}

impl WorkDir {
    /// Checks and creates the directories `settings` asks for.
    pub fn prepare(settings: &Settings) -> anyhow::Result<Self> {
        let internal_name = settings.internal_dir.clone();
        let Some(root) = settings.work_dir.clone() else {
            let cache = default_cache_dir();
            let engines = cache.join("engines");
            let jar_cache = settings
                .jar_cache
                .clone()
                .unwrap_or_else(|| cache.join("jarCache"));
            for dir in [&engines, &jar_cache] {
                create_writable(dir)?;
            }
            return Ok(Self {
                root: None,
                internal_name,
                logs: None,
                engines,
                jar_cache,
                control_socket: cache.join("control.sock"),
                state_file: cache.join("state.json"),
            });
        };
        if !root.is_dir() {
            if settings.fail_if_work_dir_is_missing {
                bail!(
                    "the work directory {} does not exist, and -failIfWorkDirIsMissing is set",
                    root.display()
                );
            }
            std::fs::create_dir_all(&root)
                .with_context(|| format!("cannot create the work directory {}", root.display()))?;
        }
        let internal = root.join(&internal_name);
        let logs = internal.join("logs");
        let engines = internal.join("engines");
        let jar_cache = settings
            .jar_cache
            .clone()
            .unwrap_or_else(|| internal.join("jarCache"));
        for dir in [&logs, &engines, &jar_cache] {
            create_writable(dir)?;
        }
        Ok(Self {
            root: Some(root),
            internal_name,
            logs: Some(logs),
            engines,
            jar_cache,
            control_socket: internal.join("control.sock"),
            state_file: internal.join("state.json"),
        })
    }

    /// `(workDir, internalDir)` for the engine's command line.
    pub fn for_engine(&self) -> Option<(&Path, &str)> {
        self.root
            .as_deref()
            .map(|root| (root, self.internal_name.as_str()))
    }
}

/// Where the agent keeps its files when there is no work directory.
fn default_cache_dir() -> PathBuf {
    cache_dir_for(
        cfg!(target_os = "macos"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
    .unwrap_or_else(std::env::temp_dir)
    .join("jnlp-agent")
}

/// The user's cache directory by the platform's convention: macOS has
/// `~/Library/Caches` (and no XDG); elsewhere `$XDG_CACHE_HOME`, else
/// `~/.cache`. `None` without a home.
fn cache_dir_for(
    macos: bool,
    xdg_cache_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    if macos {
        return home
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join("Library/Caches"));
    }
    xdg_cache_home
        .map(PathBuf::from)
        .or_else(|| home.map(|h| PathBuf::from(h).join(".cache")))
}

/// Creates `dir` and proves it writable, so the problem shows at start-up
/// with the path in the message rather than later in a confusing place.
fn create_writable(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("{} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Whether [`init_logging`] succeeded, so that errors are reported once:
/// through the log when there is one, on stderr before that.
pub static LOGGING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the log goes to stderr (no `-agentLog`): if not, `main` also
/// prints the error that ends the agent there, so that whoever started it
/// sees why it stopped.
pub static LOG_ON_STDERR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lines queued for the log file's writer thread before new ones are
/// dropped. The queue is allocated whole and its slots written at start:
/// tracing-appender's default (128,000 lines, 4 MiB) was a quarter of the
/// idle agent's memory, and the agent logs a few lines a minute.
const LOG_FILE_QUEUE: usize = 4096;

/// Keeps the log file writer alive; drop it last to flush.
pub type LogGuard = Option<tracing_appender::non_blocking::WorkerGuard>;

/// Logs to stderr (text or JSON) or, with `-agentLog`, to `agent_log`
/// instead; and, with a work directory, to rotated files. `RUST_LOG`
/// refines the level (default `info`).
pub fn init_logging(
    format: LogFormat,
    logs: Option<&Path>,
    agent_log: Option<&Path>,
) -> anyhow::Result<LogGuard> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let main = match agent_log {
        Some(path) => {
            // Written synchronously, one record per write on an O_APPEND
            // file: nothing is lost at exit, and other writers' lines stay
            // whole.
            let file = std::sync::Arc::new(open_agent_log(path)?);
            match format {
                LogFormat::Text => tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(file)
                    .with_filter(filter())
                    .boxed(),
                LogFormat::Json => tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(file)
                    .with_filter(filter())
                    .boxed(),
            }
        }
        None => match format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .with_filter(filter())
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .with_filter(filter())
                .boxed(),
        },
    };
    // agent.jar writes no remoting.log with -agentLog either.
    let logs = logs.filter(|_| agent_log.is_none());
    let (file, guard) = match logs {
        Some(dir) => {
            let appender = tracing_appender::rolling::Builder::new()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix("jnlp-agent")
                .filename_suffix("log")
                .max_log_files(KEPT_LOGS)
                .build(dir)
                .with_context(|| format!("cannot open a log file in {}", dir.display()))?;
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .buffered_lines_limit(LOG_FILE_QUEUE)
                .thread_name("log-writer")
                .finish(appender);
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(writer)
                .with_filter(filter())
                .boxed();
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(main)
        .with(file)
        .try_init()
        .context("logging was already set up")?;
    LOG_ON_STDERR.store(agent_log.is_none(), std::sync::atomic::Ordering::Relaxed);
    LOGGING.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(guard)
}

/// Opens `-agentLog FILE` for appending, creating it mode 0600 (the log
/// names nodes and controllers; it is nobody else's business).
pub fn open_agent_log(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot open the agent log {} (-agentLog): check that its directory exists and \
                 that this user may write there",
                path.display()
            )
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Settings {
        let mut argv = vec![
            "jnlp-agent",
            "-url",
            "http://c/",
            "-name",
            "n",
            "-secret",
            "s",
        ];
        argv.extend_from_slice(args);
        match crate::cli::parse(argv.into_iter().map(std::ffi::OsString::from), &|_| None).unwrap()
        {
            crate::cli::Command::Run(settings) => settings,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn default_cache_dirs_follow_the_platform() {
        let some = |s: &str| Some(std::ffi::OsString::from(s));
        assert_eq!(
            cache_dir_for(true, some("/x/cache"), some("/Users/ci")),
            Some(PathBuf::from("/Users/ci/Library/Caches"))
        );
        assert_eq!(cache_dir_for(true, None, None), None);
        assert_eq!(
            cache_dir_for(false, some("/x/cache"), some("/home/ci")),
            Some(PathBuf::from("/x/cache"))
        );
        assert_eq!(
            cache_dir_for(false, None, some("/home/ci")),
            Some(PathBuf::from("/home/ci/.cache"))
        );
        assert_eq!(cache_dir_for(false, None, None), None);
        assert_eq!(cache_dir_for(true, None, some("")), None);
    }

    #[test]
    fn lays_out_the_internal_directory() {
        let root = std::env::temp_dir().join(format!("jnlp-agent-wd-{}", std::process::id()));
        let work = WorkDir::prepare(&settings(&["-workDir", root.to_str().unwrap()])).unwrap();
        for dir in ["remoting/logs", "remoting/engines", "remoting/jarCache"] {
            assert!(root.join(dir).is_dir(), "{dir}");
        }
        assert_eq!(work.control_socket, root.join("remoting/control.sock"));
        assert_eq!(work.state_file, root.join("remoting/state.json"));
        assert_eq!(work.for_engine(), Some((root.as_path(), "remoting")));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_missing_work_dir_is_an_error_only_when_asked() {
        let root = std::env::temp_dir().join(format!("jnlp-agent-missing-{}", std::process::id()));
        let err = WorkDir::prepare(&settings(&[
            "-workDir",
            root.to_str().unwrap(),
            "-failIfWorkDirIsMissing",
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!root.exists());
    }

    #[test]
    fn an_unusable_work_dir_names_the_path() {
        // A regular file where the directory should be: fails for root too.
        let file = std::env::temp_dir().join(format!("jnlp-agent-file-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        let err = WorkDir::prepare(&settings(&["-workDir", file.join("sub").to_str().unwrap()]))
            .unwrap_err();
        assert!(
            format!("{err:#}").contains(file.to_str().unwrap()),
            "{err:#}"
        );
        std::fs::remove_file(file).unwrap();
    }
}
