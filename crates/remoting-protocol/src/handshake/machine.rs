//! The handshake as a state machine that does no I/O.
//!
//! ```text
//!  new ─▶ AwaitAck ──ACK──▶ Tls ──tls_established──▶ AwaitHeaders ──headers──▶ AwaitResponse
//!  (sends protocol line + ACK)                        (sends our headers)      (sends "OK")
//!                                                                                 │
//!            Done ◀──capability── AwaitCapability ◀─────────── "OK" ─────────────┤
//!         (Accepted)              (sends our capability)                          │
//!            Done ◀──────────────────────────── "ERROR: …" / "FATAL: …" ─────────┘
//!         (Refused, after sending "BYE")
//! ```
//!
//! Every state has a deadline ([`Handshake::deadline`]) that starts when the
//! state is entered; the driver turns a missed deadline into an error naming
//! the phase.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use crate::capability::Capability;
use crate::headers::{self, Headers};
use crate::utf::{put_utf, take_utf, utf_bytes};

use super::{HandshakeError, Refusal};

/// The protocol this handshake speaks, as the controller names it.
pub const PROTOCOL_NAME: &str = "JNLP4-connect";

const ACK_FRAME: &[u8] = b"\x00\x03ACK";

/// Longest wrong acknowledgement quoted back in an error.
const MAX_QUOTED: usize = 64;

/// What the agent presents to the controller.
#[derive(Clone)]
pub struct HandshakeConfig {
    /// The node's name (`Node-Name`).
    pub node_name: String,
    /// The node's secret (`Secret-Key`); never shown by `Debug`.
    pub secret: String,
    /// The cookie of our last accepted connection, so that the controller
    /// replaces a stale channel instead of refusing us.
    pub cookie: Option<String>,
    /// Our capability.
    pub capability: Capability,
    /// How long each phase may take.
    pub phase_timeout: Duration,
}

impl HandshakeConfig {
    /// Defaults: no cookie, the current capability, 30 s per phase.
    pub fn new(node_name: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            secret: secret.into(),
            cookie: None,
            capability: Capability::CURRENT,
            phase_timeout: Duration::from_secs(30),
        }
    }

    /// The headers we send, in the order the reference agent sends them.
    pub fn headers(&self) -> Headers {
        let mut headers = Headers::new()
            .with(headers::NODE_NAME, self.node_name.clone())
            .with(headers::SECRET_KEY, self.secret.clone());
        if let Some(cookie) = &self.cookie {
            headers.insert(headers::COOKIE, Some(cookie.clone()));
        }
        headers
    }
}

impl fmt::Debug for HandshakeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeConfig")
            .field("node_name", &self.node_name)
            .field("secret", &"***")
            .field("cookie", &self.cookie.as_ref().map(|_| "set"))
            .field("capability", &self.capability)
            .field("phase_timeout", &self.phase_timeout)
            .finish()
    }
}

/// The handshake's phases, as named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Protocol line sent, waiting for the controller's `ACK`.
    Ack,
    /// TLS handshake.
    Tls,
    /// Our headers sent, waiting for the controller's.
    Headers,
    /// Waiting for the controller's answer to our headers.
    Response,
    /// Waiting for the controller's capability.
    Capability,
    /// Finished.
    Done,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Ack => "acknowledgement",
            Phase::Tls => "TLS",
            Phase::Headers => "headers",
            Phase::Response => "response",
            Phase::Capability => "capability",
            Phase::Done => "done",
        })
    }
}

/// What the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Upgrade the connection to TLS now, then call [`Handshake::tls_established`].
    StartTls,
    /// The controller accepted us; what is left in the input buffer is the
    /// start of the chunk stream.
    Accepted {
        /// The controller's cookie for this channel: keep it for reconnecting.
        cookie: Option<String>,
        /// The controller's capability.
        capability: Capability,
    },
    /// The controller refused us; `BYE` is queued to send, then close.
    Refused(Refusal),
}

/// The client side of a JNLP4-connect handshake.
#[derive(Debug)]
pub struct Handshake {
    config: HandshakeConfig,
    phase: Phase,
    transmit: VecDeque<Bytes>,
    event: Option<Event>,
    deadline: Instant,
    cookie: Option<String>,
}

impl Handshake {
    /// Starts a handshake: the protocol line and our `ACK` are queued.
    pub fn new(config: HandshakeConfig, now: Instant) -> Result<Self, HandshakeError> {
        let mut opening = BytesMut::with_capacity(32);
        put_utf(&mut opening, &format!("Protocol:{PROTOCOL_NAME}"))
            .and_then(|()| put_utf(&mut opening, "ACK"))
            .map_err(HandshakeError::HeadersTooLong)?;
        let deadline = now + config.phase_timeout;
        Ok(Self {
            config,
            phase: Phase::Ack,
            transmit: VecDeque::from([opening.freeze()]),
            event: None,
            deadline,
            cookie: None,
        })
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Bytes to write to the connection, in order.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    /// The next thing the driver must act on, once the transmit queue is sent.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.event.take()
    }

