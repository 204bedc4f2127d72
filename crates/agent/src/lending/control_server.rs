//! The control socket's server: a Unix socket where the agent's owner (and
//! lender or borrower jobs running on the agent, through `jnlp-agent ctl`)
//! ask for `status`, `borrow`, `return` and `events`. The wire protocol is
//! specified in the `control` crate; this module owns the socket file, checks
//! who connects, frames lines and hands requests to a [`Handler`] (the
//! supervisor), whose methods only enqueue work so that no request waits on
//! a connection or a drain. How a `borrow` or `return` is carried out, and
//! waited for with `wait`, is shared with the lender link ([`super::link`]):
//! [`carry_out_borrow`], [`carry_out_return`].
//!
//! # The socket file
//!
//! Mode 0600, or 0660 and the control group's ownership with
//! `--control-group`. The mode must be right before anyone can connect, and
//! a process-wide `umask` would race with the agent's other threads creating
//! files, so the socket is bound inside a fresh private directory (0700)
//! beside the final path, given its mode and group there, then hard-linked
//! into place. `link` fails if the name exists, so two agents starting on
//! one path cannot both win (`rename` would silently replace the other's).
//! An existing file at the path is probed first: a socket that accepts is a
//! live agent (refused), one that refuses connections (or a non-socket) is
//! stale and removed. On exit the file is removed, but only if it is still
//! the same inode: a newer agent's socket is left alone.
//!
//! # Who may connect
//!
//! Every connection's peer credentials (`SO_PEERCRED`, through tokio's
//! `peer_cred`) are checked, whatever the file mode says: the agent's own
//! uid and root are allowed; with a control group, a peer whose primary gid
//! is the group's, or whose user the group database lists as a member, is
//! allowed too. (Supplementary groups are looked up by user name in the
//! group database, not read from the peer process, which could have dropped
//! or gained groups since it started: the database is what an administrator
//! edits.) A refused peer gets one error line and is closed.
//!
//! # Connection slots
//!
//! Every build step on the agent may run `jnlp-agent ctl` as the agent's
//! own user, so any number of connections can come from builds; they must
//! never keep the owner (the admin's shell, the lender's tooling) out. So:
//!
//! - a connection that sends no complete request line within
//!   [`IDLE_TIMEOUT`] (10 s) of connecting or of its last reply gets an
//!   error line and is closed. One carrying out a request (an `events`
//!   stream, a `borrow` or `return` with `wait`) is busy, not idle;
//! - peers are sorted as they connect: a build (a process below an engine,
//!   or carrying the agent's session marker, as [`crate::engine::busy`]
//!   counts them) or the owner (anyone else allowed in, or a peer whose pid
//!   is unknown). Builds share [`MAX_CONNECTIONS`] slots; the owner has
//!   [`OWNER_CONNECTIONS`] more of its own, which builds never get;
//! - when a newcomer's pool is full, the connection in that pool idle the
//!   longest is closed (with an error line) to make room: it had nothing
//!   in progress. Only when every connection in the pool is busy is the
//!   newcomer told to try again later.
//!
//! Reserved slots rather than evicting builds for the owner alone: builds
//! may hold busy connections (64 `events` streams) that nothing can evict,
//! and the owner must still get in. Eviction within each pool on top means
//! neither pool is locked by idle connections for even the idle timeout.
//! What is left is the owner's own pool filled with busy connections by
//! the owner (or a control group member), which the owner can end.
//! Sorting a peer takes a process scan; one scan serves every connection
//! accepted before it began, so a burst costs one scan, not one each.

use std::fs::{self, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use control::frame::{read_line_bounded, write_json_line, FrameError};
use control::secret_file::{read_bounded, readable_by_others, ReadError, ReadableByOthers};
use control::{
    parse_request, Event, EventKind, Reply, Request, Response, When, MAX_LINE, MAX_SECRET_FILE,
};
use nix::fcntl::OFlag;
use nix::unistd::Uid;
use tokio::io::{AsyncReadExt as _, AsyncWrite, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf, UCred};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument as _};

use slots::{Admission, Class, Slots};

mod slots;
mod socket;

use crate::lending::orders::{carry_out_borrow, carry_out_return, Handler};
pub use socket::ControlError;
use socket::{
    io_error, lookup_group, remove_if_stale, Access, SocketFile, StagingDir, MAX_SOCKET_PATH,
};

/// Connections from builds served at once; beyond it, the build connection
/// idle the longest is closed, or when all are busy the newcomer is told to
/// try again.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections reserved for peers that are not builds (the owner's shell,
/// the lender's tooling): a few commands at a time, an `events` watcher or
/// two, a waiting borrow.
pub const OWNER_CONNECTIONS: usize = 16;
/// How long a connection may take to send a complete request line, after
/// connecting or after its last reply. `ctl` and any client library write
/// a request at once, so 10 s is far beyond a loaded machine's delays, yet
/// it bounds how long a forgotten or hostile connection holds a slot.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections being checked and sorted (credentials, group, process
/// scan) at once; beyond it the listener's backlog holds the rest.
const MAX_UNSORTED: usize = 64;
/// How often a flood's evictions and refusals are logged, at most: one
/// line per connection would let any peer fill the log.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// How long one reply may take to write before the client is dropped: a
/// client that does not read must not hold a connection slot forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(200);

/// The pids of the build processes now (see [`crate::engine::busy`]).
type BuildScan = Arc<dyn Fn() -> Vec<u32> + Send + Sync>;

