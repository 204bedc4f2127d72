//! Whether the agent is busy: what decides that it may leave a controller.
//!
//! Three signals, any of which means busy:
//! - requests from the controller not answered yet, counted from the class
//!   names that start commands on the chunk stream (`UserRequest` and
//!   `RPCRequest` in, `Response` out);
//! - build processes alive: descendants of the agent other than the engine
//!   JVM itself, and processes anywhere carrying this agent's session marker
//!   ([`SESSION_ENV`]). On Linux the agent is also a child subreaper, so
//!   processes a build detached (daemonised, `nohup`, double fork) are
//!   re-parented to the agent instead of init. How processes are found on
//!   each OS, and how those the agent cannot read count, is in
//!   [`crate::engine::processes`];
//! - non-ping traffic within the last few seconds (any command but a
//!   `Response` or a `PingThread$Ping` request).

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::engine::processes::{self, ProcessTable as _};

const USER_REQUEST: &str = "hudson.remoting.UserRequest";
/// Commands the controller sends that expect a `Response`.
const REQUESTS: &[&str] = &[
    USER_REQUEST,
    "hudson.remoting.RemoteInvocationHandler$RPCRequest",
];
const RESPONSE: &str = "hudson.remoting.Response";
/// The callable remoting's ping thread sends (inside a `UserRequest`).
pub const PING_MARKER: &[u8] = b"hudson.remoting.PingThread$Ping";

/// Live activity of the current channel, updated by the bridge.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicI64,
    last_activity_ms: AtomicU64,
}

impl Activity {
    /// A command started on the controller → engine stream.
    pub fn seen_from_controller(&self, class: Option<&str>, head: &[u8]) {
        let is_request = class.is_some_and(|c| REQUESTS.contains(&c));
        if is_request {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        self.touch_unless_ping(class, head);
    }

    /// A command started on the engine → controller stream.
    pub fn seen_from_engine(&self, class: Option<&str>, head: &[u8]) {
        if class == Some(RESPONSE) {
            // Saturating: a Response to a request sent before we started
            // counting must not drive the count negative.
            let _ = self
                .in_flight
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some((n - 1).max(0))
                });
        }
        self.touch_unless_ping(class, head);
    }

    fn touch_unless_ping(&self, class: Option<&str>, head: &[u8]) {
        if class == Some(RESPONSE) || is_ping(class, head) {
            return;
        }
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Requests from the controller not answered yet.
    pub fn requests_in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed).max(0) as u64
    }

    /// When the last non-ping command crossed, in unix ms (`None`: never).
    pub fn last_activity_ms(&self) -> Option<u64> {
        Some(self.last_activity_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    /// A new channel: nothing in flight.
    pub fn reset(&self) {
        self.in_flight.store(0, Ordering::Relaxed);
    }
}

/// Whether a command from the controller is a request that starts work
/// (anything it expects an answer to, pings aside): what cancels a move
/// that is about to happen.
pub fn is_work_request(class: Option<&str>, head: &[u8]) -> bool {
    class.is_some_and(|c| REQUESTS.contains(&c)) && !is_ping(class, head)
}

/// A ping is a `UserRequest` carrying the ping callable. Only those heads
/// are searched: this runs for every command on the data path.
fn is_ping(class: Option<&str>, head: &[u8]) -> bool {
    class == Some(USER_REQUEST) && memchr::memmem::find(head, PING_MARKER).is_some()
}

/// Milliseconds since the Unix epoch: the one clock of every `*_ms` field.
pub use control::now_ms;

/// A process's resident memory in KiB; `None` where that cannot be read.
pub fn rss_kib(pid: u32) -> Option<u64> {
    processes::os().rss_kib(pid)
}

/// Makes this process a child subreaper (Linux), so that orphaned
/// descendants are re-parented to it rather than to init.
#[cfg(target_os = "linux")]
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// Other systems have no subreaper (macOS: launchd adopts orphans, and the
/// session marker alone finds them).
#[cfg(not(target_os = "linux"))]
pub fn become_subreaper() -> nix::Result<()> {
    Err(nix::Error::ENOTSUP)
}

/// The variable every engine, and so every build process it starts,
/// inherits: it finds build processes that left the agent's process tree
/// (re-parented by `setsid` and a double fork, a container runtime, or
/// launchd), as Jenkins' own `ProcessTreeKiller` does with its cookie.
pub const SESSION_ENV: &str = "JNLP_AGENT_SESSION";

/// This agent's marker: random, fixed for the life of the process, so that
/// another agent's processes (another marker) are never taken for ours.
pub fn session_marker() -> &'static str {
    static MARKER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MARKER.get_or_init(|| format!("{}-{:016x}", std::process::id(), rand::random::<u64>()))
}

