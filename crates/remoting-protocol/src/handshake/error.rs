//! What can go wrong in the handshake, and what the controller said when it
//! refused.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::capability::CapabilityError;
use crate::headers::HeadersError;
use crate::tls::{IdentityMismatch, TlsSetupError};
use crate::utf::UtfError;

use super::Phase;

/// The handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Reading or writing the connection failed.
    #[error("connection failed during the {phase} phase: {source}")]
    Io {
        /// Where it happened.
        phase: Phase,
        /// The I/O error.
        source: io::Error,
    },
    /// The phase's deadline passed.
    #[error("the controller did not complete the {phase} phase within {after:?}")]
    Timeout {
        /// Where it happened.
        phase: Phase,
        /// The per-phase timeout.
        after: Duration,
    },
    /// The controller closed the connection.
    #[error("the controller closed the connection during the {phase} phase{}", closed_hint(*.phase))]
    Closed {
        /// Where it happened.
        phase: Phase,
    },
    /// Something other than the controller's `ACK` came back.
    #[error("expected the controller's ACK on the agent port but got {}{}", printable(.seen), wrong_ack_hint(.seen))]
    WrongAck {
        /// The bytes that came instead (at most 64).
        seen: Vec<u8>,
    },
    /// The peer sent bytes before the TLS handshake, which nothing legitimate does.
    #[error("the controller sent {0} unexpected bytes before TLS; refusing to go on")]
    BytesBeforeTls(usize),
    /// The controller's TLS key is not the pinned identity.
    #[error("SECURITY: {0}")]
    IdentityMismatch(IdentityMismatch),
    /// The TLS handshake failed for another reason.
    #[error("TLS handshake with the agent port failed: {0}")]
    Tls(io::Error),
    /// The TLS client could not be set up.
    #[error(transparent)]
    TlsSetup(#[from] TlsSetupError),
    /// A handshake frame was malformed.
    #[error("malformed {phase} frame from the controller: {source}")]
    Frame {
        /// Where it happened.
        phase: Phase,
        /// The decoding error.
        source: UtfError,
    },
    /// Our own headers could not be framed (a node name or secret over 64 KiB).
    #[error("the connection headers are too long to send: {0}")]
    HeadersTooLong(UtfError),
    /// The controller's headers did not parse.
    #[error("the controller sent malformed connection headers: {0}")]
    Headers(#[from] HeadersError),
    /// The controller's answer to our headers was not OK, ERROR or FATAL.
    #[error("the controller answered the headers with {0:?}, which is not OK, ERROR or FATAL")]
    UnexpectedResponse(String),
    /// The controller's capability did not parse.
    #[error("the controller sent a bad capability: {0}")]
    Capability(#[from] CapabilityError),
    /// The controller refused the connection.
    #[error("{0}")]
    Refused(Refusal),
}

impl HandshakeError {
    /// Whether retrying later can help (false for FATAL refusals and for an
    /// identity mismatch, which needs rediscovery or an operator).
    pub fn is_retryable(&self) -> bool {
        match self {
            HandshakeError::Refused(refusal) => !refusal.fatal,
            HandshakeError::IdentityMismatch(_)
            | HandshakeError::TlsSetup(_)
            | HandshakeError::HeadersTooLong(_) => false,
            _ => true,
        }
    }
}

fn closed_hint(phase: Phase) -> &'static str {
    match phase {
        Phase::Ack => " (is JNLP4-connect enabled on the controller, and is this its agent port?)",
        _ => "",
    }
}

fn printable(seen: &[u8]) -> String {
    if seen.is_empty() {
        return "nothing".into();
    }
    let text: String = seen
        .iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    format!("\"{text}\"")
}

fn wrong_ack_hint(seen: &[u8]) -> &'static str {
    if seen.starts_with(b"HTTP/") || seen.starts_with(b"HT") {
        ": an HTTP server or proxy answered on the agent port; check the host and port, or use -tunnel"
    } else {
        ": another service answered on the agent port; check the host and port"
    }
}

/// The controller's refusal of our headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `FATAL` (permanent) rather than `ERROR` (retry later).
    pub fatal: bool,
    /// The controller's reason, verbatim.
    pub reason: String,
}

/// The refusals the controller is known to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Wrong secret for this node.
    BadSecret,
    /// No node of that name.
    UnknownNode,
    /// The node has a live channel and we did not send its cookie.
    AlreadyConnected,
    /// Any other reason.
    Other,
}

impl Refusal {
    /// Classifies the controller's reason (texts as recorded).
    pub fn kind(&self) -> RefusalKind {
        let reason = self.reason.as_str();
        if reason == "Authorization failure" {
            RefusalKind::BadSecret
        } else if reason.starts_with("Unknown client name: ") {
            RefusalKind::UnknownNode
        } else if reason.contains(" is already connected to this ") {
            RefusalKind::AlreadyConnected
        } else {
            RefusalKind::Other
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = if self.fatal {
            "permanently refused"
        } else {
            "refused"
        };
        write!(f, "the controller {how} the connection: {}", self.reason)?;
        f.write_str(match self.kind() {
            RefusalKind::BadSecret => {
                " (the secret does not match this node's; copy it again from the node's page)"
            }
            RefusalKind::UnknownNode => {
                " (no node of that name exists on the controller; check -name)"
            }
            RefusalKind::AlreadyConnected => {
                " (another agent is connected as this node; it will be retried)"
            }
            RefusalKind::Other => "",
        })
    }
}