/// A bound control socket, ready to [`serve`](ControlServer::serve).
/// Dropping it (or the end of `serve`) removes the socket file.
pub struct ControlServer {
    listener: UnixListener,
    socket: SocketFile,
    access: Arc<Access>,
    max_connections: usize,
    owner_connections: usize,
    idle_timeout: Duration,
    build_scan: BuildScan,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("socket", &self.socket)
            .field("max_connections", &self.max_connections)
            .field("owner_connections", &self.owner_connections)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl ControlServer {
    /// Creates the socket at `path` (and its parent directory if missing),
    /// mode 0600, or 0660 owned by `group`. Must be called within a Tokio
    /// runtime.
    pub fn bind(path: &Path, group: Option<&str>) -> Result<Self, ControlError> {
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ControlError::PathTooLong {
                path: path.to_owned(),
                len: path.as_os_str().len(),
            });
        }
        let group = group.map(lookup_group).transpose()?;
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        // Traversable by others: the socket's own mode and the peer check
        // are what guard it, and group members must reach it.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&parent)
            .map_err(io_error("create directory", &parent))?;
        remove_if_stale(path)?;

        let staging = StagingDir::create(&parent)?;
        let staged = staging.path.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&staged)
            .map_err(io_error("bind the control socket at", &staged))?;
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        fs::set_permissions(&staged, Permissions::from_mode(mode))
            .map_err(io_error("set the mode of", &staged))?;
        if let Some(group) = &group {
            nix::unistd::chown(&staged, None, Some(group.gid)).map_err(|source| {
                ControlError::Chown {
                    group: group.name.clone(),
                    source,
                }
            })?;
        }
        match fs::hard_link(&staged, path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                // Another agent created it since the probe above.
                return Err(ControlError::AlreadyListening(path.to_owned()));
            }
            Err(err) => return Err(io_error("create", path)(err)),
        }
        let socket = SocketFile::new(path)?;
        drop(staging);

        listener
            .set_nonblocking(true)
            .map_err(io_error("configure", path))?;
        let listener = UnixListener::from_std(listener).map_err(io_error("listen on", path))?;
        Ok(Self {
            listener,
            socket,
            access: Arc::new(Access {
                own_uid: Uid::effective(),
                group,
            }),
            max_connections: MAX_CONNECTIONS,
            owner_connections: OWNER_CONNECTIONS,
            idle_timeout: IDLE_TIMEOUT,
            build_scan: Arc::new(|| {
                crate::engine::builds::build_processes_now(&crate::engine::live_engines())
            }),
        })
    }

    /// The socket's path.
    #[cfg(test)]
    fn path(&self) -> &Path {
        &self.socket.path
    }

    /// Serves connections until `shutdown` is cancelled, then removes the
    /// socket file and waits for the open connections to close (each is
    /// cancelled with `shutdown`).
    pub async fn serve(self, handler: Arc<dyn Handler>, shutdown: CancellationToken) {
        let ControlServer {
            listener,
            socket,
            access,
            max_connections,
            owner_connections,
            idle_timeout,
            build_scan,
        } = self;
        info!(path = %socket.path.display(), "control socket listening");
        let tracker = TaskTracker::new();
        let shared = Arc::new(Shared {
            handler,
            access,
            slots: Mutex::new(Slots::new(max_connections, owner_connections)),
            classifier: Classifier::new(build_scan),
            idle_timeout,
            evictions: Tally::default(),
            refusals: Tally::default(),
        });
        let unsorted = Arc::new(Semaphore::new(MAX_UNSORTED));
        loop {
            // Taken before accepting: a flood waits in the backlog, not in
            // tasks and file descriptors of ours.
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = Arc::clone(&unsorted).acquire_owned() => permit,
            };
            let Ok(permit) = permit else { break };
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    warn!(%err, "control socket: accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                    }
                }
            };
            let accepted_at = Instant::now();
            let peer = match stream.peer_cred() {
                Ok(peer) => peer,
                Err(err) => {
                    warn!(%err, "control socket: cannot read the peer's credentials");
                    continue;
                }
            };
            let span = tracing::info_span!("control", peer_uid = peer.uid(), peer_pid = peer.pid());
            let connection = Connection {
                shared: Arc::clone(&shared),
                peer,
                cancel: shutdown.child_token(),
                class: Class::Owner,
            };
            tracker.spawn(
                async move {
                    connection.run(stream, permit, accepted_at).await;
                }
                .instrument(span),
            );
        }
        // No new client should find a socket nobody accepts on.
        drop(listener);
        drop(socket);
        tracker.close();
        tracker.wait().await;
        debug!("control socket closed");
    }

    /// A lower limit of build connections, to test the limit.
    #[cfg(test)]
    fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Another number of owner connections, to test the reserve.
    #[cfg(test)]
    fn with_owner_connections(mut self, max: usize) -> Self {
        self.owner_connections = max;
        self
    }

    /// A shorter idle timeout, to test it.
    #[cfg(test)]
    fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Another census of builds, to make peers builds or not.
    #[cfg(test)]
    fn with_build_scan(mut self, scan: impl Fn() -> Vec<u32> + Send + Sync + 'static) -> Self {
        self.build_scan = Arc::new(scan);
        self
    }
}

/// What every connection of one server shares.
struct Shared {
    handler: Arc<dyn Handler>,
    access: Arc<Access>,
    slots: Mutex<Slots>,
    classifier: Classifier,
    idle_timeout: Duration,
    evictions: Tally,
    refusals: Tally,
}

impl Shared {
    /// The slots, whatever a panicking holder left (every change to them
    /// is a single step, so none is ever half done).
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts events that are logged at most every [`REPORT_EVERY`].
#[derive(Default)]
struct Tally(Mutex<(Option<Instant>, u64)>);

impl Tally {
    /// Counts one at `now`; returns how many to report when a report is
    /// due.
    fn count(&self, now: Instant) -> Option<u64> {
        let mut tally = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, count) = &mut *tally;
        *count += 1;
        if last.is_some_and(|last| now.duration_since(last) < REPORT_EVERY) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(count))
    }
}

/// Tells builds from the owner. One process scan answers for every
/// connection accepted before the scan began (such a peer was already
/// running, so the scan saw it), so a burst of connections waits for one
/// scan, not one each.
struct Classifier {
    scan: BuildScan,
    last: tokio::sync::Mutex<Option<(Instant, Arc<[u32]>)>>,
}

