//! The process table on macOS: `proc_pidinfo` for the processes, their
//! parents and states (through `sysinfo`), and `sysctl(KERN_PROCARGS2)`
//! for each one's environment (through `sysctl`, parsed by
//! [`super::procargs2`]). The workspace forbids `unsafe`; these two crates
//! hold the system calls.
//!
//! Why not `sysinfo`'s own environment: it turns every failure into an
//! empty list, and drops empty arguments (which shifts the environment).
//! Here a failed read (`EINVAL`: another user's process, or one without a
//! user stack) and a withheld environment (a restricted binary under SIP)
//! are both [`Mark::Unknown`], and a process that is simply gone is left
//! out.
//!
//! There is no child subreaper on macOS: orphans go to launchd, so a
//! detached build process is found by its marker alone (or not at all if
//! its environment is withheld; see the module documentation of
//! [`super`]).
//!
//! Verified only by compiling (x86_64 and aarch64): nothing here has run on
//! a Mac yet.

use nix::sys::signal::kill;
use nix::unistd::Pid;
use sysctl::{Ctl, CtlValue, Sysctl as _};
use sysinfo::{ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};

use super::{procargs2, Mark, Proc, ProcessTable};

/// `proc_pidinfo` and `KERN_PROCARGS2`.
#[derive(Debug, Clone, Copy)]
pub struct MacOs;

impl ProcessTable for MacOs {
    fn scan(&self, marker: &[u8]) -> Vec<Proc> {
        // A new table every time: nothing is carried over between scans.
        let mut system = System::new();
        system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing(),
        );
        system
            .processes()
            .iter()
            .filter_map(|(pid, process)| {
                let pid = pid.as_u32();
                let mark = if marker.is_empty() {
                    Mark::NotOurs
                } else {
                    match procargs2(pid) {
                        Some(buf) => procargs2::mark(&buf, marker),
                        None if !exists(pid) => return None,
                        None => Mark::Unknown,
                    }
                };
                Some(Proc {
                    pid,
                    ppid: process.parent().map_or(0, |parent| parent.as_u32()),
                    zombie: matches!(process.status(), ProcessStatus::Zombie),
                    mark,
                })
            })
            .collect()
    }

    fn rss_kib(&self, pid: u32) -> Option<u64> {
        let pid = sysinfo::Pid::from_u32(pid);
        let mut system = System::new();
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().with_memory(),
        );
        system.process(pid).map(|process| process.memory() / 1024)
    }
}

/// The raw `KERN_PROCARGS2` buffer of `pid`; `None` when the kernel
/// refuses it (another user's process, a process gone or without a user
/// stack) or the read came back short (the size changed between the size
/// query and the read, as it does when the environment is withheld).
fn procargs2(pid: u32) -> Option<Vec<u8>> {
    let pid = i32::try_from(pid).ok()?;
    let ctl = Ctl::Oid(vec![nix::libc::CTL_KERN, nix::libc::KERN_PROCARGS2, pid]);
    // The crate asserts that the kernel never reports more bytes than the
    // buffer holds; xnu never does, but a panic here would take the
    // supervisor with it, so a broken promise only makes one unknown.
    match std::panic::catch_unwind(|| ctl.value()) {
        Ok(Ok(CtlValue::Node(buf))) => Some(buf),
        _ => None,
    }
}

/// Whether `pid` still exists (signal 0: `EPERM` means it does).
fn exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(kill(Pid::from_raw(pid), None), Err(nix::Error::ESRCH))
}
