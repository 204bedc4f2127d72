//! The process table on Linux: `/proc`.
//!
//! `/proc/PID/stat` gives the parent and the state of every process, to
//! anyone. `/proc/PID/environ` is readable only with ptrace access: another
//! user's process (or, under Yama, one we may not trace) fails with
//! `EACCES`/`EPERM`, and is then [`Mark::Unknown`]. A process that is gone
//! by the time it is read is left out.

use std::io::ErrorKind;

use super::{Mark, Proc, ProcessTable};

/// `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct Linux;

impl ProcessTable for Linux {
    fn scan(&self, marker: &[u8]) -> Vec<Proc> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| read_proc(pid, marker))
            .collect()
    }

    fn rss_kib(&self, pid: u32) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

/// One process, `None` if it is gone.
fn read_proc(pid: u32, marker: &[u8]) -> Option<Proc> {
    let stat = read_small(&format!("/proc/{pid}/stat"), 512).ok()?;
    let (state, ppid) = parse_stat(&stat)?;
    let mark = if marker.is_empty() {
        Mark::NotOurs
    } else {
        match read_small(&format!("/proc/{pid}/environ"), 4096) {
            Ok(environ) if environ_has(&environ, marker) => Mark::Ours,
            // Kernel threads and zombies read as empty: they are not ours.
            Ok(_) => Mark::NotOurs,
            Err(err) if err.kind() == ErrorKind::NotFound => return None,
            Err(err) if err.raw_os_error() == Some(nix::libc::ESRCH) => return None,
            // EACCES, EPERM: another user's. Anything else: cannot tell either.
            Err(_) => Mark::Unknown,
        }
    };
    Some(Proc {
        pid,
        ppid,
        zombie: state == "Z" || state == "X",
        mark,
    })
}

/// A `/proc` file whole. They report a size of 0, so `std::fs::read`
/// asks for the size and position first and then reads 32 bytes at a
/// time; here a buffer of `likely` bytes takes most in one read.
fn read_small(path: &str, likely: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0; likely.max(1)];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// The state and the parent from `/proc/PID/stat`. The command name is in
/// parentheses and may hold any bytes the process set (`prctl`), UTF-8 or
/// not, parentheses and spaces included, so the fields are read after its
/// last `)`. Before, a name that was not UTF-8 hid its process from the
/// count of builds.
fn parse_stat(stat: &[u8]) -> Option<(&str, u32)> {
    let end = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[end + 1..]).ok()?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether a NUL-separated environment block holds exactly `entry`.
fn environ_has(environ: &[u8], entry: &[u8]) -> bool {
    environ.split(|&b| b == 0).any(|var| var == entry)
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
    fn a_proc_file_is_read_whole_whatever_the_first_guess() {
        let whole = std::fs::read("/proc/self/environ").unwrap();
        assert_eq!(read_small("/proc/self/environ", 1).unwrap(), whole);
        assert_eq!(read_small("/proc/self/environ", 1 << 20).unwrap(), whole);
        assert!(read_small("/proc/self/no-such-file", 16).is_err());
    }

    #[test]
    fn a_process_whose_name_is_not_utf8_is_found() {
        use std::os::unix::ffi::OsStrExt as _;
        let dir = std::env::temp_dir().join(format!("jnlp-agent-comm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The kernel names a process after the file it executes.
        let name = dir.join(std::ffi::OsStr::from_bytes(b"build-\xff\xfe"));
        let _ = std::fs::remove_file(&name);
        std::os::unix::fs::symlink("/bin/sleep", &name).unwrap();
        let mut child = std::process::Command::new(&name).arg("30").spawn().unwrap();
        let found = Linux.scan(&[]).iter().any(|p| p.pid == child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(found, "the child named with bytes that are not UTF-8");
    }

    #[test]
    fn stat_fields_come_after_the_command_name() {
        assert_eq!(parse_stat(b"42 (a) b) (c) S 7 42 42 0 -1"), Some(("S", 7)));
        assert_eq!(parse_stat(b"9 (zombie) Z 1 9"), Some(("Z", 1)));
        assert_eq!(parse_stat(b"9 (\xff\xfebuild) S 3 9"), Some(("S", 3)));
        assert_eq!(parse_stat(b"9 (cut"), None);
        assert_eq!(parse_stat(b"9 (x) R"), None);
    }

    #[test]
    fn this_process_is_in_the_table_and_readable() {
        let me = std::process::id();
        let procs = Linux.scan(b"NO_SUCH_VARIABLE=1");
        let mine = procs.iter().find(|p| p.pid == me).unwrap();
        assert_eq!(mine.mark, Mark::NotOurs);
        assert_eq!(mine.ppid, nix::unistd::getppid().as_raw() as u32);
        assert!(!mine.zombie);
        assert!(Linux.rss_kib(me).is_some_and(|kib| kib > 0));
        // Without a marker: the same parents, no environment read.
        let bare = Linux.scan(&[]);
        let mine = bare.iter().find(|p| p.pid == me).unwrap();
        assert_eq!(mine.ppid, nix::unistd::getppid().as_raw() as u32);
        assert!(bare.iter().all(|p| p.mark == Mark::NotOurs));
    }
}
