//! The wire protocol as documented: exact lines, round trips, validation,
//! and parsers that never panic on arbitrary input.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use control::frame::{read_line_bounded, FrameError};
use control::{
    parse_reply, parse_request, reply_line, request_line, BorrowRequest, Busy, Event, EventKind,
    Pending, PendingAction, Phase, Placement, Reply, Request, RequestError, Response, ReturnReason,
    Status, Target, When, MAX_LINE,
};
use proptest::prelude::*;

fn borrow(target: Target) -> BorrowRequest {
    BorrowRequest {
        target,
        name: "mac-01".into(),
        secret: Some("0f1e2d".into()),
        secret_file: None,
        lease: None,
        idle_return: None,
        when: When::Idle,
        wait: None,
        transport: None,
    }
}

fn busy_status() -> Status {
    Status {
        placement: Placement::Borrowed,
        phase: Phase::Draining,
        controller_url: Some("https://b.example/".into()),
        node_name: Some("mac-01".into()),
        since_ms: 1_700_000_000_000,
        lease_deadline_ms: Some(1_700_007_200_000),
        idle_deadline_ms: Some(1_700_001_800_000),
        pending: Some(Pending {
            action: PendingAction::Return,
            controller_url: Some("https://a.example/".into()),
            since_ms: 1_700_000_100_000,
        }),
        queued: Some(Pending {
            action: PendingAction::Borrow,
            controller_url: Some("https://c.example/".into()),
            since_ms: 1_700_000_200_000,
        }),
        busy: Busy {
            requests_in_flight: 2,
            build_processes: 1,
            last_activity_ms: Some(1_700_000_500_000),
            busy: true,
        },
        engine_pid: Some(4242),
        remoting_version: Some("3283.v92c105e0f819".into()),
        engine_window: Some(control::EngineWindow {
            bytes: 2 << 20,
            round_trip_us: Some(4_600),
        }),
        bytes_to_controller: 1024,
        bytes_from_controller: 2048,
        commands_to_controller: 3,
        commands_from_controller: 4,
        bytes_per_second_to_controller: 100,
        bytes_per_second_from_controller: 200,
        last_error: Some("connection reset".into()),
        home_url: Some("https://a.example/".into()),
        transport: Some(control::Transport::WebSocket),
        transport_fallback: true,
        warm_engine: None,
        awaiting_first_call: false,
    }
}

fn every_request() -> Vec<Request> {
    let direct = Target::Direct {
        address: "[::1]:50000".into(),
        instance_identity: "MIIB".into(),
        engine_jar: "/opt/remoting.jar".into(),
    };
    vec![
        Request::Status,
        Request::Events,
        Request::Return {
            when: When::Idle,
            wait: None,
        },
        Request::Return {
            when: When::Now,
            wait: None,
        },
        Request::Borrow(borrow(Target::Url {
            url: "https://b.example/".into(),
        })),
        Request::Borrow(BorrowRequest {
            secret: None,
            secret_file: Some("/run/s".into()),
            lease: Some(Duration::from_secs(7200)),
            idle_return: Some(Duration::from_secs(90)),
            when: When::Now,
            wait: None,
            ..borrow(Target::JnlpUrl {
                url: "http://b.example/computer/x/jenkins-agent.jnlp".into(),
            })
        }),
        Request::Borrow(borrow(direct)),
        Request::Borrow(BorrowRequest {
            transport: Some(control::Transport::WebSocket),
            ..borrow(Target::Url {
                url: "https://b.example/".into(),
            })
        }),
    ]
}

