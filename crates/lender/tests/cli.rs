//! The `jnlp-lender` binary: `labels check` works, the network commands say
//! they are not there yet.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jnlp-lender"))
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run jnlp-lender: {err}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn labels_check_prints_the_canonical_form_and_the_verdict() {
    let out = run(&[
        "labels",
        "check",
        "macos&&arm64 && !xcode15",
        "macos arm64",
        "xcode16",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "(macos && arm64 && !xcode15)\nmatches\n");

    let out = run(&["labels", "check", "x86-64 || gpu", "linux"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "(x86-64 || gpu)\ndoes not match\n");
}

#[test]
fn labels_check_points_at_the_error() {
    let out = run(&["labels", "check", "macos && && arm64"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "jnlp-lender: invalid label expression: column 10: expected a label, \
         a quoted label, `!` or `(`, found `&&`\n  macos && && arm64\n           ^\n"
    );
}

#[test]
fn network_commands_are_not_implemented_yet() {
    for args in [
        &["serve"][..],
        &["token", "create", "--client", "ci"],
        &["return", "3", "--now"],
        &["agents"],
        &["leases"],
        &[
            "lease",
            "--labels",
            "linux",
            "--url",
            "https://b.example/",
            "--name",
            "n",
            "--secret-file",
            "/run/s",
            "--for",
            "2h",
            "--wait",
            "10m",
        ],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains("not implemented in this build"),
            "{args:?}"
        );
    }
    // A bad expression is refused before anything else.
    let out = run(&[
        "lease",
        "--labels",
        "a ->",
        "--url",
        "u",
        "--name",
        "n",
        "--secret-file",
        "f",
    ]);
    assert!(text(&out.stderr).contains("invalid label expression"));
}