impl Classifier {
    fn new(scan: BuildScan) -> Self {
        Self {
            scan,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The class of the peer process `pid`, which connected before
    /// `accepted_at`. A peer whose pid is unknown counts as the owner:
    /// keeping the owner out is the worse mistake.
    async fn classify(&self, pid: Option<i32>, accepted_at: Instant) -> Class {
        let Some(pid) = pid.and_then(|pid| u32::try_from(pid).ok()) else {
            return Class::Owner;
        };
        let mut last = self.last.lock().await;
        let builds = match &*last {
            Some((began, builds)) if *began >= accepted_at => Arc::clone(builds),
            _ => {
                let began = Instant::now();
                let scan = Arc::clone(&self.scan);
                let builds: Arc<[u32]> = match tokio::task::spawn_blocking(move || scan()).await {
                    Ok(builds) => builds.into(),
                    Err(err) => {
                        warn!(%err, "control socket: the process scan failed; peers count as the owner");
                        Arc::from(Vec::new())
                    }
                };
                *last = Some((began, Arc::clone(&builds)));
                builds
            }
        };
        if builds.contains(&pid) {
            Class::Build
        } else {
            Class::Owner
        }
    }
}

/// A connection's slot, given back on drop.
struct Slot<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Slot<'_> {
    fn busy(&self) {
        self.shared.slots().busy(self.id);
    }

    fn idle(&self) {
        self.shared.slots().idle(self.id, Instant::now());
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.shared.slots().release(self.id);
    }
}

/// One client connection.
struct Connection {
    shared: Arc<Shared>,
    peer: UCred,
    cancel: CancellationToken,
    /// Known once sorted (see [`Classifier`]).
    class: Class,
}

/// What to do after a request. Lives for one request, so its size does not
/// matter.
#[allow(clippy::large_enum_variant)]
enum Next {
    Reply(Reply),
    Events,
}

impl Connection {
    /// Checks the peer, sorts it and gives it a slot (giving back the
    /// `unsorted` permit), then serves its requests.
    async fn run(
        mut self,
        mut stream: UnixStream,
        unsorted: tokio::sync::OwnedSemaphorePermit,
        accepted_at: Instant,
    ) {
        let allowed = tokio::select! {
            () = self.cancel.cancelled() => return,
            allowed = self.shared.access.allows(&self.peer) => allowed,
        };
        if !allowed {
            warn!(
                uid = self.peer.uid(),
                "control socket: peer not allowed; closing"
            );
            let message = format!(
                "permission denied: uid {} is not allowed to control this agent",
                self.peer.uid()
            );
            self.send(&mut stream, &Reply::error(message)).await;
            return;
        }
        let shared = Arc::clone(&self.shared);
        self.class = tokio::select! {
            () = self.cancel.cancelled() => return,
            class = shared.classifier.classify(self.peer.pid(), accepted_at) => class,
        };
        let evict = CancellationToken::new();
        let admission = shared
            .slots()
            .admit(self.class, Instant::now(), evict.clone());
        drop(unsorted);
        let slot = match admission {
            Admission::Admitted { id, evicted } => {
                if let Some(count) = evicted
                    .then(|| shared.evictions.count(Instant::now()))
                    .flatten()
                {
                    info!(
                        class = ?self.class,
                        count,
                        "control socket full: closed the connections idle the longest to make room"
                    );
                }
                Slot {
                    shared: &shared,
                    id,
                }
            }
            Admission::Full => {
                if let Some(count) = shared.refusals.count(Instant::now()) {
                    warn!(
                        class = ?self.class,
                        count,
                        "control socket: every connection busy; refused new ones"
                    );
                }
                let reply = Reply::error("too many control connections; try again later");
                self.send(&mut stream, &reply).await;
                return;
            }
        };
        debug!(class = ?self.class, "control connection");
        let (reader, mut writer) = stream.into_split();
        let mut reader = BufReader::new(reader);
        let mut line = String::new();
        let idle_timeout = shared.idle_timeout;
        let mut idle_until = tokio::time::Instant::now() + idle_timeout;
        loop {
            let read = tokio::select! {
                () = self.cancel.cancelled() => return,
                () = evict.cancelled() => {
                    let message = "the control socket is full and this connection was idle \
                                   the longest; closing it (reconnect to send a request)";
                    self.send(&mut writer, &Reply::error(message)).await;
                    return;
                }
                read = tokio::time::timeout_at(
                    idle_until,
                    read_line_bounded(&mut reader, &mut line, MAX_LINE),
                ) => match read {
                    Ok(read) => read,
                    Err(_) => {
                        debug!("control connection idle; closing");
                        let message = format!(
                            "no request within {}; closing the connection",
                            humantime::format_duration(idle_timeout)
                        );
                        self.send(&mut writer, &Reply::error(message)).await;
                        return;
                    }
                },
            };
            // A blank line is no request: the connection stays idle, and
            // its deadline stands.
            if matches!(read, Ok(Some(()))) && line.trim().is_empty() {
                continue;
            }
            slot.busy();
            let next = match read {
                Ok(None) => return,
                Ok(Some(())) => match parse_request(&line) {
                    Ok(request) => self.handle(request).await,
                    Err(err) => {
                        debug!(%err, "refused a malformed request");
                        Next::Reply(Reply::error(err.to_string()))
                    }
                },
                Err(FrameError::NotUtf8) => Next::Reply(Reply::error("request is not UTF-8")),
                Err(FrameError::TooLong { max }) => {
                    warn!(max, "control request line too long; closing");
                    let message =
                        format!("request line longer than {max} bytes; closing the connection");
                    self.send(&mut writer, &Reply::error(message)).await;
                    return;
                }
                Err(FrameError::Io(err)) => {
                    debug!(%err, "control connection failed");
                    return;
                }
            };
            match next {
                Next::Reply(reply) => {
                    if !self.send(&mut writer, &reply).await {
                        return;
                    }
                    slot.idle();
                    idle_until = tokio::time::Instant::now() + idle_timeout;
                }
                // Busy for good: a stream is never idle.
                Next::Events => return self.stream_events(reader, writer).await,
            }
        }
    }