#[test]
fn transport_field_names() {
    let request = BorrowRequest {
        transport: Some(control::Transport::WebSocket),
        ..borrow(Target::Url {
            url: "https://b.example/".into(),
        })
    };
    let json = serde_json::to_string(&request).unwrap();
    assert!(json.contains(r#""transport":"web_socket""#), "{json}");
    // Absent means: TCP, falling back to WebSocket.
    let json = serde_json::to_string(&borrow(Target::Url {
        url: "https://b.example/".into(),
    }))
    .unwrap();
    assert!(!json.contains("transport"), "{json}");
    let status = serde_json::to_string(&busy_status()).unwrap();
    assert!(
        status.contains(r#""transport":"web_socket","transport_fallback":true"#),
        "{status}"
    );
}

fn every_response() -> Vec<Response> {
    let mut responses = vec![
        Response::Status(Status::default()),
        Response::Status(busy_status()),
        Response::Accepted {
            message: "accepted; will leave when idle".into(),
        },
    ];
    let kinds = [
        EventKind::Subscribed,
        EventKind::StateChanged,
        EventKind::BorrowAccepted,
        EventKind::ReturnAccepted,
        EventKind::ReturnedHome {
            reason: ReturnReason::LeaseExpired,
        },
        EventKind::ReturnedHome {
            reason: ReturnReason::Idle,
        },
        EventKind::ReturnedHome {
            reason: ReturnReason::BorrowerGone,
        },
        EventKind::ReturnedHome {
            reason: ReturnReason::Requested,
        },
        EventKind::Error {
            message: "refused: \"mac-01\" is already connected".into(),
        },
    ];
    for kind in kinds {
        responses.push(Response::Event(Event {
            at_ms: 5,
            kind,
            status: busy_status(),
        }));
    }
    responses
}

#[test]
fn every_request_round_trips() {
    for request in every_request() {
        let line = request_line(&request);
        assert!(!line.contains('\n'));
        assert_eq!(parse_request(&line), Ok(request), "{line}");
    }
}

#[test]
fn every_reply_round_trips() {
    let mut replies: Vec<Reply> = every_response().into_iter().map(Reply::Ok).collect();
    replies.push(Reply::error("bad request: unknown variant `fly`"));
    for reply in replies {
        let line = reply_line(&reply);
        assert!(!line.contains('\n'));
        assert_eq!(parse_reply(&line).unwrap(), reply, "{line}");
    }
}

#[test]
fn exact_lines_are_pinned() {
    assert_eq!(
        request_line(&Request::Status),
        r#"{"version":1,"command":"status"}"#
    );
    assert_eq!(
        request_line(&Request::Return {
            when: When::Now,
            wait: None
        }),
        r#"{"version":1,"command":"return","when":"now"}"#
    );
    assert_eq!(
        reply_line(&Reply::Ok(Response::Accepted {
            message: "ok".into()
        })),
        r#"{"ok":{"accepted":{"message":"ok"}}}"#
    );
    assert_eq!(reply_line(&Reply::error("no")), r#"{"error":"no"}"#);
    let event = Event {
        at_ms: 7,
        kind: EventKind::Error {
            message: "x".into(),
        },
        status: Status::default(),
    };
    assert!(reply_line(&Reply::Ok(Response::Event(event)))
        .starts_with(r#"{"ok":{"event":{"at_ms":7,"kind":"error","message":"x","status":{"#));
}

/// Every `→` / `←` line in the crate documentation parses and prints back
/// to exactly the same text, so the documented examples cannot drift.
#[test]
fn documented_examples_are_exact() {
    let source = include_str!("../src/lib.rs");
    let (mut requests, mut replies) = (0, 0);
    for doc in source.lines().filter_map(|l| l.strip_prefix("//! ")) {
        if let Some(line) = doc.strip_prefix("→ ") {
            let request = parse_request(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(request_line(&request), line);
            requests += 1;
        } else if let Some(line) = doc.strip_prefix("← ") {
            let reply = parse_reply(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(reply_line(&reply), line);
            replies += 1;
        }
    }
    assert_eq!((requests, replies), (6, 4));
}

#[test]
fn version_is_checked_first() {
    assert_eq!(
        parse_request(r#"{"command":"status"}"#),
        Err(RequestError::MissingVersion)
    );
    let err = parse_request(r#"{"version":2,"command":"fly"}"#).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported protocol version 2; this agent speaks version 1"
    );
    assert!(matches!(
        parse_request(r#"{"version":"1","command":"status"}"#),
        Err(RequestError::UnsupportedVersion(_))
    ));
}

#[test]
fn malformed_requests_are_refused_with_a_reason() {
    let cases = [
        ("", "not a JSON object"),
        ("[1]", "found an array"),
        ("{\"version\":1}", "missing field `command`"),
        ("{\"version\":1,\"command\":\"fly\"}", "unknown variant `fly`"),
        ("{\"version\":1,\"command\":\"status\",\"now\":true}", "unknown field `now`"),
        (
            "{\"version\":1,\"command\":\"return\",\"when\":\"later\"}",
            "unknown variant `later`",
        ),
        (
            "{\"version\":1,\"command\":\"return\",\"whn\":\"now\"}",
            "unknown field `whn`",
        ),
        (
            "{\"version\":1,\"command\":\"borrow\",\"target\":{\"url\":\"https://b/\"},\"name\":\"n\",\"secret\":\"s\",\"lease_time\":\"1h\"}",
            "unknown field `lease_time`",
        ),
        (
            "{\"version\":1,\"command\":\"borrow\",\"target\":{\"url\":\"https://b/\"},\"name\":\"n\",\"secret\":\"s\",\"lease\":\"soon\"}",
            "bad request",
        ),
    ];
    for (line, expected) in cases {
        let err = parse_request(line).unwrap_err().to_string();
        assert!(err.contains(expected), "{line:?}: {err}");
    }
}

#[test]
fn borrow_validation() {
    let url = || Target::Url {
        url: "https://b.example/".into(),
    };
    let cases: Vec<(BorrowRequest, &str)> = vec![
        (
            BorrowRequest {
                secret_file: Some("/s".into()),
                ..borrow(url())
            },
            "not both",
        ),
        (
            BorrowRequest {
                secret: None,
                ..borrow(url())
            },
            "is required",
        ),
        (
            BorrowRequest {
                secret: None,
                secret_file: Some("relative/s".into()),
                ..borrow(url())
            },
            "absolute",
        ),
        (
            BorrowRequest {
                name: " ".into(),
                ..borrow(url())
            },
            "`name`",
        ),
        (
            BorrowRequest {
                lease: Some(Duration::ZERO),
                ..borrow(url())
            },
            "`lease`",
        ),
        (
            borrow(Target::Url {
                url: "ftp://b/".into(),
            }),
            "http(s) URL",
        ),
        (
            borrow(Target::Direct {
                address: "b.example".into(),
                instance_identity: "MIIB".into(),
                engine_jar: "/r.jar".into(),
            }),
            "HOST:PORT",
        ),
        (
            borrow(Target::Direct {
                address: "b.example:1".into(),
                instance_identity: "MIIB".into(),
                engine_jar: PathBuf::from("r.jar"),
            }),
            "absolute",
        ),
    ];
    for (request, expected) in cases {
        let err = request.validate().unwrap_err();
        assert!(err.contains(expected), "{request:?}: {err}");
        // The same check guards the wire.
        let err = parse_request(&request_line(&Request::Borrow(request))).unwrap_err();
        assert!(matches!(err, RequestError::Invalid(_)), "{err}");
    }
    assert_eq!(borrow(url()).validate(), Ok(()));
}

#[test]
fn target_field_combinations_are_explained() {
    let line = |target: &str| {
        format!(r#"{{"version":1,"command":"borrow","target":{target},"name":"n","secret":"s"}}"#)
    };
    let cases = [
        ("{}", "one of `url`, `jnlp_url` or `direct` is required"),
        (
            r#"{"url":"https://a/","jnlp_url":"https://b/"}"#,
            "only one of",
        ),
        (r#"{"direct":"b:1"}"#, "needs `instance_identity`"),
        (
            r#"{"url":"https://a/","engine_jar":"/r.jar"}"#,
            "only with `direct`",
        ),
        (r#"{"host":"a"}"#, "unknown field `host`"),
    ];
    for (target, expected) in cases {
        let err = parse_request(&line(target)).unwrap_err().to_string();
        assert!(err.contains(expected), "{target}: {err}");
    }
}

#[test]
fn debug_never_shows_the_secret() {
    let request = Request::Borrow(borrow(Target::Url {
        url: "https://b.example/".into(),
    }));
    let text = format!("{request:?} {request:#?}");
    assert!(!text.contains("0f1e2d"), "{text}");
    assert!(text.contains("***"));
}

#[test]
fn durations_use_humantime() {
    let request = parse_request(
        r#"{"version":1,"command":"borrow","target":{"url":"https://b/"},"name":"n","secret":"s","lease":"1h 30m","idle_return":"90s"}"#,
    )
    .unwrap();
    let Request::Borrow(borrow) = request else {
        panic!("{request:?}")
    };
    assert_eq!(borrow.lease, Some(Duration::from_secs(5400)));
    assert_eq!(borrow.idle_return, Some(Duration::from_secs(90)));
    assert_eq!(borrow.when, When::Idle);
    assert!(request_line(&Request::Borrow(borrow))
        .contains(r#""lease":"1h 30m","idle_return":"1m 30s""#));
}

fn read_all(input: &[u8], capacity: usize) -> Vec<Result<String, String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut reader = tokio::io::BufReader::with_capacity(capacity, input);
        let mut line = String::new();
        let mut out = Vec::new();
        loop {
            match read_line_bounded(&mut reader, &mut line, MAX_LINE).await {
                Ok(Some(())) => out.push(Ok(line.clone())),
                Ok(None) => return out,
                Err(FrameError::NotUtf8) => out.push(Err("utf8".into())),
                Err(err) => {
                    out.push(Err(err.to_string()));
                    return out;
                }
            }
        }
    })
}

#[test]
fn over_long_lines_are_refused() {
    let mut input = vec![b' '; MAX_LINE + 1];
    input.push(b'\n');
    assert_eq!(
        read_all(&input, 8192),
        vec![Err(format!("line longer than {MAX_LINE} bytes"))]
    );
    // Exactly at the limit is a line (and then a JSON error, not a framing one).
    let mut input = vec![b' '; MAX_LINE];
    input.push(b'\n');
    let lines = read_all(&input, 8192);
    assert_eq!(lines.len(), 1);
    assert!(parse_request(lines[0].as_ref().unwrap()).is_err());
}

proptest! {
    #[test]
    fn parse_request_never_panics(line in ".{0,512}") {
        let _ = parse_request(&line);
    }

    #[test]
    fn parse_request_never_panics_on_near_misses(
        prefix in prop::sample::select(vec![
            r#"{"version":1,"command":"borrow","target":{"#,
            r#"{"version":1,"command":""#,
            r#"{"version":1,"#,
            r#"{"version":1,"command":"borrow","target":{"direct":"a:1","instance_identity":"x","engine_jar":"/j"},"name":"n","#,
        ]),
        rest in r#"[a-z_":,{}\[\]0-9 /.-]{0,120}"#,
    ) {
        let _ = parse_request(&format!("{prefix}{rest}"));
    }

    #[test]
    fn parse_reply_never_panics(line in ".{0,512}") {
        let _ = parse_reply(&line);
    }

    /// Framing gives the same lines however the bytes are split.
    #[test]
    fn framing_is_independent_of_read_sizes(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8),
        capacity in 1usize..64,
    ) {
        let input: Vec<u8> = chunks.join(&b'\n');
        prop_assert_eq!(read_all(&input, capacity), read_all(&input, 4096));
    }
}

/// Item 6's fields are optional on the wire: an older agent's `moved` and
/// `status` still parse, and the new fields are left out when unset.
#[test]
fn moved_and_status_from_an_older_agent_still_parse() {
    let old: EventKind = serde_json::from_str(r#"{"kind":"moved","ms":5}"#).unwrap();
    assert_eq!(
        old,
        EventKind::Moved {
            ms: 5,
            connected_ms: None,
            answered_ms: None
        }
    );
    let new = EventKind::Moved {
        ms: 9,
        connected_ms: Some(4),
        answered_ms: Some(9),
    };
    let text = serde_json::to_string(&new).unwrap();
    assert_eq!(serde_json::from_str::<EventKind>(&text).unwrap(), new);
    let status = busy_status();
    let text = serde_json::to_string(&status).unwrap();
    assert!(!text.contains("awaiting_first_call"), "{text}");
    let awaiting = Status {
        awaiting_first_call: true,
        ..status
    };
    let text = serde_json::to_string(&awaiting).unwrap();
    assert!(
        serde_json::from_str::<Status>(&text)
            .unwrap()
            .awaiting_first_call
    );
}
