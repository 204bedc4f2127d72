//! Unit tests for [`super::parse`]: the binary crate has no lib target, so
//! `tests/cli_config.rs` can only run the built binary.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;

use super::{parse, CliError, Command};
use crate::settings::{
    Credentials, HostPort, LenderSettings, LogFormat, Secret, Settings, TransportChoice, Tunnel,
};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const PASSWORD: &str = "hunter2-Pa55word";
/// A syntactically valid base64 public key stand-in.
const IDENTITY: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA";
const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Command, CliError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let argv = std::iter::once("jnlp-agent")
        .chain(args.iter().copied())
        .map(OsString::from);
    parse(argv, &|name| env.get(name).cloned())
}

fn settings_env(args: &[&str], env: &[(&str, &str)]) -> Settings {
    match run(args, env) {
        Ok(Command::Run(settings)) => settings,
        Ok(other) => panic!("expected Run for {args:?}, got {other:?}"),
        Err(err) => panic!("expected Run for {args:?}, got error: {err}"),
    }
}

fn settings(args: &[&str]) -> Settings {
    settings_env(args, &[])
}

fn error_env(args: &[&str], env: &[(&str, &str)]) -> CliError {
    match run(args, env) {
        Ok(command) => panic!("expected an error for {args:?}, got {command:?}"),
        Err(err) => err,
    }
}

fn error(args: &[&str]) -> CliError {
    error_env(args, &[])
}

/// `-url http://c:8080 -secret S -name N` plus `extra`.
fn with_basics<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["-url", "http://c:8080", "-secret", SECRET, "-name", "n"];
    args.extend_from_slice(extra);
    args
}

/// A temporary file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, contents: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!(
            "jnlp-agent-cli-{}-{tag}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    fn at(&self) -> String {
        format!("@{}", self.0.display())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

// --- equivalences ----------------------------------------------------------

#[test]
fn agent_jar_options_and_image_variables_give_the_same_settings() {
    let from_options = settings(&[
        "-url",
        "http://c:8080",
        "-secret",
        SECRET,
        "-name",
        "N",
        "-workDir",
        "/w",
    ]);
    let from_env = settings_env(
        &[],
        &[
            ("JENKINS_URL", "http://c:8080"),
            ("JENKINS_SECRET", SECRET),
            ("JENKINS_AGENT_NAME", "N"),
            ("JENKINS_AGENT_WORKDIR", "/w"),
        ],
    );
    assert_eq!(from_options, from_env);
    assert_eq!(from_options.urls, ["http://c:8080/"]);
    assert_eq!(from_options.secret, Some(Secret::new(SECRET)));
    assert_eq!(from_options.name.as_deref(), Some("N"));
    assert_eq!(from_options.work_dir.as_deref(), Some(Path::new("/w")));
    assert_eq!(from_options.internal_dir, "remoting");
}

#[test]
fn every_image_variable_matches_its_option() {
    let from_options = settings(&[
        "-direct",
        "c:50000",
        "-instanceIdentity",
        IDENTITY,
        "-protocols",
        "JNLP4-connect",
        "-secret",
        SECRET,
        "-name",
        "N",
        "-workDir",
        "/w",
        "--engine-jar",
        "/r.jar",
    ]);
    let from_env = settings_env(
        &["--engine-jar", "/r.jar"],
        &[
            ("JENKINS_DIRECT_CONNECTION", "c:50000"),
            ("JENKINS_INSTANCE_IDENTITY", IDENTITY),
            ("JENKINS_PROTOCOLS", "JNLP4-connect"),
            ("JENKINS_SECRET", SECRET),
            ("JENKINS_NAME", "N"),
            ("JENKINS_AGENT_WORKDIR", "/w"),
        ],
    );
    assert_eq!(from_options, from_env);

    let tunnel_option = settings(&with_basics(&["-tunnel", "t:1"]));
    let tunnel_env = settings_env(&with_basics(&[]), &[("JENKINS_TUNNEL", "t:1")]);
    assert_eq!(tunnel_option, tunnel_env);
}

#[test]
fn double_dash_and_inline_values_equal_single_dash() {
    let cert = TempFile::new("cert", PEM.as_bytes());
    let at_cert = cert.at();
    let pairs: Vec<(&str, Option<&str>)> = vec![
        ("url", Some("http://a:8080")),
        ("url", Some("https://b/jenkins")),
        ("secret", Some(SECRET)),
        ("name", Some("n")),
        ("workDir", Some("/w")),
        ("internalDir", Some("int")),
        ("failIfWorkDirIsMissing", None),
        ("tunnel", Some("t:")),
        ("credentials", Some("u:p")),
        ("proxyCredentials", Some("pu:pp")),
        ("cert", Some(PEM)),
        ("cert", Some(&at_cert)),
        ("noReconnectAfter", Some("10m")),
        ("noKeepAlive", None),
        ("jar-cache", Some("/cache")),
    ];
    let spell = |dashes: &str, inline: bool| -> Vec<String> {
        let mut args = Vec::new();
        for (name, value) in &pairs {
            match (value, inline) {
                (Some(v), true) => args.push(format!("{dashes}{name}={v}")),
                (Some(v), false) => {
                    args.push(format!("{dashes}{name}"));
                    args.push((*v).to_owned());
                }
                (None, _) => args.push(format!("{dashes}{name}")),
            }
        }
        args
    };
    let parse_owned = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        settings(&refs)
    };
    let single = parse_owned(spell("-", false));
    assert_eq!(single, parse_owned(spell("--", false)));
    assert_eq!(single, parse_owned(spell("-", true)));
    assert_eq!(single, parse_owned(spell("--", true)));
    assert_eq!(single.urls, ["http://a:8080/", "https://b/jenkins/"]);
    assert_eq!(single.internal_dir, "int");
    assert!(single.fail_if_work_dir_is_missing && single.no_keep_alive);
    assert_eq!(single.certs.len(), 2);
    assert_eq!(single.no_reconnect_after, Some(Duration::from_secs(600)));
    assert_eq!(single.jar_cache.as_deref(), Some(Path::new("/cache")));
}

#[test]
fn aliases_mean_their_option() {
    assert_eq!(
        settings(&with_basics(&["-noreconnect"])),
        settings(&with_basics(&["-noReconnect"]))
    );
    assert_eq!(
        settings(&with_basics(&["-disableHttpsCertValidation"])),
        settings(&with_basics(&["-noCertificateCheck"]))
    );
    assert_eq!(
        settings(&with_basics(&["-jnlpCredentials", "u:p"])),
        settings(&with_basics(&["-credentials", "u:p"]))
    );
    let direct = |spelling| {
        settings(&[
            spelling,
            "c:1",
            "-instanceIdentity",
            IDENTITY,
            "--engine-jar",
            "/r.jar",
            "-secret",
            SECRET,
            "-name",
            "n",
        ])
    };
    assert_eq!(direct("-directConnection"), direct("-direct"));
}

// --- precedence --------------------------------------------------------------

#[test]
fn options_beat_the_environment() {
    let env = [
        ("JENKINS_URL", "http://env:8080"),
        ("JENKINS_SECRET", "envsecret"),
        ("JENKINS_AGENT_NAME", "env-name"),
        ("JENKINS_AGENT_WORKDIR", "/env"),
        ("JENKINS_TUNNEL", "env:1"),
    ];
    let s = settings_env(
        &[
            "-url",
            "http://opt:8080",
            "-secret",
            SECRET,
            "-name",
            "opt-name",
            "-workDir",
            "/opt",
            "-tunnel",
            "opt:2",
        ],
        &env,
    );
    assert_eq!(s.urls, ["http://opt:8080/"]);
    assert_eq!(s.secret, Some(Secret::new(SECRET)));
    assert_eq!(s.name.as_deref(), Some("opt-name"));
    assert_eq!(s.work_dir.as_deref(), Some(Path::new("/opt")));
    assert_eq!(s.tunnel.unwrap().host.as_deref(), Some("opt"));
}

