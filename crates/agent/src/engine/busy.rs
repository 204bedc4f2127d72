//! Whether the agent is busy: what decides that it may leave a controller.
//!
//! Three signals, any of which means busy:
//! - requests from the controller not answered yet, counted from the class
//!   names that start commands on the chunk stream (`UserRequest` and
//!   `RPCRequest` in, `Response` out);
//! - build processes alive: descendants of the agent other than the engine
//!   JVM itself. The agent is a child subreaper, so processes a build
//!   detached (daemonised, `nohup`, double fork) are re-parented to the agent
//!   instead of init and stay countable;
//! - non-ping traffic within the last few seconds (any command but a
//!   `Response` or a `PingThread$Ping` request).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// Commands the controller sends that expect a `Response`.
const REQUESTS: &[&str] = &[
    "hudson.remoting.UserRequest",
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
        if class == Some(RESPONSE) || is_ping(head) {
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
    class.is_some_and(|c| REQUESTS.contains(&c)) && !is_ping(head)
}

fn is_ping(head: &[u8]) -> bool {
    head.windows(PING_MARKER.len()).any(|w| w == PING_MARKER)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A process's resident memory in KiB (`VmRSS` in `/proc/PID/status`);
/// `None` where that cannot be read.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Makes this process a child subreaper (Linux), so that orphaned
/// descendants are re-parented to it rather than to init.
#[cfg(target_os = "linux")]
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// Other systems have no subreaper (macOS: launchd adopts orphans).
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

/// Whether a NUL-separated environment block holds exactly `entry`.
fn environ_has(environ: &[u8], entry: &[u8]) -> bool {
    environ.split(|&b| b == 0).any(|var| var == entry)
}

/// A process seen in `/proc`.
#[derive(Debug, Clone, Copy)]
struct Proc {
    ppid: u32,
    zombie: bool,
    /// It carries this agent's [`SESSION_ENV`] (false where its
    /// environment cannot be read: another user's process is not ours).
    marked: bool,
}

fn processes() -> HashMap<u32, Proc> {
    let mut out = HashMap::new();
    let marker = format!("{SESSION_ENV}={}", session_marker());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name is in parentheses and may contain anything.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let marked = std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|environ| environ_has(&environ, marker.as_bytes()));
        out.insert(
            pid,
            Proc {
                ppid,
                zombie: state == "Z" || state == "X",
                marked,
            },
        );
    }
    out
}

/// Live descendants of `root` in `all`.
fn descendants_in(all: &HashMap<u32, Proc>, root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, proc) in all {
        children.entry(proc.ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            if all.get(&child).is_some_and(|p| !p.zombie) {
                out.push(child);
            }
            stack.push(child);
        }
    }
    out
}

/// Live descendants of `root`.
#[cfg(test)]
pub fn descendants(root: u32) -> Vec<u32> {
    descendants_in(&processes(), root)
}

/// Build processes, other than the engines (the JVMs themselves are not
/// builds), found two ways: live descendants of this agent (it is a child
/// subreaper, so orphans stay below it), and processes anywhere that carry
/// this agent's [`SESSION_ENV`] marker (they left the tree).
pub fn build_processes(engines: &[u32]) -> Vec<u32> {
    let all = processes();
    let me = std::process::id();
    let mut out = descendants_in(&all, me);
    for (&pid, proc) in &all {
        if proc.marked && !proc.zombie && pid != me && !out.contains(&pid) {
            out.push(pid);
        }
    }
    out.retain(|pid| !engines.contains(pid));
    out
}

/// Reaps zombies re-parented to us (as subreaper), leaving alone the
/// children tokio waits for itself (`keep`).
pub fn reap_orphans(keep: &[u32]) {
    let me = std::process::id();
    for (pid, proc) in processes() {
        if proc.ppid == me && proc.zombie && !keep.contains(&pid) {
            let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// [`reap_orphans`], at most once a second: called from a fast tick, and a
/// `/proc` scan is not free.
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

/// Ends every build process left behind (all descendants but `keep`):
/// SIGTERM, then SIGKILL for those still alive after `grace`. Returns how
/// many there were.
pub async fn end_leftovers(keep: &[u32], grace: Duration) -> usize {
    let left = build_processes(keep);
    if left.is_empty() {
        return 0;
    }
    for &pid in &left {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        reap_orphans(keep);
        if build_processes(keep).is_empty() {
            return left.len();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for pid in build_processes(keep) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    reap_orphans(keep);
    left.len()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_must_match_a_whole_variable() {
        let entry = b"JNLP_AGENT_SESSION=1-ab";
        assert!(environ_has(b"A=1\0JNLP_AGENT_SESSION=1-ab\0B=2\0", entry));
        assert!(
            !environ_has(b"JNLP_AGENT_SESSION=1-abc\0", entry),
            "a longer marker"
        );
        assert!(!environ_has(b"XJNLP_AGENT_SESSION=1-ab\0", entry));
        assert!(!environ_has(b"", entry));
    }

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
        let ended = end_leftovers(&[], Duration::from_secs(5)).await;
        assert!(ended >= 2, "sh and sleep: {ended}");
        let _ = child.wait().await;
        assert!(descendants(sh).is_empty());
    }
}