    async fn handle(&self, request: Request) -> Next {
        let handler = &*self.shared.handler;
        match request {
            Request::Status => {
                handler.settle().await;
                Next::Reply(Reply::Ok(Response::Status(handler.status())))
            }
            Request::Events => Next::Events,
            Request::Borrow(mut borrow) => {
                if let Some(file) = borrow.secret_file.take() {
                    let trusted = self.shared.access.trusts(self.peer.uid());
                    let peer_uid = self.peer.uid();
                    let read = tokio::task::spawn_blocking(move || {
                        read_secret_file(&file, peer_uid, trusted)
                    })
                    .await;
                    match read {
                        Ok(Ok((secret, exposed))) => {
                            if let Some(exposed) = exposed {
                                warn!(path = %exposed.path.display(), "{exposed}");
                            }
                            borrow.secret = Some(secret);
                        }
                        Ok(Err(message)) => return Next::Reply(Reply::Error(message)),
                        Err(err) => {
                            return Next::Reply(Reply::error(format!(
                                "cannot read secret_file: {err}"
                            )))
                        }
                    }
                }
                // A build on this agent that waits for a move that itself
                // holds up would wait forever: it gets the outcome of the
                // check instead (the move follows once it ends).
                let from_a_build = borrow.when == When::Idle && self.class == Class::Build;
                Next::Reply(carry_out_borrow(handler, borrow, from_a_build).await)
            }
            Request::Return { when, wait } => {
                Next::Reply(carry_out_return(handler, when, wait).await)
            }
        }
    }

