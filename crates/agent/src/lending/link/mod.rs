//! The lender link: with `--lender URL`, one outbound WebSocket to the
//! lending pool `jnlp-lender`, over which the agent says who and where it
//! is and takes `borrow` and `return` orders. The wire contract is
//! [`control::link`]; this is the agent's side of it.
//!
//! # What goes over it
//!
//! - On every connection, `hello` (node, labels, version, status), then the
//!   lender's `welcome` within [`WELCOME_TIMEOUT`](config::WELCOME_TIMEOUT). A restarted or
//!   reconnected agent announces where it is this way.
//! - For every event of the hub (the control socket's `events` stream), a
//!   `status` and the `event`. Busy and place changes that raise no event
//!   (a build starting) are found by a look at the status every
//!   [`STATUS_INTERVAL`](config::STATUS_INTERVAL) and sent as `status` only when something other
//!   than the traffic counters changed: an idle link carries only pings.
//! - Each `request` runs through the control socket's own code
//!   ([`carry_out_borrow`], [`carry_out_return`]), concurrently: a `borrow`
//!   with `wait` does not hold up status updates or other requests, and its
//!   reply follows the `status` and `event` of the move it waited for. Unlike
//!   a local peer, the lender is never "a build on this agent". `events` is
//!   refused (the link streams them anyway), and so is `secret_file`: the
//!   agent reads no file a remote peer names; the lender sends `secret`.
//! - A malformed message is logged and ignored; one that still carries a
//!   request id is answered with an error, so the lender does not wait for
//!   a reply that will never come.
//!
//! # Connection
//!
//! `--lender` may be repeated (or a comma-separated list): an active lender
//! and its standbys. Each round tries them in the order given and stays
//! with the first that welcomes the agent, passing over one that cannot be
//! reached, refuses the link (a standby answers 503) or closes it before
//! its welcome; the log names each lender passed over and why, and the one
//! linked to (`lender link up`, in the span's `lender` field). The backoff
//! below is waited once per round, not per URL, and every round (also
//! after a link that was up drops) starts again from the first.
//!
//! `{lender}/v1/link` (`ws` for `http`, `wss` for `https`), through the
//! proxy `*_proxy`/`no_proxy` choose for the host (as the WebSocket
//! transport does), TLS with the system roots plus `-cert`
//! ([`crate::connect::tls::client_config`]), `Authorization: Bearer` with
//! the token from `--lender-token-file`. The token never reaches a log line
//! or an error message. Whenever the link drops, the agent reconnects after
//! `--reconnect-delay` doubling to `--reconnect-max-delay` (1 s to 30 s by
//! default) with jitter; the wait starts over after a link that stayed up
//! [`STABLE`](connection::STABLE). The agent pings every [`control::link::PING_INTERVAL`]; a
//! link that carried no frame for three intervals is dead.
//!
//! The link's state shows in the logs only (`lender link up`, `lender link
//! down`, `cannot open the lender link`): `status` is the control crate's,
//! which this does not change.
//!
//! # Layout
//!
//! - `labels`: [`automatic_labels`](labels::automatic_labels) and the label
//!   rules the CLI checks;
//! - `config`: [`LinkConfig`], the endpoint and [`LinkError`](config::LinkError);
//! - `order`: [`Rotation`](order::Rotation), which lender to try next
//!   when several are given;
//! - `session`: [`Session`](session::Session), one connection's protocol, without sockets or timers
//!   (`now` passed in; it says what to send and when to wake);
//! - `connection`: [`Link`], the task that dials, drives a session and
//!   reconnects.

mod config;
mod connection;
mod labels;
mod order;
mod session;

pub use config::LinkConfig;
pub use connection::Link;

#[cfg(test)]
// tungstenite's server callback fixes the (large) error type.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]
mod tests {
    use std::sync::Mutex;

    use control::labels::{is_label, MAX_LABEL};
    use control::{BorrowRequest, EventKind, Phase, Placement, Target, When};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::handshake::server::{
        ErrorResponse, Request as UpgradeRequest, Response as UpgradeResponse,
    };

    use super::config::*;
    use super::connection::*;
    use super::labels::*;
    use super::session::*;

    use crate::lending::orders::{Answer, Handler};
    use crate::settings::Secret;
    use control::link::{AgentMessage, LenderMessage, LINK_PATH, MAX_MESSAGE, PING_INTERVAL};
    use control::{Event, Reply, Request, Response, Status};
    use futures_util::{SinkExt as _, StreamExt as _};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio::sync::{broadcast, mpsc};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;
    use tokio_util::sync::CancellationToken;

