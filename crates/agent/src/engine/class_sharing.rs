//! Class-data sharing (AppCDS) for the engine JVM: remoting's classes, and
//! the JDK classes it loads, parsed and verified once and then mapped from
//! an archive at every start, which takes about a quarter off the engine's
//! start (docs/performance.md, "Engine start-up") and a good part off its
//! answers to a controller's first calls on a new channel.
//!
//! Per jar (by its content-named file) and per JVM, in `<engines>/cds/`:
//! 1. the first engine of a jar records the classes it loads
//!    (`-XX:DumpLoadedClassList`) while it starts and serves;
//! 2. once that engine answered its controller's first calls (and
//!    [`FIRST_CALLS_SETTLE`] more, for the rest of them), or once it ended,
//!    or after [`ClassSharing::record_for`] at the latest, `java
//!    -Xshare:dump` makes `<key>.jsa` from that list, in the background:
//!    the archive covers a session's first calls and is there before the
//!    next engine (a borrower's, home's warm one) starts, not a minute later;
//! 3. later engines start with `-XX:SharedArchiveFile=<key>.jsa
//!    -Xshare:auto`: a JVM that cannot map it runs without it. Engines
//!    started while it was being made ([`Plan::Pending`]) know where it will
//!    be, so that a warm one still waiting for its channel can be started
//!    again with it.
//!
//! It stays out of the way: nothing is added when the user's JVM options
//! mention class sharing or logging (theirs win), when the JVM's version is
//! unknown or older than 11 (no `release` file beside it, e.g. macOS's
//! `/usr/bin/java` stub), or once a dump failed for that key
//! (`<key>.failed` says why). The JVM's own warnings are sent to stderr
//! (`-Xlog:all=warning:stderr`): its stdout is the channel.

use std::collections::HashSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt as _;
use tokio::sync::oneshot;
use tracing::{debug, info};

/// How long a dump may take before it is given up (it takes about a
/// second for remoting).
const DUMP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long after the engine answered its controller's first call the
/// recording goes on: a Jenkins controller makes its first calls within a
/// fraction of a second of each other (`SlaveComputer.setChannel`).
pub const FIRST_CALLS_SETTLE: Duration = Duration::from_secs(2);
/// Options of the user's that mean they manage sharing or logging.
const USER_MANAGED: &[&str] = &[
    "-Xshare",
    "SharedArchiveFile",
    "SharedClassListFile",
    "DumpLoadedClassList",
    "ArchiveClassesAtExit",
    "AutoCreateSharedArchive",
    "-Xlog",
];
/// The user's options that the dump must share with the runs: the
/// collector and the object layout decide whether an archive maps.
fn layout_option(opt: &str) -> bool {
    (opt.starts_with("-XX:+Use") && opt.ends_with("GC"))
        || opt.contains("UseCompressedOops")
        || opt.contains("UseCompressedClassPointers")
        || opt.starts_with("-Xmx")
        || opt.starts_with("-XX:MaxHeapSize")
}

/// Archives for engine JVMs, kept in one directory.
#[derive(Debug, Clone)]
pub struct ClassSharing {
    dir: PathBuf,
    enabled: bool,
    /// How long a first engine records its classes before the dump.
    record_for: Duration,
    /// Keys being recorded or dumped by this process.
    busy: Arc<Mutex<HashSet<String>>>,
}

/// What an engine start does about sharing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing (off, unsupported, the user's own options, or failed before).
    Nothing,
    /// Nothing yet: another engine records or dumps the archive that will be
    /// at this path.
    Pending(PathBuf),
    /// Maps this archive.
    Use(PathBuf),
    /// Records its classes to this list; an archive is dumped from it.
    Record(Recording),
    /// An earlier engine's list is there: dump it now, start plainly.
    DumpOnly(Recording),
}

/// A list being recorded, and what to make of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    key: String,
    list: PathBuf,
    java: PathBuf,
    jar: PathBuf,
    layout: Vec<String>,
}

