//! The `jnlp-lender` binary without a server: `labels check`, `token
//! create`, `serve`'s refusals, client errors. Against a server: see
//! `server.rs`.

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
fn serve_refuses_plain_http_beyond_loopback() {
    let db = std::env::temp_dir().join(format!("jnlp-lender-cli-{}.db", std::process::id()));
    let out = run(&[
        "serve",
        "--init",
        "--listen",
        "0.0.0.0:0",
        "--db",
        &db.display().to_string(),
    ]);
    let _ = std::fs::remove_file(&db);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not a loopback address"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn token_create_prints_a_token_once_and_stores_its_hash() {
    let dir = std::env::temp_dir().join(format!("jnlp-lender-cli-token-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let db = dir.join("lender.db");
    let db_arg = db.display().to_string();
    let out = run(&["token", "create", "--db", &db_arg, "--client", "ci"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    assert!(token.starts_with("jlc_"), "{token}");
    let out = run(&["token", "create", "--db", &db_arg, "--agent", "mac-01"]);
    assert!(text(&out.stdout).starts_with("jla_"));
    let stored = std::fs::read(&db).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let needle = token.as_bytes();
    assert!(
        !stored.windows(needle.len()).any(|w| w == needle),
        "the token itself is in the database"
    );
    let out = run(&["token", "create", "--db", &db_arg]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn client_commands_need_a_lender_and_fail_clearly_without_one() {
    let out = run(&["agents"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--lender"),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_jnlp-lender"))
        .args([
            "leases",
            "--lender",
            "http://127.0.0.1:1",
            "--token-file",
            "/nonexistent/token",
        ])
        .output()
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/token"),
        "{}",
        text(&out.stderr)
    );
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
        "--lender",
        "http://127.0.0.1:1",
        "--token-file",
        "t",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("invalid label expression"));
}
