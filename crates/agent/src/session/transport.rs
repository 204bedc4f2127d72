//! The channel's transport once the target is known: the WebSocket upgrade
//! (the JNLP4 side is `connect::jnlp4`), bridging the engine to the
//! accepted connection, and closing it.

use bytes::BytesMut;
use remoting_protocol::capability::Capability;
use remoting_protocol::handshake;
use remoting_protocol::preamble::{self, PreambleError};
use tokio::io::AsyncWriteExt;

use super::engine::ReadyEngine;
use super::target::Target;
use super::{Agent, Route, SessionEnd, SessionError, CLOSE_TIMEOUT};
use crate::connect::jnlp4;
use crate::connect::websocket;
use crate::departure::Departure;
use crate::engine::bridge::{self, BridgeEnd};
use crate::engine::Engine;

/// An accepted connection, over either transport.
#[derive(Debug)]
// One per session, moved a handful of times: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Link {
    Jnlp4(jnlp4::Connected),
    WebSocket {
        channel: websocket::Channel,
        /// The controller's, from the upgrade's answer.
        capability: Capability,
    },
}

/// Sends the WebSocket's normal close (1000), then ends the connection
/// under it. Over a WebSocket the controller notices either at once.
pub(super) async fn close_web_socket(channel: &mut websocket::Channel) {
    channel.close_normally(CLOSE_TIMEOUT).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.get_mut().shutdown()).await;
}

impl Agent {
    /// The WebSocket upgrade on the web port. The controller's capability
    /// comes with its answer; one older than the engine's minimum stops
    /// the agent.
    pub(super) async fn connect_web_socket(
        route: &Route,
        target: &Target,
        url: &str,
        ready: &ReadyEngine,
        cookie: Option<String>,
    ) -> Result<(Option<String>, Link), SessionError> {
        // For wss, and for an https:// proxy on the way.
        let tls = Some(route.web_tls()?);
        let upgrade = websocket::Upgrade {
            url,
            name: &target.name,
            secret: &target.secret,
            capability: &ready.capability,
            cookie: cookie.as_deref(),
        };
        let (channel, accepted) =
            websocket::connect(&upgrade, &route.settings, tls.as_ref()).await?;
        if let (Some(minimum), Some(ours)) = (&accepted.minimum_version, &ready.remoting_version) {
            if crate::engine::older_than(ours, minimum) {
                return Err(SessionError::Config(format!(
                    "the controller at {url} needs remoting {minimum} or newer, but the engine \
                     jar is {ours}: drop --engine-jar to run the controller's own jar, or update it"
                )));
            }
        }
        let capability = accepted.capability.unwrap_or(ready.capability);
        Ok((
            accepted.cookie,
            Link::WebSocket {
                channel,
                capability,
            },
        ))
    }

    pub(super) async fn bridge(
        &self,
        engine: &mut Engine,
        link: Link,
        engine_buf: BytesMut,
        departure: &Departure,
    ) -> Result<SessionEnd, SessionError> {
        let (Some(mut engine_in), Some(engine_out)) = (engine.stdin.take(), engine.stdout.take())
        else {
            return Err(SessionError::Config("engine stdio missing".into()));
        };
        // The engine's peer preamble carries the controller's capability.
        let capability = match &link {
            Link::Jnlp4(connected) => connected.capability,
            Link::WebSocket { capability, .. } => *capability,
        };
        engine_in
            .write_all(&preamble::encode(capability))
            .await
            .map_err(PreambleError::Io)?;
        engine_in.flush().await.map_err(PreambleError::Io)?;
        let traffic = self.traffic.clone();
        let end = match link {
            Link::Jnlp4(handshake::Connected {
                mut stream,
                read_buf,
                ..
            }) => {
                let end = bridge::run(
                    &mut stream,
                    read_buf,
                    engine_out,
                    engine_buf,
                    engine_in,
                    traffic,
                    departure,
                )
                .await;
                // Whatever ended it: a plain TCP close, never a TLS
                // close_notify (which the controller would ignore,
                // keeping a ghost channel); a ChannelStream's shutdown is
                // only the former.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
                end
            }
            Link::WebSocket { mut channel, .. } => {
                let end = bridge::run(
                    &mut channel,
                    BytesMut::new(),
                    engine_out,
                    engine_buf,
                    engine_in,
                    traffic,
                    departure,
                )
                .await;
                close_web_socket(&mut channel).await;
                end
            }
        };
        match end? {
            BridgeEnd::ControllerClosed => Ok(SessionEnd::ControllerClosed),
            BridgeEnd::EngineClosed => Ok(SessionEnd::EngineExited),
            BridgeEnd::Left(how) => Ok(SessionEnd::Left(how)),
        }
    }
}
