//! The async driver: runs a [`Handshake`] over a connection and performs the
//! TLS upgrade.

use std::fmt;

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

use crate::capability::Capability;
use crate::identity::InstanceIdentity;
use crate::tls::{client_config, identity_mismatch};

use super::{ChannelStream, Event, Handshake, HandshakeConfig, HandshakeError, Phase};

/// Read granularity while handshaking; frames are small.
const READ_RESERVE: usize = 8 * 1024;

/// SNI name sent when the host is not a DNS name; the controller ignores SNI.
const FALLBACK_SERVER_NAME: &str = "jenkins-agent-port";

/// An accepted connection, ready for the chunk stream.
pub struct Connected<S> {
    /// The TLS stream to the controller, closed at the TCP level only.
    pub stream: ChannelStream<S>,
    /// Channel bytes that arrived with the handshake's last frame.
    pub read_buf: BytesMut,
    /// The controller's cookie for this channel.
    pub cookie: Option<String>,
    /// The controller's capability.
    pub capability: Capability,
}

impl<S> Connected<S> {
    /// The stream framed with `codec`, keeping the bytes already read.
    pub fn into_framed<C>(self, codec: C) -> Framed<ChannelStream<S>, C>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // Through parts: a Framed built with a non-empty read buffer decodes
        // it before reading, whereas `read_buffer_mut` would wait for I/O.
        let mut parts = Framed::new(self.stream, codec).into_parts();
        parts.read_buf = self.read_buf;
        Framed::from_parts(parts)
    }
}

impl<S> fmt::Debug for Connected<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connected")
            .field("buffered", &self.read_buf.len())
            .field("cookie", &self.cookie.as_ref().map(|_| "set"))
            .field("capability", &self.capability)
            .finish()
    }
}

/// Performs the JNLP4-connect handshake over `io` (already connected to the
/// agent port), with TLS pinned to `identity`. `host` is only used as the TLS
/// server name.
pub async fn connect<S>(
    io: S,
    host: &str,
    identity: &InstanceIdentity,
    config: HandshakeConfig,
) -> Result<Connected<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tls = TlsConnector::from(client_config(identity)?);
    let mut hs = Handshake::new(config, std::time::Instant::now())?;
    let mut io = io;
    let mut buf = BytesMut::with_capacity(READ_RESERVE);

    match pump(&mut hs, &mut io, &mut buf).await? {
        Event::StartTls => {}
        event => return Err(out_of_order(event)),
    }
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .or_else(|_| ServerName::try_from(FALLBACK_SERVER_NAME))
        .map_err(|_| HandshakeError::Closed { phase: Phase::Tls })?;
    let mut stream = match timeout_at(Instant::from_std(hs.deadline()), tls.connect(name, io)).await
    {
        Err(_) => return Err(timed_out(&mut hs)),
        Ok(Err(err)) => {
            return Err(match identity_mismatch(&err) {
                Some(mismatch) => HandshakeError::IdentityMismatch(mismatch.clone()),
                None => HandshakeError::Tls(err),
            })
        }
        Ok(Ok(stream)) => stream,
    };
    hs.tls_established(std::time::Instant::now())?;

    match pump(&mut hs, &mut stream, &mut buf).await? {
        Event::Accepted { cookie, capability } => Ok(Connected {
            stream: ChannelStream::new(stream),
            read_buf: buf,
            cookie,
            capability,
        }),
        Event::Refused(refusal) => {
            // BYE is already sent; closing is a courtesy and may fail.
            let _ = timeout_at(Instant::from_std(hs.deadline()), stream.shutdown()).await;
            Err(HandshakeError::Refused(refusal))
        }
        event => Err(out_of_order(event)),
    }
}

/// Sends what the handshake queued and feeds it input until it has an event.
async fn pump<IO>(
    hs: &mut Handshake,
    io: &mut IO,
    buf: &mut BytesMut,
) -> Result<Event, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let deadline = Instant::from_std(hs.deadline());
        let phase = hs.phase();
        let io_err = |source| HandshakeError::Io { phase, source };
        while let Some(out) = hs.poll_transmit() {
            match timeout_at(deadline, io.write_all(&out)).await {
                Err(_) => return Err(timed_out(hs)),
                Ok(result) => result.map_err(io_err)?,
            }
        }
        match timeout_at(deadline, io.flush()).await {
            Err(_) => return Err(timed_out(hs)),
            Ok(result) => result.map_err(io_err)?,
        }
        if let Some(event) = hs.poll_event() {
            return Ok(event);
        }
        buf.reserve(READ_RESERVE);
        match timeout_at(deadline, io.read_buf(buf)).await {
            Err(_) => return Err(timed_out(hs)),
            Ok(Err(source)) => return Err(io_err(source)),
            Ok(Ok(0)) => return Err(hs.handle_eof(buf)),
            Ok(Ok(_)) => hs.handle_input(buf, std::time::Instant::now())?,
        }
    }
}

fn timed_out(hs: &mut Handshake) -> HandshakeError {
    match hs.handle_timeout(hs.deadline()) {
        Err(err) => err,
        Ok(()) => HandshakeError::Closed { phase: hs.phase() },
    }
}

/// The machine emits `StartTls` only before TLS and the others only after;
/// anything else is a bug here, reported rather than panicking.
fn out_of_order(event: Event) -> HandshakeError {
    HandshakeError::UnexpectedResponse(format!("internal: handshake event {event:?} out of order"))
}
