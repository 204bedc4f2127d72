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

use test_support::Scratch as Dir;

/// `serve` with `args`, which must exit by itself within the deadline (a
/// server that starts is killed and reported).
fn serve_exits(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_jnlp-lender"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run jnlp-lender: {err}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child
                .wait_with_output()
                .unwrap_or_else(|err| panic!("{err}"));
            panic!(
                "serve {args:?} started instead of refusing: {}",
                text(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|err| panic!("{err}"))
}

#[test]
fn serve_refuses_a_missing_empty_or_foreign_database_and_names_it() {
    let dir = Dir::new("nopool");
    let missing = dir.path("typo.db");
    let out = serve_exits(&["--db", &missing]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&missing) && stderr.contains("does not exist") && stderr.contains("--init"),
        "{stderr}"
    );
    assert!(
        !std::path::Path::new(&missing).exists(),
        "a refused serve created the file"
    );

    let empty = dir.path("empty.db");
    std::fs::write(&empty, b"").unwrap_or_else(|err| panic!("{err}"));
    let out = serve_exits(&["--db", &empty]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&empty) && stderr.contains("is an empty file"),
        "{stderr}"
    );

    let garbage = dir.path("notes.txt");
    std::fs::write(&garbage, "these are my notes, not a database\n".repeat(200))
        .unwrap_or_else(|err| panic!("{err}"));
    let out = serve_exits(&["--db", &garbage]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&garbage), "{stderr}");

    // A database of another program: SQLite, but no pool in it.
    let foreign = dir.path("other.db");
    {
        let conn = rusqlite::Connection::open(&foreign).unwrap_or_else(|err| panic!("{err}"));
        conn.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
            .unwrap_or_else(|err| panic!("{err}"));
    }
    let out = serve_exits(&["--db", &foreign]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&foreign) && stderr.contains("holds no pool"),
        "{stderr}"
    );

    // A damaged pool: its pages overwritten in the middle.
    let damaged = dir.path("damaged.db");
    let out = run(&["token", "create", "--db", &damaged, "--client", "ci"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    {
        let conn = rusqlite::Connection::open(&damaged).unwrap_or_else(|err| panic!("{err}"));
        conn.execute_batch(
            "PRAGMA journal_mode=DELETE; CREATE TABLE filler (x TEXT); \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) \
             INSERT INTO filler SELECT hex(randomblob(100)) FROM n;",
        )
        .unwrap_or_else(|err| panic!("{err}"));
    }
    let mut bytes = std::fs::read(&damaged).unwrap_or_else(|err| panic!("{err}"));
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 8192] {
        *byte = 0xA5;
    }
    std::fs::write(&damaged, bytes).unwrap_or_else(|err| panic!("{err}"));
    let out = serve_exits(&["--db", &damaged]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&damaged), "{stderr}");
}

#[test]
fn token_create_out_writes_a_private_new_file_and_list_and_revoke_never_show_a_token() {
    let dir = Dir::new("tokens");
    let db = dir.path("pool.db");
    let out_file = dir.path("ci.token");
    let out = run(&[
        "token", "create", "--db", &db, "--client", "ci", "--out", &out_file,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "", "the token was printed as well");
    let token = std::fs::read_to_string(&out_file).unwrap_or_default();
    let token = token.trim().to_owned();
    assert!(token.starts_with("jlc_"), "{token}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&out_file)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_default();
        assert_eq!(mode, 0o600);
    }
    // Never overwritten.
    let out = run(&[
        "token", "create", "--db", &db, "--client", "ci2", "--out", &out_file,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&out_file)
            .unwrap_or_default()
            .trim(),
        token
    );
    let out = run(&["token", "create", "--db", &db, "--agent", "mac-01"]);
    let agent_token = text(&out.stdout).trim().to_owned();

    let out = run(&["token", "list", "--db", &db]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(
        listing.contains("client\tci\t") && listing.contains("agent\tmac-01\t"),
        "{listing}"
    );
    assert!(
        !listing.contains("ci2"),
        "a refused create stored its token: {listing}"
    );
    let out = run(&["token", "list", "--db", &db, "--json"]);
    let json = text(&out.stdout);
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{json}");
    assert_eq!(listed[0]["revoked_ms"], serde_json::Value::Null);
    for secret in [&token, &agent_token] {
        assert!(!listing.contains(secret.as_str()) && !json.contains(secret.as_str()));
        assert!(!json.contains(&secret[4..20]), "part of a token is listed");
    }

    let out = run(&["token", "revoke", "--db", &db, "mac-01"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run(&["token", "list", "--db", &db, "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap_or_default();
    assert!(listed[1]["revoked_ms"].is_u64(), "{listed}");
    let out = run(&["token", "revoke", "--db", &db, "mac-01"]);
    assert_eq!(out.status.code(), Some(1), "revoked twice");
    let out = run(&["token", "list", "--db", &dir.path("typo.db")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--init") || text(&out.stderr).contains("does not exist"));
}

#[cfg(unix)]
#[test]
fn a_token_or_secret_file_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = Dir::new("exposed");
    let token = dir.path("team.token");
    std::fs::write(&token, "jlc_0123456789abcdef").unwrap_or_else(|err| panic!("{err}"));
    let mode = |path: &str, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|err| panic!("{err}"))
    };
    let leases = |token: &str| {
        run(&[
            "leases",
            "--lender",
            "http://127.0.0.1:1",
            "--token-file",
            token,
        ])
    };
    mode(&token, 0o644);
    let out = leases(&token);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "warning: {token} holds a secret but other users can read it (mode 0644); run `chmod 600 {token}`"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("jlc_0123456789abcdef"), "{stderr}");
    mode(&token, 0o600);
    let out = leases(&token);
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
}