    const TOKEN: &str = "jla_0123456789abcdef";

    #[test]
    fn automatic_labels_name_the_platform_as_the_lender_does() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12\"\nNAME=\"Debian\"\nID=debian\n";
        assert_eq!(
            automatic_labels("linux", "x86_64", Some(debian)),
            ["linux", "x86_64", "amd64", "debian"]
        );
        assert_eq!(
            automatic_labels("macos", "aarch64", None),
            ["macos", "aarch64", "arm64", "mac"]
        );
        let quoted = "ID_LIKE=\"fedora\"\nID=\"RHEL\"\n";
        assert_eq!(
            automatic_labels("linux", "aarch64", Some(quoted)),
            ["linux", "aarch64", "arm64", "rhel"]
        );
        // An ID that is no label is left out, not sent.
        let odd = "ID=\"my distro\"\n";
        assert_eq!(
            automatic_labels("linux", "riscv64", Some(odd)),
            ["linux", "riscv64"]
        );
        assert_eq!(
            hello_labels(
                &["xcode16".into(), "linux".into()],
                automatic_labels("linux", "x86_64", None)
            ),
            ["xcode16", "linux", "x86_64", "amd64"]
        );
        for bad in [
            "", "a b", "a&b", "a|b", "!a", "a<", "a>", "(a", "a)", "\"a", "'a", "a\u{7}",
        ] {
            assert!(!is_label(bad), "{bad:?}");
        }
        for good in ["x86-64", "xcode16", "os:linux", "a.b_c", "ünï"] {
            assert!(is_label(good), "{good:?}");
        }
        assert!(!is_label(&"a".repeat(MAX_LABEL + 1)));
    }

    #[test]
    fn the_endpoint_is_the_link_path_under_the_lender_url() {
        let plain = Endpoint::parse("http://lender.test:8080").unwrap();
        assert_eq!(plain.url, "ws://lender.test:8080/v1/link");
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.secure),
            ("lender.test", 8080, false)
        );
        let tls = Endpoint::parse("https://pool.example/lender/").unwrap();
        assert_eq!(tls.url, "wss://pool.example/lender/v1/link");
        assert_eq!((tls.port, tls.secure), (443, true));
        let v6 = Endpoint::parse("http://[::1]:9/").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.url.as_str()),
            ("::1", "ws://[::1]:9/v1/link")
        );
        for bad in ["ftp://x/", "lender:8080", "http://u:p@x/", "not a url"] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(matches!(err, LinkError::Url { .. }), "{bad}: {err}");
        }
    }

    fn session() -> (Session, Instant) {
        let now = Instant::now();
        (
            Session::new(now, Duration::from_secs(60), Duration::from_secs(30)),
            now,
        )
    }

    fn borrow(secret: Option<&str>, secret_file: Option<&str>) -> Request {
        Request::Borrow(BorrowRequest {
            target: Target::Url {
                url: "https://b.example/".into(),
            },
            name: "guest".into(),
            secret: secret.map(str::to_owned),
            secret_file: secret_file.map(Into::into),
            lease: None,
            idle_return: None,
            when: When::Idle,
            wait: Some(Duration::from_secs(60)),
            transport: None,
        })
    }

    fn text(message: &LenderMessage) -> String {
        serde_json::to_string(message).unwrap()
    }

    #[test]
    fn lender_messages_are_welcomes_requests_refusals_or_ignored() {
        let (mut s, _) = session();
        assert!(!s.welcomed());
        let welcome = text(&LenderMessage::Welcome {
            lender: "pool-1".into(),
        });
        assert_eq!(
            s.on_text(&welcome),
            Inbound::Welcome {
                lender: "pool-1".into()
            }
        );
        assert!(s.welcomed());
        assert!(matches!(s.on_text(&welcome), Inbound::Ignore { .. }));

        let ok = borrow(Some("s3cret"), None);
        assert_eq!(
            s.on_text(&text(&LenderMessage::Request {
                id: 1,
                request: ok.clone()
            })),
            Inbound::Request { id: 1, request: ok }
        );
        let refused = |inbound: Inbound, id: u64, says: &str| match inbound {
            Inbound::Refuse { id: got, message } => {
                assert_eq!(got, id);
                assert!(message.contains(says), "{message}");
            }
            other => panic!("{other:?}"),
        };
        refused(
            s.on_text(&text(&LenderMessage::Request {
                id: 2,
                request: borrow(None, Some("/etc/shadow")),
            })),
            2,
            "secret_file is refused",
        );
        refused(
            s.on_text(&text(&LenderMessage::Request {
                id: 3,
                request: Request::Events,
            })),
            3,
            "events is not served",
        );
        refused(
            s.on_text(r#"{"type":"request","id":4,"request":{"command":"fly"}}"#),
            4,
            "bad request",
        );
        for junk in [
            "",
            "nope",
            "[1,2]",
            r#"{"type":"hug"}"#,
            r#"{"type":"request","id":-1,"request":{}}"#,
            r#"{"type":"welcome"}"#,
        ] {
            assert!(matches!(s.on_text(junk), Inbound::Ignore { .. }), "{junk}");
        }
        let huge = "x".repeat(MAX_MESSAGE + 1);
        assert!(matches!(s.on_text(&huge), Inbound::Ignore { .. }));
    }

    #[test]
    fn pings_go_out_on_time_and_silence_or_no_welcome_means_dead() {
        let ping = Duration::from_secs(60);
        let (mut s, t0) = session();
        assert_eq!(
            s.deadline(),
            t0 + Duration::from_secs(30),
            "the welcome first"
        );
        let err = s.tick(t0 + Duration::from_secs(30)).unwrap_err();
        assert!(err.to_string().contains("welcome"), "{err}");

        let (mut s, t0) = session();
        s.on_text(&text(&LenderMessage::Welcome { lender: "l".into() }));
        assert_eq!(s.deadline(), t0 + ping);
        assert!(!s.tick(t0 + ping / 2).unwrap());
        assert!(s.tick(t0 + ping).unwrap(), "ping due");
        assert!(!s.tick(t0 + ping).unwrap(), "once");
        s.heard(t0 + ping + Duration::from_secs(1));
        assert!(s.tick(t0 + ping * 2).unwrap());
        // Heard last at 61 s: dead at 241 s, not before.
        assert!(s.tick(t0 + ping * 3).unwrap());
        assert!(s.tick(t0 + Duration::from_secs(240)).is_ok());
        let err = s.tick(t0 + Duration::from_secs(241)).unwrap_err();
        assert!(
            matches!(err, LinkError::Silent(d) if d == ping * 3),
            "{err}"
        );
    }

    fn status(placement: Placement, phase: Phase) -> Status {
        Status {
            placement,
            phase,
            ..Status::default()
        }
    }

    #[test]
    fn a_status_goes_out_only_when_more_than_its_counters_changed() {
        let (mut s, _) = session();
        let home = status(Placement::Home, Phase::Online);
        let hello = s.hello("mac-01", &["a".into()], "0.1.0", home.clone());
        assert!(
            matches!(&hello, AgentMessage::Hello { node, labels, status, .. } if node == "mac-01" && labels == &["a"] && *status == home)
        );
        let mut busier = home.clone();
        busier.bytes_to_controller = 1 << 20;
        busier.busy.last_activity_ms = Some(5);
        busier.busy.requests_in_flight = 0;
        assert_eq!(s.on_status(busier.clone(), false), None);
        assert!(s.on_status(busier.clone(), true).is_some(), "forced");
        busier.busy.busy = true;
        assert_eq!(
            s.on_status(busier.clone(), false),
            Some(AgentMessage::Status {
                status: busier.clone()
            })
        );
        assert_eq!(s.on_status(busier.clone(), false), None);
        let away = status(Placement::Borrowed, Phase::Online);
        let event = Event {
            at_ms: 1,
            kind: EventKind::Moved {
                ms: 10,
                connected_ms: None,
                answered_ms: None,
            },
            status: away.clone(),
        };
        let [first, second] = s.on_event(event.clone());
        assert_eq!(
            first,
            AgentMessage::Status {
                status: away.clone()
            }
        );
        assert_eq!(second, AgentMessage::Event { event });
        assert_eq!(
            s.on_status(away, false),
            None,
            "already sent with the event"
        );
    }

    #[test]
    fn oversized_replies_become_errors() {
        let big = AgentMessage::Reply {
            id: 9,
            reply: Reply::error("x".repeat(MAX_MESSAGE)),
        };
        let Some(Message::Text(text)) = frame(&big) else {
            panic!()
        };
        let back: AgentMessage = serde_json::from_str(text.as_str()).unwrap();
        assert!(
            matches!(back, AgentMessage::Reply { id: 9, reply: Reply::Error(m) } if m.contains("larger than"))
        );
        let status = Status {
            last_error: Some("x".repeat(MAX_MESSAGE)),
            ..Status::default()
        };
        assert!(frame(&AgentMessage::Status { status }).is_none());
    }

    // -- The driver, against a lender written here. --

    /// Records orders; the status and the events are the test's.
    struct FakeHub {
        status: Mutex<Status>,
        borrows: Mutex<Vec<BorrowRequest>>,
        events: broadcast::Sender<Event>,
    }

    impl FakeHub {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                status: Mutex::new(status(Placement::Home, Phase::Online)),
                borrows: Mutex::new(Vec::new()),
                events: broadcast::channel(16).0,
            })
        }

        fn moved(&self, placement: Placement) {
            let status = status(placement, Phase::Online);
            *self.status.lock().unwrap() = status.clone();
            self.events
                .send(Event {
                    at_ms: 1,
                    kind: EventKind::Moved {
                        ms: 5,
                        connected_ms: None,
                        answered_ms: None,
                    },
                    status,
                })
                .unwrap();
        }
    }

    impl Handler for FakeHub {
        fn status(&self) -> Status {
            self.status.lock().unwrap().clone()
        }
        fn borrow(&self, request: BorrowRequest) -> Answer<'_> {
            self.borrows.lock().unwrap().push(request);
            Box::pin(std::future::ready(Ok("accepted".into())))
        }
        fn give_back(&self, _when: When) -> Answer<'_> {
            Box::pin(std::future::ready(Ok("accepted".into())))
        }
        fn subscribe(&self) -> broadcast::Receiver<Event> {
            self.events.subscribe()
        }
    }

    type ServerWs = WebSocketStream<TcpStream>;

    /// A lender on 127.0.0.1:0 that accepts links with [`TOKEN`] and hands
    /// each over; other tokens get 401.
    async fn fake_lender() -> (String, mpsc::UnboundedReceiver<ServerWs>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let check = |request: &UpgradeRequest, response: UpgradeResponse| {
                    let auth = request.headers().get("authorization");
                    if request.uri().path() == LINK_PATH
                        && auth.is_some_and(|a| a == format!("Bearer {TOKEN}").as_str())
                    {
                        Ok(response)
                    } else {
                        let mut refusal = ErrorResponse::new(Some("unknown token".into()));
                        *refusal.status_mut() = http::StatusCode::UNAUTHORIZED;
                        Err(refusal)
                    }
                };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, check).await {
                    let _ = tx.send(ws);
                }
            }
        });
        (url, rx)
    }

    /// A link to `url` (several: comma-separated, in order).
    fn config(url: &str, token: &str, ping_interval: Duration) -> LinkConfig {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        LinkConfig {
            endpoints: url
                .split(',')
                .map(|url| Endpoint::parse(url).unwrap())
                .collect(),
            token: Secret::new(token),
            node: "mac-01".into(),
            labels: vec!["linux".into(), "xcode16".into()],
            version: "0.1.0".into(),
            ping_interval,
            welcome_timeout: Duration::from_secs(10),
            status_interval: Duration::from_secs(60),
            reconnect_delay: Duration::from_millis(10),
            reconnect_max_delay: Duration::from_millis(50),
            proxy_credentials: None,
            tls: Arc::new(tls),
        }
    }

    async fn receive(ws: &mut ServerWs) -> Option<AgentMessage> {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("a message within 10 s")?
                .ok()?;
            match message {
                Message::Text(text) => return Some(serde_json::from_str(text.as_str()).unwrap()),
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    async fn order(ws: &mut ServerWs, message: &LenderMessage) {
        ws.send(Message::text(text(message))).await.unwrap();
    }

    #[tokio::test]
    async fn requests_run_concurrently_beside_events_and_odd_ones_get_errors() {
        let (url, mut links) = fake_lender().await;
        let hub = FakeHub::new();
        let shutdown = CancellationToken::new();
        let link = Link::start(
            config(&url, TOKEN, Duration::from_secs(60)),
            hub.clone(),
            &shutdown,
        );
        let mut ws = links.recv().await.unwrap();
        let Some(AgentMessage::Hello {
            node,
            labels,
            status,
            ..
        }) = receive(&mut ws).await
        else {
            panic!("no hello")
        };
        assert_eq!(node, "mac-01");
        assert_eq!(labels, ["linux", "xcode16"]);
        assert_eq!(status.placement, Placement::Home);
        order(
            &mut ws,
            &LenderMessage::Welcome {
                lender: "pool".into(),
            },
        )
        .await;

        // A borrow that waits, then requests that must not wait behind it.
        order(
            &mut ws,
            &LenderMessage::Request {
                id: 1,
                request: borrow(Some("s3cret"), None),
            },
        )
        .await;
        order(
            &mut ws,
            &LenderMessage::Request {
                id: 2,
                request: Request::Status,
            },
        )
        .await;
        ws.send(Message::text("garbage")).await.unwrap();
        ws.send(Message::Binary(vec![1, 2, 3].into()))
            .await
            .unwrap();
        order(
            &mut ws,
            &LenderMessage::Request {
                id: 3,
                request: Request::Events,
            },
        )
        .await;
        let mut replies = Vec::new();
        while replies.len() < 2 {
            match receive(&mut ws).await.unwrap() {
                AgentMessage::Reply { id, reply } => replies.push((id, reply)),
                other => panic!("{other:?}"),
            }
        }
        assert!(
            matches!(&replies[0], (2, Reply::Ok(Response::Status(s))) if s.placement == Placement::Home),
            "{replies:?}"
        );
        assert!(matches!(&replies[1], (3, Reply::Error(_))), "{replies:?}");
        assert_eq!(hub.borrows.lock().unwrap().len(), 1);
        assert_eq!(
            hub.borrows.lock().unwrap()[0].secret.as_deref(),
            Some("s3cret")
        );

        // The move: a status and the event, and the borrow's reply.
        hub.moved(Placement::Borrowed);
        let mut seen = Vec::new();
        while !seen
            .iter()
            .any(|m| matches!(m, AgentMessage::Reply { id: 1, .. }))
        {
            seen.push(receive(&mut ws).await.unwrap());
        }
        assert!(
            seen.iter().any(|m| matches!(m, AgentMessage::Status { status } if status.placement == Placement::Borrowed)),
            "{seen:?}"
        );
        assert!(
            seen.iter().any(|m| matches!(m, AgentMessage::Event { event } if event.kind == EventKind::Moved { ms: 5, connected_ms: None, answered_ms: None })),
            "{seen:?}"
        );
        assert!(
            seen.iter().any(|m| matches!(
                m,
                AgentMessage::Reply {
                    id: 1,
                    reply: Reply::Ok(_)
                }
            )),
            "{seen:?}"
        );

        // Stopping says goodbye.
        link.stop().await;
        assert!(receive(&mut ws).await.is_none());
    }

    #[tokio::test]
    async fn a_silent_lender_is_dropped_and_the_link_comes_back_with_a_hello() {
        let (url, mut links) = fake_lender().await;
        let hub = FakeHub::new();
        let shutdown = CancellationToken::new();
        let ping = Duration::from_millis(100);
        let _link = Link::start(config(&url, TOKEN, ping), hub.clone(), &shutdown);
        let mut first = links.recv().await.unwrap();
        assert!(matches!(
            receive(&mut first).await,
            Some(AgentMessage::Hello { .. })
        ));
        order(
            &mut first,
            &LenderMessage::Welcome {
                lender: "pool".into(),
            },
        )
        .await;
        hub.moved(Placement::Borrowed);
        let went_quiet = Instant::now();
        // This lender now reads nothing, so it answers no ping.
        let mut second = tokio::time::timeout(Duration::from_secs(10), links.recv())
            .await
            .expect("reconnected")
            .unwrap();
        assert!(
            went_quiet.elapsed() >= ping * 3,
            "{:?}",
            went_quiet.elapsed()
        );
        let Some(AgentMessage::Hello { status, .. }) = receive(&mut second).await else {
            panic!("no hello")
        };
        assert_eq!(status.placement, Placement::Borrowed, "the current place");
        shutdown.cancel();
        drop(first);
    }

    #[tokio::test]
    async fn a_refused_token_is_named_by_its_file_never_shown() {
        let (url, _links) = fake_lender().await;
        let wrong = "jla_wrong_wrong_wrong";
        let refused = config(&url, wrong, PING_INTERVAL);
        let Err(err) = connect(&refused, &refused.endpoints[0]).await else {
            panic!("connected")
        };
        assert!(
            matches!(&err, LinkError::Refused { status: 401, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("--lender-token-file"), "{text}");
        assert!(text.contains("unknown token"), "{text}");
        assert!(!text.contains(wrong) && !format!("{err:?}").contains(wrong));

        // Nothing listens: a dial error that names the lender's address.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let unreachable = config(&gone, TOKEN, PING_INTERVAL);
        let Err(err) = connect(&unreachable, &unreachable.endpoints[0]).await else {
            panic!("connected")
        };
        assert!(matches!(err, LinkError::Dial(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("cannot reach the lender: 127.0.0.1:"),
            "{err}"
        );
    }

    /// A lender on 127.0.0.1:0 that refuses every link with 503, as a
    /// standby does; each attempt is noted in `seen` as `name`.
    async fn standby(name: &'static str, seen: Arc<Mutex<Vec<&'static str>>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                seen.lock().unwrap().push(name);
                let refuse = |_: &UpgradeRequest, _: UpgradeResponse| {
                    let mut refusal = ErrorResponse::new(Some(
                        r#"{"error":"this lender is a standby: try the active one"}"#.into(),
                    ));
                    *refusal.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    Err(refusal)
                };
                let _ = tokio_tungstenite::accept_hdr_async(tcp, refuse).await;
            }
        });
        url
    }

    /// A lender on 127.0.0.1:0 that accepts each link and closes it at
    /// once with a reason, as a lender stepping down does; noted in `seen`.
    async fn closing(name: &'static str, seen: Arc<Mutex<Vec<&'static str>>>) -> String {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                seen.lock().unwrap().push(name);
                if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                    let close = CloseFrame {
                        code: CloseCode::Again,
                        reason: "this lender is a standby".into(),
                    };
                    let _ = ws.close(Some(close)).await;
                }
            }
        });
        url
    }

    #[tokio::test]
    async fn the_link_passes_over_a_standby_and_an_unreachable_lender_without_waiting() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let first = standby("standby", seen.clone()).await;
        let closer = closing("closing", seen.clone()).await;
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let (active, mut links) = fake_lender().await;
        let mut config = config(
            &format!("{first},{closer},{gone},{active}"),
            TOKEN,
            Duration::from_secs(60),
        );
        // A wait between URLs would show: the link must come well before it.
        config.reconnect_delay = Duration::from_secs(60);
        config.reconnect_max_delay = Duration::from_secs(60);
        let hub = FakeHub::new();
        let shutdown = CancellationToken::new();
        let link = Link::start(config, hub, &shutdown);
        let mut ws = tokio::time::timeout(Duration::from_secs(20), links.recv())
            .await
            .expect("linked to the last lender within the round, without a backoff")
            .unwrap();
        assert!(matches!(
            receive(&mut ws).await,
            Some(AgentMessage::Hello { .. })
        ));
        assert_eq!(
            *seen.lock().unwrap(),
            ["standby", "closing"],
            "tried in order, once each"
        );
        link.stop().await;
    }

    #[tokio::test]
    async fn a_dropped_link_starts_again_at_the_first_lender() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let first = standby("standby", seen.clone()).await;
        let (active, mut links) = fake_lender().await;
        let hub = FakeHub::new();
        let shutdown = CancellationToken::new();
        let link = Link::start(
            config(&format!("{first},{active}"), TOKEN, Duration::from_secs(60)),
            hub,
            &shutdown,
        );
        let mut ws = links.recv().await.unwrap();
        assert!(matches!(
            receive(&mut ws).await,
            Some(AgentMessage::Hello { .. })
        ));
        order(
            &mut ws,
            &LenderMessage::Welcome {
                lender: "pool".into(),
            },
        )
        .await;
        assert_eq!(seen.lock().unwrap().len(), 1);
        // The active lender steps down: the next round asks the first again.
        drop(ws);
        let mut again = tokio::time::timeout(Duration::from_secs(20), links.recv())
            .await
            .expect("relinked")
            .unwrap();
        assert!(matches!(
            receive(&mut again).await,
            Some(AgentMessage::Hello { .. })
        ));
        assert_eq!(*seen.lock().unwrap(), ["standby", "standby"]);
        link.stop().await;
    }
}
