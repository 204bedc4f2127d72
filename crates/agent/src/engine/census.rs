//! The count of build processes, taken on a thread of its own: reading
//! `/proc` for every process takes milliseconds on a busy build machine,
//! and the agent's one runtime thread also carries the bridge.
//!
//! The count is taken every [`EVERY`] while someone asked for it in the
//! last [`INTEREST_MS`] (the supervisor while lent or with an order
//! pending, `status`), and at once when asked after a pause. A count older
//! than [`FRESH_MS`] is not trusted: the agent counts as busy until a fresh one
//! arrives, so a move never rests on an old count. The thread also reaps
//! orphaned zombies (the agent is their subreaper): from each count's scan,
//! and about once a second when no count is wanted. That second scan of
//! `/proc` is skipped while no child of the agent has ended (one `waitid`
//! that reaps nothing tells), and the thread then wakes once a second
//! instead of every [`EVERY`]: an idle agent reads no other process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use super::{builds, busy};

/// How often the count is taken while wanted.
const EVERY: Duration = Duration::from_millis(200);
/// How often the thread looks for orphans while no count is wanted (a
/// request for a count wakes it at once).
const IDLE_EVERY: Duration = Duration::from_secs(1);
/// How long one request for a count keeps them coming.
const INTEREST_MS: u64 = 2_000;
/// A count older than this is not used.
const FRESH_MS: u64 = 1_000;

/// The latest count and the thread that takes it.
#[derive(Debug)]
pub struct Census {
    shared: Arc<Shared>,
    thread: OnceLock<Thread>,
}

#[derive(Debug, Default)]
struct Shared {
    builds: AtomicU64,
    /// When `builds` was taken (Unix ms); 0: never.
    taken_ms: AtomicU64,
    /// When a count was last asked for (Unix ms).
    wanted_ms: AtomicU64,
}

/// A count as last taken, or none recent enough to trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Build processes alive at most [`FRESH_MS`] ago.
    Fresh(u64),
    /// The last count (0 if none), too old to decide on.
    Stale(u64),
}

impl Census {
    /// A census, its thread started (it reaps orphans from the start).
    pub fn new() -> Self {
        let census = Self {
            shared: Arc::default(),
            thread: OnceLock::new(),
        };
        let _ = census.thread();
        census
    }

    /// The build processes now, as far as the last count knows; asks for
    /// counts to keep coming.
    pub fn builds(&self) -> Count {
        let now = busy::now_ms();
        self.shared.wanted_ms.store(now, Ordering::Relaxed);
        let builds = self.shared.builds.load(Ordering::Relaxed);
        let taken = self.shared.taken_ms.load(Ordering::Relaxed);
        if taken != 0 && now.saturating_sub(taken) <= FRESH_MS {
            return Count::Fresh(builds);
        }
        match self.thread() {
            Some(thread) => {
                thread.unpark();
                Count::Stale(builds)
            }
            // No thread to count on: count here rather than never.
            None => {
                let builds = builds::build_processes(&super::live_engines()).len() as u64;
                self.shared.builds.store(builds, Ordering::Relaxed);
                self.shared
                    .taken_ms
                    .store(busy::now_ms(), Ordering::Relaxed);
                Count::Fresh(builds)
            }
        }
    }

    fn thread(&self) -> Option<&Thread> {
        if let Some(thread) = self.thread.get() {
            return Some(thread);
        }
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("census".into())
            .spawn(move || count_forever(&shared));
        match spawned {
            Ok(handle) => Some(self.thread.get_or_init(|| handle.thread().clone())),
            Err(err) => {
                tracing::warn!(%err, "cannot start the build-process census thread");
                None
            }
        }
    }
}

impl Default for Census {
    fn default() -> Self {
        Self::new()
    }
}

fn count_forever(shared: &Shared) {
    loop {
        let engines = super::live_engines();
        let wanted = shared.wanted_ms.load(Ordering::Relaxed);
        if busy::now_ms().saturating_sub(wanted) <= INTEREST_MS {
            // Reaps orphans too, from the same scan.
            let builds = builds::build_processes(&engines).len() as u64;
            shared.builds.store(builds, Ordering::Relaxed);
            shared.taken_ms.store(busy::now_ms(), Ordering::Relaxed);
            std::thread::park_timeout(EVERY);
        } else {
            if a_child_has_ended() {
                builds::reap_orphans_now_and_then(&engines);
            }
            std::thread::park_timeout(IDLE_EVERY);
        }
    }
}

/// Whether a child of this process has ended and waits to be reaped (an
/// orphan the agent adopted, or an engine tokio is about to reap): asked
/// without reaping it (`WNOWAIT`), so that tokio's own waits are left
/// alone. Where that cannot be asked, always yes.
#[cfg(target_os = "linux")]
fn a_child_has_ended() -> bool {
    ended(nix::sys::wait::Id::All)
}

/// Whether the children `id` names include one that ended, not reaping it.
#[cfg(target_os = "linux")]
fn ended(id: nix::sys::wait::Id<'_>) -> bool {
    use nix::sys::wait::{waitid, WaitPidFlag, WaitStatus};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(id, flags) {
        // Children, none ended; or no children at all.
        Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => false,
        Ok(_) | Err(_) => true,
    }
}

#[cfg(not(target_os = "linux"))]
fn a_child_has_ended() -> bool {
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_count_is_stale_until_the_thread_takes_one() {
        let census = Census::new();
        assert_eq!(census.builds(), Count::Stale(0));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Count::Fresh(_) = census.builds() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no fresh count");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// An ended child is seen, and left for its owner to reap: its status
    /// is still there for `try_wait`. (Other tests' children end too, so
    /// this one is asked about by pid.)
    #[cfg(target_os = "linux")]
    #[test]
    fn an_ended_child_is_seen_and_not_reaped() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ended(nix::sys::wait::Id::Pid(pid)) {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never ended"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = child.try_wait().unwrap().expect("still waitable");
        assert!(status.success());
    }
}
