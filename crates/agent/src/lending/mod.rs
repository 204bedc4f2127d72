//! Where the agent serves: home (its lender) or a borrowing controller, and
//! the state file that keeps that across restarts, SIGKILL included,
//! together with the cookie of each controller's last channel (so a
//! restarted agent takes over its own stale channel instead of being
//! refused "already connected").

pub mod backoff;
pub mod control_server;
pub mod ctl;
pub mod hub;
pub mod link;
pub mod machine;
pub mod moves;
pub mod orders;

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use anyhow::Context as _;
use control::{BorrowRequest, Target};
use serde::{Deserialize, Serialize};

use crate::settings::{HostPort, Secret, Settings, TransportChoice};

/// A borrow in force: the request as accepted (with its secret read) and
/// when it began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The borrow request, `secret` filled and `secret_file` empty.
    pub request: BorrowRequest,
    /// When the agent was lent, unix ms (the lease runs from here).
    pub started_ms: u64,
}

impl Lease {
    /// When the lease ends, unix ms.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.request
            .lease
            .map(|lease| control::ms_after(self.started_ms, lease))
    }

    /// The borrower as shown to people: its URL or `HOST:PORT`.
    pub fn label(&self) -> String {
        target_label(&self.request.target)
    }

    /// Whether `other` asks for this same borrow (repeating it is harmless).
    pub fn same_as(&self, other: &BorrowRequest) -> bool {
        self.request.target == other.target && self.request.name == other.name
    }

    /// The settings to connect to the borrower: the home settings for
    /// everything about this machine (work dir, Java, engine), the borrower's
    /// for everything about the controller. Home credentials, tunnel and
    /// certificates are not the borrower's and are dropped.
    pub fn settings(&self, home: &Settings) -> Result<Settings, String> {
        let mut s = home.clone();
        s.urls = Vec::new();
        s.jnlp_url = None;
        s.jnlp_credentials = None;
        s.credentials = None;
        s.direct = None;
        s.instance_identity = None;
        s.tunnel = None;
        s.protocols = Vec::new();
        s.no_reconnect = false;
        s.no_reconnect_after = None;
        // Home's headers may carry home's reverse-proxy tokens.
        s.web_socket_headers = Vec::new();
        s.transport = match self.request.transport {
            Some(control::Transport::Tcp) => TransportChoice::Tcp,
            Some(control::Transport::WebSocket) => TransportChoice::WebSocket,
            None => TransportChoice::TcpElseWebSocket,
        };
        if matches!(self.request.target, Target::Direct { .. })
            && s.transport == TransportChoice::WebSocket
        {
            return Err("a direct target has no web port to open a WebSocket on".into());
        }
        s.name = Some(self.request.name.clone());
        s.secret = self.request.secret.clone().map(Secret::new);
        match &self.request.target {
            Target::Url { url } => {
                s.urls = vec![if url.ends_with('/') {
                    url.clone()
                } else {
                    format!("{url}/")
                }];
                s.engine_jar = None;
            }
            Target::JnlpUrl { url } => {
                s.jnlp_url = Some(url.clone());
                s.engine_jar = None;
            }
            Target::Direct {
                address,
                instance_identity,
                engine_jar,
            } => {
                let (host, port) = address
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse().ok()?)))
                    .ok_or_else(|| format!("bad direct address {address:?}"))?;
                s.direct = Some(HostPort {
                    host: host.to_owned(),
                    port,
                });
                s.instance_identity = Some(instance_identity.clone());
                s.engine_jar = Some(engine_jar.clone());
            }
        }
        Ok(s)
    }
}

/// A target as shown to people.
pub fn target_label(target: &Target) -> String {
    match target {
        Target::Url { url } | Target::JnlpUrl { url } => url.clone(),
        Target::Direct { address, .. } => address.clone(),
    }
}

/// The state file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    version: u32,
    #[serde(default)]
    borrowed: Option<Lease>,
    /// Oldest first; at most [`MAX_COOKIES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cookies: Vec<SavedCookie>,
}

/// The cookie a controller handed out with a node's last accepted channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SavedCookie {
    /// Which controller: its instance identity's fingerprint.
    controller: String,
    node: String,
    cookie: String,
}