/// `SESSION_ENV=<marker>`, the whole variable as it appears in an
/// environment.
fn marker_variable() -> &'static [u8] {
    static VARIABLE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VARIABLE
        .get_or_init(|| format!("{SESSION_ENV}={}", session_marker()))
        .as_bytes()
}

/// Live descendants of `root`.
#[cfg(test)]
pub fn descendants(root: u32) -> Vec<u32> {
    processes::live_descendants(&processes::os(), root)
}

/// Build processes, other than the engines (the JVMs themselves are not
/// builds): live descendants of this agent (on Linux it is a child
/// subreaper, so orphans stay below it), and processes anywhere that carry
/// this agent's [`SESSION_ENV`] marker (they left the tree). Asked afresh on
/// every call; the zombies among our children are reaped from the same
/// scan (see [`reap_orphans`]).
///
/// Processes whose environment cannot be read count when they are below
/// the agent and are only logged (at debug) when they are not; see
/// [`processes`] for why.
pub fn build_processes(engines: &[u32]) -> Vec<u32> {
    let me = std::process::id();
    let procs = processes::os().scan(marker_variable());
    // The reaper needs no scan of its own while builds are being counted.
    processes::reap_zombies(&procs, me, engines);
    let census = processes::census_of(&procs, me, engines);
    report_unknown(census.unknown.len());
    census.builds
}

/// The build processes as [`build_processes`] finds them, without reaping
/// anything: for telling whether a given process (a control socket's
/// peer) is a build.
pub fn build_processes_now(engines: &[u32]) -> Vec<u32> {
    processes::census(
        &processes::os(),
        marker_variable(),
        std::process::id(),
        engines,
    )
    .builds
}

/// Logs the number of unreadable processes outside the agent's tree when
/// it changes (it is sampled every tick).
fn report_unknown(count: usize) {
    static LAST: AtomicUsize = AtomicUsize::new(usize::MAX);
    if LAST.swap(count, Ordering::Relaxed) != count {
        tracing::debug!(
            unknown = count,
            "processes outside the agent's tree whose environment cannot be read \
             (other users', or withheld by the OS): not counted as builds"
        );
    }
}

/// Reaps zombies re-parented to us (as subreaper), leaving alone the
/// children tokio waits for itself (`keep`).
pub fn reap_orphans(keep: &[u32]) {
    processes::reap_orphans(&processes::os(), std::process::id(), keep);
}

/// [`reap_orphans`], at most once a second: called from a fast tick, and a
/// process scan is not free.
pub fn reap_orphans_now_and_then(keep: &[u32]) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = now_ms();
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 1000
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        reap_orphans(keep);
    }
}