#[test]
fn agent_name_beats_the_older_jenkins_name() {
    let s = settings_env(
        &["-url", "http://c/", "-secret", SECRET],
        &[("JENKINS_AGENT_NAME", "new"), ("JENKINS_NAME", "old")],
    );
    assert_eq!(s.name.as_deref(), Some("new"));
}

#[test]
fn empty_and_padded_variables() {
    // Empty means unset; values are trimmed (the image's script word-splits).
    let s = settings_env(
        &["-url", "http://c/", "-name", "n"],
        &[("JENKINS_SECRET", "  abc\n"), ("JENKINS_TUNNEL", "")],
    );
    assert_eq!(s.secret, Some(Secret::new("abc")));
    assert_eq!(s.tunnel, None);
}

#[test]
fn the_last_of_a_repeated_single_valued_option_wins() {
    let s = settings(&with_basics(&[
        "-name", "second", "-workDir", "/a", "-workDir", "/b",
    ]));
    assert_eq!(s.name.as_deref(), Some("second"));
    assert_eq!(s.work_dir.as_deref(), Some(Path::new("/b")));
}

#[test]
fn remoting_opts_come_before_the_command_line() {
    let s = settings_env(
        &with_basics(&["-workDir", "/cli"]),
        &[(
            "REMOTING_OPTS",
            "-noKeepAlive -workDir /env -url http://extra/",
        )],
    );
    assert!(s.no_keep_alive);
    assert_eq!(s.work_dir.as_deref(), Some(Path::new("/cli")));
    assert_eq!(s.urls, ["http://extra/", "http://c:8080/"]);
}

// --- forms -----------------------------------------------------------------

#[test]
fn legacy_positional_secret_then_name() {
    let s = settings(&["-url", "http://c:8080", SECRET, "node-1"]);
    assert_eq!(
        s,
        settings(&[
            "-url",
            "http://c:8080",
            "-secret",
            SECRET,
            "-name",
            "node-1"
        ])
    );
    // Anywhere on the line, and after `--`.
    assert_eq!(s, settings(&[SECRET, "-url", "http://c:8080", "node-1"]));
    assert_eq!(
        s,
        settings(&["-url", "http://c:8080", "--", SECRET, "node-1"])
    );
}

#[test]
fn legacy_positional_errors() {
    assert!(matches!(
        error(&["-url", "http://c/", SECRET]),
        CliError::PositionalCount { count: 1 }
    ));
    assert!(matches!(
        error(&["-url", "http://c/", SECRET, "n", "extra"]),
        CliError::PositionalCount { count: 3 }
    ));
    assert!(matches!(
        error(&["-url", "http://c/", "-secret", SECRET, SECRET, "n"]),
        CliError::PositionalAndOption {
            option: "-secret",
            ..
        }
    ));
    assert!(matches!(
        error(&["-url", "http://c/", "-name", "n", SECRET, "n"]),
        CliError::PositionalAndOption {
            option: "-name",
            ..
        }
    ));
}

#[test]
fn secret_from_a_file_loses_its_trailing_newline() {
    let file = TempFile::new("secret", format!("{SECRET}\n").as_bytes());
    let at = file.at();
    let s = settings(&["-url", "http://c/", "-secret", &at, "-name", "n"]);
    assert_eq!(s.secret, Some(Secret::new(SECRET)));
    // `-secret=@FILE` too.
    let inline = format!("-secret={at}");
    assert_eq!(s, settings(&["-url", "http://c/", &inline, "-name", "n"]));
}