const STATE_VERSION: u32 = 1;
/// Cookies kept: home and the borrowers seen last.
const MAX_COOKIES: usize = 16;

/// The state file: where the agent is (`None` = home, `Some(lease)` =
/// borrowed) and the controllers' cookies. The file is the truth on disk;
/// this keeps a copy so that writing one part keeps the other.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    saved: Mutex<Saved>,
}

impl StateFile {
    /// The state file at `path` (not read yet: see [`StateFile::load`]).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            saved: Mutex::new(Saved {
                version: STATE_VERSION,
                ..Saved::default()
            }),
        }
    }

    fn saved(&self) -> MutexGuard<'_, Saved> {
        self.saved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cookie `controller` gave `node` with its last channel.
    pub fn cookie(&self, controller: &str, node: &str) -> Option<String> {
        self.saved()
            .cookies
            .iter()
            .find(|c| c.controller == controller && c.node == node)
            .map(|c| c.cookie.clone())
    }

    /// Keeps the cookie of a newly accepted channel, on disk before the
    /// channel is used: an agent killed a moment later still has it.
    pub fn keep_cookie(&self, controller: &str, node: &str, cookie: &str) -> std::io::Result<()> {
        let mut saved = self.saved();
        let entry = SavedCookie {
            controller: controller.to_owned(),
            node: node.to_owned(),
            cookie: cookie.to_owned(),
        };
        if saved.cookies.last() == Some(&entry) {
            return Ok(());
        }
        saved
            .cookies
            .retain(|c| !(c.controller == controller && c.node == node));
        saved.cookies.push(entry);
        let excess = saved.cookies.len().saturating_sub(MAX_COOKIES);
        saved.cookies.drain(..excess);
        self.write(&saved)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the agent was when it stopped; no file means home.
    pub fn load(&self) -> anyhow::Result<Option<Lease>> {
        let text = match read_noting_exposure(&self.path) {
            Ok((text, exposed)) => {
                if let Some(exposed) = exposed {
                    tracing::warn!(path = %exposed.path.display(), "{exposed}");
                }
                text
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot read the state file {}", self.path.display()))
            }
        };
        let saved: Saved = serde_json::from_str(&text).with_context(|| {
            format!(
                "the state file {} is not valid; remove it to start at home",
                self.path.display()
            )
        })?;
        anyhow::ensure!(
            saved.version == STATE_VERSION,
            "the state file {} has version {}, this agent writes {STATE_VERSION}",
            self.path.display(),
            saved.version
        );
        let borrowed = saved.borrowed.clone();
        *self.saved() = saved;
        Ok(borrowed)
    }

    /// Records where the agent is.
    pub fn save(&self, borrowed: Option<&Lease>) -> std::io::Result<()> {
        let mut saved = self.saved();
        saved.borrowed = borrowed.cloned();
        self.write(&saved)
    }

    /// Writes `saved` to a temporary file (mode 0600: it holds the
    /// borrower's secret and the cookies), fsynced, renamed over the old
    /// one, and the directory fsynced, so a crash leaves the old or the new
    /// state, never a torn one.
    fn write(&self, saved: &Saved) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(saved).map_err(std::io::Error::other)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            self.path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("state"),
            std::process::id()
        ));
        {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&text)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    }
}

