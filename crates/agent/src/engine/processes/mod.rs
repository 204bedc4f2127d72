//! The build processes of this agent's session: which they are, whether any
//! is alive, and ending them.
//!
//! A build process is either
//! - a **descendant** of the agent (ancestry), or
//! - **marked**: anywhere on the machine, carrying the session marker
//!   (`JNLP_AGENT_SESSION=<id>`, see [`crate::engine::builds::SESSION_ENV`])
//!   that every engine, and so every process a build starts, inherits. This
//!   finds the processes that left the agent's tree: `setsid` and a double
//!   fork, a container runtime, launchd. Jenkins' own `ProcessTreeKiller`
//!   finds build processes the same way.
//!
//! The engines themselves are not builds and are left out; what they start
//! is in.
//!
//! On Linux the agent is also a child subreaper, so orphans stay below it
//! and ancestry alone already sees most of them; on macOS orphans go to
//! launchd, and only the marker finds them. Ancestry is computed the same
//! way on both, from each process's parent.
//!
//! # Processes the agent cannot read
//!
//! Another user's process (`EACCES`/`EPERM` on `/proc/PID/environ`, `EINVAL`
//! from `KERN_PROCARGS2`), or one whose environment macOS withholds (a
//! restricted binary while SIP is on), is [`Mark::Unknown`], never "not
//! ours". The rule for busy:
//! - an unknown process **below the agent** is a build: ancestry decides,
//!   its environment is not needed. So an unreadable process never makes the
//!   agent think a build ended while it still runs in its tree;
//! - an unknown process **outside** the tree is not counted but reported
//!   ([`Census::unknown`], logged at debug). On a shared machine other users'
//!   processes are always unreadable: counting them would keep the agent
//!   busy forever. What that leaves open: a build that both left the tree
//!   and became unreadable (it switched user with `sudo`, or it is a
//!   restricted macOS binary that re-parented itself to launchd) is not
//!   seen.
//!
//! # Layout
//!
//! - `mod.rs`: the interface ([`ProcessTable`]) and what does not depend on
//!   the OS: the census, ending processes, reaping orphans.
//! - `linux.rs`: `/proc`.
//! - `macos.rs`: `proc_pidinfo` (through `sysinfo`) and
//!   `sysctl(KERN_PROCARGS2)` (through `sysctl`).
//! - `procargs2.rs`: the `KERN_PROCARGS2` buffer parser, pure, so that its
//!   tests run on Linux too.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "macos")]
mod macos;
#[cfg(any(target_os = "macos", test))]
mod procargs2;

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
compile_error!("process tracking is implemented for Linux and macOS only");

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// What one process's environment says about the session marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// It carries this session's marker.
    Ours,
    /// Its environment was read and has no such marker (or another
    /// session's).
    NotOurs,
    /// Its environment could not be read: another user's process, or one
    /// the OS hides (see the module documentation for how this counts).
    Unknown,
}

/// One process as the OS shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    /// Its id.
    pub pid: u32,
    /// Its parent's id (0: none known).
    pub ppid: u32,
    /// Exited, waiting to be reaped: not alive, and never a build.
    pub zombie: bool,
    /// Whether it carries the marker.
    pub mark: Mark,
}

/// The process table of one OS: the only part of process tracking that
/// differs between systems.
///
/// Linux and macOS list every process and read each one's environment.
/// Windows is not supported; a Job Object implementation could join later
/// without changing the callers: the engine would be started in a job
/// (which every process it starts joins, breakaway refused), [`scan`]
/// would return the job's processes (`JobObjectBasicProcessIdList`) as
/// [`Mark::Ours`], and [`ProcessTable::end`] would terminate them (or the
/// whole job) instead of sending signals.
///
/// [`scan`]: ProcessTable::scan
pub trait ProcessTable {
    /// Every process now, each with its parent and whether it carries
    /// `marker`, the whole `NAME=value` variable. Nothing is cached: each
    /// call asks the OS afresh. With an empty `marker` no environment is
    /// read (the costly part) and every process is [`Mark::NotOurs`].
    fn scan(&self, marker: &[u8]) -> Vec<Proc>;

