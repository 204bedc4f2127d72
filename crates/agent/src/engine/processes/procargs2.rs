//! The buffer `sysctl(CTL_KERN, KERN_PROCARGS2, pid)` returns on macOS: a
//! process's exec path, arguments and environment, as the kernel laid them
//! out at the top of its stack at `execve`. Pure, so that it is tested on
//! every platform.
//!
//! ```text
//! argc             i32, native byte order
//! exec path        NUL-terminated ("executable_path=" stripped by the kernel)
//! NUL padding      to the next 8 bytes from the path's start (pointer size)
//! argv[0..argc]    each NUL-terminated; an argument may be empty
//! env[..]          each NUL-terminated
//! NUL padding      to the next 8 bytes
//! apple[..]        "ptr_munge=", "main_stack=", ... (more key=value strings)
//! ```
//!
//! The environment is cut off (the buffer ends after argv) when the kernel
//! withholds it: the target is a restricted binary, SIP is on, and the
//! caller lacks `com.apple.private.read-environment-variables` (xnu,
//! `sysctl_procargsx`). An empty environment therefore means "cannot tell",
//! not "not ours".
//!
//! Nothing here trusts the buffer: any length, any bytes; the work is
//! bounded by the buffer's length (an absurd `argc` just runs out of
//! bytes), and nothing panics.

use super::Mark;

/// Pointer size of the target process: the exec path is padded to it.
/// 8 for every process current macOS runs (arm64, x86_64 and Rosetta).
const PATH_ALIGN: usize = 8;

/// A parsed `KERN_PROCARGS2` buffer, borrowing from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcArgs<'a> {
    /// The path the process was executed from.
    pub exec_path: &'a [u8],
    /// Its arguments (`argc` of them).
    pub argv: Vec<&'a [u8]>,
    /// Its environment, `NAME=value` each; empty when withheld. May be
    /// followed by the kernel's own "apple" strings when no padding
    /// separated them.
    pub env: Vec<&'a [u8]>,
}

/// Why a buffer is not a `KERN_PROCARGS2` layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Fewer than the four bytes of `argc`.
    #[error("shorter than argc")]
    NoArgc,
    /// A negative `argc`.
    #[error("negative argc {0}")]
    NegativeArgc(i32),
    /// The buffer ends inside the exec path or the arguments.
    #[error("cut off before the end of the arguments")]
    Truncated,
}

/// Parses a `KERN_PROCARGS2` buffer.
pub fn parse(buf: &[u8]) -> Result<ProcArgs<'_>, Malformed> {
    let (argc, rest) = buf.split_first_chunk::<4>().ok_or(Malformed::NoArgc)?;
    let argc = i32::from_ne_bytes(*argc);
    if argc < 0 {
        return Err(Malformed::NegativeArgc(argc));
    }
    let (exec_path, mut rest) = next_string(rest).ok_or(Malformed::Truncated)?;
    // Skip the padding, and only the padding: NULs past it are empty
    // leading arguments, which careless parsers drop.
    let used = exec_path.len() + 1;
    let padding = used.next_multiple_of(PATH_ALIGN) - used;
    let nuls = rest.iter().take(padding).take_while(|&&b| b == 0).count();
    rest = &rest[nuls..];
    let mut argv = Vec::new();
    for _ in 0..argc {
        let (arg, after) = next_string(rest).ok_or(Malformed::Truncated)?;
        argv.push(arg);
        rest = after;
    }
    let mut env = Vec::new();
    // An empty string ends the environment: the padding before the apple
    // strings, or the zeros of a withheld environment.
    while let Some((var, after)) = next_string(rest) {
        if var.is_empty() {
            break;
        }
        env.push(var);
        rest = after;
    }
    Ok(ProcArgs {
        exec_path,
        argv,
        env,
    })
}

/// The NUL-terminated string at the start of `buf` and what follows its
/// NUL; `None` when there is no NUL (the buffer was cut).
fn next_string(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..end], &buf[end + 1..]))
}