impl Plan {
    /// For the log: `off`, `archive` (started with it), `recording` or
    /// `dumping`.
    pub fn describe(&self) -> &'static str {
        match self {
            Plan::Nothing => "off",
            Plan::Pending(_) => "pending",
            Plan::Use(_) => "archive",
            Plan::Record(_) => "recording",
            Plan::DumpOnly(_) => "dumping",
        }
    }

    /// The JVM options this plan adds (before `-jar`).
    pub fn options(&self) -> Vec<String> {
        match self {
            Plan::Nothing | Plan::Pending(_) | Plan::DumpOnly(_) => Vec::new(),
            Plan::Use(archive) => vec![
                format!("-XX:SharedArchiveFile={}", archive.display()),
                "-Xshare:auto".into(),
                "-Xlog:disable".into(),
                "-Xlog:all=warning:stderr".into(),
            ],
            Plan::Record(recording) => vec![
                format!("-XX:DumpLoadedClassList={}", recording.list.display()),
                "-Xlog:disable".into(),
                "-Xlog:all=warning:stderr".into(),
            ],
        }
    }

    /// The archive an engine started without will be able to use once it
    /// is made (this one's own recording, or another engine's).
    pub fn archive_to_come(&self) -> Option<PathBuf> {
        match self {
            Plan::Nothing | Plan::Use(_) => None,
            Plan::Pending(archive) => Some(archive.clone()),
            Plan::Record(recording) | Plan::DumpOnly(recording) => {
                Some(recording.list.with_extension("jsa"))
            }
        }
    }
}

/// Held by the session of an engine that records: says when the engine
/// answered its controller's first call; dropped when the engine is done
/// with (its list is then complete).
#[derive(Debug)]
pub struct FirstCalls(Option<oneshot::Sender<()>>);

