//! Build processes: finding them (descendants of the agent, and processes
//! anywhere carrying its session marker), reaping orphans, and ending
//! those left behind. How processes are read on each OS is
//! [`crate::engine::processes`]; what counts as busy is [`super::busy`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::engine::processes::{self, ProcessTable as _};
use control::now_ms;

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
        let detached = processes::spawn_detached_sleep(SESSION_ENV, session_marker());
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