    /// After `events`: a `subscribed` event with the current status, then
    /// every event until the client leaves, the agent stops or the client
    /// falls too far behind.
    async fn stream_events(
        &self,
        mut reader: BufReader<OwnedReadHalf>,
        mut writer: OwnedWriteHalf,
    ) {
        // Subscribe before reading the status, so nothing falls between
        // (an event may repeat what the status already shows).
        let mut events = self.shared.handler.subscribe();
        let first = Event {
            at_ms: control::now_ms(),
            kind: EventKind::Subscribed,
            status: self.shared.handler.status(),
        };
        if !self
            .send(&mut writer, &Reply::Ok(Response::Event(first)))
            .await
        {
            return;
        }
        let mut scratch = [0u8; 512];
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                read = reader.read(&mut scratch) => match read {
                    // Anything sent after `events` is ignored; EOF means gone.
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                event = events.recv() => match event {
                    Ok(event) => {
                        if !self.send(&mut writer, &Reply::Ok(Response::Event(event))).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        warn!(missed, "control events subscriber too slow; closing");
                        let message = format!(
                            "too slow: missed {missed} events; reconnect to resume"
                        );
                        self.send(&mut writer, &Reply::error(message)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Writes one reply line; false when the connection is done for
    /// (failed, too slow, or shutting down).
    async fn send<W: AsyncWrite + Unpin>(&self, writer: &mut W, reply: &Reply) -> bool {
        let write = async {
            match write_json_line(writer, reply).await {
                Err(FrameError::TooLong { max }) => {
                    warn!(max, "control reply too long; sending an error instead");
                    let message = format!("the reply would be longer than {max} bytes");
                    write_json_line(writer, &Reply::error(message)).await
                }
                other => other,
            }
        };
        tokio::select! {
            () = self.cancel.cancelled() => false,
            written = tokio::time::timeout(WRITE_TIMEOUT, write) => match written {
                Ok(Ok(())) => true,
                Ok(Err(err)) => {
                    debug!(%err, "cannot write a control reply");
                    false
                }
                Err(_) => {
                    warn!("control client does not read its replies; closing");
                    false
                }
            },
        }
    }
}

/// The secret in `path` (at most [`MAX_SECRET_FILE`] bytes, trimmed), and
/// whether other users can read the file. A peer the agent does not
/// `trust` may only name a file it owns: the agent would otherwise send any
/// file it can read to a controller of the peer's choosing.
fn read_secret_file(
    path: &Path,
    peer_uid: u32,
    trusted: bool,
) -> Result<(String, Option<ReadableByOthers>), String> {
    let shown = path.display();
    // Non-blocking open: a FIFO named here must not wedge the agent.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits() | OFlag::O_NOCTTY.bits())
        .open(path)
        .map_err(|err| format!("cannot read secret_file {shown}: {err}"))?;
    let meta = file
        .metadata()
        .map_err(|err| format!("cannot read secret_file {shown}: {err}"))?;
    if !meta.is_file() {
        return Err(format!("secret_file {shown} is not a regular file"));
    }
    if !trusted && meta.uid() != peer_uid {
        return Err(format!(
            "secret_file {shown} must belong to the requesting user (uid {peer_uid})"
        ));
    }
    let text = read_bounded(file, MAX_SECRET_FILE).map_err(|err| match err {
        ReadError::Io(err) => format!("cannot read secret_file {shown}: {err}"),
        ReadError::TooLarge { .. } => {
            format!("secret_file {shown} is larger than {MAX_SECRET_FILE} bytes")
        }
        ReadError::NotUtf8 => format!("secret_file {shown} is not UTF-8"),
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("secret_file {shown} is empty"));
    }
    Ok((secret.to_owned(), readable_by_others(path, &meta)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::lending::orders::Answer;
    use control::client::{self, ClientError};
    use control::{BorrowRequest, Status};
    use control::{Phase, Placement, Target};
    use nix::unistd::{Gid, Group};
    use std::os::unix::fs::FileTypeExt as _;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

    /// Records orders; the status and the event channel are the test's.
    struct FakeHandler {
        status: Mutex<Status>,
        borrows: Mutex<Vec<BorrowRequest>>,
        returns: Mutex<Vec<When>>,
        events: broadcast::Sender<Event>,
        refuse: Option<String>,
    }

    impl FakeHandler {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                status: Mutex::new(Status {
                    placement: Placement::Home,
                    phase: Phase::Online,
                    controller_url: Some("https://a.example/".into()),
                    ..Status::default()
                }),
                borrows: Mutex::new(Vec::new()),
                returns: Mutex::new(Vec::new()),
                events: broadcast::channel(4).0,
                refuse: None,
            })
        }
    }

    impl Handler for FakeHandler {
        fn status(&self) -> Status {
            self.status.lock().unwrap().clone()
        }
        fn borrow(&self, request: BorrowRequest) -> Answer<'_> {
            let answer = match &self.refuse {
                Some(message) => Err(message.clone()),
                None => {
                    self.borrows.lock().unwrap().push(request);
                    Ok("accepted; will leave when idle".into())
                }
            };
            Box::pin(std::future::ready(answer))
        }
        fn give_back(&self, when: When) -> Answer<'_> {
            self.returns.lock().unwrap().push(when);
            Box::pin(std::future::ready(Ok("accepted; returning now".into())))
        }
        fn subscribe(&self) -> broadcast::Receiver<Event> {
            self.events.subscribe()
        }
    }

    /// A directory removed when the test ends.
    struct TestDir(PathBuf);

    impl std::ops::Deref for TestDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A fresh directory under /tmp (short paths: socket addresses are
    /// small), traversable by others for the other-uid test.
    fn test_dir(name: &str) -> TestDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = PathBuf::from("/tmp").join(format!(
            "ctl-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new().mode(0o755).create(&dir).unwrap();
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        TestDir(dir)
    }

    struct Running {
        path: PathBuf,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Running {
        async fn stop(self) {
            self.shutdown.cancel();
            self.task.await.unwrap();
        }
    }

    fn start(server: ControlServer, handler: Arc<FakeHandler>) -> Running {
        let path = server.path().to_owned();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.serve(handler, shutdown.clone()));
        Running {
            path,
            shutdown,
            task,
        }
    }

    /// Sends raw lines and returns the raw reply lines until EOF or `n`.
    async fn raw(path: &Path, input: &[u8], n: usize) -> Vec<String> {
        let stream = UnixStream::connect(path).await.unwrap();
        let (r, mut w) = stream.into_split();
        let input = input.to_vec();
        // Written concurrently: the server may close before reading it all.
        let writer = tokio::spawn(async move {
            let _ = w.write_all(&input).await;
            w
        });
        let mut lines = BufReader::new(r).lines();
        let mut out = Vec::new();
        while out.len() < n {
            match lines.next_line().await {
                Ok(Some(line)) => out.push(line),
                _ => break,
            }
        }
        drop(writer);
        out
    }

    #[tokio::test]
    async fn status_round_trip_and_mode_0600() {
        let dir = test_dir("status");
        let path = dir.join("control.sock");
        let server = ControlServer::bind(&path, None).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(&*dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "staging directory left behind");
        let running = start(server, FakeHandler::new());
        let mut client = client::connect(&running.path).await.unwrap();
        let Response::Status(status) = client.request(Request::Status).await.unwrap() else {
            panic!("not a status")
        };
        assert_eq!(status.phase, Phase::Online);
        assert_eq!(status.controller_url.as_deref(), Some("https://a.example/"));
        running.stop().await;
        assert!(!path.exists(), "socket left behind");
    }

    #[tokio::test]
    async fn group_mode_is_0660_and_unknown_groups_are_refused() {
        let dir = test_dir("group");
        let path = dir.join("control.sock");
        let own = Group::from_gid(Gid::effective())
            .unwrap()
            .expect("own group");
        let server = ControlServer::bind(&path, Some(&own.name)).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), own.gid.as_raw());
        drop(server);
        let err = ControlServer::bind(&path, Some("no-such-group-jnlp")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown group \"no-such-group-jnlp\" (--control-group)"
        );
    }

    #[tokio::test]
    async fn stale_socket_and_stray_file_are_replaced_live_socket_is_refused() {
        let dir = test_dir("stale");
        let path = dir.join("control.sock");
        // A socket nobody listens on any more.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let running = start(
            ControlServer::bind(&path, None).unwrap(),
            FakeHandler::new(),
        );
        client::connect(&path)
            .await
            .unwrap()
            .request(Request::Status)
            .await
            .unwrap();

        let err = ControlServer::bind(&path, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("another agent is already listening on {}", path.display())
        );
        // The refused second server did not take the first one's file.
        client::connect(&path).await.unwrap();
        running.stop().await;

        fs::write(&path, "not a socket").unwrap();
        let server = ControlServer::bind(&path, None).unwrap();
        assert!(fs::metadata(&path).unwrap().file_type().is_socket());
        drop(server);

        fs::create_dir(&path).unwrap();
        assert!(matches!(
            ControlServer::bind(&path, None),
            Err(ControlError::IsADirectory(_))
        ));
    }

    #[tokio::test]
    async fn parent_directory_is_created_and_socket_removed_on_drop_only_if_ours() {
        let dir = test_dir("drop");
        let path = dir.join("a/b/control.sock");
        let server = ControlServer::bind(&path, None).unwrap();
        assert!(path.exists());
        drop(server);
        assert!(!path.exists(), "dropping the server removes the socket");

        let server = ControlServer::bind(&path, None).unwrap();
        // Another agent's socket took the path meanwhile: leave it alone.
        fs::remove_file(&path).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(server);
        assert!(path.exists(), "someone else's socket was removed");
    }

    #[tokio::test]
    async fn bad_requests_get_error_replies_and_change_nothing() {
        let dir = test_dir("bad");
        let path = dir.join("control.sock");
        let handler = FakeHandler::new();
        let running = start(ControlServer::bind(&path, None).unwrap(), handler.clone());
        let input = concat!(
            "garbage\n",
            "\n",
            "{\"version\":2,\"command\":\"status\"}\n",
            "{\"version\":1,\"command\":\"fly\"}\n",
            "{\"version\":1,\"command\":\"borrow\",\"target\":{\"url\":\"https://b/\"},\"name\":\"n\"}\n",
            "\u{0}\u{1}\n",
            "{\"version\":1,\"command\":\"status\"}\n",
        );
        let mut bytes = input.as_bytes().to_vec();
        bytes.extend_from_slice(b"\xff\n{\"version\":1,\"command\":\"status\"}\n");
        let lines = raw(&path, &bytes, 7).await;
        assert_eq!(lines.len(), 7, "{lines:?}");
        let expect = [
            "not a JSON object",
            "unsupported protocol version 2; this agent speaks version 1",
            "unknown variant `fly`",
            "`secret` or `secret_file` is required",
            "not a JSON object",
        ];
        for (line, expected) in lines.iter().zip(expect) {
            assert!(
                line.starts_with("{\"error\":") && line.contains(expected),
                "{line}"
            );
        }
        assert!(lines[5].starts_with("{\"ok\":{\"status\""), "{}", lines[5]);
        assert_eq!(lines[6], "{\"error\":\"request is not UTF-8\"}");
        assert!(handler.borrows.lock().unwrap().is_empty());
        running.stop().await;
    }

    #[tokio::test]
    async fn oversized_lines_get_an_error_and_the_connection_closes() {
        let dir = test_dir("big");
        let path = dir.join("control.sock");
        let running = start(
            ControlServer::bind(&path, None).unwrap(),
            FakeHandler::new(),
        );
        let mut input = vec![b' '; MAX_LINE + 100];
        input.extend_from_slice(b"\n{\"version\":1,\"command\":\"status\"}\n");
        let lines = raw(&path, &input, 5).await;
        assert_eq!(
            lines,
            vec![format!(
                "{{\"error\":\"request line longer than {MAX_LINE} bytes; closing the connection\"}}"
            )]
        );
        running.stop().await;
    }

    fn borrow_request(secret: Option<&str>, secret_file: Option<PathBuf>) -> Request {
        Request::Borrow(BorrowRequest {
            target: Target::Url {
                url: "https://b.example/".into(),
            },
            name: "mac-01".into(),
            secret: secret.map(str::to_owned),
            secret_file,
            lease: Some(Duration::from_secs(3600)),
            idle_return: None,
            when: When::Idle,
            wait: None,
            transport: None,
        })
    }

    #[tokio::test]
    async fn borrow_reads_the_secret_file_for_the_handler() {
        let dir = test_dir("secret");
        let path = dir.join("control.sock");
        let handler = FakeHandler::new();
        let running = start(ControlServer::bind(&path, None).unwrap(), handler.clone());
        let secret_file = dir.join("secret");
        fs::write(&secret_file, "  s3cret\n").unwrap();
        let mut client = client::connect(&path).await.unwrap();

        let reply = client
            .request(borrow_request(None, Some(secret_file.clone())))
            .await
            .unwrap();
        assert_eq!(
            reply,
            Response::Accepted {
                message: "accepted; will leave when idle".into()
            }
        );
        {
            let borrows = handler.borrows.lock().unwrap();
            assert_eq!(borrows.len(), 1);
            assert_eq!(borrows[0].secret.as_deref(), Some("s3cret"));
            assert_eq!(borrows[0].secret_file, None);
            assert_eq!(borrows[0].lease, Some(Duration::from_secs(3600)));
        }

        let missing = dir.join("missing");
        let err = client
            .request(borrow_request(None, Some(missing.clone())))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Refused(m) if m.contains(&*missing.to_string_lossy())),
            "{err}"
        );
        fs::write(&secret_file, " \n").unwrap();
        let err = client
            .request(borrow_request(None, Some(secret_file.clone())))
            .await
            .unwrap_err();
        assert!(err.to_string().ends_with("is empty"), "{err}");
        let err = client
            .request(borrow_request(None, Some(dir.to_path_buf())))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");