impl FirstCalls {
    /// The engine answered its controller's first call on a channel.
    pub fn answered(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl ClassSharing {
    /// Archives in `dir`; `enabled` false plans nothing.
    pub fn new(dir: PathBuf, enabled: bool, record_for: Duration) -> Self {
        Self {
            dir,
            enabled,
            record_for,
            busy: Arc::default(),
        }
    }

    /// What to do for an engine of `jar` started by `java` with the user's
    /// `java_opts`.
    pub fn plan(&self, java: &Path, jar: &Path, java_opts: &[String]) -> Plan {
        if !self.enabled
            || java_opts
                .iter()
                .any(|opt| USER_MANAGED.iter().any(|m| opt.contains(m)))
        {
            return Plan::Nothing;
        }
        let layout: Vec<String> = java_opts
            .iter()
            .filter(|o| layout_option(o))
            .cloned()
            .collect();
        let Some(key) = archive_key(java, jar, &layout) else {
            return Plan::Nothing;
        };
        let archive = self.dir.join(format!("{key}.jsa"));
        if archive.is_file() {
            return Plan::Use(archive);
        }
        if self.dir.join(format!("{key}.failed")).exists() {
            return Plan::Nothing;
        }
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if busy.contains(&key) {
            return Plan::Pending(archive);
        }
        if std::fs::create_dir_all(&self.dir).is_err() {
            return Plan::Nothing;
        }
        busy.insert(key.clone());
        let list = self.dir.join(format!("{key}.classlist"));
        let recording = Recording {
            list: list.clone(),
            java: java.to_owned(),
            jar: jar.to_owned(),
            layout,
            key,
        };
        if list.is_file() {
            Plan::DumpOnly(recording)
        } else {
            Plan::Record(recording)
        }
    }

    /// Once the engine started (or failed to): makes the archive in the
    /// background when the plan calls for it: at once for a list left
    /// behind; for a recording, once the engine answered its first calls
    /// (told through the returned [`FirstCalls`]) or was done with, or
    /// after the recording time at the latest.
    pub fn started(&self, plan: Plan, ok: bool) -> Option<FirstCalls> {
        let (recording, records) = match plan {
            Plan::Record(recording) => (recording, true),
            Plan::DumpOnly(recording) => (recording, false),
            Plan::Nothing | Plan::Pending(_) | Plan::Use(_) => return None,
        };
        if !ok {
            // A JVM that would not start with it: no list, try again later.
            self.release(&recording.key);
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let (this, record_for) = (self.clone(), self.record_for);
        tokio::spawn(async move {
            if records {
                let first_calls = async {
                    if rx.await.is_ok() {
                        tokio::time::sleep(FIRST_CALLS_SETTLE).await;
                    }
                };
                let _ = tokio::time::timeout(record_for, first_calls).await;
            }
            this.dump(&recording).await;
            this.release(&recording.key);
        });
        records.then(|| FirstCalls(Some(tx)))
    }

    fn release(&self, key: &str) {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    async fn dump(&self, recording: &Recording) {
        let key = &recording.key;
        let archive = self.dir.join(format!("{key}.jsa"));
        let tmp = self
            .dir
            .join(format!(".{key}-{}.jsa.tmp", rand::random::<u32>()));
        let list = match whole_lines(&recording.list) {
            Ok(list) if !list.is_empty() => list,
            Ok(_) => return debug!(key, "no classes recorded yet"),
            Err(err) => return debug!(%err, key, "cannot read the recorded class list"),
        };
        let frozen = self
            .dir
            .join(format!(".{key}-{}.classlist", rand::random::<u32>()));
        if let Err(err) = std::fs::write(&frozen, &list) {
            return debug!(%err, key, "cannot copy the recorded class list");
        }
        let mut java: Vec<std::ffi::OsString> = vec![recording.java.clone().into()];
        java.extend(recording.layout.iter().map(Into::into));
        java.push("-Xshare:dump".into());
        java.push(format!("-XX:SharedClassListFile={}", frozen.display()).into());
        java.push(format!("-XX:SharedArchiveFile={}", tmp.display()).into());
        java.extend(["-Xlog:disable".into(), "-Xlog:all=error:stderr".into()]);
        java.extend(["-cp".into(), recording.jar.clone().into()]);
        let command = |argv: &[std::ffi::OsString]| {
            let mut command = tokio::process::Command::new(&argv[0]);
            command
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            command
        };
        // At the lowest priority where `nice` exists: a second of CPU that
        // must not slow the channel next to it.
        let niced: Vec<std::ffi::OsString> = ["nice".into(), "-n".into(), "19".into()]
            .into_iter()
            .chain(java.iter().cloned())
            .collect();
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(DUMP_TIMEOUT, async {
            let mut child = match command(&niced).spawn() {
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => command(&java).spawn()?,
                spawned => spawned?,
            };
            // Ours, not a build; and only its `wait` below may reap it.
            let _helper = child.id().map(super::Helper::register);
            let mut errors = Vec::new();
            if let Some(stderr) = child.stderr.take() {
                let _ = stderr.take(16 * 1024).read_to_end(&mut errors).await;
            }
            Ok::<_, std::io::Error>((child.wait().await?, errors))
        })
        .await;
        let _ = std::fs::remove_file(&frozen);
        let failure = match outcome {
            Ok(Ok((status, _))) if status.success() => match std::fs::rename(&tmp, &archive) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&recording.list);
                    let ms = started.elapsed().as_millis() as u64;
                    return info!(key, ms, "class-data sharing archive made for the engine");
                }
                Err(err) => format!("cannot keep the archive: {err}"),
            },
            Ok(Ok((status, errors))) => format!(
                "java -Xshare:dump {status}: {}",
                String::from_utf8_lossy(&errors).trim()
            ),
            Ok(Err(err)) => format!("cannot run java -Xshare:dump: {err}"),
            Err(_) => format!("java -Xshare:dump took over {DUMP_TIMEOUT:?}"),
        };
        let _ = std::fs::remove_file(&tmp);
        // Never again for this jar and JVM: engines start as they would
        // without it.
        debug!(key, %failure, "no class-data sharing for this engine");
        let _ = std::fs::write(self.dir.join(format!("{key}.failed")), failure);
    }
}

/// `remoting-<sha>-<jvm>`: the jar's content name, and the JVM's identity
/// (its real path, its `release` file, the launcher's size and time) with
/// the options an archive must match (`layout`); `None` when the JVM is
/// not known to be 11 or newer.
fn archive_key(java: &Path, jar: &Path, layout: &[String]) -> Option<String> {
    let java = std::fs::canonicalize(java).ok()?;
    let release_file = java.parent()?.parent()?.join("release");
    let mut release = String::new();
    std::fs::File::open(&release_file)
        .ok()?
        .take(64 * 1024)
        .read_to_string(&mut release)
        .ok()?;
    if java_major(&release)? < 11 {
        return None;
    }
    let meta = std::fs::metadata(&java).ok()?;
    let mut jvm = Sha256::new();
    jvm.update(java.as_os_str().as_encoded_bytes());
    jvm.update(release.as_bytes());
    jvm.update(meta.len().to_le_bytes());
    if let Ok(modified) = meta.modified() {
        jvm.update(format!("{modified:?}").as_bytes());
    }
    for opt in layout {
        jvm.update(b"\0");
        jvm.update(opt.as_bytes());
    }
    let jvm = hex::encode(&jvm.finalize()[..8]);
    let stem = jar.file_stem()?.to_str()?;
    Some(format!("{stem}-{jvm}"))
}

/// The major version in a JDK `release` file (`JAVA_VERSION="17.0.15"`,
/// or `"1.8.0_402"` for 8).
fn java_major(release: &str) -> Option<u32> {
    let version = release
        .lines()
        .find_map(|line| line.strip_prefix("JAVA_VERSION="))?
        .trim()
        .trim_matches('"');
    let mut parts = version.split(['.', '_', '-', '+']);
    match parts.next()?.parse().ok()? {
        1 => parts.next()?.parse().ok(),
        major => Some(major),
    }
}

/// The file up to its last newline (a JVM may be writing the rest).
fn whole_lines(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(64 * 1024 * 1024)
        .read_to_end(&mut bytes)?;
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    bytes.truncate(end);
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn java_versions_are_read_from_release_files() {
        assert_eq!(java_major("JAVA_VERSION=\"17.0.15\"\n"), Some(17));
        assert_eq!(
            java_major("IMPLEMENTOR=\"x\"\nJAVA_VERSION=\"21\""),
            Some(21)
        );
        assert_eq!(java_major("JAVA_VERSION=\"1.8.0_402\""), Some(8));
        assert_eq!(java_major("JAVA_VERSION=\"25-ea\""), Some(25));
        assert_eq!(java_major("OTHER=1"), None);
        assert_eq!(java_major("JAVA_VERSION=\"\""), None);
    }

    /// A fake JDK layout: `<home>/bin/java` and `<home>/release`.
    fn jdk(version: Option<&str>) -> PathBuf {
        let home = std::env::temp_dir().join(format!(
            "jnlp-agent-jdk-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(home.join("bin")).unwrap();
        std::fs::write(home.join("bin/java"), b"#!/bin/sh\n").unwrap();
        if let Some(version) = version {
            std::fs::write(
                home.join("release"),
                format!("JAVA_VERSION=\"{version}\"\n"),
            )
            .unwrap();
        }
        home.join("bin/java")
    }

    #[tokio::test]
    async fn plans_follow_the_jvm_the_user_and_the_archives() {
        let dir = std::env::temp_dir().join(format!(
            "jnlp-agent-cds-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let sharing = ClassSharing::new(dir.clone(), true, Duration::from_secs(60));
        let jar = Path::new("/cache/remoting-abc.jar");
        let none: [String; 0] = [];
        // Unknown or old JVMs, and the user's own options: nothing added.
        assert_eq!(sharing.plan(&jdk(None), jar, &none), Plan::Nothing);
        assert_eq!(
            sharing.plan(&jdk(Some("1.8.0_402")), jar, &none),
            Plan::Nothing
        );
        let java = jdk(Some("17.0.15"));
        for user in ["-Xshare:off", "-XX:SharedArchiveFile=/x.jsa", "-Xlog:gc"] {
            assert_eq!(sharing.plan(&java, jar, &[user.to_owned()]), Plan::Nothing);
        }
        let off = ClassSharing::new(dir.clone(), false, Duration::from_secs(60));
        assert_eq!(off.plan(&java, jar, &none), Plan::Nothing);
        // First: record, keeping the collector for the dump; only once.
        let opts = ["-XX:+UseSerialGC".to_owned(), "-Dx=y".to_owned()];
        let Plan::Record(recording) = sharing.plan(&java, jar, &opts) else {
            panic!("records first");
        };
        assert_eq!(recording.layout, ["-XX:+UseSerialGC"]);
        // Another collector needs an archive of its own.
        let g1 = ["-XX:+UseG1GC".to_owned()];
        let Plan::Record(other) = sharing.plan(&java, jar, &g1) else {
            panic!("records for G1 too");
        };
        assert_ne!(other.key, recording.key);
        sharing.release(&other.key);
        assert!(
            recording.key.starts_with("remoting-abc-"),
            "{}",
            recording.key
        );
        let record = Plan::Record(recording.clone());
        assert!(record.options()[0].starts_with("-XX:DumpLoadedClassList="));
        assert!(record
            .options()
            .contains(&"-Xlog:all=warning:stderr".to_owned()));
        // In progress: started plainly, told where the archive will be.
        let archive = dir.join(format!("{}.jsa", recording.key));
        assert_eq!(record.archive_to_come(), Some(archive.clone()));
        let pending = sharing.plan(&java, jar, &opts);
        assert_eq!(pending, Plan::Pending(archive.clone()));
        assert!(pending.options().is_empty());
        // A failed start gives the key back; a list left by an engine that
        // ended is dumped at the next start.
        assert!(sharing.started(record, false).is_none());
        std::fs::write(&recording.list, "java/lang/Object id: 0\n").unwrap();
        assert!(matches!(sharing.plan(&java, jar, &opts), Plan::DumpOnly(_)));
        sharing.release(&recording.key);
        // An archive is used, with warnings kept off the channel.
        std::fs::write(dir.join(format!("{}.jsa", recording.key)), b"").unwrap();
        let Plan::Use(archive) = sharing.plan(&java, jar, &opts) else {
            panic!("uses the archive");
        };
        assert_eq!(Plan::Use(archive.clone()).archive_to_come(), None);
        let used = Plan::Use(archive.clone()).options();
        assert_eq!(
            used[0],
            format!("-XX:SharedArchiveFile={}", archive.display())
        );
        assert!(used.contains(&"-Xshare:auto".to_owned()));
        // A failed dump is not retried.
        std::fs::remove_file(&archive).unwrap();
        std::fs::write(dir.join(format!("{}.failed", recording.key)), b"no").unwrap();
        assert_eq!(sharing.plan(&java, jar, &opts), Plan::Nothing);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A JDK whose `java` "dumps" by making the file `-XX:SharedArchiveFile`
    /// names.
    fn dumping_jdk() -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let java = jdk(Some("17.0.15"));
        std::fs::write(
            &java,
            "#!/bin/sh\nfor a in \"$@\"; do case $a in -XX:SharedArchiveFile=*) : > \"${a#*=}\";; esac; done\n",
        )
        .unwrap();
        std::fs::set_permissions(&java, std::fs::Permissions::from_mode(0o755)).unwrap();
        java
    }

    #[tokio::test]
    async fn the_archive_is_made_once_the_first_calls_are_answered_not_after_the_recording_time() {
        let dir = std::env::temp_dir().join(format!(
            "jnlp-agent-cds-calls-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        // Far beyond the test's deadline: only the engine's session can
        // bring the dump forward.
        let sharing = ClassSharing::new(dir.clone(), true, Duration::from_secs(3600));
        let java = dumping_jdk();
        let jar = Path::new("/cache/remoting-abc.jar");
        let Plan::Record(recording) = sharing.plan(&java, jar, &[]) else {
            panic!("records first");
        };
        let plan = Plan::Record(recording.clone());
        let archive = plan.archive_to_come().unwrap();
        std::fs::write(&recording.list, "java/lang/Object id: 0\n").unwrap();
        let mut first_calls = sharing.started(plan, true).expect("a recording is told");
        let answered = std::time::Instant::now();
        first_calls.answered();
        test_support::eventually("the archive made", Duration::from_secs(60), || {
            archive.is_file()
        })
        .await;
        assert!(
            answered.elapsed() >= FIRST_CALLS_SETTLE,
            "the rest of the first calls are recorded too"
        );
        assert!(!recording.list.exists(), "the list is done with");
        assert_eq!(sharing.plan(&java, jar, &[]), Plan::Use(archive));

        // An engine done with before any call: its list is complete, dumped.
        let g1 = ["-XX:+UseG1GC".to_owned()];
        let Plan::Record(recording) = sharing.plan(&java, jar, &g1) else {
            panic!("records for G1");
        };
        let plan = Plan::Record(recording.clone());
        let archive = plan.archive_to_come().unwrap();
        std::fs::write(&recording.list, "java/lang/Object id: 0\n").unwrap();
        drop(sharing.started(plan, true));
        test_support::eventually("the archive made", Duration::from_secs(60), || {
            archive.is_file()
        })
        .await;
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(java.parent().unwrap().parent().unwrap()).unwrap();
    }

    #[test]
    fn only_whole_lines_of_a_list_being_written_are_used() {
        let path = std::env::temp_dir().join(format!("jnlp-agent-list-{}", std::process::id()));
        std::fs::write(&path, "a id: 1\nb id: 2\nc id").unwrap();
        assert_eq!(whole_lines(&path).unwrap(), b"a id: 1\nb id: 2\n");
        std::fs::write(&path, "partial").unwrap();
        assert!(whole_lines(&path).unwrap().is_empty());
        std::fs::remove_file(path).unwrap();
    }
}