#[test]
fn secret_and_token_files_others_can_read_are_reported() {
    use control::secret_file::ReadableByOthers;
    use std::os::unix::fs::PermissionsExt as _;
    let secret = TempFile::new("exposed-secret", format!("{SECRET}\n").as_bytes());
    let token = TempFile::new("exposed-token", TOKEN.as_bytes());
    let chmod = |file: &TempFile, mode| {
        std::fs::set_permissions(&file.0, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let at = secret.at();
    let token_path = token.0.to_str().unwrap();
    let args = [
        "-url",
        "http://c/",
        "-secret",
        &at,
        "-name",
        "n",
        "--lender",
        "https://pool.example/",
        "--lender-token-file",
        token_path,
    ];
    chmod(&secret, 0o600);
    chmod(&token, 0o640);
    assert_eq!(settings(&args).exposed_secret_files, []);

    chmod(&secret, 0o644);
    chmod(&token, 0o604);
    let s = settings(&args);
    // Still used: a warning, not a refusal.
    assert_eq!(s.secret, Some(Secret::new(SECRET)));
    assert_eq!(s.lender.unwrap().token, Secret::new(TOKEN));
    assert_eq!(
        s.exposed_secret_files,
        [
            ReadableByOthers {
                path: secret.0.clone(),
                mode: 0o644
            },
            ReadableByOthers {
                path: token.0.clone(),
                mode: 0o604
            }
        ]
    );
    // The token file from the environment is checked too.
    let from_env = settings_env(
        &["-url", "http://c/", "-secret", SECRET, "-name", "n"],
        &[
            ("JNLP_AGENT_LENDER", "https://pool.example/"),
            ("JNLP_AGENT_LENDER_TOKEN_FILE", token_path),
        ],
    );
    assert_eq!(from_env.exposed_secret_files.len(), 1);
    assert_eq!(from_env.exposed_secret_files[0].path, token.0);
    // A literal secret names no file.
    chmod(&secret, 0o600);
    let literal = settings_env(
        &["-url", "http://c/", "-name", "n"],
        &[("JENKINS_SECRET", SECRET)],
    );
    assert_eq!(literal.exposed_secret_files, []);
}

#[test]
fn jenkins_secret_is_never_a_file_name() {
    let s = settings_env(
        &["-url", "http://c/", "-name", "n"],
        &[("JENKINS_SECRET", "@/etc/passwd")],
    );
    assert_eq!(s.secret, Some(Secret::new("@/etc/passwd")));
}

#[test]
fn unusable_secret_files_are_named() {
    let missing = "@/nonexistent/jnlp-agent/secret";
    let err = error(&["-url", "http://c/", "-secret", missing, "-name", "n"]);
    assert!(matches!(
        &err,
        CliError::ReadFile {
            option: "-secret",
            ..
        }
    ));
    assert!(
        err.to_string().contains("/nonexistent/jnlp-agent/secret"),
        "{err}"
    );

    let empty = TempFile::new("empty", b"\n");
    let err = error(&["-url", "http://c/", "-secret", &empty.at(), "-name", "n"]);
    assert!(matches!(err, CliError::ReadFile { .. }));
    assert!(err.to_string().contains("empty"), "{err}");

    let two_lines = TempFile::new("two", format!("{SECRET}\nmore-{SECRET}\n").as_bytes());
    let err = error(&[
        "-url",
        "http://c/",
        "-secret",
        &two_lines.at(),
        "-name",
        "n",
    ]);
    assert!(matches!(err, CliError::ReadFile { .. }));
    assert!(!err.to_string().contains(SECRET), "{err}");

    let huge = TempFile::new("huge", &vec![b'a'; 70 * 1024]);
    let err = error(&["-url", "http://c/", "-secret", &huge.at(), "-name", "n"]);
    assert!(err.to_string().contains("64 KiB"), "{err}");
}

#[test]
fn values_starting_with_a_dash_are_values() {
    let s = settings(&[
        "-url",
        "http://c/",
        "-secret",
        "-noReconnect",
        "-name",
        "-url",
    ]);
    assert_eq!(s.secret, Some(Secret::new("-noReconnect")));
    assert_eq!(s.name.as_deref(), Some("-url"));
    assert!(!s.no_reconnect);
    assert_eq!(s.urls, ["http://c/"]);
}

#[test]
fn repeated_urls_are_kept_in_order_and_end_with_a_slash() {
    let s = settings(&[
        "-url",
        "http://a:8080",
        "--url",
        "https://b/jenkins/",
        "-url=http://c",
        "-secret",
        SECRET,
        "-name",
        "n",
    ]);
    assert_eq!(
        s.urls,
        ["http://a:8080/", "https://b/jenkins/", "http://c/"]
    );
}

#[test]
fn tunnel_forms() {
    let tunnel = |value: &'static str| settings(&with_basics(&["-tunnel", value])).tunnel;
    let t = |host: Option<&str>, port: Option<u16>| {
        Some(Tunnel {
            host: host.map(str::to_owned),
            port,
        })
    };
    assert_eq!(tunnel("proxy:50000"), t(Some("proxy"), Some(50000)));
    assert_eq!(tunnel("proxy:"), t(Some("proxy"), None));
    assert_eq!(tunnel(":50000"), t(None, Some(50000)));
    assert_eq!(tunnel("[::1]:50000"), t(Some("::1"), Some(50000)));
    assert_eq!(tunnel("[::1]:"), t(Some("::1"), None));
    for bad in [
        "proxy",
        ":",
        "proxy:port",
        "proxy:0",
        "proxy:65536",
        "::1:50000",
        "[::1",
    ] {
        let err = error(&with_basics(&["-tunnel", bad]));
        assert!(
            matches!(
                err,
                CliError::BadHostPort {
                    option: "-tunnel",
                    ..
                }
            ),
            "{bad}: {err:?}"
        );
    }
    // The same parser serves a JNLP file's -tunnel.
    use crate::connect::address;
    assert_eq!(address::tunnel("proxy:").ok(), tunnel("proxy:"));
    assert!(matches!(
        address::tunnel("nocolon"),
        Err(address::AddressError {
            expected: address::TUNNEL_FORMS,
            ..
        })
    ));
    let err = error_env(&with_basics(&[]), &[("JENKINS_TUNNEL", "nocolon")]);
    assert!(matches!(
        err,
        CliError::BadHostPort {
            option: "JENKINS_TUNNEL",
            ..
        }
    ));
}

#[test]
fn direct_connection_with_identity_and_engine_jar() {
    let s = settings(&[
        "-direct",
        "jenkins:50000",
        "-instanceIdentity",
        IDENTITY,
        "-protocols",
        "JNLP4-connect,Ping",
        "--engine-jar",
        "/opt/remoting.jar",
        "-secret",
        SECRET,
        "-name",
        "n",
    ]);
    assert_eq!(
        s.direct,
        Some(HostPort {
            host: "jenkins".to_owned(),
            port: 50000
        })
    );
    assert_eq!(s.instance_identity.as_deref(), Some(IDENTITY));
    assert_eq!(s.protocols, ["JNLP4-connect", "Ping"]);
    assert_eq!(
        s.engine_jar.as_deref(),
        Some(Path::new("/opt/remoting.jar"))
    );
    assert!(s.urls.is_empty());
}

#[test]
fn direct_connection_errors() {
    let base = ["-secret", SECRET, "-name", "n", "--engine-jar", "/r.jar"];
    let with = |extra: &[&'static str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        error(&args)
    };
    let err = with(&["-direct", "c:50000"]);
    assert!(matches!(
        err,
        CliError::MissingInstanceIdentity { direct: "-direct" }
    ));
    assert!(err.to_string().contains("TLS pin"), "{err}");

    let err = error(&[
        "-direct",
        "c:50000",
        "-instanceIdentity",
        IDENTITY,
        "-secret",
        SECRET,
        "-name",
        "n",
    ]);
    assert!(matches!(
        err,
        CliError::DirectNeedsEngineJar { direct: "-direct" }
    ));
    assert!(err.to_string().contains("no web port"), "{err}");

    for bad in ["c", "c:", ":50000", "c:0", "c:70000", "c:http"] {
        let err = with(&["-direct", bad, "-instanceIdentity", IDENTITY]);
        assert!(
            matches!(
                err,
                CliError::BadHostPort {
                    option: "-direct",
                    ..
                }
            ),
            "{bad}: {err:?}"
        );
    }
    let err = with(&["-direct", "c:1", "-instanceIdentity", "not base64!"]);
    assert!(matches!(
        err,
        CliError::BadInstanceIdentity {
            option: "-instanceIdentity"
        }
    ));

    let err = with(&[
        "-direct",
        "c:1",
        "-instanceIdentity",
        IDENTITY,
        "-url",
        "http://c/",
    ]);
    assert!(matches!(
        err,
        CliError::Conflict {
            option: "-direct",
            other: "-url"
        }
    ));
    let err = with(&[
        "-direct",
        "c:1",
        "-instanceIdentity",
        IDENTITY,
        "-tunnel",
        "t:1",
    ]);
    assert!(matches!(
        err,
        CliError::Conflict {
            option: "-direct",
            other: "-tunnel"
        }
    ));
    let err = error_env(
        &base,
        &[
            ("JENKINS_DIRECT_CONNECTION", "c:1"),
            ("JENKINS_INSTANCE_IDENTITY", IDENTITY),
            ("JENKINS_URL", "http://c/"),
        ],
    );
    assert!(matches!(
        err,
        CliError::Conflict {
            option: "JENKINS_DIRECT_CONNECTION",
            other: "JENKINS_URL"
        }
    ));

    let err = error(&with_basics(&["-instanceIdentity", IDENTITY]));
    assert!(matches!(
        err,
        CliError::Requires {
            option: "-instanceIdentity",
            ..
        }
    ));
    let err = error(&with_basics(&["-protocols", "JNLP4-connect"]));
    assert!(matches!(
        err,
        CliError::Requires {
            option: "-protocols",
            ..
        }
    ));
}

#[test]
fn engine_command_is_split_on_whitespace() {
    let s = settings(&with_basics(&["--engine-command", "  /bin/cat  -u \t x "]));
    assert_eq!(s.engine_command.unwrap(), ["/bin/cat", "-u", "x"]);
    // It stands in for the engine jar with -direct.
    let s = settings(&[
        "-direct",
        "c:1",
        "-instanceIdentity",
        IDENTITY,
        "--engine-command",
        "/bin/cat",
        "-secret",
        SECRET,
        "-name",
        "n",
    ]);
    assert!(s.engine_jar.is_none());
    assert!(matches!(
        error(&with_basics(&["--engine-command", "   "])),
        CliError::EmptyEngineCommand
    ));
}

#[test]
fn java_settings_come_from_the_environment() {
    let s = settings_env(
        &with_basics(&[]),
        &[
            ("JENKINS_JAVA_BIN", "/opt/java/bin/java"),
            ("JAVA_HOME", "/opt/java"),
            ("JENKINS_JAVA_OPTS", "-Xmx1g  -Dx=y"),
            ("JAVA_OPTS", "-Xmx9g"),
        ],
    );
    assert_eq!(
        s.java.java_bin.as_deref(),
        Some(Path::new("/opt/java/bin/java"))
    );
    assert_eq!(s.java.java_home.as_deref(), Some(Path::new("/opt/java")));
    assert_eq!(s.java.java_opts, ["-Xmx1g", "-Dx=y"]);
    assert!(!s.java.sized_window);
    let s = settings_env(&with_basics(&[]), &[("JAVA_OPTS", "-Xmx9g")]);
    assert_eq!(s.java.java_opts, ["-Xmx9g"]);
    // Without either (empty counts as unset, as in the images' scripts),
    // the measured defaults; any option of the user's replaces them all.
    let s = settings_env(&with_basics(&[]), &[]);
    assert_eq!(s.java.java_opts, crate::engine::DEFAULT_JAVA_OPTS);
    assert!(s.java.sized_window);
    let s = settings_env(&with_basics(&[]), &[("JAVA_OPTS", " ")]);
    assert_eq!(s.java.java_opts, crate::engine::DEFAULT_JAVA_OPTS);
    assert!(s.java.sized_window);
    let s = settings_env(&with_basics(&[]), &[("JAVA_OPTS", "-Dx=y")]);
    assert_eq!(s.java.java_opts, ["-Dx=y"]);
    assert!(!s.java.sized_window);
}

#[test]
fn log_format_and_flags() {
    let s = settings(&with_basics(&[
        "--log-format",
        "json",
        "-noReconnect",
        "-noKeepAlive",
    ]));
    assert_eq!(s.log_format, LogFormat::Json);
    assert!(s.no_reconnect && s.no_keep_alive);
    assert_eq!(settings(&with_basics(&[])).log_format, LogFormat::Text);
    assert!(matches!(
        error(&with_basics(&["--log-format", "xml"])),
        CliError::BadLogFormat
    ));
}

#[test]
fn durations() {
    let after =
        |v: &'static str| settings(&with_basics(&["-noReconnectAfter", v])).no_reconnect_after;
    assert_eq!(after("10m"), Some(Duration::from_secs(600)));
    assert_eq!(after("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(after("1h 30m"), Some(Duration::from_secs(5400)));
    assert_eq!(after("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(after("2d"), Some(Duration::from_secs(2 * 86400)));
    assert_eq!(after("PT10M"), Some(Duration::from_secs(600)));
    assert_eq!(after("P1DT1H0.5S"), Some(Duration::from_millis(90_000_500)));
    // agent.jar's unit for a bare number is the millisecond.
    assert_eq!(after("1500"), Some(Duration::from_millis(1500)));
    for bad in ["soon", "10 parsecs", "-5m", "PT", "P1H", ""] {
        let err = error(&with_basics(&["-noReconnectAfter", bad]));
        assert!(
            matches!(
                err,
                CliError::BadDuration {
                    option: "-noReconnectAfter",
                    ..
                }
            ),
            "{bad}: {err:?}"
        );
    }
    let err = error(&with_basics(&["-noReconnectAfter", "10m", "-noReconnect"]));
    assert!(matches!(
        err,
        CliError::Conflict {
            option: "-noReconnectAfter",
            other: "-noReconnect"
        }
    ));
}

#[test]
fn credentials() {
    let s = settings(&with_basics(&[
        "-credentials",
        "alice:pa:ss",
        "-proxyCredentials",
        "proxy:pw",
    ]));
    assert_eq!(
        s.credentials,
        Some(Credentials {
            user: "alice".to_owned(),
            password: Secret::new("pa:ss")
        })
    );
    assert_eq!(s.proxy_credentials.unwrap().user, "proxy");
    assert_eq!(s.jnlp_credentials, None);
    for option in ["-credentials", "-jnlpCredentials", "-proxyCredentials"] {
        let err = error(&with_basics(&[option, "alice-without-colon"]));
        assert!(
            matches!(err, CliError::BadCredentials { .. }),
            "{option}: {err:?}"
        );
        assert!(!err.to_string().contains("alice-without-colon"), "{err}");
    }
}

#[test]
fn jnlp_url_provides_name_secret_and_url() {
    let s = settings(&["-jnlpUrl", "http://c:8080/computer/n/jenkins-agent.jnlp"]);
    assert_eq!(
        s.jnlp_url.as_deref(),
        Some("http://c:8080/computer/n/jenkins-agent.jnlp")
    );
    assert!(s.secret.is_none() && s.name.is_none() && s.urls.is_empty());

    // Credentials authorise the JNLP fetch (and then the web port).
    let s = settings(&["-jnlpUrl", "http://c/a.jnlp", "-jnlpCredentials", "u:p"]);
    assert_eq!(
        s.jnlp_credentials.as_ref().map(|c| c.user.as_str()),
        Some("u")
    );
    assert_eq!(s.credentials, s.jnlp_credentials);

    // With a secret: an encrypted JNLP file, no credentials allowed.
    let s = settings(&["-jnlpUrl", "http://c/a.jnlp", "-secret", SECRET]);
    assert_eq!(s.secret, Some(Secret::new(SECRET)));
    let err = error(&[
        "-jnlpUrl",
        "http://c/a.jnlp",
        "-secret",
        SECRET,
        "-jnlpCredentials",
        "u:p",
    ]);
    assert!(matches!(
        err,
        CliError::JnlpCredentialsWithSecret { secret: "-secret" }
    ));
    let err = error_env(
        &["-jnlpUrl", "http://c/a.jnlp", "-credentials", "u:p"],
        &[("JENKINS_SECRET", SECRET)],
    );
    assert!(matches!(
        err,
        CliError::JnlpCredentialsWithSecret {
            secret: "JENKINS_SECRET"
        }
    ));

    let err = error(&["-jnlpUrl", "http://c/a.jnlp", "-url", "http://c/"]);
    assert!(matches!(
        err,
        CliError::Conflict {
            option: "-jnlpUrl",
            other: "-url"
        }
    ));
    let err = error(&["-jnlpUrl", "http://c/a.jnlp", "-name", "n"]);
    assert!(matches!(
        err,
        CliError::Conflict {
            option: "-jnlpUrl",
            other: "-name"
        }
    ));
    let err = error(&["-jnlpUrl", "ftp://c/a.jnlp"]);
    assert!(matches!(
        err,
        CliError::BadUrl {
            option: "-jnlpUrl",
            ..
        }
    ));
}

#[test]
fn certificates() {
    let file = TempFile::new("pem", PEM.as_bytes());
    let s = settings(&with_basics(&["-cert", PEM, "-cert", &file.at()]));
    assert_eq!(s.certs.len(), 2);
    assert!(s.certs.iter().all(|c| c.0.contains("BEGIN CERTIFICATE")));

    let err = error(&with_basics(&["-cert", "ca.pem"]));
    assert!(matches!(
        err,
        CliError::BadCert {
            option: "-cert",
            ..
        }
    ));
    assert!(err.to_string().contains("forget the '@'"), "{err}");
    let not_pem = TempFile::new("notpem", b"hello");
    let err = error(&with_basics(&["-cert", &not_pem.at()]));
    assert!(matches!(err, CliError::BadCert { .. }));
    let err = error(&with_basics(&["-cert", "@/nonexistent/ca.pem"]));
    assert!(matches!(
        err,
        CliError::ReadFile {
            option: "-cert",
            ..
        }
    ));
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");

    let err = error(&with_basics(&["-cert", PEM, "-noCertificateCheck"]));
    assert!(matches!(
        err,
        CliError::Conflict {
            option: "-cert",
            other: "-noCertificateCheck"
        }
    ));
}

#[test]
fn work_dir_dependents() {
    let err = error(&with_basics(&["-internalDir", "x"]));
    assert!(matches!(
        err,
        CliError::Requires {
            option: "-internalDir",
            ..
        }
    ));
    let err = error(&with_basics(&["-failIfWorkDirIsMissing"]));
    assert!(matches!(
        err,
        CliError::Requires {
            option: "-failIfWorkDirIsMissing",
            ..
        }
    ));
    // The image's JENKINS_AGENT_WORKDIR counts as a work dir.
    let s = settings_env(
        &with_basics(&["-internalDir", "x"]),
        &[("JENKINS_AGENT_WORKDIR", "/home/jenkins/agent")],
    );
    assert_eq!(s.internal_dir, "x");
}

// --- refusals ----------------------------------------------------------------

#[test]
fn missing_essentials() {
    assert!(matches!(
        error(&["-secret", SECRET, "-name", "n"]),
        CliError::MissingController
    ));
    assert!(matches!(
        error(&["-url", "http://c/", "-name", "n"]),
        CliError::MissingSecret
    ));
    assert!(matches!(
        error(&["-url", "http://c/", "-secret", SECRET]),
        CliError::MissingName
    ));
    // An empty value is as good as none.
    assert!(matches!(
        error(&["-url", "http://c/", "-secret", "", "-name", "n"]),
        CliError::MissingSecret
    ));
    assert!(matches!(error(&[]), CliError::MissingController));
}

#[test]
fn bad_urls() {
    for bad in [
        "jenkins:8080",
        "ftp://c/",
        "http://",
        "not a url",
        "/relative",
    ] {
        let err = error(&["-url", bad, "-secret", SECRET, "-name", "n"]);
        assert!(
            matches!(err, CliError::BadUrl { option: "-url", .. }),
            "{bad}: {err:?}"
        );
    }
    let err = error_env(
        &["-secret", SECRET, "-name", "n"],
        &[("JENKINS_URL", "c:8080")],
    );
    assert!(matches!(
        err,
        CliError::BadUrl {
            option: "JENKINS_URL",
            ..
        }
    ));
}

#[test]
fn other_launch_modes_are_refused_by_name() {
    for (args, option) in [
        (vec!["-text"], "-text"),
        (vec!["-tcp", "/port"], "-tcp"),
        (vec!["-connectTo", "c:1"], "-connectTo"),
    ] {
        let mut all = with_basics(&[]);
        all.extend(args);
        let err = error(&all);
        assert!(
            matches!(&err, CliError::Unsupported { option: o, .. } if *o == option),
            "{option}: {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(option) && message.contains("not supported yet"),
            "{message}"
        );
    }
}

#[test]
fn agent_log_names_the_file_in_every_spelling() {
    assert_eq!(settings(&with_basics(&[])).agent_log, None);
    for args in [
        ["-agentLog", "/var/log/agent.log"],
        ["--agentLog", "/var/log/agent.log"],
        ["-agentLog=/var/log/agent.log", "-noKeepAlive"],
    ] {
        let s = settings(&with_basics(&args));
        assert_eq!(
            s.agent_log.as_deref(),
            Some(Path::new("/var/log/agent.log")),
            "{args:?}"
        );
    }
    // The file is opened at start by the binary (tests/cli_config.rs), not
    // here: parsing reads only @FILE arguments.
    let s = settings(&with_basics(&["-agentLog", "a.log", "-agentLog", "b.log"]));
    assert_eq!(s.agent_log.as_deref(), Some(Path::new("b.log")));
    assert!(matches!(
        error(&with_basics(&["-agentLog"])),
        CliError::Usage(_)
    ));
}

const JUL: &str = "-Djava.util.logging.config.file=";

#[test]
fn logging_config_goes_to_the_engine_jvm_after_the_users_options() {
    let config = TempFile::new("logging", b"handlers=java.util.logging.ConsoleHandler\n");
    let path = config.0.to_str().unwrap();
    let want = format!("{JUL}{path}");
    // Without options of the user's: after our defaults, which stay (as
    // does the sized window: the property is no option of the user's).
    let s = settings(&with_basics(&["-loggingConfig", path]));
    let mut defaults: Vec<String> = crate::engine::DEFAULT_JAVA_OPTS
        .iter()
        .map(|&o| o.to_owned())
        .collect();
    defaults.push(want.clone());
    assert_eq!(s.java.java_opts, defaults);
    assert!(s.java.sized_window);
    // With them: after them.
    for var in ["JENKINS_JAVA_OPTS", "JAVA_OPTS"] {
        let s = settings_env(&with_basics(&["-loggingConfig", path]), &[(var, "-Xmx1g")]);
        assert_eq!(
            s.java.java_opts,
            ["-Xmx1g".to_owned(), want.clone()],
            "{var}"
        );
    }
    // The user's own property wins, whatever our option says.
    let s = settings_env(
        &with_basics(&["-loggingConfig", path]),
        &[(
            "JAVA_OPTS",
            "-Djava.util.logging.config.file=/mine.properties",
        )],
    );
    assert_eq!(
        s.java.java_opts,
        ["-Djava.util.logging.config.file=/mine.properties"]
    );
    // Without the option, nothing is added.
    let s = settings(&with_basics(&[]));
    assert!(!s.java.java_opts.iter().any(|o| o.starts_with(JUL)));
}

#[test]
fn a_relative_logging_config_is_made_absolute() {
    let config = TempFile::new("relative", b"");
    let dir = config.0.parent().unwrap().to_owned();
    let name = config.0.file_name().unwrap().to_str().unwrap();
    // `absolute` joins the current directory: give it a path relative to
    // it that reaches the file.
    let cwd = std::env::current_dir().unwrap();
    let up = cwd.components().count().saturating_sub(1);
    let relative: PathBuf = std::iter::repeat_n("..", up)
        .collect::<PathBuf>()
        .join(dir.strip_prefix("/").unwrap())
        .join(name);
    let s = settings(&with_basics(&[
        "-loggingConfig",
        relative.to_str().unwrap(),
    ]));
    let opt = s.java.java_opts.last().unwrap();
    let given = opt.strip_prefix(JUL).unwrap();
    assert!(Path::new(given).is_absolute(), "{opt}");
    assert_eq!(
        std::fs::canonicalize(given).unwrap(),
        std::fs::canonicalize(&config.0).unwrap()
    );
}

#[test]
fn a_missing_or_odd_logging_config_is_refused_by_name() {
    let missing = std::env::temp_dir().join(format!("jnlp-agent-no-such-{}", std::process::id()));
    let dir = std::env::temp_dir();
    for (path, reason) in [
        (missing.as_path(), "no such file"),
        (dir.as_path(), "not a regular file"),
    ] {
        let err = error(&with_basics(&["-loggingConfig", path.to_str().unwrap()]));
        assert!(
            matches!(&err, CliError::LoggingConfig { path: p, .. } if p == path),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("-loggingConfig")
                && message.contains(&*path.to_string_lossy())
                && message.contains(reason),
            "{message}"
        );
    }
}

#[test]
fn web_socket_options_and_what_they_exclude() {
    let s = settings(&with_basics(&[
        "-webSocket",
        "-webSocketHeader",
        "X-Extra=demo",
        "--webSocketHeader=Authorization=Bearer a=b",
    ]));
    assert_eq!(s.transport, TransportChoice::WebSocket);
    let headers: Vec<(&str, &str)> = s
        .web_socket_headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.expose()))
        .collect();
    assert_eq!(
        headers,
        [("X-Extra", "demo"), ("Authorization", "Bearer a=b")]
    );
    assert_eq!(s.web_socket_idle_timeout, Duration::from_secs(40));
    let s = settings(&with_basics(&[
        "-webSocket",
        "--web-socket-idle-timeout",
        "5s",
    ]));
    assert_eq!(s.web_socket_idle_timeout, Duration::from_secs(5));
    // The image's variable: exactly "true".
    let transport = |env: &[(&str, &str)]| settings_env(&with_basics(&[]), env).transport;
    assert_eq!(
        transport(&[("JENKINS_WEB_SOCKET", "true")]),
        TransportChoice::WebSocket
    );
    assert_eq!(
        transport(&[("JENKINS_WEB_SOCKET", "false")]),
        TransportChoice::Tcp
    );
    assert_eq!(transport(&[]), TransportChoice::Tcp);

    for (extra, other) in [
        (&["-tunnel", "h:1"][..], "-tunnel"),
        (&["-credentials", "u:p"][..], "-credentials"),
        (&["-noKeepAlive"][..], "-noKeepAlive"),
    ] {
        let mut args = with_basics(&["-webSocket"]);
        args.extend_from_slice(extra);
        let err = error(&args);
        assert!(
            matches!(err, CliError::Conflict { option: "-webSocket", other: o } if o == other),
            "{other}: {err:?}"
        );
    }
    let err = error_env(
        &with_basics(&["-tunnel", "h:1"]),
        &[("JENKINS_WEB_SOCKET", "true")],
    );
    assert!(matches!(
        err,
        CliError::Conflict {
            option: "JENKINS_WEB_SOCKET=true",
            ..
        }
    ));
    let err = error(&with_basics(&["-webSocket", "-url", "http://other/"]));
    assert!(matches!(err, CliError::WebSocketOneUrl { .. }), "{err:?}");
    assert!(err.to_string().contains("exactly one -url"), "{err}");
    let err = error(&with_basics(&["-webSocketHeader", "X=1"]));
    assert!(
        matches!(
            err,
            CliError::Requires {
                option: "-webSocketHeader",
                ..
            }
        ),
        "{err:?}"
    );
    for bad in ["novalue", "Bad Name=1", "X=line\nbreak"] {
        let err = error(&with_basics(&["-webSocket", "-webSocketHeader", bad]));
        assert!(matches!(err, CliError::BadHeader { .. }), "{bad}: {err:?}");
        assert!(!err.to_string().contains("break"), "{err}");
    }
}

#[test]
fn no_op_options_are_accepted_and_ignored() {
    let plain = settings(&with_basics(&[]));
    assert_eq!(
        plain,
        settings(&with_basics(&["-headless", "-ping", "-auth", "u:p"]))
    );
    assert_eq!(plain, settings(&with_basics(&["--headless", "-auth=u:p"])));
}

#[test]
fn unknown_options_get_a_hint() {
    let cases = [
        ("-workdir", Some("-workDir")),
        ("-URL", Some("-url")),
        ("-noReconect", Some("-noReconnect")),
        ("--engine_jar", Some("--engine-jar")),
        // Ours are double-dash only.
        ("-engine-jar", Some("--engine-jar")),
        ("-log-format", Some("--log-format")),
        ("-x", None),
        ("--frobnicate", None),
    ];
    for (option, hint) in cases {
        let mut args = with_basics(&[]);
        args.push(option);
        let err = error(&args);
        match &err {
            CliError::UnknownOption {
                option: o,
                suggestion,
            } => {
                assert_eq!(o, option);
                assert_eq!(suggestion.as_deref(), hint, "{option}");
            }
            other => panic!("{option}: {other:?}"),
        }
        assert!(err.to_string().contains(option), "{err}");
    }
    // Only the name of an unknown `-opt=value` is echoed.
    let err = error(&["-secrett=hush-hush"]);
    assert!(matches!(&err, CliError::UnknownOption { option, .. } if option == "-secrett"));
    assert!(!err.to_string().contains("hush-hush"));
}

#[test]
fn clap_errors_are_usage_errors() {
    let err = error(&with_basics(&["-url"]));
    assert!(
        matches!(&err, CliError::Usage(m) if m.contains("--url")),
        "{err:?}"
    );
    assert!(!err.to_string().starts_with("error:"));
    let err = error(&with_basics(&["-noKeepAlive=yes"]));
    assert!(
        matches!(&err, CliError::Usage(m) if m.contains("--noKeepAlive") && !m.contains("yes")),
        "{err:?}"
    );
}

#[test]
fn help_and_version() {
    for flag in ["-help", "--help", "-h"] {
        let Ok(Command::Help(text)) = run(&[flag], &[]) else {
            panic!("{flag}");
        };
        // agent.jar's spelling, ours double-dash, and the environment.
        for needle in [
            " -url <URL>",
            " -workDir <DIR>",
            " -jar-cache <DIR>",
            " -agentLog <FILE>",
            " -loggingConfig <FILE>",
            "--engine-jar",
            "JENKINS_URL",
        ] {
            assert!(text.contains(needle), "{flag}: no {needle:?} in\n{text}");
        }
        assert!(!text.contains("--url <URL>"), "{text}");
        assert!(!text.ends_with('\n'));
        // Only other launch modes are refused now.
        assert!(!text.contains("Not supported yet"), "{text}");
    }
    // Help wins over an otherwise incomplete command line, as in agent.jar.
    assert!(matches!(
        run(&["-url", "http://c/", "-help"], &[]),
        Ok(Command::Help(_))
    ));
    for flag in ["-version", "--version"] {
        let Ok(Command::Version(text)) = run(&[flag], &[]) else {
            panic!("{flag}");
        };
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    }
}

// --- the lender link ------------------------------------------------------------

const TOKEN: &str = "jla_5ecre7t0ken5ecre7t0ken";

#[test]
fn lender_options_read_the_token_from_its_file_and_split_labels() {
    let token = TempFile::new("token", format!("  {TOKEN}\n").as_bytes());
    let path = token.0.to_str().unwrap();
    let s = settings(&with_basics(&[
        "--lender",
        "https://pool.example/",
        "--lender-token-file",
        path,
        "--labels",
        "xcode16, gpu,,arm64  xcode16",
        "--labels=big-disk",
    ]));
    assert_eq!(
        s.lender,
        Some(LenderSettings {
            urls: vec!["https://pool.example/".into()],
            token: Secret::new(TOKEN),
            node: "n".into(),
            labels: vec![
                "xcode16".into(),
                "gpu".into(),
                "arm64".into(),
                "big-disk".into()
            ],
        })
    );
    // The same from the environment; options win over it.
    let env = [
        ("JNLP_AGENT_LENDER", "http://pool:8090"),
        ("JNLP_AGENT_LENDER_TOKEN_FILE", path),
        ("JNLP_AGENT_LABELS", "a b"),
    ];
    let from_env = settings_env(&with_basics(&[]), &env).lender.unwrap();
    assert_eq!(from_env.urls, ["http://pool:8090"]);
    assert_eq!(from_env.token, Secret::new(TOKEN));
    assert_eq!(from_env.labels, ["a", "b"]);
    let both = settings_env(
        &with_basics(&["--lender", "https://other/", "--labels", "c"]),
        &env,
    )
    .lender
    .unwrap();
    assert_eq!(
        (both.urls.as_slice(), both.labels.as_slice()),
        (&["https://other/".to_owned()][..], &["c".to_owned()][..])
    );
    // Without --lender nothing changes.
    assert_eq!(settings(&with_basics(&[])).lender, None);
    // The token never shows.
    let shown = format!("{s:?} {s:#?}");
    assert!(!shown.contains(TOKEN), "{shown}");
}

#[test]
fn lender_urls_repeat_or_come_as_a_comma_separated_list_in_order() {
    let token = TempFile::new("token", format!("{TOKEN}\n").as_bytes());
    let path = token.0.to_str().unwrap();
    let s = settings(&with_basics(&[
        "--lender",
        "http://standby:8090",
        "--lender-token-file",
        path,
        "--lender",
        "http://active:8090/, http://third:8090,,http://standby:8090",
    ]));
    assert_eq!(
        s.lender.unwrap().urls,
        [
            "http://standby:8090",
            "http://active:8090/",
            "http://third:8090"
        ],
        "in order, a repeat counted once"
    );
    let env = [
        ("JNLP_AGENT_LENDER", "http://a:1, https://b:2/pool"),
        ("JNLP_AGENT_LENDER_TOKEN_FILE", path),
    ];
    let from_env = settings_env(&with_basics(&[]), &env).lender.unwrap();
    assert_eq!(from_env.urls, ["http://a:1", "https://b:2/pool"]);
    // Options win over the variable, whole.
    let both = settings_env(&with_basics(&["--lender", "http://c:3"]), &env)
        .lender
        .unwrap();
    assert_eq!(both.urls, ["http://c:3"]);
    // A bad entry anywhere in the list is named; so is a list of nothing.
    for bad in ["http://a:1,ftp://b", ",", "http://a:1,http://u:p@b/"] {
        let err = error(&with_basics(&[
            "--lender",
            bad,
            "--lender-token-file",
            path,
        ]))
        .to_string();
        assert!(err.contains("--lender"), "{bad}: {err}");
    }
    let env = [
        ("JNLP_AGENT_LENDER", "http://a:1,nope"),
        ("JNLP_AGENT_LENDER_TOKEN_FILE", path),
    ];
    let err = error_env(&with_basics(&[]), &env).to_string();
    assert!(err.contains("JNLP_AGENT_LENDER"), "{err}");
}

#[test]
fn the_lender_token_is_never_taken_from_the_command_line() {
    for args in [
        with_basics(&["--lender", "http://pool/", "--lender-token", TOKEN]),
        with_basics(&[
            "--lender",
            "http://pool/",
            &format!("--lender-token={TOKEN}"),
        ]),
    ] {
        let err = error(&args);
        assert!(matches!(err, CliError::LenderTokenOnCommandLine), "{err:?}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(TOKEN), "{shown}");
        assert!(shown.contains("--lender-token-file"), "{shown}");
    }
    let err = error(&with_basics(&["--lender", "http://pool/"]));
    assert!(
        matches!(err, CliError::MissingLenderToken { lender: "--lender" }),
        "{err:?}"
    );
    let err = error_env(&with_basics(&[]), &[("JNLP_AGENT_LENDER", "http://pool/")]);
    assert!(
        matches!(
            err,
            CliError::MissingLenderToken {
                lender: "JNLP_AGENT_LENDER"
            }
        ),
        "{err:?}"
    );
    let missing = std::env::temp_dir().join("jnlp-agent-no-such-token-file");
    let err = error(&with_basics(&[
        "--lender",
        "http://pool/",
        "--lender-token-file",
        missing.to_str().unwrap(),
    ]));
    assert!(
        matches!(&err, CliError::ReadFile { option: "--lender-token-file", path, .. } if *path == missing),
        "{err:?}"
    );
    for (contents, says) in [
        ("", "empty"),
        (" \n", "empty"),
        ("two words", "alone"),
        ("one\ntwo", "alone"),
        ("caf\u{e9}", "cannot carry"),
    ] {
        let file = TempFile::new("bad-token", contents.as_bytes());
        let err = error(&with_basics(&[
            "--lender",
            "http://pool/",
            "--lender-token-file",
            file.0.to_str().unwrap(),
        ]));
        assert!(err.to_string().contains(says), "{contents:?}: {err}");
        assert!(!err.to_string().contains(contents.trim()) || contents.trim().is_empty());
    }
}

#[test]
fn lender_options_need_the_lender_and_a_good_url_and_node() {
    let token = TempFile::new("token", TOKEN.as_bytes());
    let path = token.0.to_str().unwrap();
    let err = error(&with_basics(&["--lender-token-file", path]));
    assert!(
        matches!(
            err,
            CliError::Requires {
                option: "--lender-token-file",
                ..
            }
        ),
        "{err:?}"
    );
    let err = error(&with_basics(&["--labels", "a"]));
    assert!(
        matches!(
            err,
            CliError::Requires {
                option: "--labels",
                ..
            }
        ),
        "{err:?}"
    );
    let err = error_env(&with_basics(&[]), &[("JNLP_AGENT_LABELS", "a")]);
    assert!(
        matches!(
            err,
            CliError::Requires {
                option: "JNLP_AGENT_LABELS",
                ..
            }
        ),
        "{err:?}"
    );
    for (url, says) in [
        ("ftp://pool/", "only http and https"),
        ("pool:8080", "scheme"),
        ("http://alice:pw@pool/", "user:password@"),
        ("http://pool/?x=1", "query"),
    ] {
        let err = error(&with_basics(&[
            "--lender",
            url,
            "--lender-token-file",
            path,
        ]));
        assert!(
            matches!(
                &err,
                CliError::BadUrl {
                    option: "--lender",
                    ..
                }
            ) && err.to_string().contains(says),
            "{url}: {err}"
        );
        assert!(!err.to_string().contains("alice:pw"), "{err}");
    }
    // A JNLP file's URL names the node; another shape names none.
    let s = settings(&[
        "-jnlpUrl",
        "http://c/computer/mac%2001/jenkins-agent.jnlp",
        "-secret",
        SECRET,
        "--lender",
        "http://pool/",
        "--lender-token-file",
        path,
    ]);
    assert_eq!(s.lender.unwrap().node, "mac 01");
    let err = error(&[
        "-jnlpUrl",
        "http://c/agent.jnlp",
        "-secret",
        SECRET,
        "--lender",
        "http://pool/",
        "--lender-token-file",
        path,
    ]);
    assert!(matches!(err, CliError::LenderNeedsName { .. }), "{err:?}");
}

#[test]
fn labels_must_be_label_expression_atoms() {
    let token = TempFile::new("token", TOKEN.as_bytes());
    let path = token.0.to_str().unwrap();
    let with_labels = |labels: &str| {
        run(
            &with_basics(&[
                "--lender",
                "http://pool/",
                "--lender-token-file",
                path,
                "--labels",
                labels,
            ]),
            &[],
        )
    };
    for (labels, index, character) in [
        ("a&&b", 1, '&'),
        ("ok x|y", 2, '|'),
        ("ok,!no", 2, '!'),
        ("a<b", 1, '<'),
        ("a->b", 1, '>'),
        ("fine (x)", 2, '('),
        ("x)", 1, ')'),
        ("\"q\"", 1, '"'),
        ("it's", 1, '\''),
        ("bell\u{7}", 1, '\u{7}'),
    ] {
        match with_labels(labels) {
            Err(CliError::BadLabel {
                option: "--labels",
                index: i,
                character: c,
            }) => assert_eq!((i, c), (index, character), "{labels:?}"),
            other => panic!("{labels:?}: {other:?}"),
        }
    }
    let err = with_labels(&"x".repeat(300)).unwrap_err();
    assert!(
        matches!(err, CliError::LabelTooLong { index: 1, .. }),
        "{err:?}"
    );
    let Ok(Command::Run(s)) = with_labels("x86-64 os:linux ünï , ,") else {
        panic!()
    };
    assert_eq!(s.lender.unwrap().labels, ["x86-64", "os:linux", "ünï"]);
    let Ok(Command::Run(s)) = with_labels("  ") else {
        panic!()
    };
    assert!(s.lender.unwrap().labels.is_empty());
}

// --- secrets -------------------------------------------------------------------

/// An argv (after argv[0]) and an environment.
type Case = (Vec<String>, Vec<(&'static str, String)>);

/// Every refusal we can provoke with a secret and a password on the line.
fn failing_command_lines(secret_file: &str) -> Vec<Case> {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let creds = format!("alice:{PASSWORD}");
    let secret_eq = format!("-secret={SECRET}");
    let creds_eq = format!("--credentials={creds}");
    let no_env = Vec::new;
    vec![
        (s(&["-secret", SECRET, "-name", "n"]), no_env()),
        (s(&["-url", "http://c/", "-secret", SECRET]), no_env()),
        (s(&["-url", "http://c/", SECRET]), no_env()),
        (s(&["-url", "http://c/", SECRET, "n", "x"]), no_env()),
        (
            s(&["-url", "http://c/", "-secret", SECRET, SECRET, "n"]),
            no_env(),
        ),
        (
            s(&["-url", "http://c/", &secret_eq, "-name", "n", "-url"]),
            no_env(),
        ),
        (
            s(&[
                "-url",
                "http://c/",
                "-secret",
                SECRET,
                "-name",
                "n",
                "--log-format",
                "xml",
                "-credentials",
                &creds,
            ]),
            no_env(),
        ),
        (
            s(&[
                "-url",
                "http://c/",
                "-secret",
                SECRET,
                "-name",
                "n",
                &creds_eq,
                "--log-format=xml",
            ]),
            no_env(),
        ),
        (
            s(&[
                "-url",
                "http://c/",
                "-secret",
                SECRET,
                "-name",
                "n",
                "-credentials",
                PASSWORD,
            ]),
            no_env(),
        ),
        (
            s(&[
                "-url",
                "http://c/",
                "-secret",
                SECRET,
                "-name",
                "n",
                "-proxyCredentials",
                PASSWORD,
            ]),
            no_env(),
        ),
        (
            s(&[
                "-url",
                "http://c/",
                "-secret",
                SECRET,
                "-name",
                "n",
                "-webSocket",
                "-tunnel",
                "h:1",
            ]),
            no_env(),
        ),
        (
            s(&[
                "-url",
                "http://c/",
                "-secret",
                SECRET,
                "-name",
                "n",
                "-bogus",
            ]),
            no_env(),
        ),
        (
            s(&[
                "-url",
                &format!("http://alice:{PASSWORD}@"),
                "-secret",
                SECRET,
                "-name",
                "n",
            ]),
            no_env(),
        ),
        (
            s(&[
                "-url",
                &format!("ftp://alice:{PASSWORD}@c/"),
                "-secret",
                SECRET,
                "-name",
                "n",
            ]),
            no_env(),
        ),
        (
            s(&[
                "-jnlpUrl",
                "http://c/a.jnlp",
                "-secret",
                SECRET,
                "-credentials",
                &creds,
            ]),
            no_env(),
        ),
        (
            s(&[
                "-url",
                "http://c/",
                "-secret",
                secret_file,
                "-name",
                "n",
                "-noReconnectAfter",
                "never",
            ]),
            no_env(),
        ),
        (
            s(&["-url", "http://c/", "-name", "n", "-direct", "c:1"]),
            vec![("JENKINS_SECRET", SECRET.to_owned())],
        ),
        (
            s(&["-name", "n"]),
            vec![
                ("JENKINS_SECRET", SECRET.to_owned()),
                ("JENKINS_URL", "nope".to_owned()),
            ],
        ),
        (
            s(&["-name", "n"]),
            vec![
                ("JENKINS_SECRET", SECRET.to_owned()),
                ("JENKINS_WEB_SOCKET", "true".to_owned()),
            ],
        ),
        (
            s(&[
                "-url",
                "http://c/",
                "-name",
                "n",
                "-auth",
                &creds,
                "-secret",
            ]),
            no_env(),
        ),
    ]
}

#[test]
fn secrets_and_passwords_never_reach_messages() {
    let file = TempFile::new("multi", format!("{SECRET}\n{PASSWORD}\n").as_bytes());
    let mut lines = failing_command_lines(&file.at());
    lines.push((
        vec![
            "-url".into(),
            "http://c/".into(),
            "-secret".into(),
            file.at(),
            "-name".into(),
            "n".into(),
        ],
        Vec::new(),
    ));
    for (args, env) in lines {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let err = error_env(&refs, &env_refs);
        for shown in [err.to_string(), format!("{err:?}"), format!("{err:#?}")] {
            assert!(
                !shown.contains(SECRET),
                "{refs:?} leaks the secret: {shown}"
            );
            assert!(
                !shown.contains(PASSWORD),
                "{refs:?} leaks a password: {shown}"
            );
        }
    }
}

#[test]
fn settings_debug_hides_secrets_and_passwords() {
    let creds = format!("alice:{PASSWORD}");
    let s = settings(&with_basics(&[
        "-credentials",
        &creds,
        "-proxyCredentials",
        &creds,
    ]));
    let shown = format!("{s:?} {s:#?} {:?}", Command::Run(s.clone()));
    assert!(
        !shown.contains(SECRET) && !shown.contains(PASSWORD),
        "{shown}"
    );
    assert!(
        shown.contains("alice"),
        "the user name is not secret: {shown}"
    );
}

// --- robustness ------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any argv and environment gives an answer, never a panic, and a
    /// refusal never shows the secret.
    #[test]
    fn never_panics_nor_leaks(
        args in proptest::collection::vec(
            prop_oneof![
                Just("-url".to_owned()), Just("-secret".to_owned()), Just("-name".to_owned()),
                Just("-tunnel".to_owned()), Just("-direct".to_owned()), Just("--".to_owned()),
                Just("-credentials".to_owned()), Just("-noReconnectAfter".to_owned()),
                Just("-jnlpUrl".to_owned()), Just("-cert".to_owned()), Just("-help".to_owned()),
                Just("--log-format".to_owned()), Just("-instanceIdentity".to_owned()),
                Just("-auth".to_owned()), Just("-bogus".to_owned()),
                Just(SECRET.to_owned()), Just(format!("u:{PASSWORD}")), Just("http://c/".to_owned()),
                Just("-".to_owned()), "[-:@=a-zA-Z0-9/\\[\\]]{0,12}",
            ],
            0..10,
        ),
        jenkins_url in proptest::option::of("[a-z:/]{0,10}"),
    ) {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = jenkins_url.iter().map(|u| ("JENKINS_URL", u.as_str())).collect();
        if let Err(err) = run(&refs, &env) {
            let shown = format!("{err} {err:?}");
            prop_assert!(!shown.contains(SECRET), "{}", shown);
            prop_assert!(!shown.contains(PASSWORD), "{}", shown);
        }
    }
}