/// A file's text, and whether other users can read it: the state file
/// holds a borrow's secret and the controllers' cookies.
fn read_noting_exposure(
    path: &Path,
) -> std::io::Result<(String, Option<control::secret_file::ReadableByOthers>)> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok((text, control::secret_file::readable_by_others(path, &meta)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;
    use std::time::Duration;

    fn lease() -> Lease {
        Lease {
            request: BorrowRequest {
                target: Target::Url {
                    url: "http://b.example:8080".into(),
                },
                name: "mac-01".into(),
                secret: Some("b0rr0w".into()),
                secret_file: None,
                lease: Some(Duration::from_secs(3600)),
                idle_return: None,
                when: control::When::Idle,
                wait: None,
                transport: None,
            },
            started_ms: 1_000,
        }
    }

    #[test]
    fn state_survives_a_round_trip_privately() {
        let dir = std::env::temp_dir().join(format!("jnlp-agent-state-{}", std::process::id()));
        let file = StateFile::new(dir.join("state.json"));
        assert_eq!(file.load().unwrap(), None, "no file: home");
        file.save(Some(&lease())).unwrap();
        assert_eq!(file.load().unwrap(), Some(lease()));
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        file.save(None).unwrap();
        assert_eq!(file.load().unwrap(), None);

        // Cookies live beside the lease, per controller and node, and a
        // new process reads them back.
        file.save(Some(&lease())).unwrap();
        file.keep_cookie("home-id", "mac-01", "c1").unwrap();
        file.keep_cookie("borrower-id", "mac-01", "c2").unwrap();
        file.keep_cookie("home-id", "mac-01", "c3").unwrap();
        let again = StateFile::new(file.path().to_owned());
        assert_eq!(again.load().unwrap(), Some(lease()));
        assert_eq!(again.cookie("home-id", "mac-01").as_deref(), Some("c3"));
        assert_eq!(again.cookie("borrower-id", "mac-01").as_deref(), Some("c2"));
        assert_eq!(again.cookie("home-id", "other-node"), None);
        assert_eq!(again.cookie("elsewhere", "mac-01"), None);
        again.save(None).unwrap();
        assert_eq!(StateFile::new(file.path().to_owned()).load().unwrap(), None);
        assert_eq!(
            again.cookie("home-id", "mac-01").as_deref(),
            Some("c3"),
            "kept across a return"
        );
        for i in 0..40 {
            again.keep_cookie(&format!("c-{i}"), "n", "x").unwrap();
        }
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert_eq!(text.matches("\"cookie\"").count(), MAX_COOKIES);
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(file.path(), b"{not json").unwrap();
        assert!(file.load().unwrap_err().to_string().contains("not valid"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_state_file_others_can_read_is_noted() {
        let dir = std::env::temp_dir().join(format!("jnlp-agent-exposed-{}", std::process::id()));
        let file = StateFile::new(dir.join("state.json"));
        file.save(Some(&lease())).unwrap();
        assert_eq!(read_noting_exposure(file.path()).unwrap().1, None);
        let open = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(file.path(), open).unwrap();
        let (_, exposed) = read_noting_exposure(file.path()).unwrap();
        assert_eq!(exposed.unwrap().mode, 0o644);
        // Still loaded; the next save writes it private again.
        assert_eq!(file.load().unwrap(), Some(lease()));
        file.save(Some(&lease())).unwrap();
        assert_eq!(read_noting_exposure(file.path()).unwrap().1, None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn borrower_settings_keep_the_machine_and_drop_home_credentials() {
        let home = crate::cli::parse(
            [
                "jnlp-agent",
                "-url",
                "http://home/",
                "-name",
                "h",
                "-secret",
                "s",
                "-workDir",
                "/w",
                "-credentials",
                "u:p",
            ]
            .map(std::ffi::OsString::from),
            &|_| None,
        )
        .unwrap();
        let crate::cli::Command::Run(home) = home else {
            panic!()
        };
        let s = lease().settings(&home).unwrap();
        assert_eq!(s.urls, ["http://b.example:8080/"]);
        assert_eq!(s.name.as_deref(), Some("mac-01"));
        assert_eq!(s.secret.as_ref().map(Secret::expose), Some("b0rr0w"));
        assert_eq!(s.work_dir, home.work_dir);
        assert!(s.credentials.is_none());
        assert_eq!(lease().deadline_ms(), Some(3_601_000));
    }

    #[test]
    fn a_huge_lease_ends_never_instead_of_panicking_or_wrapping() {
        let mut huge = lease();
        huge.request.lease = Some(std::time::Duration::MAX);
        assert_eq!(huge.deadline_ms(), Some(u64::MAX));
        // 500 million years fits in u64 ms but not after a late start.
        huge.request.lease = Some(std::time::Duration::from_secs(500_000_000 * 365 * 86_400));
        huge.started_ms = u64::MAX - 1_000;
        assert_eq!(huge.deadline_ms(), Some(u64::MAX));
    }
}
