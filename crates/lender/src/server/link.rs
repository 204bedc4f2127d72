//! `GET /v1/link`: the agents' WebSocket, as [`control::link`] specifies
//! it.
//!
//! 1. Before the upgrade: an agent token (401 without a known one, 403 for a
//!    client token) and a WebSocket upgrade (400 otherwise).
//! 2. The first message must be `hello` naming the token's agent, within
//!    three ping intervals; otherwise the link is closed with a policy error
//!    (1008) saying why. The lender answers `welcome` and tells the driver.
//! 3. Then `status`, `event` and `reply` messages go to the driver, and the
//!    driver's requests go out. Text messages only (binary: 1003), at most
//!    [`MAX_MESSAGE`] bytes (larger: 1009), JSON that parses as an
//!    [`AgentMessage`] (otherwise 1007). Pings are answered; a link that
//!    carried nothing for three ping intervals is dead.
//! 4. The driver drops a link's sender when a newer link of the same agent
//!    replaces it: the older one is closed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use control::link::{AgentMessage, LenderMessage, MAX_MESSAGE};
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

/// Read buffer per agent link: a status message fits.
const LINK_BUFFER: usize = 4 * 1024;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument as _;

use super::bearer::{authenticate, bearer, Revoked};
use super::driver::{ApiError, Input};
use super::respond::{error_response, full, Body};
use super::Shared;
use crate::tokens::{self, TokenKind};

