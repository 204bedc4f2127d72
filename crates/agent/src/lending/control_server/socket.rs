//! The socket file and who may use it: creating it safely, removing a stale
//! one, the `--control-group`, and the peer checks.

use std::fs::{self};
use std::io::{self};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::unistd::{Gid, Group, Uid, User};
use tokio::net::unix::UCred;
use tracing::{info, warn};

/// The longest path a Unix socket address holds (`sun_path` less its NUL).
pub(super) const MAX_SOCKET_PATH: usize = 107;

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A live agent answers on the path.
    #[error("another agent is already listening on {}", .0.display())]
    AlreadyListening(PathBuf),
    /// The path is a directory.
    #[error("the control socket path {} is a directory", .0.display())]
    IsADirectory(PathBuf),
    /// The path does not fit in a Unix socket address.
    #[error("the control socket path {} is {len} bytes; Unix sockets allow at most {MAX_SOCKET_PATH}", path.display())]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// `--control-group` names no group.
    #[error("unknown group {0:?} (--control-group)")]
    UnknownGroup(String),
    /// The group database could not be read.
    #[error("cannot look up group {group:?}: {source}")]
    GroupLookup {
        /// The group's name.
        group: String,
        /// Why.
        source: nix::Error,
    },
    /// The socket could not be given to the group (the agent's user must
    /// be a member of it, or root).
    #[error("cannot give the control socket to group {group:?}: {source}")]
    Chown {
        /// The group's name.
        group: String,
        /// Why.
        source: nix::Error,
    },
    /// A file system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

pub(super) fn io_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> ControlError {
    let path = path.to_owned();
    move |source| ControlError::Io {
        action,
        path,
        source,
    }
}

/// The socket file; removed on drop if it is still ours.
#[derive(Debug)]
pub(super) struct SocketFile {
    pub(super) path: PathBuf,
    pub(super) dev: u64,
    pub(super) ino: u64,
}

impl SocketFile {
    pub(super) fn new(path: &Path) -> Result<Self, ControlError> {
        let meta = fs::symlink_metadata(path).map_err(io_error("inspect", path))?;
        Ok(Self {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                if let Err(err) = fs::remove_file(&self.path) {
                    warn!(%err, path = %self.path.display(), "cannot remove the control socket");
                }
            }
            // Gone, or replaced by another agent's: not ours to remove.
            _ => {}
        }
    }
}

/// A private (0700) directory to create the socket in; removed on drop.
#[derive(Debug)]
pub(super) struct StagingDir {
    pub(super) path: PathBuf,
}

impl StagingDir {
    pub(super) fn create(parent: &Path) -> Result<Self, ControlError> {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        // Short: the socket inside must fit in a socket address too.
        let name = format!(
            ".c{}.{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let path = parent.join(name);
        let create = || fs::DirBuilder::new().mode(0o700).create(&path);
        if let Err(err) = create() {
            if err.kind() != io::ErrorKind::AlreadyExists {
                return Err(io_error("create directory", &path)(err));
            }
            // Left by a crashed process that had our pid: ours to reuse.
            fs::remove_dir_all(&path).map_err(io_error("remove", &path))?;
            create().map_err(io_error("create directory", &path))?;
        }
        Ok(Self { path })
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Removes a stale file at `path`; refuses if an agent answers there.
pub(super) fn remove_if_stale(path: &Path) -> Result<(), ControlError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(io_error("inspect", path)(err)),
    };
    if meta.is_dir() {
        return Err(ControlError::IsADirectory(path.to_owned()));
    }
    use std::os::unix::fs::FileTypeExt as _;
    if meta.file_type().is_socket() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ControlError::AlreadyListening(path.to_owned())),
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(io_error("check whether an agent listens on", path)(err)),
        }
    }
    info!(path = %path.display(), "removing a stale control socket");
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io_error("remove the stale", path)(err)),
    }
}

/// The control group, resolved at bind.
#[derive(Debug)]
pub(super) struct ControlGroup {
    pub(super) name: String,
    pub(super) gid: Gid,
}

pub(super) fn lookup_group(name: &str) -> Result<ControlGroup, ControlError> {
    match Group::from_name(name) {
        Ok(Some(group)) => Ok(ControlGroup {
            name: group.name,
            gid: group.gid,
        }),
        Ok(None) => Err(ControlError::UnknownGroup(name.to_owned())),
        Err(source) => Err(ControlError::GroupLookup {
            group: name.to_owned(),
            source,
        }),
    }
}

/// Who may use the socket.
#[derive(Debug)]
pub(super) struct Access {
    pub(super) own_uid: Uid,
    pub(super) group: Option<ControlGroup>,
}

impl Access {
    /// Whether `uid` is the agent's own user or root: such a peer could
    /// read any file the agent can anyway.
    pub(super) fn trusts(&self, uid: u32) -> bool {
        uid == self.own_uid.as_raw() || uid == 0
    }

    pub(super) async fn allows(&self, peer: &UCred) -> bool {
        if self.trusts(peer.uid()) {
            return true;
        }
        let Some(group) = &self.group else {
            return false;
        };
        if peer.gid() == group.gid.as_raw() {
            return true;
        }
        // The user and group databases may be remote (LDAP): off the runtime.
        let (uid, gid) = (Uid::from_raw(peer.uid()), group.gid);
        tokio::task::spawn_blocking(move || is_member(uid, gid))
            .await
            .unwrap_or(false)
    }
}

/// Whether the group database lists `uid`'s user in `gid` (or it is the
/// user's primary group).
pub(super) fn is_member(uid: Uid, gid: Gid) -> bool {
    let Ok(Some(user)) = User::from_uid(uid) else {
        return false;
    };
    if user.gid == gid {
        return true;
    }
    matches!(Group::from_gid(gid), Ok(Some(group)) if group.mem.contains(&user.name))
}