    /// When the current phase times out.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Fails the handshake if the current phase's deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), HandshakeError> {
        if now >= self.deadline && self.phase != Phase::Done {
            return Err(HandshakeError::Timeout {
                phase: self.phase,
                after: self.config.phase_timeout,
            });
        }
        Ok(())
    }

    /// The error for the controller closing the connection now; `buf` holds
    /// what it sent that was not consumed.
    pub fn handle_eof(&self, buf: &[u8]) -> HandshakeError {
        if self.phase == Phase::Ack && !buf.is_empty() {
            return HandshakeError::WrongAck {
                seen: buf[..buf.len().min(MAX_QUOTED)].to_vec(),
            };
        }
        HandshakeError::Closed { phase: self.phase }
    }

    /// The TLS upgrade asked for by [`Event::StartTls`] is done: our headers
    /// are queued.
    pub fn tls_established(&mut self, now: Instant) -> Result<(), HandshakeError> {
        let mut frame = BytesMut::new();
        put_utf(&mut frame, &self.config.headers().encode())
            .map_err(HandshakeError::HeadersTooLong)?;
        self.transmit.push_back(frame.freeze());
        self.enter(Phase::Headers, now);
        Ok(())
    }

    /// Consumes whatever complete input `buf` holds. Bytes after the
    /// controller's capability are left in `buf`: they belong to the channel.
    pub fn handle_input(&mut self, buf: &mut BytesMut, now: Instant) -> Result<(), HandshakeError> {
        loop {
            let before = self.phase;
            match self.phase {
                Phase::Ack => self.read_ack(buf, now)?,
                Phase::Headers => {
                    if let Some(text) = self.take_text(buf)? {
                        let theirs = Headers::decode(&text)?;
                        self.cookie = theirs.get(headers::COOKIE).map(str::to_owned);
                        self.queue_utf("OK")?;
                        self.enter(Phase::Response, now);
                    }
                }
                Phase::Response => {
                    if let Some(text) = self.take_text(buf)? {
                        self.read_response(text, now)?;
                    }
                }
                Phase::Capability => {
                    if let Some(text) = self.take_text(buf)? {
                        let capability = Capability::from_base64(&text)?;
                        self.event = Some(Event::Accepted {
                            cookie: self.cookie.take(),
                            capability,
                        });
                        self.enter(Phase::Done, now);
                    }
                }
                // Nothing to read while TLS is set up (the driver owns those
                // bytes) or once finished (the rest is the channel's).
                Phase::Tls | Phase::Done => {}
            }
            if self.phase == before {
                return Ok(());
            }
        }
    }

    fn read_ack(&mut self, buf: &mut BytesMut, now: Instant) -> Result<(), HandshakeError> {
        let n = buf.len().min(ACK_FRAME.len());
        if buf[..n] != ACK_FRAME[..n] {
            return Err(HandshakeError::WrongAck {
                seen: buf[..buf.len().min(MAX_QUOTED)].to_vec(),
            });
        }
        if n < ACK_FRAME.len() {
            return Ok(());
        }
        buf.advance(ACK_FRAME.len());
        if !buf.is_empty() {
            return Err(HandshakeError::BytesBeforeTls(buf.len()));
        }
        self.event = Some(Event::StartTls);
        self.enter(Phase::Tls, now);
        Ok(())
    }

    fn read_response(&mut self, text: String, now: Instant) -> Result<(), HandshakeError> {
        if text == "OK" {
            self.queue_utf(&self.config.capability.to_base64())?;
            self.enter(Phase::Capability, now);
            return Ok(());
        }
        let refusal = if let Some(reason) = text.strip_prefix("ERROR: ") {
            Refusal {
                fatal: false,
                reason: reason.to_owned(),
            }
        } else if let Some(reason) = text.strip_prefix("FATAL: ") {
            Refusal {
                fatal: true,
                reason: reason.to_owned(),
            }
        } else {
            return Err(HandshakeError::UnexpectedResponse(text));
        };
        // Confirm the refusal, as the controller waits for it before closing.
        self.queue_utf("BYE")?;
        self.event = Some(Event::Refused(refusal));
        self.enter(Phase::Done, now);
        Ok(())
    }

    fn take_text(&self, buf: &mut BytesMut) -> Result<Option<String>, HandshakeError> {
        take_utf(buf).map_err(|source| HandshakeError::Frame {
            phase: self.phase,
            source,
        })
    }

    fn queue_utf(&mut self, text: &str) -> Result<(), HandshakeError> {
        self.transmit
            .push_back(utf_bytes(text).map_err(HandshakeError::HeadersTooLong)?);
        Ok(())
    }

    fn enter(&mut self, phase: Phase, now: Instant) {
        self.phase = phase;
        self.deadline = now + self.config.phase_timeout;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::handshake::RefusalKind;

    fn drain(hs: &mut Handshake) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = hs.poll_transmit() {
            out.extend_from_slice(&b);
        }
        out
    }

    fn started() -> (Handshake, Instant) {
        let now = Instant::now();
        let mut config = HandshakeConfig::new("n", "s");
        config.cookie = Some("c0".into());
        let mut hs = Handshake::new(config, now).unwrap();
        assert_eq!(drain(&mut hs), b"\x00\x16Protocol:JNLP4-connect\x00\x03ACK");
        (hs, now)
    }

    #[test]
    fn accepted_path_byte_by_byte() {
        let (mut hs, now) = started();
        let mut buf = BytesMut::new();
        for b in ACK_FRAME {
            assert_eq!(hs.poll_event(), None);
            buf.extend_from_slice(&[*b]);
            hs.handle_input(&mut buf, now).unwrap();
        }
        assert_eq!(hs.poll_event(), Some(Event::StartTls));
        assert_eq!(hs.phase(), Phase::Tls);
        hs.tls_established(now).unwrap();
        let sent = drain(&mut hs);
        assert_eq!(
            &sent[2..],
            br#"{"Node-Name":"n","Secret-Key":"s","JnlpAgentProtocol.cookie":"c0"}"#
        );

        let mut input = BytesMut::new();
        put_utf(&mut input, r#"{"JnlpAgentProtocol.cookie":"c1"}"#).unwrap();
        put_utf(&mut input, "OK").unwrap();
        put_utf(&mut input, &Capability::CURRENT.to_base64()).unwrap();
        input.extend_from_slice(b"\x00\x01x");
        for b in input {
            buf.extend_from_slice(&[b]);
            hs.handle_input(&mut buf, now).unwrap();
        }
        assert_eq!(
            hs.poll_event(),
            Some(Event::Accepted {
                cookie: Some("c1".into()),
                capability: Capability::CURRENT
            })
        );
        let mut expected = BytesMut::new();
        put_utf(&mut expected, "OK").unwrap();
        put_utf(&mut expected, &Capability::CURRENT.to_base64()).unwrap();
        assert_eq!(drain(&mut hs), expected);
        assert_eq!(
            &buf[..],
            b"\x00\x01x",
            "channel bytes are left for the caller"
        );
    }

    #[test]
    fn wrong_ack_names_http() {
        let (mut hs, now) = started();
        let mut buf = BytesMut::from(&b"HTTP/1.1 400 Bad Request\r\n"[..]);
        let err = hs.handle_input(&mut buf, now).unwrap_err();
        assert!(matches!(err, HandshakeError::WrongAck { .. }));
        assert!(err.to_string().contains("HTTP server or proxy"), "{err}");
    }

    #[test]
    fn bytes_before_tls_are_refused() {
        let (mut hs, now) = started();
        let mut buf = BytesMut::from(&b"\x00\x03ACK\x16\x03"[..]);
        assert!(matches!(
            hs.handle_input(&mut buf, now),
            Err(HandshakeError::BytesBeforeTls(2))
        ));
    }

    #[test]
    fn refusal_sends_bye() {
        for (text, fatal, kind) in [
            (
                "ERROR: Authorization failure",
                false,
                RefusalKind::BadSecret,
            ),
            ("FATAL: Node is disabled", true, RefusalKind::Other),
        ] {
            let (mut hs, now) = started();
            let mut buf = BytesMut::from(ACK_FRAME);
            hs.handle_input(&mut buf, now).unwrap();
            hs.tls_established(now).unwrap();
            drain(&mut hs);
            put_utf(&mut buf, "{}").unwrap();
            put_utf(&mut buf, text).unwrap();
            hs.handle_input(&mut buf, now).unwrap();
            let Some(Event::Refused(refusal)) = hs.poll_event() else {
                panic!("not refused")
            };
            assert_eq!((refusal.fatal, refusal.kind()), (fatal, kind));
            assert_eq!(drain(&mut hs), b"\x00\x02OK\x00\x03BYE");
        }
    }

    #[test]
    fn deadlines_name_the_phase() {
        let (mut hs, now) = started();
        assert!(hs.handle_timeout(now).is_ok());
        let err = hs.handle_timeout(hs.deadline()).unwrap_err();
        assert!(matches!(
            err,
            HandshakeError::Timeout {
                phase: Phase::Ack,
                ..
            }
        ));
        assert!(err.to_string().contains("acknowledgement"));
        assert!(matches!(
            hs.handle_eof(b""),
            HandshakeError::Closed { phase: Phase::Ack }
        ));
    }

    #[test]
    fn garbage_response_is_an_error() {
        let (mut hs, now) = started();
        let mut buf = BytesMut::from(ACK_FRAME);
        hs.handle_input(&mut buf, now).unwrap();
        hs.tls_established(now).unwrap();
        put_utf(&mut buf, "{}").unwrap();
        put_utf(&mut buf, "MAYBE").unwrap();
        assert!(matches!(
            hs.handle_input(&mut buf, now),
            Err(HandshakeError::UnexpectedResponse(_))
        ));
    }
}