        client
            .request(Request::Return {
                when: When::Now,
                wait: None,
            })
            .await
            .unwrap();
        assert_eq!(*handler.returns.lock().unwrap(), vec![When::Now]);
        assert_eq!(handler.borrows.lock().unwrap().len(), 1);
        running.stop().await;
    }

    #[test]
    fn an_untrusted_peer_may_only_name_its_own_secret_file() {
        let dir = test_dir("owner");
        let file = dir.join("secret");
        fs::write(&file, "x").unwrap();
        let own = Uid::effective().as_raw();
        fs::set_permissions(&file, Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&file, own, false), Ok(("x".into(), None)));
        let err = read_secret_file(&file, own.wrapping_add(1), false).unwrap_err();
        assert!(err.contains("must belong to the requesting user"), "{err}");
        assert_eq!(
            read_secret_file(&file, own.wrapping_add(1), true),
            Ok(("x".into(), None))
        );
        // Read all the same, but reported when others can read it.
        fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        let (secret, exposed) = read_secret_file(&file, own, false).unwrap();
        assert_eq!(secret, "x");
        assert_eq!(
            exposed,
            Some(ReadableByOthers {
                path: file.clone(),
                mode: 0o644
            })
        );
        fs::write(&file, vec![b'a'; MAX_SECRET_FILE as usize + 1]).unwrap();
        assert!(read_secret_file(&file, own, true)
            .unwrap_err()
            .contains("larger than"));
    }

    #[tokio::test]
    async fn handler_refusals_are_error_replies() {
        let dir = test_dir("refuse");
        let path = dir.join("control.sock");
        let handler = Arc::new(FakeHandler {
            refuse: Some("already borrowed by https://c.example/".into()),
            ..Arc::into_inner(FakeHandler::new()).unwrap()
        });
        let running = start(ControlServer::bind(&path, None).unwrap(), handler);
        let mut client = client::connect(&path).await.unwrap();
        let err = client
            .request(borrow_request(Some("s"), None))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Refused(m) if m == "already borrowed by https://c.example/"),
            "{err}"
        );
        running.stop().await;
    }

    fn event(kind: EventKind) -> Event {
        Event {
            at_ms: 1,
            kind,
            status: Status::default(),
        }
    }

    #[tokio::test]
    async fn events_stream_and_slow_readers_are_cut_off() {
        let dir = test_dir("events");
        let path = dir.join("control.sock");
        let handler = FakeHandler::new();
        let running = start(ControlServer::bind(&path, None).unwrap(), handler.clone());

        let mut events = client::connect(&path)
            .await
            .unwrap()
            .events()
            .await
            .unwrap();
        let first = events.next_event().await.unwrap().unwrap();
        assert_eq!(first.kind, EventKind::Subscribed);
        assert_eq!(first.status.phase, Phase::Online);
        handler
            .events
            .send(event(EventKind::BorrowAccepted))
            .unwrap();
        assert_eq!(
            events.next_event().await.unwrap().unwrap().kind,
            EventKind::BorrowAccepted
        );

        // Without yielding (current-thread runtime) the server cannot
        // forward any of these before the channel (capacity 4) overflows.
        for _ in 0..10 {
            handler.events.send(event(EventKind::StateChanged)).unwrap();
        }
        let err = events.next_event().await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Refused(m) if m.contains("missed 6 events")),
            "{err}"
        );
        assert!(events.next_event().await.unwrap().is_none());

        // Shutting down ends the streams of the remaining subscribers.
        let mut events = client::connect(&path)
            .await
            .unwrap()
            .events()
            .await
            .unwrap();
        events.next_event().await.unwrap().unwrap();
        running.stop().await;
        assert!(events.next_event().await.unwrap().is_none());
    }

    type ReplyLines = tokio::io::Lines<BufReader<OwnedReadHalf>>;

    /// The next line, or `None` at EOF; panics after `within`.
    async fn next_line(lines: &mut ReplyLines, within: Duration) -> Option<String> {
        tokio::time::timeout(within, lines.next_line())
            .await
            .expect("no line in time")
            .unwrap_or(None)
    }

    /// A raw connection: request lines out, reply lines in.
    struct Raw {
        lines: ReplyLines,
        writer: OwnedWriteHalf,
    }

    const STATUS: &str = "{\"version\":1,\"command\":\"status\"}\n";
    /// Long enough for any reply on a loaded machine, short enough to fail.
    const PROMPTLY: Duration = Duration::from_secs(10);

    impl Raw {
        async fn connect(path: &Path) -> Self {
            let (reader, writer) = UnixStream::connect(path).await.unwrap().into_split();
            Self {
                lines: BufReader::new(reader).lines(),
                writer,
            }
        }

        /// The next line, or `None` at EOF; panics after `within`.
        async fn line(&mut self, within: Duration) -> Option<String> {
            next_line(&mut self.lines, within).await
        }

        /// Sends `line`, returns the reply.
        async fn request(&mut self, line: &str) -> String {
            self.writer.write_all(line.as_bytes()).await.unwrap();
            self.line(PROMPTLY).await.expect("a reply")
        }

        async fn status_ok(&mut self) {
            let reply = self.request(STATUS).await;
            assert!(reply.starts_with("{\"ok\":{\"status\""), "{reply}");
        }
    }

    /// A server whose peers (all this process) are builds while the
    /// returned flag is set, and the owner otherwise.
    fn server_with_build_switch(path: &Path) -> (ControlServer, Arc<AtomicBool>) {
        let builds = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&builds);
        let server = ControlServer::bind(path, None)
            .unwrap()
            .with_build_scan(move || {
                if flag.load(Ordering::SeqCst) {
                    vec![std::process::id()]
                } else {
                    Vec::new()
                }
            });
        (server, builds)
    }

    #[test]
    fn floods_are_reported_in_tallies() {
        let tally = Tally::default();
        let t0 = Instant::now();
        assert_eq!(tally.count(t0), Some(1));
        assert_eq!(tally.count(t0 + Duration::from_secs(1)), None);
        assert_eq!(tally.count(t0 + REPORT_EVERY / 2), None);
        assert_eq!(tally.count(t0 + REPORT_EVERY), Some(3));
        assert_eq!(tally.count(t0 + REPORT_EVERY), None);
    }

    #[tokio::test]
    async fn the_owner_gets_in_past_64_idle_build_connections() {
        let dir = test_dir("flood");
        let path = dir.join("control.sock");
        let (server, builds) = server_with_build_switch(&path);
        let running = start(server, FakeHandler::new());
        // Every build slot taken by a connection that asked once and idles.
        let mut flood = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut raw = Raw::connect(&path).await;
            raw.status_ok().await;
            flood.push(raw);
        }
        // One more build: the build connection idle the longest makes room.
        let mut newcomer = Raw::connect(&path).await;
        newcomer.status_ok().await;
        let evicted = flood[0].line(PROMPTLY).await.unwrap();
        assert!(
            evicted.starts_with("{\"error\":") && evicted.contains("idle the longest"),
            "{evicted}"
        );
        assert_eq!(flood[0].line(PROMPTLY).await, None);

        builds.store(false, Ordering::SeqCst);
        let asked = Instant::now();
        let mut owner = client::connect(&path).await.unwrap();
        owner.request(Request::Status).await.unwrap();
        assert!(asked.elapsed() < PROMPTLY, "{:?}", asked.elapsed());
        // The builds' connections are all still there.
        for raw in &mut flood[1..] {
            raw.status_ok().await;
        }
        running.stop().await;
    }

    #[tokio::test]
    async fn busy_builds_cannot_take_the_owners_slots() {
        let dir = test_dir("busy");
        let path = dir.join("control.sock");
        let (server, builds) = server_with_build_switch(&path);
        let running = start(server.with_max_connections(2), FakeHandler::new());
        // Two builds stream events: busy, so nothing can evict them.
        let mut streams = Vec::new();
        for _ in 0..2 {
            let stream = client::connect(&path).await.unwrap().events().await;
            let mut stream = stream.unwrap();
            // Subscribed: the server has taken the request.
            stream.next_event().await.unwrap().unwrap();
            streams.push(stream);
        }
        let mut third = Raw::connect(&path).await;
        let reply = third.request(STATUS).await;
        assert_eq!(
            reply,
            "{\"error\":\"too many control connections; try again later\"}"
        );
        builds.store(false, Ordering::SeqCst);
        let mut owner = client::connect(&path).await.unwrap();
        owner.request(Request::Status).await.unwrap();
        running.stop().await;
    }

    #[tokio::test]
    async fn owner_connections_beyond_the_reserve_evict_the_idle_or_are_told_to_retry() {
        let dir = test_dir("limit");
        let path = dir.join("control.sock");
        let server = ControlServer::bind(&path, None)
            .unwrap()
            .with_build_scan(Vec::new)
            .with_owner_connections(1);
        let running = start(server, FakeHandler::new());
        // An idle owner connection gives way to the next one.
        let mut first = Raw::connect(&path).await;
        first.status_ok().await;
        let mut second = client::connect(&path).await.unwrap();
        second.request(Request::Status).await.unwrap();
        let line = first.line(PROMPTLY).await.unwrap();
        assert!(line.contains("idle the longest"), "{line}");
        drop(second);

        // A busy one does not: the newcomer is told to retry.
        let events = client::connect(&path).await.unwrap().events().await;
        let mut events = events.unwrap();
        events.next_event().await.unwrap().unwrap();
        let mut refused = client::connect(&path).await.unwrap();
        let err = refused.request(Request::Status).await.unwrap_err();
        assert!(
            err.to_string().contains("too many control connections"),
            "{err}"
        );
        // The slot comes back once the stream is gone.
        drop(events);
        let deadline = Instant::now() + PROMPTLY;
        loop {
            let mut again = client::connect(&path).await.unwrap();
            match again.request(Request::Status).await {
                Ok(_) => break,
                Err(err) => assert!(Instant::now() < deadline, "{err}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        running.stop().await;
    }

    #[tokio::test]
    async fn idle_connections_are_closed_but_streams_and_waits_are_not() {
        let dir = test_dir("idle");
        let path = dir.join("control.sock");
        let timeout = Duration::from_millis(300);
        let handler = FakeHandler::new();
        let server = ControlServer::bind(&path, None)
            .unwrap()
            .with_idle_timeout(timeout);
        let running = start(server, handler.clone());

        let mut events = client::connect(&path)
            .await
            .unwrap()
            .events()
            .await
            .unwrap();
        events.next_event().await.unwrap().unwrap();
        // Not home yet: a return with `wait` waits for the move.
        handler.status.lock().unwrap().phase = Phase::Connecting;
        let mut waiting = Raw::connect(&path).await;
        let wait = "{\"version\":1,\"command\":\"return\",\"when\":\"now\",\"wait\":\"1m\"}\n";
        waiting.writer.write_all(wait.as_bytes()).await.unwrap();
        // The stream and the wait both listen for events.
        let deadline = Instant::now() + PROMPTLY;
        while handler.events.receiver_count() < 2 {
            assert!(Instant::now() < deadline, "the return does not wait");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Silent from the start, and silent after a request.
        let since = Instant::now();
        let mut silent = Raw::connect(&path).await;
        let mut asked_once = Raw::connect(&path).await;
        asked_once.status_ok().await;
        // Half a request line, or blank lines, are no request.
        let mut partial = Raw::connect(&path).await;
        partial.writer.write_all(b"{\"version\":1,").await.unwrap();
        let (blank_reader, mut blank_writer) =
            UnixStream::connect(&path).await.unwrap().into_split();
        let mut blank = BufReader::new(blank_reader).lines();
        let blank_lines = tokio::spawn(async move {
            while blank_writer.write_all(b"\n\r\n  \n").await.is_ok() {
                tokio::time::sleep(timeout / 4).await;
            }
        });

        let expected = "{\"error\":\"no request within 300ms; closing the connection\"}";
        for lines in [
            &mut silent.lines,
            &mut asked_once.lines,
            &mut partial.lines,
            &mut blank,
        ] {
            assert_eq!(next_line(lines, PROMPTLY).await.as_deref(), Some(expected));
            assert_eq!(next_line(lines, PROMPTLY).await, None);
        }
        // Not before its time: `silent` connected after `since`.
        assert!(since.elapsed() >= timeout, "{:?}", since.elapsed());
        blank_lines.abort();

        // Well past the timeout, the stream and the wait are still served.
        tokio::time::sleep(timeout * 2).await;
        handler
            .events
            .send(Event {
                at_ms: 2,
                kind: EventKind::Moved {
                    ms: 5,
                    connected_ms: None,
                    answered_ms: None,
                },
                status: Status {
                    phase: Phase::Online,
                    controller_url: Some("https://a.example/".into()),
                    ..Status::default()
                },
            })
            .unwrap();
        let event = events.next_event().await.unwrap().unwrap();
        assert_eq!(
            event.kind,
            EventKind::Moved {
                ms: 5,
                connected_ms: None,
                answered_ms: None
            }
        );
        let reply = waiting.line(PROMPTLY).await.unwrap();
        assert!(reply.contains("online at https://a.example/"), "{reply}");
        running.stop().await;
    }
    // Peers of other users: see tests/control_socket.rs, which runs the
    // real `jnlp-agent ctl` as `nobody`.
}