/// What a process's `KERN_PROCARGS2` buffer says about `marker` (a whole
/// `NAME=value` variable): unknown when the buffer is malformed or shows
/// no environment at all.
pub fn mark(buf: &[u8], marker: &[u8]) -> Mark {
    match parse(buf) {
        Ok(args) if args.env.is_empty() => Mark::Unknown,
        Ok(args) if args.env.contains(&marker) => Mark::Ours,
        Ok(_) => Mark::NotOurs,
        Err(_) => Mark::Unknown,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MARKER: &[u8] = b"JNLP_AGENT_SESSION=42-ab";

    /// A buffer as the kernel builds it.
    fn buffer(path: &str, argv: &[&str], env: &[&str], apple: &[&str]) -> Vec<u8> {
        let mut buf = (argv.len() as i32).to_ne_bytes().to_vec();
        let start = buf.len();
        buf.extend_from_slice(path.as_bytes());
        buf.push(0);
        while (buf.len() - start) % PATH_ALIGN != 0 {
            buf.push(0);
        }
        let strings_start = buf.len();
        for s in argv.iter().chain(env) {
            buf.extend_from_slice(s.as_bytes());
            buf.push(0);
        }
        while (buf.len() - strings_start) % PATH_ALIGN != 0 {
            buf.push(0);
        }
        for s in apple {
            buf.extend_from_slice(s.as_bytes());
            buf.push(0);
        }
        buf
    }

    fn strings<'a>(list: &[&'a [u8]]) -> Vec<&'a str> {
        list.iter()
            .map(|s| std::str::from_utf8(s).unwrap())
            .collect()
    }

    #[test]
    fn a_buffer_as_the_kernel_lays_it_out() {
        let buf = buffer(
            "/bin/sleep",
            &["sleep", "30"],
            &["HOME=/Users/ci", "JNLP_AGENT_SESSION=42-ab"],
            &["ptr_munge=", "main_stack="],
        );
        let args = parse(&buf).unwrap();
        assert_eq!(args.exec_path, b"/bin/sleep");
        assert_eq!(strings(&args.argv), ["sleep", "30"]);
        assert_eq!(
            strings(&args.env),
            ["HOME=/Users/ci", "JNLP_AGENT_SESSION=42-ab"]
        );
        assert_eq!(mark(&buf, MARKER), Mark::Ours);
        assert_eq!(mark(&buf, b"JNLP_AGENT_SESSION=42-a"), Mark::NotOurs);
    }

    #[test]
    fn padding_of_every_length_and_none() {
        for len in 1..=17 {
            let path = "/".repeat(len);
            let buf = buffer(&path, &["x"], &["A=1"], &[]);
            let args = parse(&buf).unwrap();
            assert_eq!(args.exec_path, path.as_bytes());
            assert_eq!(strings(&args.argv), ["x"], "path of {len} bytes");
            assert_eq!(strings(&args.env), ["A=1"]);
        }
    }

    #[test]
    fn empty_arguments_are_kept_in_place() {
        // `execve("/bin/x", ["", "", "a"], ...)`: the empty arguments come
        // right after the padding and must not be taken for more of it.
        let buf = buffer("/bin/x", &["", "", "a"], &["JNLP_AGENT_SESSION=42-ab"], &[]);
        let args = parse(&buf).unwrap();
        assert_eq!(strings(&args.argv), ["", "", "a"]);
        assert_eq!(strings(&args.env), ["JNLP_AGENT_SESSION=42-ab"]);
        assert_eq!(mark(&buf, MARKER), Mark::Ours);
    }

    #[test]
    fn a_withheld_environment_is_unknown() {
        // The kernel cuts the buffer after argv.
        let buf = buffer("/bin/sleep", &["sleep", "30"], &[], &[]);
        assert!(parse(&buf).unwrap().env.is_empty());
        assert_eq!(mark(&buf, MARKER), Mark::Unknown);
        // Or leaves zeros where it was.
        let mut zeroed = buffer("/bin/sleep", &["sleep"], &[], &[]);
        zeroed.extend_from_slice(&[0; 64]);
        assert_eq!(mark(&zeroed, MARKER), Mark::Unknown);
    }

    #[test]
    fn apple_strings_right_after_the_environment_do_no_harm() {
        // No padding when argv and env end on 8 bytes: the apple strings
        // follow at once and read as more variables.
        let buf = buffer("/bin/x", &["1234567"], &["A=12345"], &["ptr_munge="]);
        let args = parse(&buf).unwrap();
        assert_eq!(strings(&args.env), ["A=12345", "ptr_munge="]);
        assert_eq!(mark(&buf, MARKER), Mark::NotOurs);
    }

    #[test]
    fn malformed_buffers_are_refused() {
        assert_eq!(parse(b""), Err(Malformed::NoArgc));
        assert_eq!(parse(b"\x01\0\0"), Err(Malformed::NoArgc));
        assert_eq!(
            parse(&(-1i32).to_ne_bytes()),
            Err(Malformed::NegativeArgc(-1))
        );
        let mut huge = i32::MAX.to_ne_bytes().to_vec();
        huge.extend_from_slice(b"/bin/x\0\0a\0b\0");
        assert_eq!(parse(&huge), Err(Malformed::Truncated));
        assert_eq!(mark(&huge, MARKER), Mark::Unknown);
        let no_nul = [1, 0, 0, 0, b'/', b'b'];
        assert_eq!(parse(&no_nul), Err(Malformed::Truncated));
    }

    #[test]
    fn every_truncation_parses_or_is_refused() {
        let buf = buffer(
            "/usr/bin/make",
            &["make", "", "-j8"],
            &["A=1", "JNLP_AGENT_SESSION=42-ab", "B=2"],
            &["ptr_munge="],
        );
        for len in 0..=buf.len() {
            let cut = &buf[..len];
            match parse(cut) {
                // Cut inside the environment: the variables before the cut.
                Ok(args) => {
                    assert_eq!(strings(&args.argv), ["make", "", "-j8"]);
                    assert!(args.env.len() <= 4, "{len}");
                }
                Err(err) => assert!(
                    matches!(err, Malformed::NoArgc | Malformed::Truncated),
                    "{len}: {err}"
                ),
            }
            let _ = mark(cut, MARKER);
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics_and_stays_bounded(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(args) = parse(&buf) {
                // Every string takes at least its NUL.
                prop_assert!(args.argv.len() + args.env.len() < buf.len());
            }
            let _ = mark(&buf, MARKER);
        }

        #[test]
        fn any_layout_round_trips(
            argv in proptest::collection::vec("[a-z]{0,12}", 0..6),
            env in proptest::collection::vec("[A-Z]{1,6}=[a-z0-9]{0,12}", 1..6),
            path in "/[a-z/]{0,40}",
        ) {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let env: Vec<&str> = env.iter().map(String::as_str).collect();
            let buf = buffer(&path, &argv, &env, &[]);
            let args = parse(&buf).unwrap();
            prop_assert_eq!(args.exec_path, path.as_bytes());
            prop_assert_eq!(strings(&args.argv), argv);
            prop_assert_eq!(strings(&args.env), env);
        }
    }
}
