#![allow(clippy::unwrap_used)]

use super::*;
use crate::cli::{parse, Command};

/// Settings from a command line (no environment).
fn settings(args: &[&str]) -> Settings {
    let argv = std::iter::once("jnlp-agent")
        .chain(args.iter().copied())
        .map(std::ffi::OsString::from);
    match parse(argv, &|_| None) {
        Ok(Command::Run(settings)) => settings,
        other => panic!("{args:?}: {other:?}"),
    }
}

/// `-direct` settings, with `extra` options.
fn direct(extra: &[&str]) -> Settings {
    let mut args = vec![
        "-direct",
        "ci.example:50000",
        "-instanceIdentity",
        "AAAA",
        "--engine-jar",
        "/opt/remoting.jar",
        "-name",
        "mac-01",
        "-secret",
        "s3",
    ];
    args.extend_from_slice(extra);
    settings(&args)
}

fn jnlp() -> FromJnlp {
    FromJnlp {
        url: "http://ci.example/computer/mac-01/jenkins-agent.jnlp".into(),
        name: "from-file".into(),
        secret: "file-secret".into(),
        web_socket: false,
        urls: vec!["http://ci.example/".into()],
        tunnel: None,
    }
}

fn config_error(result: Result<Planned, SessionError>) -> String {
    match result {
        Err(SessionError::Config(message)) => message,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn urls_mean_discovery_through_the_tunnel() {
    let s = settings(&[
        "-url",
        "http://ci.example/",
        "-name",
        "mac-01",
        "-secret",
        "s3",
        "-tunnel",
        ":50001",
    ]);
    let planned = plan(&s, None).unwrap();
    assert_eq!(
        (planned.name.as_str(), planned.secret.expose()),
        ("mac-01", "s3")
    );
    assert_eq!(
        planned.plan,
        Plan::Discover {
            urls: vec!["http://ci.example/".into()],
            tunnel: Some(Tunnel {
                host: None,
                port: Some(50001)
            }),
        }
    );
}

#[test]
fn a_jnlp_file_fills_what_the_options_leave_out() {
    let s = settings(&[
        "-jnlpUrl",
        "http://ci.example/computer/mac-01/jenkins-agent.jnlp",
    ]);
    let planned = plan(&s, Some(jnlp())).unwrap();
    assert_eq!(planned.name, "from-file");
    assert_eq!(planned.secret.expose(), "file-secret");
    assert!(
        matches!(planned.plan, Plan::Discover { ref urls, tunnel: None } if urls == &["http://ci.example/"])
    );

    // The options win over the file.
    let s = settings(&[
        "-jnlpUrl",
        "http://ci.example/computer/mac-01/jenkins-agent.jnlp",
        "-secret",
        "mine",
    ]);
    assert_eq!(plan(&s, Some(jnlp())).unwrap().secret.expose(), "mine");

    // The file's own -webSocket and -tunnel count.
    let mut file = jnlp();
    file.web_socket = true;
    assert_eq!(
        plan(&s, Some(file)).unwrap().plan,
        Plan::WebSocket {
            url: "http://ci.example/".into()
        }
    );
    let mut file = jnlp();
    file.tunnel = Some("nocolon".into());
    let message = config_error(plan(&s, Some(file)));
    assert!(
        message.starts_with("http://ci.example/computer/mac-01/jenkins-agent.jnlp: bad -tunnel: "),
        "{message}"
    );
}

#[test]
fn web_socket_needs_a_url() {
    let s = settings(&[
        "-jnlpUrl",
        "http://ci.example/computer/mac-01/jenkins-agent.jnlp",
    ]);
    let mut file = jnlp();
    file.web_socket = true;
    file.urls.clear();
    assert_eq!(
        config_error(plan(&s, Some(file))),
        "-webSocket needs the controller's URL: give -url"
    );
}

#[test]
fn direct_goes_to_the_given_port() {
    let s = direct(&[]);
    assert_eq!(
        plan(&s, None).unwrap().plan,
        Plan::Direct {
            agent_port: HostPort {
                host: "ci.example".into(),
                port: 50000
            },
            identity: "AAAA".into(),
            controller_url: None,
        }
    );
}

#[test]
fn protocols_must_include_ours() {
    let s = direct(&["-protocols", "JNLP2-connect"]);
    let message = config_error(plan(&s, None));
    assert!(
        message.starts_with("-protocols allows only JNLP2-connect, but this agent speaks "),
        "{message}"
    );
}