/// Ends every build process left behind (see [`build_processes`]; `keep`:
/// the engines): SIGTERM, then SIGKILL for those still alive after
/// `grace`. Returns how many there were.
pub async fn end_leftovers(keep: &[u32], grace: Duration) -> usize {
    processes::end_all(
        &processes::os(),
        marker_variable(),
        std::process::id(),
        keep,
        grace,
    )
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_balance() {
        let a = Activity::default();
        a.seen_from_controller(Some("hudson.remoting.UserRequest"), b"");
        a.seen_from_controller(
            Some("hudson.remoting.RemoteInvocationHandler$RPCRequest"),
            b"",
        );
        assert_eq!(a.requests_in_flight(), 2);
        a.seen_from_engine(Some(RESPONSE), b"");
        assert_eq!(a.requests_in_flight(), 1);
        a.seen_from_engine(Some(RESPONSE), b"");
        a.seen_from_engine(Some(RESPONSE), b"");
        assert_eq!(a.requests_in_flight(), 0, "never negative");
        a.seen_from_controller(Some("hudson.remoting.UserRequest"), b"");
        assert_eq!(a.requests_in_flight(), 1, "and counting resumes from zero");
    }

    #[test]
    fn pings_and_responses_are_not_activity() {
        let a = Activity::default();
        a.seen_from_controller(
            Some("hudson.remoting.UserRequest"),
            b"...hudson.remoting.PingThread$Ping...",
        );
        a.seen_from_engine(Some(RESPONSE), b"");
        assert_eq!(a.last_activity_ms(), None);
        a.seen_from_controller(Some("hudson.remoting.ProxyOutputStream$Chunk"), b"");
        assert!(a.last_activity_ms().is_some());
    }

    #[test]
    fn only_a_user_request_is_a_ping() {
        // A build's output may well mention the ping class.
        let a = Activity::default();
        a.seen_from_engine(
            Some("hudson.remoting.ProxyOutputStream$Chunk"),
            b"...hudson.remoting.PingThread$Ping...",
        );
        assert!(a.last_activity_ms().is_some());
        let ping = b"...hudson.remoting.PingThread$Ping...";
        assert!(!is_work_request(Some("hudson.remoting.UserRequest"), ping));
        assert!(is_work_request(
            Some("hudson.remoting.RemoteInvocationHandler$RPCRequest"),
            ping
        ));
    }

    #[tokio::test]
    async fn descendants_are_found_and_ended() {
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let sh = child.id().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while descendants(sh).is_empty() {
            assert!(std::time::Instant::now() < deadline, "sleep did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(build_processes(&[]).contains(&sh));
        assert!(!build_processes(&[sh]).contains(&sh));
        // Below `sh` only, and no marker (other tests' processes carry
        // this process's): nothing else is touched.
        let table = processes::os();
        let grace = Duration::from_secs(5);
        let ended = processes::end_all(&table, processes::NO_MARKER, sh, &[], grace).await;
        assert_eq!(ended, 1, "sleep");
        let _ = child.wait().await;
        assert!(descendants(sh).is_empty());
    }

    /// The supervisor samples busy once a tick (`TICK` in supervisor.rs,
    /// 200 ms) with `Hub::busy`, which calls [`build_processes`]. Nothing is
    /// cached between calls, so a build process counts from the first
    /// sample after it started and no longer from the first sample after it
    /// ended: one call each way, no polling of the signal itself.
    #[test]
    fn a_build_process_counts_from_the_next_tick_and_not_after_its_end() {
        // Detached (`sh` exits, the sleep is re-parented away from this
        // process): only the marker finds it.
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 30 </dev/null >/dev/null 2>&1 & echo $!"])
            .env(SESSION_ENV, session_marker())
            .output()
            .unwrap();
        let detached: u32 = String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // A child without the marker: only ancestry finds it.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env_remove(SESSION_ENV)
            .spawn()
            .unwrap();
        let started = build_processes(&[]);
        assert!(started.contains(&detached), "{started:?}");
        assert!(started.contains(&child.id()), "{started:?}");

        child.kill().unwrap();
        child.wait().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(detached as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // The detached sleep is not our child: wait for its end as the
        // process table shows it (gone, or a zombie of its new parent).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while processes::os()
            .scan(processes::NO_MARKER)
            .iter()
            .any(|p| p.pid == detached && !p.zombie)
        {
            assert!(std::time::Instant::now() < deadline, "SIGKILL ignored");
            std::thread::sleep(Duration::from_millis(5));
        }
        let ended = build_processes(&[]);
        assert!(!ended.contains(&detached), "{ended:?}");
        assert!(!ended.contains(&child.id()), "{ended:?}");
    }
}