    /// A process's resident memory in KiB (`None`: it cannot be read).
    fn rss_kib(&self, pid: u32) -> Option<u64>;

    /// Asks a process to end (`force`: makes it). Errors are ignored: it
    /// may be gone already, or not ours to signal.
    fn end(&self, pid: u32, force: bool) {
        let signal = if force {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        if let Ok(pid) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
}

/// This OS's process table.
#[cfg(target_os = "linux")]
pub fn os() -> impl ProcessTable {
    linux::Linux
}

/// This OS's process table.
#[cfg(target_os = "macos")]
pub fn os() -> impl ProcessTable {
    macos::MacOs
}

/// The build processes at one moment, from one [`ProcessTable::scan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// Live build processes: descendants of the root whatever their mark
    /// (unknown ones included) and marked processes anywhere; the root
    /// itself and the excluded pids (the engines) left out.
    pub builds: Vec<u32>,
    /// Live processes outside the root's tree whose environment could not
    /// be read: not counted as builds (see the module documentation).
    pub unknown: Vec<u32>,
}

impl Census {
    /// Whether any build process is alive.
    pub fn any_alive(&self) -> bool {
        !self.builds.is_empty()
    }
}

/// Sorts `procs` into a [`Census`] for the tree below `root` (the agent),
/// leaving out `exclude` (the engines; what they start is in).
pub fn census_of(procs: &[Proc], root: u32, exclude: &[u32]) -> Census {
    let below = descendants_in(procs, root);
    let mut census = Census::default();
    for proc in procs {
        if proc.zombie || proc.pid == root || exclude.contains(&proc.pid) {
            continue;
        }
        if below.contains(&proc.pid) || proc.mark == Mark::Ours {
            census.builds.push(proc.pid);
        } else if proc.mark == Mark::Unknown {
            census.unknown.push(proc.pid);
        }
    }
    census.builds.sort_unstable();
    census.unknown.sort_unstable();
    census
}

/// Every process below `root` in `procs`, zombies included (their children
/// are still below). Bounded: a pid is visited once, so a table read while
/// pids were reused cannot make it loop.
fn descendants_in(procs: &[Proc], root: u32) -> HashSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for proc in procs {
        if proc.pid != proc.ppid {
            children.entry(proc.ppid).or_default().push(proc.pid);
        }
    }
    let mut below = HashSet::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            if child != root && below.insert(child) {
                stack.push(child);
            }
        }
    }
    below
}

/// A marker no process carries: no environment variable holds a NUL.
#[cfg(test)]
pub const NO_MARKER: &[u8] = b"\0";

/// Live descendants of `root`: ancestry alone.
#[cfg(test)]
pub fn live_descendants(table: &impl ProcessTable, root: u32) -> Vec<u32> {
    census(table, NO_MARKER, root, &[]).builds
}

/// Test seam: a `sleep 30` that `sh` detaches (re-parented away from this
/// process), carrying `name=value` in its environment; its pid.
#[cfg(test)]
pub fn spawn_detached_sleep(name: &str, value: &str) -> u32 {
    let out = std::process::Command::new("sh")
        .args(["-c", "sleep 30 </dev/null >/dev/null 2>&1 & echo $!"])
        .env(name, value)
        .output()
        .expect("sh runs");
    String::from_utf8(out.stdout)
        .ok()
        .and_then(|pid| pid.trim().parse().ok())
        .expect("sh printed the pid")
}

/// The build processes now (see [`census_of`]).
pub fn census(table: &impl ProcessTable, marker: &[u8], root: u32, exclude: &[u32]) -> Census {
    census_of(&table.scan(marker), root, exclude)
}