/// Orders buffered for one agent; a link that falls this far behind is
/// dropped by the driver.
const OUTBOX: usize = 64;
/// How long one message may take to go out.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most labels an agent may declare.
const MAX_LABELS: usize = 1024;

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Checks the token and the upgrade, answers 101 and starts the link's
/// task.
pub(crate) async fn upgrade(
    shared: &Arc<Shared>,
    mut request: Request<Incoming>,
) -> Response<Body> {
    let agent = match authenticate(shared, &request, TokenKind::Agent).await {
        Ok(principal) => principal.name,
        Err(err) => return error_response(err),
    };
    let revoked = match bearer(request.headers()) {
        Ok(token) => Revoked {
            shared: shared.clone(),
            hash: tokens::hash(token),
        },
        Err(err) => return error_response(err),
    };
    let Some(key) = websocket_key(&request) else {
        return error_response(ApiError::new(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade (version 13)",
        ));
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let link = shared.next_link.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("link", %agent, link);
    shared
        .tracker
        .spawn(session(shared.clone(), on_upgrade, agent, link, revoked).instrument(span));

    let mut response = Response::new(full(Vec::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    remoting_protocol::websocket::accept_upgrade(headers, &key);
    response
}

/// The `Sec-WebSocket-Key` of a version 13 upgrade request.
fn websocket_key(request: &Request<Incoming>) -> Option<String> {
    let has_token = |name: http::header::HeaderName, token: &str| {
        request.headers().get_all(name).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let upgrade = has_token(http::header::CONNECTION, "upgrade")
        && has_token(http::header::UPGRADE, "websocket")
        && request
            .headers()
            .get(http::header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13");
    if !upgrade {
        return None;
    }
    request
        .headers()
        .get(http::header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Why a link ended, and the close frame it gets.
struct Close {
    code: CloseCode,
    reason: String,
}

impl Close {
    fn new(code: CloseCode, reason: impl Into<String>) -> Self {
        Close {
            code,
            reason: reason.into(),
        }
    }
}

async fn session(
    shared: Arc<Shared>,
    on_upgrade: OnUpgrade,
    agent: String,
    link: u64,
    revoked: Revoked,
) {
    let cancel = shared.cancel.child_token();
    let upgraded = tokio::select! {
        () = cancel.cancelled() => return,
        upgraded = on_upgrade => match upgraded {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(%err, "upgrade failed");
                return;
            }
        },
    };
    // Links are many and nearly idle: small buffers (tungstenite's default
    // is 128 KiB each way per connection), grown only for a big message.
    let config = WebSocketConfig::default()
        .read_buffer_size(LINK_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let mut ws: Ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let idle_limit = shared.ping_interval.saturating_mul(3);

    // Hello first, naming the token's agent.
    let hello = tokio::select! {
        () = cancel.cancelled() => Err(Close::new(CloseCode::Away, "the lender is shutting down")),
        hello = timeout(idle_limit, next_message(&mut ws)) => match hello {
            Err(_) => Err(Close::new(CloseCode::Policy, "no hello in time")),
            Ok(Err(close)) => Err(close),
            Ok(Ok(message)) => check_hello(&agent, message),
        },
    };
    let (labels, version, status) = match hello {
        Ok(hello) => hello,
        Err(close) => {
            tracing::warn!(code = ?close.code, reason = %close.reason, "link refused");
            close_with(&mut ws, close).await;
            return;
        }
    };
    let welcome = LenderMessage::Welcome {
        lender: shared.lender_name.clone(),
    };
    if send(&mut ws, &welcome).await.is_err() {
        return;
    }
    let (tx, mut outbox) = mpsc::channel(OUTBOX);
    let up = Input::LinkUp {
        node: agent.clone(),
        link,
        labels,
        version,
        status,
        tx,
    };
    if shared.driver.send(up).await.is_err() {
        close_with(
            &mut ws,
            Close::new(CloseCode::Away, "the lender is shutting down"),
        )
        .await;
        return;
    }

    let mut last_seen = Instant::now();
    let revocation = revoked.wait();
    tokio::pin!(revocation);
    let close = loop {
        tokio::select! {
            () = cancel.cancelled() => break Some(Close::new(CloseCode::Away, "the lender is shutting down")),
            () = &mut revocation => {
                tracing::warn!("the agent's token was revoked; closing its link");
                break Some(Close::new(CloseCode::Policy, "this agent's token was revoked"));
            }
            () = sleep_until(last_seen + idle_limit) => {
                tracing::warn!("link silent for three ping intervals; closing it");
                break Some(Close::new(CloseCode::Away, "no traffic for three ping intervals"));
            }
            order = outbox.recv() => match order {
                Some(message) => {
                    if send(&mut ws, &message).await.is_err() {
                        break None;
                    }
                }
                None => break Some(Close::new(CloseCode::Normal, "replaced by a newer link of this agent")),
            },
            message = next_message(&mut ws) => {
                last_seen = Instant::now();
                match message {
                    Ok(AgentMessage::Hello { .. }) => {
                        break Some(Close::new(CloseCode::Protocol, "hello twice on one link"));
                    }
                    Ok(message) => {
                        let input = Input::LinkMessage {
                            node: agent.clone(),
                            link,
                            message: Box::new(message),
                        };
                        if shared.driver.send(input).await.is_err() {
                            break Some(Close::new(CloseCode::Away, "the lender is shutting down"));
                        }
                    }
                    Err(close) => break Some(close),
                }
            }
        }
    };
    if let Some(close) = close {
        if close.code != CloseCode::Normal || !close.reason.is_empty() {
            tracing::info!(code = ?close.code, reason = %close.reason, "link closing");
        }
        close_with(&mut ws, close).await;
    }
    let _ = shared
        .driver
        .send(Input::LinkDown { node: agent, link })
        .await;
}

/// The next agent message; pings, pongs and raw frames are skipped (the
/// WebSocket layer answers pings). `Err`: the link ends, with this close.
async fn next_message(ws: &mut Ws) -> Result<AgentMessage, Close> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str()).map_err(|err| {
                    tracing::warn!(%err, "bad message from the agent");
                    Close::new(CloseCode::Invalid, format!("bad message: {err}"))
                });
            }
            Some(Ok(Message::Binary(_))) => {
                return Err(Close::new(
                    CloseCode::Unsupported,
                    "binary messages are refused",
                ))
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(_))) | None => return Err(Close::new(CloseCode::Normal, "")),
            Some(Err(err)) => {
                tracing::info!(%err, "link broken");
                let code = match err {
                    WsError::Capacity(_) => CloseCode::Size,
                    _ => CloseCode::Protocol,
                };
                return Err(Close::new(code, err.to_string()));
            }
        }
    }
}

type Hello = (Vec<String>, String, Box<control::Status>);

fn check_hello(agent: &str, message: AgentMessage) -> Result<Hello, Close> {
    let AgentMessage::Hello {
        node,
        labels,
        version,
        status,
    } = message
    else {
        return Err(Close::new(
            CloseCode::Policy,
            "the first message must be hello",
        ));
    };
    if node != agent {
        return Err(Close::new(
            CloseCode::Policy,
            format!("this token speaks for agent {agent:?}, not {node:?}"),
        ));
    }
    if labels.len() > MAX_LABELS {
        return Err(Close::new(
            CloseCode::Policy,
            format!("at most {MAX_LABELS} labels, not {}", labels.len()),
        ));
    }
    // The one label rule the agent's `--labels` applies too.
    if let Some((index, err)) = labels
        .iter()
        .enumerate()
        .find_map(|(i, l)| control::labels::check_label(l).err().map(|err| (i, err)))
    {
        return Err(Close::new(
            CloseCode::Policy,
            format!("label {} of the hello: {err}", index + 1),
        ));
    }
    Ok((labels, version, Box::new(status)))
}

async fn send(ws: &mut Ws, message: &LenderMessage) -> Result<(), ()> {
    let text = control::to_json(message);
    match timeout(WRITE_TIMEOUT, ws.send(Message::text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => {
            tracing::info!(%err, "cannot send to the agent");
            Err(())
        }
        Err(_) => {
            tracing::warn!("sending to the agent timed out");
            Err(())
        }
    }
}

/// Sends a close frame (its reason cut to the 123 bytes a frame allows)
/// and waits briefly for the agent's.
async fn close_with(ws: &mut Ws, close: Close) {
    let mut reason = close.reason;
    if reason.len() > 123 {
        let mut cut = 120;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str("...");
    }
    let frame = CloseFrame {
        code: close.code,
        reason: reason.into(),
    };
    let _ = timeout(WRITE_TIMEOUT, async {
        if ws.send(Message::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(labels: &[&str]) -> AgentMessage {
        AgentMessage::Hello {
            node: "mac-01".into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            version: "0.1.0".into(),
            status: control::Status::default(),
        }
    }

    /// The hello's labels follow the agent's `--labels` rule: before,
    /// `a&b` (and control characters) passed here though the agent's own
    /// command line refused them.
    #[test]
    fn hello_labels_follow_the_one_label_rule() {
        for good in [&["macos", "x86-64", "os:linux", "a,b"][..], &[]] {
            let Ok((labels, _, _)) = check_hello("mac-01", hello(good)) else {
                panic!("{good:?} refused");
            };
            assert_eq!(labels, good);
        }
        for (bad, index) in [
            (&["ok", "a&b"][..], 2),
            (&["bell\u{7}"], 1),
            (&["x|y"], 1),
            (&[""], 1),
        ] {
            let Err(close) = check_hello("mac-01", hello(bad)) else {
                panic!("{bad:?} accepted");
            };
            assert_eq!(close.code, CloseCode::Policy, "{bad:?}");
            assert!(
                close
                    .reason
                    .starts_with(&format!("label {index} of the hello: ")),
                "{bad:?}: {}",
                close.reason
            );
        }
        let long = "x".repeat(control::labels::MAX_LABEL + 1);
        assert!(check_hello("mac-01", hello(&[&long])).is_err());
        let many = vec!["a"; MAX_LABELS + 1];
        assert!(check_hello("mac-01", hello(&many)).is_err());
    }
}
