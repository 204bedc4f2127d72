//! The upgrade itself, over a stream the caller connected.

use http::Request;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;

use super::{check_response, Accepted, KeepAlive, WebSocketError, WsChannel, MAX_MESSAGE_IN};

/// Read buffer: two of the controller's largest usual messages.
const READ_BUFFER: usize = 16 * 1024;
/// Bytes queued before they are written through without a flush; the
/// channel flushes after every command anyway.
const WRITE_BUFFER: usize = 32 * 1024;

/// The WebSocket settings of the channel: no compression, no subprotocol
/// (tungstenite negotiates neither unless asked), incoming messages and
/// frames bounded by [`MAX_MESSAGE_IN`].
pub(super) fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(MAX_MESSAGE_IN))
        .max_frame_size(Some(MAX_MESSAGE_IN))
}

/// Performs the upgrade (`request` from [`super::upgrade_request`]) on an
/// already connected and, for `wss`, TLS-wrapped stream. The whole exchange
/// is bounded by `keepalive.idle_timeout`. A non-101 answer becomes
/// [`WebSocketError::Refused`]; `node` only names the node in messages.
pub async fn connect<S>(
    stream: S,
    request: Request<()>,
    node: &str,
    keepalive: KeepAlive,
) -> Result<(WsChannel<S>, Accepted), WebSocketError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = tokio_tungstenite::client_async_with_config(request, stream, Some(config()));
    let (ws, response) = match tokio::time::timeout(keepalive.idle_timeout, handshake).await {
        Err(_) => return Err(WebSocketError::TimedOut(keepalive.idle_timeout)),
        Ok(Err(err)) => return Err(handshake_error(err, node)),
        Ok(Ok(done)) => done,
    };
    let accepted = check_response(response.status(), response.headers(), None, node)?;
    Ok((WsChannel::new(ws, keepalive), accepted))
}

fn handshake_error(err: WsError, node: &str) -> WebSocketError {
    match err {
        WsError::Http(response) => {
            let status = response.status();
            let body = response.body().as_deref();
            match check_response(status, response.headers(), body, node) {
                Err(refusal) => WebSocketError::Refused(refusal),
                Ok(_) => WebSocketError::Handshake(format!("unexpected HTTP {status}")),
            }
        }
        WsError::Io(err) => WebSocketError::Io(err),
        // tungstenite's text would quote the value, which may be the secret.
        WsError::Utf8(_) => {
            WebSocketError::Handshake("a request header value is not printable ASCII".into())
        }
        other => WebSocketError::Handshake(other.to_string()),
    }
}

#[cfg(test)]
// tungstenite's server callback fixes the (large) error type.
#[allow(clippy::unwrap_used, clippy::result_large_err)]
mod tests {
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use http::{HeaderValue, StatusCode};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::Message;

    use super::*;
    use crate::websocket::{upgrade_request, Refusal, UpgradeHeaders};
    use crate::Capability;

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn request(cookie: Option<&str>) -> Request {
        upgrade_request(
            "http://controller.test:8080/jenkins/",
            &UpgradeHeaders {
                node: "n1",
                secret: SECRET,
                capability: &Capability::CURRENT,
                cookie,
                extra: &[],
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn accepted_headers_are_read_and_the_channel_works() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let callback = |req: &Request, mut resp: Response| {
                let h = req.headers();
                assert_eq!(req.uri().path(), "/jenkins/wsagents/");
                assert_eq!(h["node-name"], "n1");
                assert_eq!(h["secret-key"], SECRET);
                assert_eq!(h["connection-cookie"], "c0ffee");
                assert_eq!(h["origin"], "http://controller.test:8080");
                assert_eq!(h["host"], "controller.test:8080");
                assert_eq!(
                    h["x-remoting-capability"],
                    Capability::CURRENT.to_base64().as_str()
                );
                let out = resp.headers_mut();
                let cap = Capability::from_mask(0x1fe).to_base64();
                out.insert(
                    "X-Remoting-Capability",
                    HeaderValue::from_str(&cap).unwrap(),
                );
                out.insert(
                    "X-Remoting-Minimum-Version",
                    HeaderValue::from_static("3.14"),
                );
                out.insert("Connection-Cookie", HeaderValue::from_static("beef"));
                Ok(resp)
            };
            let mut ws = tokio_tungstenite::accept_hdr_async(server, callback)
                .await
                .unwrap();
            ws.send(Message::Binary(b"\x00\x02hi"[..].into()))
                .await
                .unwrap();
            ws.next().await.unwrap().unwrap()
        });
        let (mut channel, accepted) =
            connect(client, request(Some("c0ffee")), "n1", KeepAlive::default())
                .await
                .unwrap();
        assert_eq!(
            accepted,
            Accepted {
                capability: Some(Capability::CURRENT),
                minimum_version: Some("3.14".into()),
                cookie: Some("beef".into()),
            }
        );
        let mut got = [0; 4];
        channel.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x00\x02hi");
        channel.write_all(b"\x00\x01!").await.unwrap();
        channel.flush().await.unwrap();
        assert_eq!(
            server.await.unwrap(),
            Message::Binary(b"\x00\x01!"[..].into())
        );
    }

    async fn refused_with(status: StatusCode, body: Option<&str>) -> WebSocketError {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let body = body.map(str::to_owned);
        tokio::spawn(async move {
            let callback = move |_: &Request, _: Response| {
                let mut err = ErrorResponse::new(body);
                *err.status_mut() = status;
                Err(err)
            };
            let _ = tokio_tungstenite::accept_hdr_async(server, callback).await;
        });
        connect(client, request(None), "n1", KeepAlive::default())
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn forbidden_is_a_bad_secret() {
        let err = refused_with(StatusCode::FORBIDDEN, None).await;
        assert!(
            matches!(&err, WebSocketError::Refused(Refusal::BadSecret { node }) if node == "n1"),
            "{err:?}"
        );
        assert!(!err.to_string().contains(SECRET));
    }

    #[tokio::test]
    async fn unknown_node_is_named() {
        let err = refused_with(StatusCode::BAD_REQUEST, Some("no such agent")).await;
        assert!(
            matches!(&err, WebSocketError::Refused(Refusal::NoSuchAgent { node }) if node == "n1"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn not_http_is_a_handshake_error() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut buf = [0; 1024];
            let _ = server.read(&mut buf).await;
            let _ = server.write_all(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        });
        let err = connect(client, request(None), "n1", KeepAlive::default())
            .await
            .unwrap_err();
        assert!(matches!(err, WebSocketError::Handshake(_)), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_controller_times_the_upgrade_out() {
        let (client, _server) = tokio::io::duplex(64 * 1024);
        let keepalive = KeepAlive::with_idle_timeout(Duration::from_secs(5));
        let err = connect(client, request(None), "n1", keepalive)
            .await
            .unwrap_err();
        assert!(
            matches!(err, WebSocketError::TimedOut(d) if d == Duration::from_secs(5)),
            "{err:?}"
        );
    }
}