/// Ends every build process (see [`census_of`]): SIGTERM, then SIGKILL for
/// those still alive after `grace`. Returns how many there were.
///
/// A process that was a build when this started stays one until it ends,
/// even if it no longer looks like one: where there is no subreaper
/// (macOS), the children of a build that ended first are re-parented to
/// launchd, and those without a readable marker would drop out.
pub async fn end_all(
    table: &impl ProcessTable,
    marker: &[u8],
    root: u32,
    keep: &[u32],
    grace: Duration,
) -> usize {
    let first = census(table, marker, root, keep);
    if !first.any_alive() {
        return 0;
    }
    for &pid in &first.builds {
        table.end(pid, false);
    }
    // A grace past what an `Instant` holds: a year, as good as forever here.
    let now = tokio::time::Instant::now();
    let deadline = now
        .checked_add(grace)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400));
    loop {
        let procs = table.scan(marker);
        reap_zombies(&procs, root, keep);
        let mut left = census_of(&procs, root, keep).builds;
        for &pid in &first.builds {
            if !left.contains(&pid) && procs.iter().any(|p| p.pid == pid && !p.zombie) {
                left.push(pid);
            }
        }
        if left.is_empty() {
            return first.builds.len();
        }
        if tokio::time::Instant::now() >= deadline {
            for pid in left {
                table.end(pid, true);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    reap_orphans(table, root, keep);
    first.builds.len()
}

/// Reaps the zombies whose parent is `root` (this process: as a subreaper
/// it adopts orphans), leaving alone the children tokio waits for itself
/// (`keep`).
pub fn reap_orphans(table: &impl ProcessTable, root: u32, keep: &[u32]) {
    // Parents and states are enough: no environment is read.
    reap_zombies(&table.scan(&[]), root, keep);
}

/// [`reap_orphans`] over a scan already taken.
pub fn reap_zombies(procs: &[Proc], root: u32, keep: &[u32]) {
    for proc in procs {
        if proc.ppid == root && proc.zombie && !keep.contains(&proc.pid) {
            if let Ok(pid) = i32::try_from(proc.pid) {
                let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn proc(pid: u32, ppid: u32, mark: Mark) -> Proc {
        Proc {
            pid,
            ppid,
            zombie: false,
            mark,
        }
    }

    /// The agent is 10, its engine 11; 12 and 13 run below the engine.
    fn table() -> Vec<Proc> {
        vec![
            proc(1, 0, Mark::Unknown),
            proc(10, 1, Mark::NotOurs),
            proc(11, 10, Mark::Ours),
            proc(12, 11, Mark::Ours),
            proc(13, 12, Mark::NotOurs),
        ]
    }

    #[test]
    fn descendants_count_whatever_their_environment_says() {
        let mut procs = table();
        // env -i, and another user's (sudo -u) process below the engine.
        procs.push(proc(14, 11, Mark::NotOurs));
        procs.push(proc(15, 11, Mark::Unknown));
        let census = census_of(&procs, 10, &[11]);
        assert_eq!(census.builds, [12, 13, 14, 15]);
        assert!(census.any_alive());
        assert_eq!(census.unknown, [1], "init is unknown, not a build");
    }

    #[test]
    fn marked_processes_count_outside_the_tree_and_strangers_do_not() {
        let mut procs = table();
        procs.push(proc(20, 1, Mark::Ours)); // detached: setsid, double fork
        procs.push(proc(21, 20, Mark::NotOurs)); // its child with env -i
        procs.push(proc(30, 1, Mark::NotOurs)); // another session's
        procs.push(proc(31, 1, Mark::Unknown)); // another user's
        let census = census_of(&procs, 10, &[11]);
        assert_eq!(census.builds, [12, 13, 20]);
        assert_eq!(census.unknown, [1, 31]);
    }

    #[test]
    fn engines_zombies_and_the_agent_are_not_builds() {
        let mut procs = table();
        procs[3].zombie = true; // 12 exited; 13, its child, lives on below
        procs.push(proc(40, 1, Mark::Ours));
        procs.last_mut().unwrap().zombie = true;
        let census = census_of(&procs, 10, &[11]);
        assert_eq!(census.builds, [13]);
        let alone = census_of(
            &[proc(10, 1, Mark::Ours), proc(11, 10, Mark::Ours)],
            10,
            &[11],
        );
        assert!(!alone.any_alive(), "{alone:?}");
    }

    #[test]
    fn a_table_with_cycles_is_walked_once() {
        // Pids reused between two reads can make anything up.
        let procs = [
            proc(10, 1, Mark::NotOurs),
            proc(12, 13, Mark::NotOurs),
            proc(13, 12, Mark::NotOurs),
            proc(14, 10, Mark::NotOurs),
            proc(10, 14, Mark::NotOurs),
            proc(15, 15, Mark::NotOurs),
        ];
        let census = census_of(&procs, 10, &[]);
        assert_eq!(census.builds, [14]);
    }

    /// A table that hands out a fixed list and records what was ended.
    #[derive(Debug, Default)]
    struct Fake {
        procs: std::sync::Mutex<Vec<Proc>>,
        ended: std::sync::Mutex<Vec<(u32, bool)>>,
        /// Pids that ignore SIGTERM.
        stubborn: Vec<u32>,
    }

    impl ProcessTable for Fake {
        fn scan(&self, _marker: &[u8]) -> Vec<Proc> {
            self.procs.lock().unwrap().clone()
        }

        fn rss_kib(&self, _pid: u32) -> Option<u64> {
            None
        }

        fn end(&self, pid: u32, force: bool) {
            self.ended.lock().unwrap().push((pid, force));
            if force || !self.stubborn.contains(&pid) {
                self.procs.lock().unwrap().retain(|p| p.pid != pid);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ending_asks_first_then_forces_after_the_grace() {
        let fake = Fake {
            stubborn: vec![13],
            ..Fake::default()
        };
        *fake.procs.lock().unwrap() = table();
        let ended = end_all(&fake, b"M=1", 10, &[11], Duration::from_secs(5)).await;
        assert_eq!(ended, 2);
        assert_eq!(
            *fake.ended.lock().unwrap(),
            [(12, false), (13, false), (13, true)]
        );
        let pids: Vec<u32> = fake.scan(b"").iter().map(|p| p.pid).collect();
        assert_eq!(pids, [1, 10, 11], "the engine and the rest are untouched");
        assert_eq!(end_all(&fake, b"M=1", 10, &[11], Duration::ZERO).await, 0);
    }

    /// The real table sees this test's own processes: a child (ancestry,
    /// whatever its environment) and a detached process carrying a marker
    /// of this test's own (so that nothing else is touched).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_real_table_finds_children_and_marked_processes() {
        let marker = format!("JNLP_AGENT_TEST_MARKER={}", rand::random::<u64>());
        let (name, value) = marker.split_once('=').unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env_remove(name)
            .spawn()
            .unwrap();
        let detached = spawn_detached_sleep(name, value);
        let me = std::process::id();
        let table = os();
        let now = census(&table, marker.as_bytes(), me, &[]);
        assert!(now.builds.contains(&child.id()), "{now:?}");
        assert!(now.builds.contains(&detached), "{now:?}");
        let procs = table.scan(marker.as_bytes());
        let detached_proc = procs.iter().find(|p| p.pid == detached).unwrap();
        assert_eq!(detached_proc.mark, Mark::Ours);
        assert!(!descendants_in(&procs, me).contains(&detached));
        assert!(table.rss_kib(child.id()).is_some_and(|kib| kib > 0));
        // Another marker: neither counted nor touched.
        let other = census(&table, b"JNLP_AGENT_TEST_MARKER=other", me, &[]);
        assert!(!other.builds.contains(&detached));
        table.end(detached, true);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
