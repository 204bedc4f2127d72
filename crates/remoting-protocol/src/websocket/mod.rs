//! The WebSocket transport (PROTOCOL.md section 3): the controller's web
//! port instead of the TCP agent port, for controllers behind an ingress or
//! a proxy that expose no agent port.
//!
//! The channel is the same chunk stream as over JNLP4-connect, one chunk per
//! binary message, so [`WsChannel`] turns the messages back into a plain byte
//! stream (`AsyncRead + AsyncWrite`) and everything above it runs unchanged.
//! Unlike agent.jar it pings the controller itself and gives up on a
//! connection that went silent (see [`KeepAlive`]): a proxy that stops
//! forwarding otherwise leaves a hung agent.
//!
//! - [`login_url`], [`agents_url`], [`upgrade_request`]: the readiness check
//!   and the upgrade request, exact to the recorded agent.jar request
//!   (`fixtures/websocket/upgrade-request.http`).
//! - [`check_response`]: the controller's answer → [`Accepted`] or [`Refusal`].
//! - [`connect`]: the upgrade over an already connected (and, for `wss`,
//!   TLS-wrapped) stream, giving a [`WsChannel`].

mod channel;
mod connect;
mod request;
mod response;

use std::io;
use std::time::Duration;

use http::HeaderName;

pub use channel::WsChannel;
pub use connect::connect;
pub use request::{agents_url, login_url, upgrade_request, UpgradeHeaders};
pub use response::{accept_upgrade, check_response, Accepted, Refusal};

/// Most bytes in one binary message we send: one chunk, 2-byte header + 8192
/// payload (what remoting itself sends).
pub const MAX_MESSAGE_OUT: usize = 2 + crate::chunk::SEND_CHUNK_PAYLOAD;

/// The controller rejects bigger messages (close 1009).
pub const CONTROLLER_MESSAGE_LIMIT: usize = 64 * 1024;

/// Largest message (and frame) we accept from the controller. Remoting sends
/// at most [`MAX_MESSAGE_OUT`]; the margin tolerates other senders while
/// keeping what one message can make us buffer bounded.
pub const MAX_MESSAGE_IN: usize = 4 * CONTROLLER_MESSAGE_LIMIT;

/// `Node-Name` (request).
pub(crate) const NODE_NAME: HeaderName = HeaderName::from_static("node-name");
/// `Secret-Key` (request).
pub(crate) const SECRET_KEY: HeaderName = HeaderName::from_static("secret-key");
/// `X-Remoting-Capability` (request and 101).
pub(crate) const X_REMOTING_CAPABILITY: HeaderName =
    HeaderName::from_static("x-remoting-capability");
/// `X-Remoting-Minimum-Version` (101).
pub(crate) const X_REMOTING_MINIMUM_VERSION: HeaderName =
    HeaderName::from_static("x-remoting-minimum-version");
/// `Connection-Cookie` (request and 101).
pub(crate) const CONNECTION_COOKIE: HeaderName = HeaderName::from_static("connection-cookie");

/// Keepalive that agent.jar lacks: our own pings, a read idle timeout and a
/// write timeout, so that a connection a proxy silently dropped is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// How often we send a ping of our own while the channel is read,
    /// whatever else is sent: the controller's pong proves the path works
    /// both ways.
    pub ping_interval: Duration,
    /// A connection that has received no message at all (data, ping, pong,
    /// close) for this long is dead: reads fail with
    /// [`io::ErrorKind::TimedOut`]. Also bounds the upgrade handshake.
    pub idle_timeout: Duration,
    /// A write (or flush) that cannot complete for this long fails with
    /// [`io::ErrorKind::TimedOut`].
    pub write_timeout: Duration,
}

impl KeepAlive {
    /// Shortest write timeout [`KeepAlive::with_idle_timeout`] picks: a busy
    /// but alive controller behind a slow link must not be cut off.
    pub const MIN_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

    /// Derives the rest from the idle timeout: four pings per idle period (at
    /// least 1 ms apart), so three can be lost before the connection counts
    /// as dead; writes may block for the idle timeout, at least
    /// [`KeepAlive::MIN_WRITE_TIMEOUT`].
    pub fn with_idle_timeout(idle: Duration) -> Self {
        Self {
            ping_interval: (idle / 4).max(Duration::from_millis(1)),
            idle_timeout: idle,
            write_timeout: idle.max(Self::MIN_WRITE_TIMEOUT),
        }
    }
}

impl Default for KeepAlive {
    /// Idle 40 s: a little over the controller's 30 s ping interval, so its
    /// pings alone keep a healthy connection alive.
    fn default() -> Self {
        Self::with_idle_timeout(Duration::from_secs(40))
    }
}

/// Why a WebSocket connection could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum WebSocketError {
    /// The controller answered the upgrade with something other than 101.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The controller URL cannot carry a WebSocket connection.
    #[error("cannot use {url} for a WebSocket connection: {reason}")]
    BadUrl {
        /// The URL, user info (if any) redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A header of the upgrade request is invalid (never shows the value).
    #[error("invalid upgrade request header {name}: {reason}")]
    BadHeader {
        /// The header name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The upgrade failed as a protocol matter: a 101 without a valid
    /// `Sec-WebSocket-Accept`, an answer that is not HTTP, …
    #[error("the WebSocket upgrade failed: {0}")]
    Handshake(String),
    /// The stream failed during the upgrade.
    #[error("the connection failed during the WebSocket upgrade: {0}")]
    Io(#[from] io::Error),
    /// The controller did not complete the upgrade in time.
    #[error("the controller did not answer the WebSocket upgrade within {0:?}")]
    TimedOut(Duration),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_derivation() {
        let k = KeepAlive::default();
        assert_eq!(k.idle_timeout, Duration::from_secs(40));
        assert_eq!(k.ping_interval, Duration::from_secs(10));
        assert_eq!(k.write_timeout, Duration::from_secs(40));
        let short = KeepAlive::with_idle_timeout(Duration::from_millis(2));
        assert_eq!(short.ping_interval, Duration::from_millis(1));
        assert_eq!(short.write_timeout, KeepAlive::MIN_WRITE_TIMEOUT);
    }

    #[test]
    fn limits() {
        assert_eq!(MAX_MESSAGE_OUT, 8194);
        const _: () = assert!(MAX_MESSAGE_OUT < CONTROLLER_MESSAGE_LIMIT);
        const _: () = assert!(MAX_MESSAGE_IN >= CONTROLLER_MESSAGE_LIMIT);
    }
}
